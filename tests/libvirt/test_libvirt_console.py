"""A libvirt domain's consoles in Vireo (core/host/libvirt_console.py, core/host/libvirt_serial.py): its VNC
graphics through Vireo's RFB client show the guest's text screen (read back with the VGA BIOS's own font) and
carry typed keys to the shell on tty1; its serial console comes through libvirt's stream API, both ways."""
from __future__ import annotations

import time

import pytest

from core.host.api import VmState
from core.host.libvirt_host import LibvirtHost
from core.keymap import text_events
from tests.helpers.libvirtd import DOMAIN, text_lines, vga_bios_glyphs


@pytest.fixture
def running(libvirtd):
    host = LibvirtHost(libvirtd.uri)
    [vm] = [v for v in host.list_vms() if v.name == DOMAIN]
    serial: list[bytes] = []
    host.start(vm.uuid)
    history = host.subscribe_serial(vm.uuid, serial.append)
    serial.insert(0, history)
    yield host, vm.uuid, serial
    if host.get(vm.uuid).state.active:
        host.force_off(vm.uuid)
    host.close()


def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_vnc_console_shows_the_guest_text_and_takes_keys(running):
    host, uuid, serial = running
    until(lambda: b"VIREO-BOOT-OK" in b"".join(serial), 120, f"no boot on the serial console: {serial}")
    console = host.console(uuid)
    assert host.console(uuid).frames is console.frames       # one VNC connection per run of the domain
    glyphs = vga_bios_glyphs()
    seen: list[str] = []

    def screen() -> list[str]:
        frame = console.frames.render(force=True)
        if frame is not None and (frame.width, frame.height) == (720, 400):
            seen[:] = text_lines(frame, glyphs)
        return seen

    until(lambda: any(line.startswith("vireo:~#") for line in screen()), 60, f"no shell prompt: {seen}")
    events, skipped = text_events("echo vireo-$((6*7))\n")
    assert skipped == 0
    for event in events:
        console.input.key_event(event)
    until(lambda: "vireo-42" in screen(), 30, f"the shell's answer never showed: {seen}")
    host.force_off(uuid)
    until(lambda: host.get(uuid).state == VmState.SHUTOFF, 30, "still running")
    host.start(uuid)
    until(lambda: host.get(uuid).state == VmState.RUNNING, 30, "did not start again")
    assert host.console(uuid).session != console.session


def test_serial_console_through_the_stream_api(running):
    host, uuid, serial = running
    until(lambda: b"VIREO-BOOT-OK" in b"".join(serial), 120, f"no boot on the serial console: {serial}")
    # ttyS0's line discipline echoes what arrives: the bytes went into the guest and came back.
    host.send_serial(uuid, b"ping-through-libvirt\n")
    until(lambda: b"ping-through-libvirt" in b"".join(serial).split(b"VIREO-BOOT-OK")[-1], 30,
          f"no echo: {b''.join(serial)[-300:]!r}")
    later: list[bytes] = []
    assert b"ping-through-libvirt" in host.subscribe_serial(uuid, later.append)      # a second window's history
