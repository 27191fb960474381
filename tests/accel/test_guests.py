"""Our own small guests (tests/guests/) on both accelerators, KVM and the software CPU: serial output, port I/O,
a PIT IRQ through the IVT, protected and long mode with privilege changes and page faults, Multiboot memory size
and command line, SMP start-up, locked counters and cross-modifying code on every CPU at once, reboot, triple
fault, the LAPIC timer, ACPI power-off read from the FADT; and a vCPU that runs again after a triple fault and a
platform reset.

This build host's /dev/kvm is kvm_pvm, which cannot run two of the guests (tests/helpers/accel.py PVM_CANNOT);
those run where /dev/kvm is hardware virtualization. tests/kvm/test_kvm_guests_qemu.py shows the same guests'
output under QEMU, tests/software_cpu/test_software_differential.py compares the software CPU's output with KVM's.
"""
from __future__ import annotations

import os
import re
import threading

import pytest

from core.hypervisor.base import CpuState, Segment
from tests.guests.build import GUESTS, guest_path
from tests.helpers.accel import ACCELS, lines, require_guest, run_guest

per_accel = pytest.mark.parametrize("accel", ACCELS)


@per_accel
@pytest.mark.parametrize("name", ["realmode", "pmode32", "long64", "apictimer"])
def test_guest_prints_expected_lines_and_powers_off(accel: str, name: str) -> None:
    require_guest(accel, name)
    code, out, err = run_guest(name, accel)
    assert out == list(GUESTS[name].expected), err
    assert code == 0, err


@per_accel
def test_multiboot_elf_with_a_headers_only_segment_below_1_mib_boots(accel: str) -> None:
    """Issue 18 defect 7: ld's default script maps the ELF headers in a PT_LOAD of their own at 0xff000, in the
    BIOS area; QEMU's -kernel boots such a kernel, and so do we, with the ACPI tables placed clear of it."""
    from core.boot.elf import parse_elf

    require_guest(accel, "reboot_ldhdr")
    image = parse_elf(guest_path("reboot_ldhdr").read_bytes(), "reboot_ldhdr")
    assert image.segments[0].paddr < 0x10_0000 <= image.segments[1].paddr   # the shape under test
    code, out, err = run_guest("reboot_ldhdr", accel)
    assert out == list(GUESTS["reboot_ldhdr"].expected), err
    assert code == 0, err


@per_accel
def test_realmode_image_entered_at_0x7c00_with_a_real_mode_cpu_state(accel: str) -> None:
    """The raw real-mode image, entered the way a boot sector is: CS:IP = 0000:7C00 (SDM vol. 3, 9.1.4)."""
    require_guest(accel, "realmode16")
    from core.machine import Machine, MachineConfig, MachineState

    raw = guest_path("realmode16").read_bytes()
    out = bytearray()
    done = threading.Event()
    # The Multiboot wrapper gives the machine its ACPI tables and devices; the CPU state below replaces its entry.
    m = Machine(MachineConfig(kernel=str(guest_path("realmode")), accel=accel, memory_mib=32),
                serial_output=lambda data: (out.extend(data), done.set()))
    m.board.memory.write(GUESTS["realmode16"].load_addr, raw)
    state = CpuState()
    state.cs = Segment(selector=0, base=0, limit=0xFFFF, type=0xB)
    state.rip = GUESTS["realmode16"].load_addr
    state.idt.base, state.idt.limit = 0, 0x3FF
    m.board.vcpus[0].set_state(state)
    m.start()
    assert m.wait(30) == MachineState.SHUTOFF, (m.state, m.reason, out)
    assert lines(out.decode()) == list(GUESTS["realmode16"].expected)


@per_accel
@pytest.mark.parametrize("memory", [64, 256])
def test_multiboot_memory_size_and_command_line(accel: str, memory: int) -> None:
    require_guest(accel, "mbinfo")
    code, out, err = run_guest("mbinfo", accel, "--memory", str(memory), "--append", "console=ttyS0 quiet x=1")
    assert code == 0, err
    assert out[0] == "mbinfo: multiboot magic ok"
    assert out[1] == f"mbinfo: mem_upper={memory * 1024 - 1024} KiB, memory={memory} MiB"
    assert out[2] == 'mbinfo: cmdline="console=ttyS0 quiet x=1"'


@per_accel
@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smp_every_cpu_reports_its_apic_id(accel: str, cpus: int) -> None:
    require_guest(accel, "smp")
    code, out, err = run_guest("smp", accel, "--cpus", str(cpus))
    assert code == 0, err
    assert out[0] == f"smp: BSP has APIC ID 0, the MADT lists {cpus} CPUs"
    ap_lines = sorted(out[1:-1])
    assert ap_lines == [f"smp: AP with APIC ID {i} online" for i in range(1, cpus)]
    assert out[-1] == f"smp: all {cpus} CPUs online"


@pytest.mark.parametrize(("accel", "cpus"), [("kvm", 2), ("software", 2), ("software", 4),
                                             ("software-parallel", 2), ("software-parallel", 4)])
def test_smp_stress_locked_counters_exact_and_cross_modified_code_seen(accel: str, cpus: int, monkeypatch) -> None:
    """Every CPU at once: lock xadd, lock cmpxchg, lock cmpxchg8b and an xchg spinlock around a plain increment
    must each end at CPUs x 100000 (a lost update shows as less); then the BSP rewrites a function the APs keep
    calling, 100 times, and an AP that has seen the new generation and executed CPUID must run the new code
    (SDM vol. 3, 8.1.3). QEMU 7.2's multi-threaded TCG fails the second part (stale code after serializing).
    4 vCPUs on the software CPU only: this host's kvm_pvm runs 4 spinning vCPU threads on 2 busy cores in 30-40 s.
    software-parallel: one unicorn instance per vCPU on its own thread (VIREO_PARALLEL_VCPUS=1,
    core/hypervisor/software_parallel.py); without its CF_PARALLEL translation the xchg spinlock deadlocks and the
    run ends at the timeout, the other counters lose updates."""
    parallel = accel == "software-parallel"
    if parallel:
        accel = "software"
        monkeypatch.setenv("VIREO_PARALLEL_VCPUS", "1")
    else:
        monkeypatch.setenv("VIREO_PARALLEL_VCPUS", "0")        # the time-shared engine (parallel is the default)
    require_guest(accel, "smpstress")
    code, out, err = run_guest("smpstress", accel, "--cpus", str(cpus), timeout=60)
    assert (f"{cpus} vCPUs in parallel" in err) == parallel, err
    total = cpus * 100000
    assert out == [f"smpstress: {cpus} CPUs",
                   *(f"smpstress: {what}: counter {total}, expected {total}"
                     for what in ("lock xadd", "lock cmpxchg", "lock cmpxchg8b", "xchg spinlock")),
                   "smpstress: cross-modifying code: 100 patches, stale code seen after serializing: 0",
                   "smpstress: done"], err
    assert code == 0, err


@per_accel
@pytest.mark.parametrize("cpus", [1, 2])
def test_reboot_through_i8042_and_port_cf9_then_power_off(accel: str, cpus: int) -> None:
    require_guest(accel, "reboot")
    code, out, err = run_guest("reboot", accel, "--cpus", str(cpus))
    assert out == list(GUESTS["reboot"].expected), err
    assert code == 0, err


@per_accel
def test_triple_fault_crashes_the_vm_not_the_runner(accel: str) -> None:
    require_guest(accel, "triplefault")
    code, out, err = run_guest("triplefault", accel)
    assert out == list(GUESTS["triplefault"].expected)
    assert code == 1
    assert re.search(r"crashed: .*triple fault", err), err


@per_accel
def test_triple_fault_leaves_the_process_able_to_run_another_vm(accel: str) -> None:
    require_guest(accel, "triplefault")
    from core.hypervisor.hostcaps import is_kvm_pvm
    from core.machine import Machine, MachineConfig, MachineState

    crashed = Machine(MachineConfig(kernel=str(guest_path("triplefault")), accel=accel, memory_mib=32))
    crashed.start()
    assert crashed.wait(30) == MachineState.CRASHED
    assert "triple fault" in crashed.reason
    # The second VM uses protected mode with paging; kvm_pvm cannot run that (PVM_CANNOT), so there it is mbinfo.
    second = "mbinfo" if accel == "kvm" and is_kvm_pvm() else "pmode32"
    out = bytearray()
    fine = Machine(MachineConfig(kernel=str(guest_path(second)), accel=accel, memory_mib=32),
                   serial_output=out.extend)
    fine.start()
    assert fine.wait(30) == MachineState.SHUTOFF, fine.reason
    if second == "pmode32":
        assert lines(out.decode()) == list(GUESTS["pmode32"].expected)
    else:
        assert b"memory=32 MiB" in out


@per_accel
def test_a_vcpu_runs_again_after_a_triple_fault_and_a_platform_reset(accel: str) -> None:
    """A vCPU is left in shutdown after a triple fault (KVM's, or the software CPU's); reset_platform() and a new
    entry state must bring it back, as a PC's reset does. Driven by hand (no Machine threads): the backend's part
    of a reboot, with the interrupt controllers a board gives it."""
    require_guest(accel, "triplefault")
    from core.board import wire_interrupt_controllers
    from core.boot.loader import load_kernel
    from core.bus import MmioBus, PortIoBus
    from core.devices.serial import Uart16550
    from core.hypervisor.base import ExitReason
    from core.hypervisor.select import create_accelerator
    from core.irq import IrqLine
    from core.memory import GuestMemory
    from core.timers import TimerQueue

    kernel = str(guest_path("triplefault"))
    memory, pio, mmio, timers = GuestMemory(32 << 20), PortIoBus(), MmioBus(), TimerQueue()
    backend = create_accelerator(accel, memory, pio, mmio, 2, timers)
    controllers = wire_interrupt_controllers(backend, pio, mmio, timers)
    out = bytearray()
    Uart16550(IrqLine(controllers or backend, 4), out.extend).attach(pio)
    bsp, ap = backend.create_vcpu(0), backend.create_vcpu(1)
    try:
        for boot in range(1, 4):
            bsp.set_state(load_kernel(memory, kernel, None, "", 2).cpu_state)
            ap.reset_to_wait_for_sipi()
            ex = bsp.run()
            assert ex.reason == ExitReason.SHUTDOWN, ex.detail
            assert out.count(b"triplefault: loading an empty IDT") == boot
            if controllers is not None:
                controllers.reset()
            backend.reset_platform()
    finally:
        backend.close()
        timers.stop()
        memory.close()


def test_guest_build_is_cached() -> None:
    path = guest_path("mbinfo")
    before = os.stat(path).st_mtime_ns
    assert guest_path("mbinfo") == path
    assert os.stat(path).st_mtime_ns == before
