"""`vireo clone NAME NEWNAME [--linked]` (as virt-clone(1): a new name, uuid and MAC, new disk files in the host's
images folder) over any Host API host, and `vireo move NAME --to URI` (a shut-off or saved VM to another host, as
`virsh migrate --offline` with its storage); docs/clone-and-move.md. Progress goes to stderr when it is a terminal, what
was done to stdout in virsh's words."""
from __future__ import annotations

import argparse
import sys

from core.cli.connect import find_vm
from core.cli.options import add_vm_argument
from core.remote.service import ServiceClient
from core.runner import EXIT_OK


def terminal_progress(label: str):
    """A progress callback printing `label NN%` on stderr when it is a terminal (else nothing)."""
    if not sys.stderr.isatty():
        return None
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = 100 if total <= 0 else done * 100 // total
        if percent != last[0]:
            last[0] = percent
            sys.stderr.write(f"\r{label} {percent:3d}%")
            if percent >= 100:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return progress


def add_clone_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("new_name", metavar="NEWNAME", help="the clone's name")
    p.add_argument("--linked", action="store_true",
                   help="a thin qcow2 overlay on the original's disk content instead of a full copy")


def cmd_clone(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo clone NAME NEWNAME [--linked]`."""
    info = find_vm(host, args.name)
    clone = host.clone(info.uuid, args.new_name, args.linked, terminal_progress(f"Cloning {info.name}"))
    kind = "linked clone" if args.linked else "full copy"
    disks = ", ".join(d.path for d in clone.config.disks) or "no disks"
    print(f"Domain '{info.name}' cloned as '{clone.name}' ({kind}; {disks})", flush=True)
    return EXIT_OK


def add_move_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("--to", required=True, metavar="ssh://USER@HOST[:PORT]|local",
                   help="the host to move the VM to: an SSH host, or `local` for this computer's service (the VM "
                        "comes from --connect's host, default this computer); --identity and the other SSH options "
                        "apply to whichever side is SSH")


def cmd_move(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo move NAME --to URI`: move a shut-off or saved VM (definition, disks, managed save) to another host,
    removing it here only once the destination has verified everything (docs/clone-and-move.md)."""
    from core.cli.connect import connect_remote
    from core.connect import connect_local, move_vm
    from core.host.api import HostError
    from core.runner import BadInput

    info = find_vm(host, args.name)
    if args.to == "local":
        if not getattr(args, "connect", None):
            raise BadInput(f"{info.name} is on this computer already: give --connect for the host it comes from")
        dest = connect_local()
    else:
        try:
            dest = connect_remote(argparse.Namespace(**{**vars(args), "connect": args.to}))
        except HostError as exc:
            raise HostError(f"cannot reach {args.to}: {exc}") from None
    try:
        moved = move_vm(host, dest, info.uuid, terminal_progress(f"Moving {info.name} to {dest.name}"))
    finally:
        dest.close()
    where = "" if args.to == "local" else f" --connect {args.to}"
    print(f"Domain '{moved.name}' moved to {dest.name}; `vireo start {moved.name}{where}` starts it there (resumed "
          "where it was saved, if it was)", flush=True)
    return EXIT_OK
