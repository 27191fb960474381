"""QEMU as the reference PC: run `qemu-system-x86_64` with SeaBIOS on a boot medium and watch what it shows.

The firmware tests (issue 12) prove each boot medium under QEMU first, so Vireo's own tests and
bench/firmware_boot.py only swap the machine. A QemuMachine has:
  - the serial port COM1 on QEMU's stdio: expect() waits for a string or regex in what the guest wrote since the
    previous match, send() types into it;
  - the human monitor (HMP, QEMU's docs/system/monitor.rst) on a Unix socket: sendkey() presses keys on the PS/2
    keyboard, text_screen() reads the VGA text buffer (80x25 cells of character + attribute at 0xB8000, read with
    `pmemsave`), screendump() returns the display as an RGB image (PPM P6, read with Pillow);
  - wait_exit(): the guest powered off (-no-reboot also ends QEMU on a reset).
Only -nodefaults devices are present, plus the standard VGA (Bochs VBE, PCI 1234:1111), so SeaBIOS tries no
network boot ROM.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

QEMU = "qemu-system-x86_64"
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
TEXT_COLUMNS, TEXT_ROWS = 80, 25
TEXT_BUFFER = 0xB8000


def qemu_binary() -> str | None:
    """Path of qemu-system-x86_64, or None when it is not installed (Debian package qemu-system-x86)."""
    return shutil.which(QEMU)


class QemuError(RuntimeError):
    """QEMU could not start, or the monitor did not answer."""


class QemuMachine:
    """A running qemu-system-x86_64 (TCG unless `accel` says kvm) booting through SeaBIOS.

    `drives` are QEMU arguments describing the media (e.g. ["-cdrom", iso] or ["-drive", "file=d.raw,..."]).
    Use as a context manager: on exit QEMU is killed if still running and its temporary directory removed.
    """

    def __init__(self, drives: list[str], *, memory_mib: int = 512, accel: str = "tcg",
                 firmware: Path = SEABIOS, extra: list[str] | None = None) -> None:
        binary = qemu_binary()
        if binary is None:
            raise QemuError(f"{QEMU} not found: install Debian's qemu-system-x86")
        self._dir = Path(tempfile.mkdtemp(prefix="vireo-qemu-"))
        self._monitor_path = self._dir / "monitor.sock"
        self.started = time.monotonic()
        self.command = [binary, "-accel", accel, "-M", "pc", "-m", str(memory_mib), "-bios", str(firmware),
                        "-nodefaults", "-vga", "std", "-display", "none", "-no-reboot",
                        "-serial", "stdio", "-monitor", f"unix:{self._monitor_path},server=on,wait=off",
                        *drives, *(extra or [])]
        self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self._out = bytearray()
        self._err = bytearray()
        self._mark = 0
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._pump, args=(self._proc.stdout, self._out), daemon=True),
                         threading.Thread(target=self._pump, args=(self._proc.stderr, self._err), daemon=True)]
        for t in self._readers:
            t.start()
        self._monitor: socket.socket | None = None

    # ---- serial console -------------------------------------------------------------------------------------
    def _pump(self, stream, sink: bytearray) -> None:
        while True:
            chunk = stream.read1(65536)
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                sink += chunk
                self._cond.notify_all()

    @property
    def output(self) -> str:
        """Everything the guest wrote to the serial port so far."""
        with self._cond:
            return self._out.decode("utf-8", errors="replace")

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until `pattern` (plain text or a compiled regex) appears in the serial output after the previous
        match; return the match. Raises TimeoutError showing the recent output.
        """
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                # Latin-1 maps each byte to one character, so a match's end is also its byte offset.
                text = self._out.decode("latin-1")
                match = regex.search(text, self._mark)
                if match:
                    self._mark = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or (self._proc.poll() is not None and not any(t.is_alive() for t in self._readers)):
                    status = "timed out" if left <= 0 else f"QEMU exited ({self._proc.returncode})"
                    raise TimeoutError(f"{status} waiting for {regex.pattern!r} after {timeout} s; serial tail:\n"
                                       f"{text[-3000:]}\nQEMU stderr: {self._err.decode(errors='replace')[-1000:]}")
                self._cond.wait(min(left, 0.5))

    def send(self, text: str | bytes) -> None:
        """Type `text` into the serial port (as bytes; "\\r" is Enter for boot loaders)."""
        data = text.encode() if isinstance(text, str) else text
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)
        self._proc.stdin.flush()

    # ---- monitor --------------------------------------------------------------------------------------------
    def monitor(self, command: str, timeout: float = 20) -> str:
        """Run one HMP command and return its reply (the text before the next "(qemu) " prompt)."""
        if self._monitor is None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.connect(str(self._monitor_path))
                    break
                except OSError as exc:
                    sock.close()
                    if time.monotonic() > deadline or self._proc.poll() is not None:
                        raise QemuError(f"QEMU monitor {self._monitor_path} did not open: {exc}") from exc
                    time.sleep(0.05)
            sock.settimeout(timeout)
            self._monitor = sock
            self._read_prompt()
        self._monitor.sendall(command.encode() + b"\n")
        reply = self._read_prompt()
        # The monitor echoes the command line (with terminal escapes) before the reply.
        lines = reply.replace("\r", "").split("\n")
        return "\n".join(lines[1:]).strip()

    def _read_prompt(self) -> str:
        assert self._monitor is not None
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = self._monitor.recv(65536)
            if not chunk:
                raise QemuError("QEMU monitor closed")
            buf += chunk
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", buf[:-len(b"(qemu) ")].decode(errors="replace"))

    def sendkey(self, key: str) -> None:
        """Press and release a key on the PS/2 keyboard, by QEMU's name ("ret", "down", "esc", "ctrl-alt-delete")."""
        self.monitor(f"sendkey {key}")

    def text_screen(self) -> list[str]:
        """The VGA text screen as 25 lines of 80 characters (code page 437 decoded), read from the text buffer.

        Only meaningful while the VGA is in a text mode (the BIOS, GRUB's console, ISOLINUX, memtest86+).
        """
        dump = self._dir / "text.bin"
        self.monitor(f"pmemsave {TEXT_BUFFER:#x} {TEXT_COLUMNS * TEXT_ROWS * 2} \"{dump}\"")
        cells = dump.read_bytes()
        chars = bytes(cells[0::2]).decode("cp437")
        return [chars[r * TEXT_COLUMNS:(r + 1) * TEXT_COLUMNS] for r in range(TEXT_ROWS)]

    def screendump(self) -> Image.Image:
        """The display as QEMU renders it (text or graphics mode), as an RGB Pillow image."""
        path = self._dir / "screen.ppm"
        self.monitor(f"screendump \"{path}\"")
        with Image.open(path) as img:
            return img.convert("RGB")

    def wait_for_screen(self, pattern: str | re.Pattern[str], timeout: float) -> list[str]:
        """Poll the VGA text screen until a line contains `pattern` (a string or regex); return the screen.

        Raises TimeoutError showing the last screen.
        """
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text_screen()
            if any((pattern in line) if isinstance(pattern, str) else pattern.search(line) for line in screen):
                return screen
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise TimeoutError(f"{pattern!r} not on the VGA text screen after {timeout} s; screen:\n"
                                   + "\n".join(line.rstrip() for line in screen))
            time.sleep(0.25)

    # ---- life cycle -----------------------------------------------------------------------------------------
    def wait_exit(self, timeout: float) -> int:
        """Wait for the guest to power off (QEMU exits); return QEMU's exit status."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"QEMU still running after {timeout} s; serial tail:\n{self.output[-3000:]}") from exc

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def elapsed(self) -> float:
        """Seconds since QEMU was started."""
        return time.monotonic() - self.started

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for t in self._readers:
            t.join(timeout=2)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> QemuMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

