"""The virsh-like command line over the Host API (core/host/api.py): `vireo list/define/start/console/...`.

Each command talks to one host: this user's Vireo service on this computer by default (core.connect.connect_local,
which starts it on demand), or a Vireo service over SSH with `--connect ssh://USER@HOST[:PORT]`
(core.connect.RemoteHost). The modules are split by job:
  connect.py      choosing and reaching the host from the options, finding a VM by name, uuid or Id
  commands.py     the definition and lifecycle commands (list, define, dumpconfig, undefine, start, shutdown ...)
  console.py      `console` (the serial console on this terminal) and `screendump` (the VGA screen as PNG)
  run_remote.py   `run --connect`: a transient VM on a remote host, its console on this terminal
  table.py        the table of subcommands main.py wires up

Exit statuses follow the runner's (core/runner.py): 0 done, 1 the operation failed (as virsh exits 1 on
"Domain is already active"), 2 bad input (an unknown VM, a file that cannot be read or is not a valid definition,
a host that refuses the connection). Every failure prints one line on stderr saying what and what to do.
"""
