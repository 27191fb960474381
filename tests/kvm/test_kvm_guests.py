"""Our own small guests (tests/guests/) under `main.py run --accel kvm`: serial output, port I/O, a PIT IRQ
through the IVT, protected and long mode with privilege changes and page faults, Multiboot memory size and
command line, SMP start-up, reboot, triple fault, the LAPIC timer, ACPI power-off read from the FADT.

This build host's /dev/kvm is kvm_pvm, which cannot run two of the guests (see PVM_CANNOT); those run where
/dev/kvm is hardware virtualization. tests/kvm/test_kvm_guests_qemu.py shows the same guests' output under QEMU.
"""
from __future__ import annotations

import os
import re
import threading

import pytest

from core.hypervisor.base import CpuState, Segment
from core.hypervisor.hostcaps import is_kvm_pvm, kvm_status
from tests.guests.build import GUESTS, guest_path
from tests.helpers.runner import run_vireo

_STATUS = kvm_status()
pytestmark = pytest.mark.skipif(not _STATUS.usable, reason=f"KVM not usable here: {_STATUS.reason}")

# Checked on this host with `qemu-system-x86_64 -accel kvm`, which fails at the same instruction.
PVM_CANNOT = {
    "pmode32": "kvm_pvm faults (#GP) on enabling 32-bit paging and cannot emulate protected-mode IRET",
    "long64": "kvm_pvm returns from a non-PVM guest's SYSCALL so that the handler's port I/O faults (#GP)",
}


def lines(stdout: str) -> list[str]:
    return [line for line in stdout.replace("\r\n", "\n").split("\n") if line]


def run_guest(name: str, *extra: str, timeout: float = 30) -> tuple[int, list[str], str]:
    code, out, err = run_vireo(["--kernel", str(guest_path(name)), "--accel", "kvm", "--serial", "stdio",
                                "--timeout", str(timeout), *extra], timeout=timeout + 30)
    return code, lines(out), err


def skip_on_pvm(name: str) -> None:
    if name in PVM_CANNOT and is_kvm_pvm():
        pytest.skip(f"{PVM_CANNOT[name]} (this host's /dev/kvm is kvm_pvm; hardware KVM runs it)")


@pytest.mark.parametrize("name", ["realmode", "pmode32", "long64", "apictimer"])
def test_guest_prints_expected_lines_and_powers_off(name: str) -> None:
    skip_on_pvm(name)
    code, out, err = run_guest(name)
    assert out == list(GUESTS[name].expected), err
    assert code == 0, err


def test_realmode_image_entered_at_0x7c00_with_a_real_mode_cpu_state() -> None:
    """The raw real-mode image, entered the way a boot sector is: CS:IP = 0000:7C00 (SDM vol. 3, 9.1.4)."""
    from core.machine import Machine, MachineConfig, MachineState

    raw = guest_path("realmode16").read_bytes()
    out = bytearray()
    done = threading.Event()
    # The Multiboot wrapper gives the machine its ACPI tables and devices; the CPU state below replaces its entry.
    m = Machine(MachineConfig(kernel=str(guest_path("realmode")), accel="kvm", memory_mib=32),
                serial_output=lambda data: (out.extend(data), done.set()))
    m.memory.write(GUESTS["realmode16"].load_addr, raw)
    state = CpuState()
    state.cs = Segment(selector=0, base=0, limit=0xFFFF, type=0xB)
    state.rip = GUESTS["realmode16"].load_addr
    state.idt.base, state.idt.limit = 0, 0x3FF
    m.vcpus[0].set_state(state)
    m.start()
    assert m.wait(30) == MachineState.SHUTOFF, (m.state, m.reason, out)
    assert lines(out.decode()) == list(GUESTS["realmode16"].expected)


@pytest.mark.parametrize("memory", [64, 256])
def test_multiboot_memory_size_and_command_line(memory: int) -> None:
    code, out, err = run_guest("mbinfo", "--memory", str(memory), "--append", "console=ttyS0 quiet x=1")
    assert code == 0, err
    assert out[0] == "mbinfo: multiboot magic ok"
    assert out[1] == f"mbinfo: mem_upper={memory * 1024 - 1024} KiB, memory={memory} MiB"
    assert out[2] == 'mbinfo: cmdline="console=ttyS0 quiet x=1"'


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp_every_cpu_reports_its_apic_id(cpus: int) -> None:
    code, out, err = run_guest("smp", "--cpus", str(cpus))
    assert code == 0, err
    assert out[0] == f"smp: BSP has APIC ID 0, the MADT lists {cpus} CPUs"
    ap_lines = sorted(out[1:-1])
    assert ap_lines == [f"smp: AP with APIC ID {i} online" for i in range(1, cpus)]
    assert out[-1] == f"smp: all {cpus} CPUs online"


@pytest.mark.parametrize("cpus", [1, 2])
def test_reboot_through_i8042_and_port_cf9_then_power_off(cpus: int) -> None:
    code, out, err = run_guest("reboot", "--cpus", str(cpus))
    assert out == list(GUESTS["reboot"].expected), err
    assert code == 0, err


def test_triple_fault_crashes_the_vm_not_the_runner() -> None:
    code, out, err = run_guest("triplefault")
    assert out == list(GUESTS["triplefault"].expected)
    assert code == 1
    assert re.search(r"triple fault", err), err


def test_triple_fault_leaves_the_process_able_to_run_another_vm() -> None:
    from core.machine import Machine, MachineConfig, MachineState

    crashed = Machine(MachineConfig(kernel=str(guest_path("triplefault")), accel="kvm", memory_mib=32))
    crashed.start()
    assert crashed.wait(30) == MachineState.CRASHED
    assert "triple fault" in crashed.reason
    out = bytearray()
    fine = Machine(MachineConfig(kernel=str(guest_path("mbinfo")), accel="kvm", memory_mib=32),
                   serial_output=out.extend)
    fine.start()
    assert fine.wait(30) == MachineState.SHUTOFF, fine.reason
    assert b"memory=32 MiB" in out


def test_kvm_pvm_limits_still_hold() -> None:
    """If kvm_pvm learns to run these guests, PVM_CANNOT should shrink: this notices."""
    if not is_kvm_pvm():
        pytest.skip("hardware KVM: nothing to check")
    for name in PVM_CANNOT:
        code, out, _ = run_guest(name)
        assert out != list(GUESTS[name].expected), f"{name} now runs on kvm_pvm: drop it from PVM_CANNOT"


def test_guest_build_is_cached() -> None:
    path = guest_path("mbinfo")
    before = os.stat(path).st_mtime_ns
    assert guest_path("mbinfo") == path
    assert os.stat(path).st_mtime_ns == before


def test_a_vcpu_runs_again_after_a_triple_fault_and_a_platform_reset() -> None:
    """KVM leaves a vCPU in shutdown after a triple fault; reset_platform() and a new entry state must bring it
    back, as a PC's reset does. Driven by hand (no Machine threads): the backend's part of a reboot."""
    from core.boot.loader import load_kernel
    from core.bus import MmioBus, PortIoBus
    from core.devices.serial import Uart16550
    from core.hypervisor.base import ExitReason
    from core.hypervisor.kvm import KvmAccelerator
    from core.irq import IrqLine
    from core.memory import GuestMemory
    from core.timers import TimerQueue

    kernel = str(guest_path("triplefault"))
    memory, pio, timers = GuestMemory(32 << 20), PortIoBus(), TimerQueue()
    accel = KvmAccelerator(memory, pio, MmioBus(), 2, timers)
    out = bytearray()
    Uart16550(IrqLine(accel, 4), out.extend).attach(pio)
    bsp, ap = accel.create_vcpu(0), accel.create_vcpu(1)
    try:
        for boot in range(1, 4):
            bsp.set_state(load_kernel(memory, kernel, None, "", 2).cpu_state)
            ap.reset_to_wait_for_sipi()
            ex = bsp.run()
            assert ex.reason == ExitReason.SHUTDOWN, ex.detail
            assert out.count(b"triplefault: loading an empty IDT") == boot
            accel.reset_platform()
    finally:
        accel.close()
        timers.stop()
        memory.close()
