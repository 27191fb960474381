"""`vireo domiflist` and `vireo domif-setlink` (core/cli/netcmds.py), and every network-card field of a definition
through `dumpconfig` and `define` (forwards, MAC, backend, TAP and bridge, the link switch), on the local service
and over SSH."""
from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Vireo, one_error_line

NICS = [
    {"backend": "user", "mac": "52:54:00:aa:bb:01", "forwards": ["tcp:127.0.0.1:2222-:22", "udp:127.0.0.1:5353-:53"]},
    {"backend": "tap", "tap": "vtap7", "bridge": "br0", "mac": "52:54:00:aa:bb:02", "link": False},
    {"backend": "tap", "tap": "vtap8"},
]


def test_domiflist_setlink_and_every_card_field_round_trips(vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                                             busybox_initramfs: Path) -> None:
    name = f"nics-{vireo.kind}"
    path = vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs, nics=NICS)
    vireo.ok("define", str(path))
    dumped = json.loads(vireo.ok("dumpconfig", name))
    cards = dumped["nics"]
    for card, given in zip(cards, NICS, strict=True):
        for key, value in given.items():
            assert card[key] == value, (key, card)
    assert [c["link"] for c in cards] == [True, False, True] and [c["model"] for c in cards] == ["virtio"] * 3
    third_mac = cards[2]["mac"]            # none given: the store wrote the one derived from the uuid
    assert third_mac.startswith("52:54:00:") and third_mac not in ("52:54:00:aa:bb:01", "52:54:00:aa:bb:02")

    assert vireo.ok("domiflist", name) == (
        " Interface   Type       Source   Model    MAC\n"
        "-------------------------------------------------------------\n"
        " -           user       -        virtio   52:54:00:aa:bb:01\n"
        " vtap7       bridge     br0      virtio   52:54:00:aa:bb:02\n"
        f" vtap8       ethernet   -        virtio   {third_mac}\n\n")

    # What dumpconfig printed, changed in every card field, defined again: dumpconfig gives it back as written.
    cards[0].update(forwards=["tcp:0.0.0.0:8080-:80"], mac="52:54:00:aa:bb:09", link=False)
    cards[1].update(backend="user", tap="", bridge="", forwards=["tcp:127.0.0.1:2223-:22"], link=True)
    cards[2].update(tap="vtap9", bridge="br1")
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(dumped))
    vireo.ok("define", str(changed))
    assert json.loads(vireo.ok("dumpconfig", name)) == dumped

    # The link switch by MAC, by TAP name and by number; a card that does not exist is bad input.
    assert vireo.ok("domif-setlink", name, "52:54:00:AA:BB:09", "up") == "Device updated successfully\n"
    vireo.ok("domif-setlink", name, "vtap9", "down")
    vireo.ok("domif-setlink", name, "2", "down")
    assert [c["link"] for c in json.loads(vireo.ok("dumpconfig", name))["nics"]] == [True, False, False]
    one_error_line(vireo.cli("domif-setlink", name, "vnet42", "up"), 2, "vnet42", "52:54:00:aa:bb:09",
                   "domiflist")
    vireo.ok("undefine", name)


def test_a_bad_forward_in_a_definition_is_one_line(local_vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                                    busybox_initramfs: Path) -> None:
    path = local_vireo.write_definition(tmp_path, "badfwd", debian_kernel, busybox_initramfs,
                                        nics=[{"forwards": ["tcp:127.0.0.1:70000-:22"]}])
    one_error_line(local_vireo.cli("define", str(path)), 2, "nics[0]", "70000", "1..65535")


def test_domifstat_and_setlink_on_a_running_vm(local_vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                               busybox_initramfs: Path) -> None:
    """A running guest that took a DHCP lease: domifstat counts the exchange; domif-setlink down on the running VM
    saves the switch and the card reports it; the counters stop growing while the cable is out."""
    import time
    name = "ifstat"
    path = local_vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs,
                                        nics=[{"mac": "52:54:00:aa:bb:31"}])
    data = json.loads(path.read_text())
    data["boot"]["cmdline"] = "console=ttyS0 quiet vireo.action=net"
    data["accel"] = "software"
    path.write_text(json.dumps(data))
    local_vireo.ok("define", str(path))
    one_error_line(local_vireo.cli("domifstat", name, "1"), 1, "not running")
    local_vireo.ok("start", name)
    try:
        def stats() -> dict[str, int]:
            lines = local_vireo.ok("domifstat", name, "52:54:00:aa:bb:31").splitlines()
            assert lines[-1] == "" and all(line.startswith("52:54:00:aa:bb:31 ") for line in lines[:-1]), lines
            return {line.split()[1]: int(line.split()[2]) for line in lines[:-1]}
        deadline = time.monotonic() + 90
        while (now := stats())["rx_packets"] < 2:          # udhcpc's offer and ack, at least
            assert time.monotonic() < deadline, now
            time.sleep(0.5)
        assert list(now) == ["rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", "tx_packets", "tx_errs",
                             "tx_drop"]
        assert now["rx_bytes"] > 300 and now["tx_packets"] >= 2
        assert local_vireo.ok("domif-setlink", name, "1", "down") == "Device updated successfully\n"
        assert json.loads(local_vireo.ok("dumpconfig", name))["nics"][0]["link"] is False
        time.sleep(1)
        before = stats()
        time.sleep(2)
        assert stats()["rx_bytes"] == before["rx_bytes"]      # no frame reaches the guest with the cable out
    finally:
        local_vireo.cli("destroy", name)
    local_vireo.ok("undefine", name)
