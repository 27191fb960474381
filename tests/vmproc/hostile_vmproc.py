"""A hostile stand-in for a VM process (run as a script by test_vmproc_protocol.py): it listens on the VM's socket,
greets its controller correctly, then sends one bad message and waits to be killed.

usage: hostile_vmproc.py RUNTIME_DIR UUID oversized|not-json|bad-state|unknown|huge-header"""
from __future__ import annotations

import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.protocol import encode, hello  # noqa: E402
from core.vmproc.wire import ROLE_VM, receive, unix_address, vm_paths  # noqa: E402

BAD = {
    "oversized": struct.pack(">I", 2 * 1024 * 1024) + b"\0" * 64,
    "not-json": struct.pack(">II", 4 + 5, 5) + b"{nope",
    "bad-state": encode({"t": "state", "state": "exploded", "reason": "x"}),
    "unknown": encode({"t": "launch", "target": "the host"}),
    "huge-header": struct.pack(">II", 4 + 300000, 300000) + b" " * 300000,
}


def main() -> None:
    runtime_dir, vm_uuid, kind = sys.argv[1:4]
    paths = vm_paths(runtime_dir, vm_uuid)
    os.makedirs(paths.directory, mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unix_address(paths.socket) as address:
        listener.bind(address)
    listener.listen(1)
    print("ready", flush=True)
    conn, _ = listener.accept()
    receive(conn)                                   # the controller's hello
    conn.sendall(encode(hello(ROLE_VM, pid=os.getpid(), uuid=vm_uuid, state="running", reason="", accel="software",
                              accel_reason="requested", console=None, vcpu_tids=[os.getpid()])))
    conn.sendall(BAD[kind])
    time.sleep(120)


if __name__ == "__main__":
    main()
