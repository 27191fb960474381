"""Differential test of the software CPU (issue 3's done-means): our small guests (tests/guests/) must print the
same serial output under `--accel software` as under `--accel kvm`. Where this host's KVM cannot run a guest
(kvm_pvm, see tests/helpers/accel.py PVM_CANNOT) the reference is QEMU's TCG running the same image.

Also the endings a real PC has: a guest looping with interrupts off (busy, or in HLT) hangs until the runner's
--timeout (exit status 1); and the process exits cleanly while software VMs run. (A triple fault that crashes one
VM while the process goes on to run another is in tests/accel/test_guests.py, for both accelerators.)
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.hypervisor.hostcaps import is_kvm_pvm, kvm_status
from tests.guests.build import GUESTS, HERE, LINKER_SCRIPT, guest_path
from tests.helpers.accel import PVM_CANNOT, lines, run_guest
from tests.helpers.runner import run_vireo

pytest.importorskip("unicorn")

QEMU = shutil.which("qemu-system-x86_64")


def reference(name: str, cpus: int) -> tuple[str, list[str]]:
    """(where from, serial lines) of the guest on the reference: KVM if it can run it here, else QEMU's TCG."""
    status = kvm_status()
    if status.usable and not (name in PVM_CANNOT and is_kvm_pvm()):
        _, out, err = run_guest(name, "kvm", "--memory", "64", "--cpus", str(cpus))
        return "kvm", out
    if QEMU is None:
        pytest.skip(f"no reference for {name}: KVM unusable ({status.reason}) and qemu-system-x86_64 missing")
    proc = subprocess.run([QEMU, "-accel", "tcg", "-nodefaults", "-display", "none", "-serial", "stdio", "-m", "64",
                           "-smp", str(cpus), "-no-reboot", "-kernel", str(guest_path(name))],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return "qemu-tcg", lines(proc.stdout.decode(errors="replace"))


@pytest.mark.parametrize("name, cpus", [("realmode", 1), ("pmode32", 1), ("long64", 1), ("apictimer", 1),
                                        ("reboot", 1), ("smp", 2), ("triplefault", 1)])
def test_same_serial_output_as_the_reference(name: str, cpus: int) -> None:
    code, out, err = run_guest(name, "software", "--memory", "64", "--cpus", str(cpus))
    where, ref = reference(name, cpus)
    if name == "smp":                       # the APs print in whatever order they come up
        out, ref = out[:1] + sorted(out[1:-1]) + out[-1:], ref[:1] + sorted(ref[1:-1]) + ref[-1:]
    assert out == ref, f"software: {out}\n{where}: {ref}\n{err}"
    if GUESTS[name].expected:
        assert out == list(GUESTS[name].expected)
    if name == "triplefault":
        assert code == 1 and re.search(r"crashed: .*triple fault", err), err
    else:
        assert code == 0, err


HANG_GUEST = r"""
        .include "mbheader.inc"
        .code32
        .globl _start
_start: mov $msg, %esi
1:      lodsb                           # COM1, polled: wait for THR empty, then write
        test %al, %al
        jz 3f
        mov %al, %bl
        mov $0x3FD, %dx
2:      in %dx, %al
        test $0x20, %al
        jz 2b
        mov $0x3F8, %dx
        mov %bl, %al
        out %al, %dx
        jmp 1b
3:      cli
        {ending}
msg:    .asciz "hang: interrupts off\n"
"""


def build_hang_guest(tmp_path: Path, ending: str) -> Path:
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("GNU as/ld (binutils) not installed")
    src, obj, elf = tmp_path / "hang.s", tmp_path / "hang.o", tmp_path / "hang.elf"
    src.write_text(HANG_GUEST.replace("{ending}", ending))
    subprocess.run(["as", "--32", "-I", str(HERE), "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_i386", "--no-warn-rwx-segments", "-T", str(LINKER_SCRIPT), "-o", str(elf),
                    str(obj)], check=True, capture_output=True)
    return elf


@pytest.mark.parametrize("ending", ["4: jmp 4b", "4: hlt\n jmp 4b"])
def test_interrupts_off_loop_hangs_until_the_timeout(tmp_path: Path, ending: str) -> None:
    kernel = build_hang_guest(tmp_path, ending)
    code, out, err = run_vireo(["--kernel", str(kernel), "--accel", "software", "--serial", "stdio",
                                "--memory", "32", "--timeout", "2"], timeout=30)
    assert "hang: interrupts off" in out
    assert code == 1 and "timeout" in err, err


EXIT_WHILE_RUNNING = """
import faulthandler, sys, time
faulthandler.enable()
sys.path.insert(0, {root!r})
from core.machine import Machine, MachineConfig
machines = [Machine(MachineConfig(kernel={kernel!r}, accel="software", memory_mib=32, cpus=cpus)) for cpus in (1, 2)]
for m in machines:
    m.start()
time.sleep(0.5)
print("exiting with the VMs running", flush=True)
"""


def _exit_while_running(kernel: Path) -> subprocess.CompletedProcess:
    from tests.helpers.runner import REPO_ROOT
    script = EXIT_WHILE_RUNNING.format(root=str(REPO_ROOT), kernel=str(kernel))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, text=True)


def test_process_exits_cleanly_while_software_vms_run(tmp_path: Path) -> None:
    """Interpreter exit with vCPU threads inside emulation (and faulthandler on, as under pytest): the backend
    stops them before unicorn's finalizers free the engine, so the process exits with status 0."""
    kernel = build_hang_guest(tmp_path, "4: incl counter\n jmp 4b\n counter: .long 0")
    proc = _exit_while_running(kernel)      # without the backend's exit hook: SIGSEGV in nearly every run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exiting with the VMs running" in proc.stdout
