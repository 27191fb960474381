"""Builds the small test guests in this directory with GNU as/ld into tests/guests/build/ (gitignored).

Each guest is either a Multiboot v1 ELF32 kernel (Multiboot 0.6.96; runs with `main.py run --kernel`, or under
QEMU's -kernel) or a raw real-mode image with a load address and an entry CpuState. Builds happen on demand and
are cached by modification time (an output newer than every input is reused); a file lock keeps concurrent test
processes from building the same thing at once, and outputs are replaced atomically.

    python tests/guests/build.py [NAME ...]      # build (all by default) and print the paths
    from tests.guests.build import guest_path    # in tests: guest_path("pmode32") -> Path
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / "build"
LINKER_SCRIPT = HERE / "multiboot.ld"
INCLUDES = ("mbheader.inc", "common32.inc", "common64.inc", "longmode.inc")


@dataclass(frozen=True)
class Guest:
    name: str
    source: str
    kind: str                      # "multiboot" or "raw16"
    bits: int = 32                 # assembler mode of the object: 64-bit code needs an ELF64 object
    load_addr: int = 0             # raw images: where to load them (and CS:IP = 0:load_addr)
    after: tuple[str, ...] = ()    # guests whose outputs this one includes (.incbin)
    description: str = ""
    expected: tuple[str, ...] = field(default=())   # lines the guest prints, in order, when all goes well
    default_script: bool = False   # link with ld's own script (-Ttext) instead of multiboot.ld

    @property
    def output(self) -> Path:
        return BUILD_DIR / (f"{self.name}.bin" if self.kind == "raw16" else f"{self.name}.elf")


GUESTS: dict[str, Guest] = {g.name: g for g in (
    Guest("realmode16", "realmode16.s", "raw16", load_addr=0x7C00,
          description="(a) real mode: serial output, 8259A + 8254, IRQ 0 through the IVT, raw image at 0x7C00",
          expected=("realmode: hello from real mode", "realmode: 5 PIT interrupts through the IVT")),
    Guest("realmode", "realmode_mb.s", "multiboot", after=("realmode16",),
          description="(a) the same real-mode guest behind a Multiboot wrapper that drops to real mode",
          expected=("realmode: hello from real mode", "realmode: 5 PIT interrupts through the IVT")),
    Guest("pmode32", "pmode32.s", "multiboot",
          description="(b) 32-bit protected mode: GDT/IDT/TSS, paging, ring 3, int 0x80, #PF",
          expected=("pmode32: protected mode, GDT, IDT and TSS loaded",
                    "pmode32: paging enabled",
                    "pmode32: int 0x80 from ring 3: hello from user mode",
                    "pmode32: page fault, error code 0x00000006, cr2 0x00400000, from ring 3")),
    Guest("reboot_ldhdr", "reboot.s", "multiboot", default_script=True,
          description="the reboot guest linked by ld's default script at 1 MiB: its first PT_LOAD holds only the ELF "
                      "headers, at 0xff000 (as hobby-OS kernels are; QEMU's -kernel boots them)",
          expected=("reboot: boot 1", "reboot: resetting through the keyboard controller",
                    "reboot: boot 2", "reboot: resetting through port 0xCF9",
                    "reboot: boot 3", "reboot: done, powering off")),
    Guest("long64", "long64.s", "multiboot", bits=64,
          description="(c) 64-bit long mode: IST, SYSCALL/SYSRET, #PF from ring 3",
          expected=("long64: 64-bit mode",
                    "long64: TSS with IST1, IDT and SYSCALL ready",
                    "long64: syscall: hello from ring 3",
                    "long64: syscall: back in ring 3 after SYSRET",
                    "long64: page fault, error code 0x0000000000000006, cr2 0x0000000100000000, from ring 3, "
                    "on the IST1 stack")),
    Guest("mbinfo", "mbinfo.s", "multiboot",
          description="(d) Multiboot information: mem_upper, memory size, command line"),
    Guest("smp", "smp.s", "multiboot",
          description="(e) SMP: MADT CPU count, INIT-SIPI-SIPI, every CPU prints its APIC ID"),
    Guest("smpstress", "smpstress.s", "multiboot",
          description="(i) SMP stress: lock xadd / lock cmpxchg / lock cmpxchg8b / xchg-spinlock counters on "
                      "every CPU at once, checked by the BSP; code rewritten by the BSP while the APs run it"),
    Guest("reboot", "reboot.s", "multiboot",
          description="(f) reboot via the i8042, then via port 0xCF9, then power off (boot count in RAM)",
          expected=("reboot: boot 1", "reboot: resetting through the keyboard controller",
                    "reboot: boot 2", "reboot: resetting through port 0xCF9",
                    "reboot: boot 3", "reboot: done, powering off")),
    Guest("triplefault", "triplefault.s", "multiboot", bits=64,
          description="(g) 64-bit mode, empty IDT + ud2: triple fault",
          expected=("triplefault: loading an empty IDT, then ud2",)),
    Guest("apictimer", "apictimer.s", "multiboot", bits=64,
          description="(h) 64-bit mode, periodic local APIC timer, ten interrupts",
          expected=("apictimer: periodic LAPIC timer started", "apictimer: 10 LAPIC timer interrupts")),
    Guest("bench_exits", "bench_exits.s", "multiboot",
          description="bench/exits.py: N port writes/reads and MMIO reads/writes between marker lines"),
    Guest("counter", "counter.s", "multiboot", bits=64,
          description="prints 'counter: N' every 100 ms (PIT IRQ 0) until powered off: the save/restore guest"),
    Guest("serialecho", "serialecho.s", "multiboot",
          description="echoes COM1 input and prints an RTC tick a second until powered off (a quick running VM)"),
)}


class GuestBuildError(RuntimeError):
    """The toolchain is missing or a guest failed to assemble/link (message carries the tool's output)."""


def _run(cmd: list[str]) -> None:
    tool = shutil.which(cmd[0])
    if tool is None:
        raise GuestBuildError(f"{cmd[0]} not found: install GNU binutils (Debian package binutils)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def _inputs(guest: Guest) -> list[Path]:
    paths = [HERE / guest.source, LINKER_SCRIPT, Path(__file__).resolve()]
    paths += [HERE / inc for inc in INCLUDES]
    paths += [GUESTS[dep].output for dep in guest.after]
    return paths


def _up_to_date(guest: Guest) -> bool:
    out = guest.output
    if not out.exists():
        return False
    newest_input = max(p.stat().st_mtime_ns for p in _inputs(guest) if p.exists())
    return out.stat().st_mtime_ns >= newest_input


def _build_one(guest: Guest) -> None:
    obj = BUILD_DIR / f"{guest.name}.o.tmp"
    tmp = guest.output.with_name(guest.output.name + ".tmp")
    arch = ["--64"] if guest.bits == 64 else ["--32"]
    _run(["as", *arch, "-I", str(HERE), "-I", str(BUILD_DIR), "-o", str(obj), str(HERE / guest.source)])
    try:
        if guest.kind == "raw16":
            _run(["ld", "-m", "elf_i386", "-Ttext", hex(guest.load_addr), "-e", "_start", "--oformat", "binary",
                  "-o", str(tmp), str(obj)])
        elif guest.bits == 64:
            # Multiboot v1 loaders take ELF32: link as ELF64 (64-bit relocations), then re-wrap the same bytes.
            tmp64 = tmp.with_name(tmp.name + "64")
            _run(["ld", "-m", "elf_x86_64", "-z", "max-page-size=0x1000", "--no-warn-rwx-segments",
                  "-T", str(LINKER_SCRIPT), "-o", str(tmp64), str(obj)])
            _run(["objcopy", "-O", "elf32-i386", str(tmp64), str(tmp)])
            tmp64.unlink()
        elif guest.default_script:
            # .text.* sections keep their input order at the start of ld's .text: the Multiboot header stays
            # in the first 8 KiB, and ld maps the ELF headers in a PT_LOAD of their own just below -Ttext.
            _run(["objcopy", "--rename-section", ".multiboot=.text.multiboot", str(obj)])
            _run(["ld", "-m", "elf_i386", "--no-warn-rwx-segments", "-Ttext=0x100000", "-e", "_start",
                  "-o", str(tmp), str(obj)])
        else:
            _run(["ld", "-m", "elf_i386", "--no-warn-rwx-segments", "-T", str(LINKER_SCRIPT),
                  "-o", str(tmp), str(obj)])
        os.replace(tmp, guest.output)
    finally:
        obj.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def build(names: list[str] | None = None) -> dict[str, Path]:
    """Build the named guests (all by default) and the guests they depend on; return name -> output path."""
    wanted = list(GUESTS) if not names else list(names)
    for name in wanted:
        if name not in GUESTS:
            raise KeyError(f"no guest named {name!r} (have: {', '.join(GUESTS)})")
    BUILD_DIR.mkdir(exist_ok=True)
    order: list[str] = []

    def visit(name: str) -> None:
        for dep in GUESTS[name].after:
            visit(dep)
        if name not in order:
            order.append(name)

    for name in wanted:
        visit(name)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in order:
            if not _up_to_date(GUESTS[name]):
                _build_one(GUESTS[name])
    return {name: GUESTS[name].output for name in wanted}


def guest_path(name: str) -> Path:
    """The built image of one guest (building it first if needed)."""
    return build([name])[name]


def main(argv: list[str]) -> int:
    try:
        for name, path in build(argv or None).items():
            print(f"{name:12} {path}")
    except (GuestBuildError, KeyError) as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
