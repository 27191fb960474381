"""VNC benchmark (issue 16): frames per second and bytes per frame of a changing 1024x768 console through Vireo's
RFB server (`main.py run --vnc`, core/vnc) next to QEMU's built-in one (`-vnc`), on the same guest, read by the
same client with the same encodings.

The guest: Debian's kernel and the tests' initramfs (tests/fixtures/build.py), `vireo.action=display` (bochs-drm,
fbcon on a 1024x768x32 framebuffer) then a shell on the serial port, which starts `yes TEXT > /dev/tty1`: fbcon
scrolls without pause, so every frame differs from the one before. Vireo and QEMU run one after the other (never
side by side on the 2 shared cores), on Vireo's software CPU and QEMU's TCG (--accel kvm for both on KVM; Vireo's KVM
backend stops on bochs-drm's framebuffer writes today, "instruction emulation failed").

The client is core/vnc/client.py in counting mode (it parses every message and skips the pixels): it asks for an
incremental update, reads it, asks again, for --seconds per run. That is what a viewer that keeps up does; a frame
is one FramebufferUpdate. Encodings: ZRLE and Raw, each listed with CopyRect and DesktopSize (the same list to
both servers; QEMU does not send CopyRect for this display, Vireo finds the scrolls).

Run: .venv/bin/python bench/vnc.py [--seconds 5] [--accel kvm|software]
Prints per encoding: frames/s, KiB/frame and KiB/s for each server, and the ratios Vireo/QEMU.
"""
from __future__ import annotations

import argparse
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.vnc.client import VncClient  # noqa: E402
from core.vnc.protocol import ENC_COPYRECT, ENC_DESKTOP_SIZE, ENC_RAW, ENC_ZRLE  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "out"
CMDLINE = "console=ttyS0 quiet vireo.action=display vireo.then=shell vt.global_cursor_default=0"
WORKLOAD = b"yes 'Vireo VNC benchmark: a line of text scrolling up the framebuffer console 0123456789' " \
           b"> /dev/tty1 &\n"
ENCODINGS = {"zrle": (ENC_ZRLE, ENC_COPYRECT, ENC_DESKTOP_SIZE), "raw": (ENC_RAW, ENC_COPYRECT, ENC_DESKTOP_SIZE)}
PROMPT = re.compile(rb"vireo:[^\n#]*# ")


def free_display() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 5900:
            return port - 5900


class Guest:
    """A VM process (Vireo's runner or QEMU) whose serial console is on stdin/stdout pipes."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.out = b""

    def expect(self, pattern: re.Pattern[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pattern.search(self.out):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"no {pattern.pattern!r} from {self.proc.args[0]}: {self.out[-800:]!r}")
            if select.select([self.proc.stdout], [], [], min(left, 0.5))[0]:
                self.out += os.read(self.proc.stdout.fileno(), 65536)

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def vireo_argv(kernel: Path, initrd: Path, accel: str, display: int) -> list[str]:
    return [sys.executable, "main.py", "run", "--kernel", str(kernel), "--initrd", str(initrd), "--accel", accel,
            "--memory", "256", "--append", CMDLINE, "--vnc", f"127.0.0.1:{display}"]


def qemu_argv(kernel: Path, initrd: Path, accel: str, display: int) -> list[str]:
    return ["qemu-system-x86_64", "-M", "pc", "-accel", "kvm" if accel == "kvm" else "tcg", "-m", "256",
            # Without EDID bochs-drm picks 1024x768, as on Vireo's adapter (QEMU's EDID offers 1280x800 first).
            "-vga", "none", "-device", "VGA,edid=off", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", CMDLINE,
            "-serial", "stdio", "-monitor", "none", "-vnc", f"127.0.0.1:{display}", "-nodefaults"]


def measure(port: int, encodings: tuple[int, ...], seconds: float) -> tuple[float, float]:
    """(frames/s, bytes/frame) of incremental updates of the 1024x768 screen."""
    client = VncClient.connect(("127.0.0.1", port), encodings=encodings, decode=False, timeout=30)
    try:
        client.request(incremental=False)
        while (client.width, client.height) != (1024, 768) or client.updates == 0:
            client.read_update()
            client.request()
        client.read_update()
        bytes0, frames, start = client.bytes_received, 0, time.monotonic()
        while time.monotonic() - start < seconds:
            client.request()
            client.read_update()
            frames += 1
        elapsed = time.monotonic() - start
        return frames / elapsed, (client.bytes_received - bytes0) / max(frames, 1)
    finally:
        client.close()


def run(name: str, argv: list[str], port: int, seconds: float) -> dict[str, tuple[float, float]]:
    guest = Guest(argv)
    try:
        guest.expect(re.compile(rb"VIREO-FB-MODE=1024x768"), 120)
        guest.expect(PROMPT, 60)
        guest.send(WORKLOAD)
        time.sleep(1.0)
        results = {enc: measure(port, codes, seconds) for enc, codes in ENCODINGS.items()}
    finally:
        guest.stop()
    for enc, (fps, per_frame) in results.items():
        print(f"  {name:6} {enc:5} {fps:8.1f} frames/s {per_frame / 1024:9.1f} KiB/frame "
              f"{fps * per_frame / 1024:9.0f} KiB/s", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per server and encoding")
    ap.add_argument("--accel", choices=("kvm", "software"),
                    default="software")
    args = ap.parse_args()
    kernel, initrd = FIXTURES / "vmlinuz-amd64", FIXTURES / "initramfs-amd64.cpio.gz"
    for path in (kernel, initrd):
        if not path.exists():
            print(f"bench/vnc.py: {path} is missing: build it with .venv/bin/python tests/fixtures/build.py")
            return 2
    print(f"1024x768 fbcon scrolling without pause; {args.seconds:g} s per run; Vireo {args.accel}, QEMU "
          f"{'kvm' if args.accel == 'kvm' else 'tcg'}")
    display = free_display()
    vireo = run("Vireo", vireo_argv(kernel, initrd, args.accel, display), 5900 + display, args.seconds)
    display = free_display()
    qemu = run("QEMU", qemu_argv(kernel, initrd, args.accel, display), 5900 + display, args.seconds)
    print(f"{'encoding':9} {'frames/s Vireo/QEMU':>20} {'bytes/frame Vireo/QEMU':>23} {'bytes/s Vireo/QEMU':>19}")
    for enc in ENCODINGS:
        (vf, vb), (qf, qb) = vireo[enc], qemu[enc]
        print(f"{enc:9} {vf / qf:20.2f} {vb / qb:23.2f} {vf * vb / (qf * qb):19.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
