"""Issue 16's done-means with real clients on a real guest: Debian's kernel and the tests' initramfs on the
software CPU under `main.py run --vnc`, its busybox shell on tty1 (the VGA console).

- vncdotool (PyPI) types into the shell on tty1 (keysyms), Vireo's client types with QEMU's extended key events
  (XT scan codes); each command's answer comes back on the serial port, where the test reads it.
- Debian's vncsnapshot, an RFB 3.3 client (TightVNC 1.2 / RealVNC 3.3.7 based), captures the screen.
- Hostile clients lose their connections while the guest runs on and still takes keys.
- vncdotool's capture, Raw in text mode and ZRLE on bochs-drm's 1024x768 framebuffer (behind a VNC password), is the
  screendump Vireo writes when the VM stops, pixel for pixel. The guest hides the cursor
  (vt.global_cursor_default=0), so a still screen is one picture whenever it is taken.
- A client connected while the guest switches from text mode to the framebuffer gets DesktopSize.
"""
from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from core.keymap import EVDEV_KEYS, char_to_key
from core.vnc.client import VncClient
from core.vnc.protocol import ENC_DESKTOP_SIZE, ENC_QEMU_EXTENDED_KEY, ENC_RAW, ENC_ZRLE
from tests.helpers.runner import VireoSession
from tests.helpers.vnc import free_display, png, require_vncsnapshot, rgb, settled_screen, vncdo

SHELL = "console=ttyS0 quiet vireo.action=shell vireo.console=tty1 vt.global_cursor_default=0"
FRAMEBUFFER = "console=ttyS0 quiet vireo.action=display vireo.then=shell vireo.console=tty1 " \
              "vt.global_cursor_default=0"
XT = {name: code for code, name in EVDEV_KEYS.items() if code < 0x59}


class Guest:
    def __init__(self, kernel: Path, initrd: Path, cmdline: str, tmp: Path, password: str = "") -> None:
        self.display = free_display()
        self.port = 5900 + self.display
        self.screendump = tmp / "screendump.png"
        self.password = password
        args = ["--kernel", kernel, "--initrd", initrd, "--accel", "software", "--append", cmdline,
                "--vnc", f"127.0.0.1:{self.display}", "--screendump", self.screendump]
        if password:
            secret = tmp / "vnc-password"
            secret.write_text(password + "\n")
            args += ["--vnc-password-file", secret]
        self.session = VireoSession(args)
        deadline = time.monotonic() + 30
        while f"vnc://127.0.0.1:{self.port}" not in self.session.stderr:
            if time.monotonic() > deadline or self.session.proc.poll() is not None:
                pytest.fail(f"no VNC server announced: {self.session.stderr[-2000:]}", pytrace=False)
            time.sleep(0.05)

    def until_serial(self, text: str, retype, timeout: float = 60) -> None:
        """Type (retype()) until `text` shows on the serial port: keys typed before the shell has opened tty1
        are dropped by the kernel, and the test cannot see tty1's prompt any other way than by its answer."""
        deadline = time.monotonic() + timeout
        while True:
            retype()
            try:
                self.session.expect(text, timeout=6)
                return
            except pytest.fail.Exception:
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> int:
        """The ACPI power button (SIGTERM): the guest powers off without writing to tty1; the runner saves the
        screendump."""
        self.session.proc.send_signal(signal.SIGTERM)
        return self.session.wait(60)


@pytest.fixture(scope="module")
def text_guest(debian_kernel, busybox_initramfs, tmp_path_factory):
    guest = Guest(debian_kernel, busybox_initramfs, SHELL, tmp_path_factory.mktemp("vnc-text"))
    guest.session.expect("VIREO-BOOT-OK", timeout=120)
    yield guest
    guest.session.close()


def test_vncdotool_types_into_the_shell_on_tty1(text_guest) -> None:
    text_guest.until_serial("vnc-42", lambda: vncdo(text_guest.port, "type", "echo vnc-$((6*7)) >/dev/ttyS0",
                                                    "key", "enter"))


def _xt_keys(client: VncClient, text: str) -> None:
    for ch in text:
        name, shift = char_to_key(ch)
        if shift:
            client.scancode(XT["shift_l"], True)
        client.scancode(XT[name], True)
        client.scancode(XT[name], False)
        if shift:
            client.scancode(XT["shift_l"], False)


def test_qemu_extended_key_events_type_exactly(text_guest) -> None:
    client = VncClient.connect(("127.0.0.1", text_guest.port), encodings=(ENC_RAW, ENC_QEMU_EXTENDED_KEY))
    try:
        client.screen()
        assert client.extended_keys
        text_guest.until_serial("xt-7!", lambda: _xt_keys(client, "echo xt-$((3+4))! >/dev/ttyS0\n"))
    finally:
        client.close()


def test_vncsnapshot_speaks_rfb_33(text_guest, tmp_path) -> None:
    tool = require_vncsnapshot()
    screen = settled_screen(text_guest.port)
    out = tmp_path / "snap.jpg"
    result = subprocess.run([tool, "-verbose", "-quality", "100", f"127.0.0.1:{text_guest.display}", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "using protocol version 3.3" in result.stderr
    snap = png(out).astype(int)            # vncsnapshot writes JPEG only: compare within its loss
    assert snap.shape == (400, 720, 3)
    assert np.abs(snap - rgb(screen).astype(int)).mean() < 3


def test_hostile_clients_leave_the_guest_running(text_guest) -> None:
    attacks = [struct.pack(">BxH", 2, 65535), struct.pack(">B3xI", 6, 0xFFFFFFFF) + b"x" * 4096, b"\x09" * 64]
    for attack in attacks:
        with socket.create_connection(("127.0.0.1", text_guest.port), timeout=10) as sock:
            sock.recv(12)
            sock.sendall(b"RFB 003.008\n")
            sock.recv(2)
            sock.sendall(b"\x01")
            sock.recv(4)
            sock.sendall(b"\x01")
            time.sleep(0.05)
            sock.sendall(attack)
            sock.settimeout(10)
            with pytest.raises((ConnectionResetError, AssertionError)):
                while True:
                    assert sock.recv(65536)         # the server closes the connection
    text_guest.until_serial("still-9", lambda: vncdo(text_guest.port, "type", "echo still-$((4+5)) >/dev/ttyS0",
                                                     "key", "enter"))


def test_vncdotool_capture_is_the_screendump_text_mode(text_guest, tmp_path) -> None:
    settled_screen(text_guest.port)
    capture = tmp_path / "capture.png"
    vncdo(text_guest.port, "capture", str(capture))
    assert text_guest.stop() == 0
    assert re.search(r"VIREO-POWER-BUTTON", text_guest.session.stdout)
    assert (png(capture) == png(text_guest.screendump)).all()


def test_framebuffer_desktop_size_and_zrle_capture_behind_a_password(debian_kernel, busybox_initramfs,
                                                                      tmp_path) -> None:
    guest = Guest(debian_kernel, busybox_initramfs, FRAMEBUFFER, tmp_path, password="pa55wd")
    try:
        client = VncClient.connect(("127.0.0.1", guest.port), password="pa55wd",
                                   encodings=(ENC_ZRLE, ENC_DESKTOP_SIZE))
        client.sock.settimeout(120)
        assert (client.width, client.height) == (720, 400)      # text mode while the kernel boots
        sizes = []
        while (client.width, client.height) != (1024, 768):
            client.request()
            sizes += [rect for rect, enc in client.read_update() if enc == ENC_DESKTOP_SIZE]
        assert sizes == [(0, 0, 1024, 768)]
        client.close()
        guest.session.expect("VIREO-FB-MODE=1024x768", timeout=120)
        screen = settled_screen(guest.port, password="pa55wd")
        with pytest.raises(AssertionError, match="vncdo"):
            vncdo(guest.port, "capture", str(tmp_path / "refused.png"), password="wrong")
        capture = tmp_path / "capture.png"
        vncdo(guest.port, "capture", str(capture), password="pa55wd", zrle=True)
        assert (png(capture) == rgb(screen)).all()
        assert guest.stop() == 0
        assert (png(capture) == png(guest.screendump)).all()
    finally:
        guest.session.close()
