"""The network-card commands, as virsh names them (libvirt's virsh(1)):

- `vireo domiflist NAME`: one row per card, Interface, Type, Source, Model, MAC, in virsh's layout. A user-mode
  card (passt) is virsh's type "user" with no interface or source ("-"); a TAP card is "ethernet" with its
  interface name, or "bridge" with the bridge as its source when it is added to one.
- `vireo domifstat NAME INTERFACE`: the card's received and sent bytes, packets and drops, as virsh prints them.
- `vireo domif-setlink NAME INTERFACE up|down`: the card's link switch (the interface is its MAC, its TAP name
  or its number from 1), saved in the definition and, on a running VM, applied at once: the guest's carrier
  follows (core/host/net_ops.py).
"""
from __future__ import annotations

import argparse

from core.cli.connect import CommandFailed, find_vm
from core.cli.options import add_vm_argument
from core.config import NicConfig, VmConfig
from core.net.nic import derived_mac
from core.remote.service import ServiceClient
from core.runner import EXIT_OK, BadInput

HEADINGS = ("Interface", "Type", "Source", "Model", "MAC")


def card_row(cfg: VmConfig, index: int, nic: NicConfig) -> tuple[str, str, str, str, str]:
    """A card as virsh domiflist shows an interface."""
    mac = nic.mac or derived_mac(cfg.uuid, index)
    if nic.backend == "tap":
        kind, source = ("bridge", nic.bridge) if nic.bridge else ("ethernet", "-")
        return nic.tap or "-", kind, source, nic.model, mac
    return "-", "user", "-", nic.model, mac


def format_table(rows: list[tuple[str, ...]]) -> str:
    """virsh's table (vshTable): a space, the columns padded to their widest cell and three spaces apart, a rule
    of dashes under the headings."""
    widths = [max(len(r[i]) for r in [HEADINGS, *rows]) for i in range(len(HEADINGS))]

    def line(cells: tuple[str, ...]) -> str:
        return (" " + "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    rule = "-" * (sum(widths) + 3 * len(widths))      # vsh-table.c: each column's width and its 3 spaces
    return "\n".join([line(HEADINGS), rule, *(line(r) for r in rows)]) + "\n"


def cmd_domiflist(host: ServiceClient, args: argparse.Namespace) -> int:
    info = find_vm(host, args.name)
    rows = [card_row(info.config, i, nic) for i, nic in enumerate(info.config.nics)]
    print(format_table(rows), flush=True)
    return EXIT_OK


def add_setlink_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("interface", metavar="INTERFACE", help="the card: its MAC, its TAP name, or its number from 1")
    p.add_argument("state", choices=("up", "down"), help="plug the virtual cable in (up) or pull it out (down)")


def find_card(cfg: VmConfig, interface: str) -> int:
    """The index of the card `interface` names; BadInput listing the cards otherwise."""
    for i, nic in enumerate(cfg.nics):
        mac = nic.mac or derived_mac(cfg.uuid, i)
        if interface.lower() == mac or (nic.tap and interface == nic.tap) or interface == str(i + 1):
            return i
    known = ", ".join(card_row(cfg, i, n)[4] for i, n in enumerate(cfg.nics)) or "none"
    raise BadInput(f"{cfg.name} has no interface {interface!r} (its cards: {known}; see `vireo domiflist "
                   f"{cfg.name}`)")


def cmd_domif_setlink(host: ServiceClient, args: argparse.Namespace) -> int:
    info = find_vm(host, args.name)
    index = find_card(info.config, args.interface)
    host.net_set(info.uuid, index, link=args.state == "up")
    print("Device updated successfully", flush=True)
    return EXIT_OK


def add_ifstat_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("interface", metavar="INTERFACE", help="the card: its MAC, its TAP name, or its number from 1")


def cmd_domifstat(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo domifstat NAME INTERFACE`: the card's counters as virsh domifstat prints them, one per line
    (rx_bytes, rx_packets, rx_errs, rx_drop, tx_…); the VM must be running or paused."""
    info = find_vm(host, args.name)
    index = find_card(info.config, args.interface)
    cards = host.net_status(info.uuid)
    if not cards:
        raise CommandFailed(f"{info.name} is not running: its cards count nothing (start it with `vireo start "
                            f"{info.name}`)")
    card = cards[index]
    for key, value in (("rx_bytes", card["rx_bytes"]), ("rx_packets", card["rx_packets"]), ("rx_errs", 0),
                       ("rx_drop", card["rx_dropped"]), ("tx_bytes", card["tx_bytes"]),
                       ("tx_packets", card["tx_packets"]), ("tx_errs", 0), ("tx_drop", card["tx_dropped"])):
        print(f"{args.interface} {key} {value}")
    print(flush=True)
    return EXIT_OK
