"""The two accelerators a scenario runs on, and what each cannot run here, for tests parametrised over them.

    ACCELS                         ("kvm", "software"): the values of `main.py run --accel` and MachineConfig.accel
    require_accel(accel)           skip, saying why, when this host cannot run `accel` at all
    require_guest(accel, name)     the same, and skip a small guest (tests/guests/) kvm_pvm cannot run
    require_hardware_kvm(accel)    for stock Linux kernels, which kvm_pvm cannot run at a usable speed
    run_guest(name, accel, ...)    a small guest under `main.py run`: (exit status, serial lines, stderr)

KVM on this build host is kvm_pvm, a software implementation of the KVM API (core/hypervisor/hostcaps.py): the
small guests run on it except those in PVM_CANNOT, which run where /dev/kvm is hardware virtualization.
"""
from __future__ import annotations

import pytest

from core.hypervisor.hostcaps import is_kvm_pvm, kvm_status
from tests.guests.build import guest_path
from tests.helpers.runner import run_vireo

ACCELS = ("kvm", "software")

# Checked on this host with `qemu-system-x86_64 -accel kvm`, which fails at the same instruction.
PVM_CANNOT = {
    "pmode32": "kvm_pvm faults (#GP) on enabling 32-bit paging and cannot emulate protected-mode IRET",
    "long64": "kvm_pvm returns from a non-PVM guest's SYSCALL so that the handler's port I/O faults (#GP)",
}


def require_accel(accel: str) -> None:
    """Skip unless this host can run `accel`: /dev/kvm usable for kvm, the unicorn module for software."""
    if accel == "kvm":
        status = kvm_status()
        if not status.usable:
            pytest.skip(f"KVM not usable here: {status.reason}")
    elif accel == "software":
        pytest.importorskip("unicorn")
    else:
        raise ValueError(f"unknown accelerator {accel!r}; use one of {', '.join(ACCELS)}")


def require_guest(accel: str, name: str) -> None:
    """require_accel, and skip a guest this host's kvm_pvm cannot run (PVM_CANNOT says why)."""
    require_accel(accel)
    if accel == "kvm" and name in PVM_CANNOT and is_kvm_pvm():
        pytest.skip(f"{PVM_CANNOT[name]} (this host's /dev/kvm is kvm_pvm; hardware KVM runs it)")


def require_hardware_kvm(accel: str) -> None:
    """require_accel, and for kvm hardware virtualization: kvm_pvm cannot run a stock Linux kernel."""
    require_accel(accel)
    if accel == "kvm":
        status = kvm_status()
        if not status.hardware:
            pytest.skip(f"needs hardware KVM: {status.reason}")


def lines(stdout: str) -> list[str]:
    """The non-empty lines of a guest's serial output."""
    return [line for line in stdout.replace("\r\n", "\n").split("\n") if line]


def run_guest(name: str, accel: str, *extra: str, timeout: float = 30) -> tuple[int, list[str], str]:
    """Run the small guest `name` with `main.py run --accel ACCEL --serial stdio`; the runner's --timeout is
    `timeout`, the harness's guard 30 s more."""
    code, out, err = run_vireo(["--kernel", str(guest_path(name)), "--accel", accel, "--serial", "stdio",
                                "--timeout", str(timeout), *extra], timeout=timeout + 30)
    return code, lines(out), err
