"""A saved VM's VNC console (issue 16): the definition's display section (display.vnc, display.vnc_password) makes
its VM process serve the screen; `vireo domdisplay NAME` prints where, as virsh does; a VNC client sees what
`vireo screendump` saves. On the local service (over SSH the same VM process serves it; domdisplay then adds a line
on stderr saying how to forward the remote loopback port)."""
from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from core.vnc.client import VncClient
from core.vnc.protocol import RfbError
from tests.cli.conftest import Vireo, one_error_line
from tests.helpers.vnc import free_display, png, rgb, settled_screen

CMDLINE = "console=tty0 console=ttyS0 vireo.action=shell vt.global_cursor_default=0"


def _define(vireo: Vireo, folder: Path, name: str, kernel: Path, initrd: Path, display: dict) -> None:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, "memory_mib": 128, "accel": "software", "display": display,
                                "boot": {"kernel": str(kernel), "initrd": str(initrd), "cmdline": CMDLINE}}))
    vireo.ok("define", str(path))


def test_domdisplay_and_the_console_over_vnc(local_vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                             busybox_initramfs: Path) -> None:
    vireo = local_vireo
    name, other = "vnc-shown", "vnc-clash"
    display = free_display()
    _define(vireo, tmp_path, name, debian_kernel, busybox_initramfs,
            {"type": "vga", "vnc": f"127.0.0.1:{display}", "vnc_password": "opensesa"})
    _define(vireo, tmp_path, other, debian_kernel, busybox_initramfs, {"vnc": f"127.0.0.1:{display}"})
    try:
        one_error_line(vireo.cli("domdisplay", name), 1, name, "shut off", f"vireo start {name}")
        vireo.ok("start", name)
        result = vireo.cli("domdisplay", name)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"vnc://127.0.0.1:{5900 + display}\n"
        port = 5900 + display
        with pytest.raises(RfbError, match="password"):
            VncClient.connect(("127.0.0.1", port))
        # The guest may still be writing (a slow, loaded host): the dump is taken right after a settled screen,
        # and the pair compared again when the screen moved between the two.
        dump = tmp_path / "dump.png"
        for _ in range(5):
            screen = settled_screen(port, password="opensesa", timeout=60)
            vireo.ok("screendump", name, str(dump))
            if png(dump).shape == rgb(screen).shape and (png(dump) == rgb(screen)).all():
                break
        assert (png(dump) == rgb(screen)).all()
        # Another VM asking for the same display does not start, and says why in one line.
        one_error_line(vireo.cli("start", other), 1, f"127.0.0.1:{display}", "in use")
        assert vireo.states()[name] == "running"
    finally:
        for vm in (name, other):
            if vireo.states().get(vm) in ("running", "paused"):
                vireo.cli("destroy", vm)
            vireo.cli("undefine", vm)


def test_display_section_is_checked(local_vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                    busybox_initramfs: Path) -> None:
    path = tmp_path / "bad.json"
    for display, words in (({"vnc": "0.0.0.0:1"}, ("display.vnc", "loopback")),
                           ({"vnc": "127.0.0.1:1", "vnc_password": "much-too-long"}, ("display.vnc_password",)),
                           ({"type": "none", "vnc": "127.0.0.1:1"}, ("display.vnc", "display.type"))):
        path.write_text(json.dumps({"name": "badvnc", "display": display,
                                    "boot": {"kernel": str(debian_kernel), "initrd": str(busybox_initramfs)}}))
        one_error_line(local_vireo.cli("define", str(path)), 2, *words)
    _define(local_vireo, tmp_path, "novnc", debian_kernel, busybox_initramfs, {"type": "vga"})
    try:
        one_error_line(local_vireo.cli("domdisplay", "novnc"), 1, "no VNC console", "display")
    finally:
        local_vireo.cli("undefine", "novnc")


def test_forward_through_the_ssh_connection(vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                            busybox_initramfs: Path) -> None:
    """`domdisplay --forward` over --connect ssh://: a viewer on this machine reaches the remote VM's console
    through the command's own SSH connection; on the local host it is refused with one line."""
    name = f"vnc-fwd-{vireo.kind}"
    display = free_display()
    _define(vireo, tmp_path, name, debian_kernel, busybox_initramfs,
            {"vnc": f"127.0.0.1:{display}", "vnc_password": "tunnel"})
    try:
        if vireo.kind == "local":
            one_error_line(vireo.cli("domdisplay", name, "--forward"), 2, "--forward", "--connect ssh://")
            return
        vireo.ok("start", name)
        hint = vireo.cli("domdisplay", name)
        assert hint.returncode == 0 and "--forward" in hint.stderr and "ssh -L" in hint.stderr, hint.stderr
        with vireo.terminal("domdisplay", name, "--forward") as term:
            term.expect(b"(Ctrl-C stops)", timeout=60)
            local = re.search(r"vnc://127\.0\.0\.1:(\d+)[^\n]* -> vnc://127\.0\.0\.1:(\d+)", term.text())
            assert local and int(local.group(2)) == 5900 + display and int(local.group(1)) != 5900 + display
            for _ in range(2):               # one channel per viewer
                client = VncClient.connect(("127.0.0.1", int(local.group(1))), password="tunnel")
                assert client.screen().shape == (400, 720)
                client.close()
            os.kill(term.pid, signal.SIGINT)
            assert term.wait(20) == 0
    finally:
        if vireo.states().get(name) in ("running", "paused"):
            vireo.cli("destroy", name)
        vireo.cli("undefine", name)
