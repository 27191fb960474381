"""The VM-snapshot commands, with virsh's words and output (libvirt's virsh(1), docs/vm-snapshots.md):

- `vireo snapshot-create NAME [SNAP] [--description TEXT]`: every qcow2 disk, plus the machine state of a running
  or paused VM ("Domain snapshot SNAP created"; the default name is the time in seconds, as virsh's).
- `vireo snapshot-list NAME`: Name, Creation Time, State, in virsh's table.
- `vireo snapshot-revert NAME SNAP`: back to the snapshot; one with machine state resumes running.
- `vireo snapshot-delete NAME SNAP` ("Domain snapshot SNAP deleted").
"""
from __future__ import annotations

import argparse
import time

from core.cli.connect import find_vm
from core.cli.options import add_vm_argument
from core.host.snapshot_info import VmSnapshot
from core.remote.service import ServiceClient
from core.runner import EXIT_OK, BadInput

HEADINGS = ("Name", "Creation Time", "State")


def format_table(snapshots: list[VmSnapshot]) -> str:
    """virsh snapshot-list's table (vshTable): a space, columns padded to their widest cell three spaces apart, a
    rule of dashes under the headings; the time as virsh prints it, "%Y-%m-%d %H:%M:%S %z" in local time."""
    rows = [(s.name, time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(s.created)), s.state) for s in snapshots]
    widths = [max(len(r[i]) for r in [HEADINGS, *rows]) for i in range(len(HEADINGS))]

    def line(cells: tuple[str, ...]) -> str:
        return (" " + "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    rule = "-" * (sum(widths) + 3 * len(widths))
    return "\n".join([line(HEADINGS), rule, *(line(r) for r in rows)]) + "\n"


def add_create_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("snapshot", nargs="?", metavar="SNAP", help="the snapshot's name (default: the time in seconds)")
    p.add_argument("--description", default="", help="a description, shown by snapshot-list and the GUI")


def add_snapshot_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("snapshot", metavar="SNAP", help="the snapshot's name")


def _known(host: ServiceClient, uuid: str, vm_name: str, name: str) -> None:
    names = [s.name for s in host.snapshot_list(uuid)]
    if name not in names:
        raise BadInput(f"domain snapshot not found: {vm_name} has no snapshot named {name!r} (its snapshots: "
                       f"{', '.join(names) or 'none'}; see `vireo snapshot-list {vm_name}`)")


def cmd_snapshot_create(host: ServiceClient, args: argparse.Namespace) -> int:
    info = find_vm(host, args.name)
    snap = host.snapshot_create(info.uuid, args.snapshot, args.description)
    print(f"Domain snapshot {snap.name} created", flush=True)
    return EXIT_OK


def cmd_snapshot_list(host: ServiceClient, args: argparse.Namespace) -> int:
    info = find_vm(host, args.name)
    print(format_table(host.snapshot_list(info.uuid)), flush=True)
    return EXIT_OK


def cmd_snapshot_revert(host: ServiceClient, args: argparse.Namespace) -> int:
    info = find_vm(host, args.name)
    _known(host, info.uuid, info.name, args.snapshot)
    host.snapshot_revert(info.uuid, args.snapshot)
    return EXIT_OK


def cmd_snapshot_delete(host: ServiceClient, args: argparse.Namespace) -> int:
    info = find_vm(host, args.name)
    _known(host, info.uuid, info.name, args.snapshot)
    host.snapshot_delete(info.uuid, args.snapshot)
    print(f"Domain snapshot {args.snapshot} deleted", flush=True)
    return EXIT_OK
