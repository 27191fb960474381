"""One VM's engine process and its parent-side handle.

A VM process (`python -m core.vmproc`, core/vmproc/child.py) runs one Machine in its own session, so the GUI or the
service dying does not take the VM with it; the service holds a VmProcess (core/vmproc/handle.py) for each. They
talk over the VM's own UNIX socket `<runtime_dir>/vms/<uuid>.sock` with the agent's framing (core/protocol.py;
messages listed in core/vmproc/wire.py), and a restarted service reconnects with VmProcess.adopt(). The VGA's frames
do not travel over the socket: the child renders them into a shared file mapping that any local reader polls
(core/vmproc/shared_console.py).
"""
