"""Firmware boot, Vireo next to QEMU: the same ISOs, the same SeaBIOS (Debian's bios-256k.bin), side by side.

Each contender is a fresh process with its serial port on stdio (so interpreter and emulator start-up count):
  Vireo   `python main.py run --cdrom ISO --boot-menu-wait 0 --accel software|kvm --serial stdio`
  QEMU    `qemu-system-x86_64 -M pc -accel tcg|kvm -bios bios-256k.bin -cdrom ISO -serial stdio` (its boot menu is
          off by default, hence --boot-menu-wait 0 for Vireo)
Both boot loaders mirror their menus on COM1 and take keys from it, so every time below is an event on the serial
port, taken as the bytes arrive:
  menu      process start -> GRUB's menu (tests/fixtures/boot_media.py grub-linux.iso)
  linux     Enter at that menu -> the test initramfs's VIREO-BOOT-OK (GRUB reads kernel + initramfs from the CD,
            the kernel decompresses and boots)
  initrd    GRUB's echo before and after reading the Debian installer's 40 MB initrd.gz from the CD
            (debian-installer.iso), i.e. loading an installer-sized initrd through the BIOS's ATAPI driver
Vireo's modules are byte-compiled before the runs (compileall, into the tree's __pycache__), as an installed
Python program's are: with PYTHONDONTWRITEBYTECODE set, as on the build machine, every run would otherwise compile
Vireo's source again, which no installed Vireo does (QEMU is likewise measured as the compiled program it is);
--no-compile measures that uncompiled start instead.
Runs alternate (Vireo, QEMU, Vireo, ...) --repeat times; each metric reports its median, and the ratio
QEMU time / Vireo time (above 1: Vireo is faster). The accelerator pair is software CPU vs TCG here; --accel kvm
compares KVM with KVM on hardware that has it.

    .venv/bin/python bench/firmware_boot.py [--repeat 3] [--accel software|kvm]
"""
from __future__ import annotations

import argparse
import compileall
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures import boot_media as builder  # noqa: E402

MEDIA = builder.media_dir(REPO / "tests" / "fixtures" / "out")
SEABIOS = "/usr/share/seabios/bios-256k.bin"
BOOT_OK = "VIREO-BOOT-OK"


class SerialProcess:
    """A process whose stdout is a guest's serial port: wait for text, with the time it arrived."""

    def __init__(self, argv: list[str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=REPO)
        self.buf = bytearray()
        self.arrivals: list[tuple[int, float]] = []   # (buffer length after a read, when)
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            now = time.monotonic()
            with self.cond:
                if not data:
                    self.cond.notify_all()
                    return
                self.buf += data
                self.arrivals.append((len(self.buf), now))
                self.cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds since start when `text` was complete on the serial port."""
        pattern = re.compile(re.escape(text.encode()))
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = pattern.search(self.buf)
                if found:
                    at = next(t for n, t in self.arrivals if n >= found.end())
                    return at - self.started
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise TimeoutError(f"{text!r} not seen; tail: {bytes(self.buf[-400:])!r}")
                self.cond.wait(0.2)

    def send(self, data: bytes) -> float:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        return time.monotonic() - self.started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def vireo_argv(iso: Path, memory: int, accel: str) -> list[str]:
    return [sys.executable, "main.py", "run", "--cdrom", str(iso), "--memory", str(memory), "--accel", accel,
            "--boot-menu-wait", "0", "--serial", "stdio", "--firmware", SEABIOS]


def qemu_argv(iso: Path, memory: int, accel: str) -> list[str]:
    return ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg" if accel == "software" else "kvm",
            "-m", str(memory), "-bios", SEABIOS, "-nodefaults", "-vga", "std", "-display", "none",
            "-serial", "stdio", "-cdrom", str(iso)]


def byte_compile() -> None:
    """Vireo's own modules as an install leaves them: compiled to __pycache__ (the packages in .venv already
    are, by pip)."""
    for folder in ("core", "app"):
        compileall.compile_dir(REPO / folder, quiet=1)
    compileall.compile_file(REPO / "main.py", quiet=1)


def run_grub(argv: list[str]) -> dict[str, float]:
    p = SerialProcess(argv)
    try:
        menu = p.wait_for(builder.LINUX_TITLES[0], 120)
        enter = p.send(b"\r")
        ok = p.wait_for(BOOT_OK, 300)
        return {"menu": menu, "linux": ok - enter}
    finally:
        p.close()


def run_initrd(argv: list[str]) -> dict[str, float]:
    p = SerialProcess(argv)
    try:
        p.wait_for(builder.DI_TITLES[0], 120)
        p.send(b"\r")
        start = p.wait_for(builder.DI_INITRD_START, 120)
        done = p.wait_for(builder.DI_INITRD_DONE, 300)
        return {"initrd": done - start}
    finally:
        p.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--accel", default="software", choices=("software", "kvm"))
    ap.add_argument("--no-compile", action="store_true",
                    help="do not byte-compile Vireo's modules first (each run then compiles what it imports)")
    args = ap.parse_args()
    if not args.no_compile:
        byte_compile()
    grub_iso, di_iso = MEDIA / builder.GRUB_ISO, MEDIA / builder.DI_ISO
    for iso in (grub_iso, di_iso):
        if not iso.exists():
            print(f"bench: {iso} is missing: run tests/fixtures/build.py first", file=sys.stderr)
            return 2
    results: dict[str, dict[str, list[float]]] = {"vireo": {}, "qemu": {}}
    for i in range(args.repeat):
        for name, make in (("vireo", vireo_argv), ("qemu", qemu_argv)):
            got = run_grub(make(grub_iso, 512, args.accel))
            got.update(run_initrd(make(di_iso, 1024, args.accel)))
            for metric, value in got.items():
                results[name].setdefault(metric, []).append(value)
            print(f"run {i + 1} {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in got.items()), flush=True)
    qemu_name = "QEMU TCG" if args.accel == "software" else "QEMU KVM"
    print(f"\n| metric | Vireo ({args.accel}) | {qemu_name} | QEMU / Vireo |\n|---|---|---|---|")
    labels = {"menu": "power-on -> GRUB menu", "linux": "Enter -> Linux marker (ISO)",
              "initrd": "40 MB initrd from the CD"}
    for metric, label in labels.items():
        v = statistics.median(results["vireo"][metric])
        q = statistics.median(results["qemu"][metric])
        print(f"| {label} | {v:.2f} s | {q:.2f} s | {q / v:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
