"""The test guests under QEMU (TCG): their expected output is what a reference PC emulator prints, including for
the guests this build host's kvm_pvm cannot run (tests/accel/test_guests.py skips those here). QEMU's own firmware
and ACPI tables are used, so this also checks the guests' RSDP/FADT/\\_S5 walk against tables we did not write.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.guests.build import GUESTS, guest_path

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed (Debian qemu-system-x86)")


def run_qemu(name: str, *extra: str, reboot: bool = False, timeout: float = 60,
             accel: str = "tcg") -> tuple[int, list[str]]:
    cmd = [QEMU, "-accel", accel, "-nodefaults", "-display", "none", "-serial", "stdio", "-m", "128",
           "-kernel", str(guest_path(name)), *extra]
    if not reboot:
        cmd.append("-no-reboot")
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    out = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
    return proc.returncode, [line for line in out.split("\n") if line]


@pytest.mark.parametrize("name", ["realmode", "pmode32", "long64", "apictimer", "triplefault"])
def test_expected_output(name: str) -> None:
    code, out = run_qemu(name)
    assert out == list(GUESTS[name].expected)
    assert code == 0


def test_reboot_guest() -> None:
    code, out = run_qemu("reboot", reboot=True)
    assert out == list(GUESTS["reboot"].expected)
    assert code == 0


def test_smp_guest() -> None:
    code, out = run_qemu("smp", "-smp", "3")
    assert out[0] == "smp: BSP has APIC ID 0, the MADT lists 3 CPUs"
    assert sorted(out[1:-1]) == ["smp: AP with APIC ID 1 online", "smp: AP with APIC ID 2 online"]
    assert out[-1] == "smp: all 3 CPUs online"
    assert code == 0


def test_smpstress_guest_under_round_robin_tcg() -> None:
    """The SMP stress guest's own checks hold on QEMU's single-threaded TCG (one vCPU at a time), as they must on
    any correct x86. (Under `-accel tcg,thread=multi` QEMU 7.2 passes the locked counters but an AP runs stale
    code after it has seen the patch and executed CPUID, in tens of the 100 patches: not asserted here.)"""
    code, out = run_qemu("smpstress", "-smp", "2", accel="tcg,thread=single")
    assert out[-6:] == [*(f"smpstress: {what}: counter 200000, expected 200000"
                          for what in ("lock xadd", "lock cmpxchg", "lock cmpxchg8b", "xchg spinlock")),
                        "smpstress: cross-modifying code: 100 patches, stale code seen after serializing: 0",
                        "smpstress: done"]
    assert code == 0


def test_mbinfo_guest_command_line() -> None:
    code, out = run_qemu("mbinfo", "-append", "a=1 b")
    assert out[0] == "mbinfo: multiboot magic ok"
    assert out[1].startswith("mbinfo: mem_upper=")
    assert out[2].endswith(' a=1 b"')    # QEMU puts the kernel's path first, as GRUB does
    assert code == 0
