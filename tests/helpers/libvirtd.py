"""A private libvirtd for the libvirt tests: Debian's libvirtd (libvirt-daemon + libvirt-daemon-driver-qemu) in
session mode, started by the test without systemd, with its own XDG directories and socket, and one TCG domain
that boots the tests' kernel and initramfs directly (<os><kernel>/<initrd>/<cmdline>) with VNC graphics.

Session mode as root: libvirtd is privileged (qemu:///system, /run/libvirt, /var/lib/libvirt) whenever its uid is 0
(libvirt's docs, "Connection URIs" and "libvirtd"), so the test runs it as `nobody` (setpriv) with HOME and
XDG_{CONFIG,CACHE,RUNTIME}_DIR in a private directory: an unprivileged daemon serves qemu:///session, its
sockets in $XDG_RUNTIME_DIR/libvirt. Clients reach it as qemu:///session?socket=PATH (the remote driver's
`socket` parameter): a root client's plain qemu:///session is the system daemon's socket. Run as an ordinary
user, the test's daemon keeps that user.

One daemon per test session (a pytest session fixture): a test process holds one libvirt event loop, and the
daemon's domains are destroyed and the daemon stopped when the session ends.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from core.host.libvirt_loop import libvirt_module
from tests.helpers.runner import in_ci

DOMAIN = "vireo-tcg"
SHELL_CMDLINE = "console=ttyS0 quiet vireo.action=shell vireo.console=tty1 vt.global_cursor_default=0"


def _need(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_libvirt() -> None:
    """libvirt-python and Debian's libvirtd, or skip (fail under CI=true) saying how to install them."""
    try:
        import libvirt  # noqa: F401
    except ImportError:
        _need("libvirt-python is not installed: ./run-tests installs it (requirements-libvirt.txt)")
    if not shutil.which("libvirtd", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        _need("libvirtd not found: apt-get install libvirt-daemon libvirt-daemon-driver-qemu")
    if not shutil.which("qemu-system-x86_64"):
        _need("qemu-system-x86_64 not found: apt-get install qemu-system-x86")


class PrivateLibvirtd:
    def __init__(self, kernel: Path, initrd: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vireo-libvirtd-"))
        self.root.chmod(0o755)
        self.runtime = self.root / "runtime"
        dirs = {"HOME": self.root / "home", "XDG_CONFIG_HOME": self.root / "config",
                "XDG_CACHE_HOME": self.root / "cache", "XDG_RUNTIME_DIR": self.runtime}
        for d in dirs.values():
            d.mkdir(mode=0o700)
        # QEMU runs as the daemon's user: it reads copies it owns, not the fixtures under a root-only path.
        self.kernel = dirs["HOME"] / "vmlinuz"
        self.initrd = dirs["HOME"] / "initramfs.cpio.gz"
        shutil.copyfile(kernel, self.kernel)
        shutil.copyfile(initrd, self.initrd)
        # A test process that dies without its teardown (a crash) takes the daemon with it.
        as_user = ["setpriv", "--pdeathsig=TERM"]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            as_user += [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **{k: str(v) for k, v in dirs.items()}}
        self.log = self.root / "libvirtd.log"
        with open(self.log, "wb") as log:
            # --timeout 0: a session daemon otherwise exits after 120 s without clients.
            self.proc = subprocess.Popen([*as_user, "libvirtd", "--timeout", "0"], env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.socket = self.runtime / "libvirt" / "libvirt-sock"
        self.uri = f"qemu:///session?socket={self.socket}"
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"libvirtd did not start: {self.log.read_text(errors='replace')[-2000:]}",
                            pytrace=False)
            time.sleep(0.1)

    def domain_xml(self, name: str = DOMAIN, cmdline: str = SHELL_CMDLINE) -> str:
        return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.kernel}</kernel>
    <initrd>{self.initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{shutil.which('qemu-system-x86_64')}</emulator>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video><model type='vga'/></video>
  </devices>
</domain>"""

    def define(self, name: str = DOMAIN) -> None:
        """Define the test domain through the test's own libvirt-python connection (creating domains is not
        Vireo's job)."""
        libvirt = libvirt_module()      # the process's event loop first, as for Vireo's own connections
        conn = libvirt.open(self.uri)
        try:
            conn.defineXML(self.domain_xml(name))
        finally:
            conn.close()

    def destroy_running(self) -> None:
        """Pull the plug on every running domain: what a test left running must not fail the next one."""
        if self.proc.poll() is None and self.socket.exists():
            try:
                libvirt = libvirt_module()
                conn = libvirt.open(self.uri)
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    dom.destroy()
                conn.close()
            except Exception:
                pass

    def stop(self) -> None:
        """Destroy every running domain (session domains outlive their daemon), then stop the daemon."""
        self.destroy_running()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


STDVGA_ROM = Path("/usr/share/seabios/vgabios-stdvga.bin")      # QEMU's VGA BIOS for <model type='vga'/>
_LETTER_A = bytes.fromhex("000010386cc6c6fec6c6c6c600000000")    # 'A' in the IBM VGA 8x16 font


def vga_bios_glyphs() -> dict[bytes, str]:
    """The 8x16 text font of the domain's VGA BIOS (SeaVGABIOS, Debian's seabios), which the guest's text console
    draws with: cell bitmap (16x8 bools, as bytes) -> character. Found by its letter A, the table starting 0x41
    glyphs before it."""
    rom = STDVGA_ROM.read_bytes()
    at = rom.find(_LETTER_A)
    assert at >= 0x41 * 16, f"no 8x16 font in {STDVGA_ROM}"
    base = at - 0x41 * 16
    glyphs = {}
    for code in range(0x21, 0x7F):
        rows = np.frombuffer(rom[base + code * 16:base + code * 16 + 16], np.uint8)
        glyphs[np.unpackbits(rows[:, None], axis=1).astype(bool).tobytes()] = chr(code)
    return glyphs


def text_lines(frame, glyphs: dict[bytes, str]) -> list[str]:
    """The text of a 720x400 text-mode frame as QEMU's VGA shows it through VNC (9x16 cells; any non-black pixel
    is ink, whatever the palette's exact grey); an unknown cell reads as '?'."""
    assert (frame.width, frame.height) == (720, 400), (frame.width, frame.height)
    ink = (frame.pixels & np.uint32(0xFFFFFF)) != 0
    lines = []
    for row in range(25):
        chars = []
        for col in range(80):
            cell = ink[row * 16:(row + 1) * 16, col * 9:col * 9 + 8]
            chars.append(" " if not cell.any() else glyphs.get(np.ascontiguousarray(cell).tobytes(), "?"))
        lines.append("".join(chars).rstrip())
    return lines
