"""The KVM backend in-process: CPUID topology, port I/O (string forms too), MMIO, IRQ lines into the in-kernel
PIC, kicks from other threads and from the vCPU's own thread, register state round trips, APs waiting for SIPI,
and the power-on reset of the platform. Tiny real-mode programs are assembled with GNU as for each test."""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from core.bus import MmioBus, PortIoBus
from core.hypervisor import kvm_abi as abi
from core.hypervisor.base import CpuState, DescriptorTable, ExitReason, Segment
from core.hypervisor.hostcaps import kvm_status
from core.hypervisor.kvm import KvmAccelerator
from core.hypervisor.kvm_cpuid import KVM_FEATURE_MSI_EXT_DEST_ID, CpuidEntry, build_cpuid
from core.hypervisor.kvm_vcpu import MSR_IA32_MISC_ENABLE, MSR_IA32_PAT, PAT_POWER_ON
from core.memory import GuestMemory
from core.timers import TimerQueue
from tests.helpers.software_guest import boot_sector_state

_STATUS = kvm_status()
needs_kvm = pytest.mark.skipif(not _STATUS.usable, reason=f"KVM not usable here: {_STATUS.reason}")

CODE_ADDR = 0x7C00
DONE_PORT = 0x510
DATA_PORT = 0x3E0


def assemble16(source: str, org: int = CODE_ADDR) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "g.s").write_text(".code16\n.globl _start\n_start:\n" + source + "\n")
        subprocess.run(["as", "--32", "-o", str(d / "g.o"), str(d / "g.s")], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext", hex(org), "--oformat", "binary", "-o", str(d / "g.bin"),
                        str(d / "g.o")], check=True, capture_output=True)
        return (d / "g.bin").read_bytes()


def real_mode_state(ip: int = CODE_ADDR) -> CpuState:
    return boot_sector_state(ip)


class Ports:
    """A port device recording writes; reads answer from `replies`. Writing DONE_PORT kicks the vCPU (from its
    own thread, inside run())."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []
        self.replies: dict[int, list[int]] = {}
        self.on_write = None
        self.vcpu = None

    def io_read(self, port: int, size: int) -> int:
        queue = self.replies.get(port)
        return queue.pop(0) if queue else 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.writes.append((port, size, value))
        if self.on_write is not None:
            self.on_write(port, size, value)
        if port == DONE_PORT:
            self.vcpu.kick()


class Mmio:
    def __init__(self) -> None:
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def mmio_read(self, addr: int, size: int) -> int:
        self.reads.append((addr, size))
        return {1: 0xA1, 2: 0xB2B1, 4: 0xC4C3C2C1}[size]

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.writes.append((addr, size, value))


class Vm:
    def __init__(self, memory_bytes: int = 1 << 20, cpus: int = 1) -> None:
        self.memory = GuestMemory(memory_bytes)
        self.pio = PortIoBus()
        self.mmio = MmioBus()
        self.timers = TimerQueue()
        self.ports = Ports()
        self.pio.register(DATA_PORT, 1, self.ports)
        self.pio.register(DONE_PORT, 1, self.ports)
        self.accel = KvmAccelerator(self.memory, self.pio, self.mmio, cpus, self.timers)
        self.vcpus = [self.accel.create_vcpu(i) for i in range(cpus)]
        self.ports.vcpu = self.vcpus[0]

    def load(self, source: str) -> None:
        self.memory.write(CODE_ADDR, assemble16(source))
        self.vcpus[0].set_state(real_mode_state())

    def close(self) -> None:
        self.accel.close()
        self.timers.stop()
        self.memory.close()


@pytest.fixture
def vm():
    machines: list[Vm] = []

    def make(**kw) -> Vm:
        machines.append(Vm(**kw))
        return machines[-1]
    yield make
    for m in machines:
        m.close()


# -- CPUID (no KVM needed) ---------------------------------------------------------------------------------------
def _fake_supported() -> list[CpuidEntry]:
    e = [CpuidEntry(0, 0, 0, 0x1F, 0x756E6547, 0x6C65746E, 0x49656E69),   # GenuineIntel
         CpuidEntry(1, 0, 0, 0x000906EA, 0x00100800 | 0x07 << 24, 0x7FFAFBFF, 0xBFEBFBFF)]
    for sub, level in enumerate((1, 1, 2, 3)):
        e.append(CpuidEntry(4, sub, 1, (level << 5) | 1 | (0x1F << 26) | (0x3 << 14), 0, 0, 0))
    e.append(CpuidEntry(4, 4, 1, 0, 0, 0, 0))
    e.append(CpuidEntry(0xB, 0, 1, 1, 2, 0x100, 7))
    e.append(CpuidEntry(0x4000_0000, 0, 0, 0x4000_0001, 0, 0, 0))
    e.append(CpuidEntry(0x4000_0001, 0, 0, 0x1FFFF, 0, 0, 1))
    return e


def test_cpuid_topology_for_one_vcpu_of_three() -> None:
    table = {(e.function, e.index): e for e in build_cpuid(_fake_supported(), apic_id=2, num_cpus=3)}
    leaf1 = table[(1, 0)]
    assert leaf1.ebx >> 24 == 2                     # initial APIC ID
    assert (leaf1.ebx >> 16) & 0xFF == 4            # addressable logical processors (power of two)
    assert leaf1.ebx & 0xFFFF == 0x0800             # CLFLUSH size and brand index kept
    assert leaf1.ecx & (1 << 31)                    # hypervisor present
    assert leaf1.edx & (1 << 28)                    # HTT: more than one logical processor
    for sub in range(4):
        eax = table[(4, sub)].eax
        assert eax >> 26 == 3                       # cores per package - 1
        assert (eax >> 14) & 0xFFF == (3 if sub == 3 else 0)   # only L3 is shared
        assert eax & 0x3FFF == table[(4, sub)].eax & 0x3FFF
    assert table[(4, 4)].eax == 0
    smt, core, end = table[(0xB, 0)], table[(0xB, 1)], table[(0xB, 2)]
    assert (smt.eax, smt.ebx, smt.ecx, smt.edx) == (0, 1, 0x100, 2)
    assert (core.eax, core.ebx, core.ecx, core.edx) == (2, 3, 0x201, 2)
    assert (end.ebx, end.ecx & 0xFF00, end.edx) == (0, 0, 2)
    hv = table[(0x4000_0000, 0)]
    assert struct.pack("<III", hv.ebx, hv.ecx, hv.edx) == b"KVMKVMKVM\0\0\0"
    assert not table[(0x4000_0001, 0)].eax & KVM_FEATURE_MSI_EXT_DEST_ID
    assert not table[(0x4000_0001, 0)].edx & 1      # no "realtime" hint


def test_cpuid_single_cpu_has_no_htt() -> None:
    table = {(e.function, e.index): e for e in build_cpuid(_fake_supported(), apic_id=0, num_cpus=1)}
    assert not table[(1, 0)].edx & (1 << 28)
    assert table[(1, 0)].ebx >> 24 == 0
    assert table[(0xB, 1)].ebx == 1


# -- running guests ----------------------------------------------------------------------------------------------
@needs_kvm
def test_guest_sees_its_apic_id_and_the_kvm_signature(vm) -> None:
    m = vm(cpus=2)
    m.memory.write(CODE_ADDR, assemble16("""
        mov $1, %eax
        cpuid
        mov %ebx, %eax
        shr $24, %eax
        mov $0x3E0, %dx
        out %al, %dx
        mov $0x40000000, %eax
        cpuid
        mov %ebx, 0x6000
        mov %ecx, 0x6004
        mov %edx, 0x6008
        mov $0x510, %dx
        out %al, %dx
        jmp .
    """))
    vcpu = m.vcpus[1]      # an AP, started directly at the code
    m.ports.vcpu = vcpu
    vcpu.set_state(real_mode_state())
    result: list = []
    t = threading.Thread(target=lambda: result.append(vcpu.run()))
    t.start()
    t.join(10)
    assert result and result[0].reason == ExitReason.KICKED
    assert m.ports.writes[0] == (DATA_PORT, 1, 1)
    assert m.memory.read(0x6000, 12) == b"KVMKVMKVM\0\0\0"


@needs_kvm
def test_string_port_io_moves_every_item_through_the_bus(vm) -> None:
    m = vm()
    m.ports.replies[DATA_PORT] = [0x11, 0x22, 0x33]
    m.memory.write(0x6000, b"hello")
    m.load("""
        cld
        mov $0x3E0, %dx
        mov $0x6000, %si
        mov $5, %cx
        rep outsb
        mov $0x6100, %di
        mov $3, %cx
        rep insb
        in $0x99, %al          # nobody's port: reads as all ones
        mov %al, 0x6200
        mov $0x510, %dx
        out %al, %dx
        jmp .
    """)
    ex = m.vcpus[0].run()
    assert ex.reason == ExitReason.KICKED, ex.detail
    assert [v for p, s, v in m.ports.writes if p == DATA_PORT] == list(b"hello")
    assert m.memory.read(0x6100, 3) == bytes([0x11, 0x22, 0x33])
    assert m.memory.read_u8(0x6200) == 0xFF
    assert m.pio.unhandled_reads == 1


@needs_kvm
def test_mmio_reads_and_writes_of_each_size(vm) -> None:
    m = vm(memory_bytes=512 * 1024)       # RAM ends at 0x80000: 0x90000 is MMIO, reachable from real mode
    dev = Mmio()
    m.mmio.register(0x9_0000, 0x1000, dev)
    m.load("""
        mov $0x9000, %ax
        mov %ax, %es
        movb %es:0x10, %al
        mov %al, 0x6000
        movw %es:0x20, %ax
        mov %ax, 0x6002
        movl %es:0x30, %eax
        mov %eax, 0x6004
        movb $0x5A, %es:0x40
        movw $0x1234, %es:0x42
        movl $0xDEADBEEF, %es:0x44
        mov $0xA000, %ax       # unclaimed MMIO reads as all ones
        mov %ax, %es
        movl %es:0, %eax
        mov %eax, 0x6008
        mov $0x510, %dx
        out %al, %dx
        jmp .
    """)
    ex = m.vcpus[0].run()
    assert ex.reason == ExitReason.KICKED, ex.detail
    assert dev.reads == [(0x90010, 1), (0x90020, 2), (0x90030, 4)]
    assert m.memory.read(0x6000, 8) == struct.pack("<BxHI", 0xA1, 0xB2B1, 0xC4C3C2C1)
    assert dev.writes == [(0x90040, 1, 0x5A), (0x90042, 2, 0x1234), (0x90044, 4, 0xDEADBEEF)]
    assert m.memory.read_u32(0x6008) == 0xFFFF_FFFF


@needs_kvm
def test_irq_line_reaches_the_guest_through_the_in_kernel_pic(vm) -> None:
    """ISA IRQ 4 (COM1's line) as an edge into the 8259A, vectored through the IVT (8259A datasheet, ICW1-4)."""
    m = vm()
    m.load("""
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        mov $0x11, %al
        out %al, $0x20
        out %al, $0xA0
        mov $0x08, %al
        out %al, $0x21
        mov $0x70, %al
        out %al, $0xA1
        mov $0x04, %al
        out %al, $0x21
        mov $0x02, %al
        out %al, $0xA1
        mov $0x01, %al
        out %al, $0x21
        out %al, $0xA1
        mov $0xEF, %al         # unmask IRQ 4 only
        out %al, $0x21
        mov $0xFF, %al
        out %al, $0xA1
        movw $handler, 0x0C * 4
        movw $0, 0x0C * 4 + 2
        mov $0x3E0, %dx
        mov $0, %al
        out %al, %dx           # "ready"
        sti
1:      hlt
        cmpw $3, count
        jb 1b
        mov $0x510, %dx
        out %al, %dx
        jmp .
handler:
        incw count
        mov $0x20, %al
        out %al, $0x20
        mov $0x3E0, %dx
        mov count, %al
        out %al, %dx           # "got one": the host raises the next
        iret
count:  .word 0
    """)
    accel = m.accel

    def on_write(port: int, size: int, value: int) -> None:
        if port == DATA_PORT and value < 3:
            accel.set_irq(4, True)
            accel.set_irq(4, False)
    m.ports.on_write = on_write
    ex = m.vcpus[0].run()
    assert ex.reason == ExitReason.KICKED, ex.detail
    assert [v for p, s, v in m.ports.writes if p == DATA_PORT] == [0, 1, 2, 3]


@needs_kvm
def test_kick_from_another_thread_and_before_run(vm) -> None:
    m = vm()
    m.load("1: jmp 1b")
    vcpu = m.vcpus[0]
    for _ in range(2):     # the kick is consumed: the second run needs its own
        timer = threading.Timer(0.1, vcpu.kick)
        t0 = time.monotonic()
        timer.start()
        ex = vcpu.run()
        assert ex.reason == ExitReason.KICKED
        assert 0.05 < time.monotonic() - t0 < 5
        assert vcpu.get_state().rip in (CODE_ADDR, CODE_ADDR + 2)
    vcpu.kick()
    t0 = time.monotonic()
    assert vcpu.run().reason == ExitReason.KICKED
    assert time.monotonic() - t0 < 1


@needs_kvm
def test_ap_waits_for_sipi_until_kicked(vm) -> None:
    m = vm(cpus=2)
    ap = m.vcpus[1]
    ap.reset_to_wait_for_sipi()
    assert ap.get_mp_state() == abi.KVM_MP_STATE_UNINITIALIZED
    result: list = []
    t = threading.Thread(target=lambda: result.append(ap.run()))
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and not result          # still waiting for a SIPI
    ap.kick()
    t.join(5)
    assert result and result[0].reason == ExitReason.KICKED


@needs_kvm
def test_state_round_trip(vm) -> None:
    m = vm()
    vcpu = m.vcpus[0]
    st = CpuState()
    st.regs.update(rax=0x1122334455667788, rbx=2, rcx=3, rdx=4, rsi=5, rdi=6, rsp=0x8000, rbp=8, r8=9, r15=15)
    st.rip = 0x100000
    st.rflags = 0x202
    code = Segment(selector=0x10, base=0, limit=0xFFFF_FFFF, type=0xB, db=True, g=True)
    data = Segment(selector=0x18, base=0, limit=0xFFFF_FFFF, type=0x3, db=True, g=True)
    st.cs, st.ds, st.es, st.fs, st.gs, st.ss = code, data, data, data, data, data
    st.tr = Segment(selector=0x20, base=0x1000, limit=0x67, type=0xB, s=False)
    st.gdt, st.idt = DescriptorTable(0x500, 0x27), DescriptorTable(0x600, 0x7FF)
    st.cr0 = 0x11
    st.msrs = {MSR_IA32_PAT: 0x0007_0406_0007_0406, 0x174: 0x10}
    vcpu.set_state(st)
    got = vcpu.get_state()
    assert got.regs == st.regs
    assert (got.rip, got.rflags, got.cr0, got.efer) == (st.rip, st.rflags, st.cr0, 0)
    for name in ("cs", "ds", "ss", "tr"):
        assert getattr(got, name) == getattr(st, name), name
    assert (got.gdt, got.idt) == (st.gdt, st.idt)
    assert got.apic_base == 0xFEE00900
    assert got.msrs[0x174] == 0x10
    assert got.msrs[MSR_IA32_MISC_ENABLE] & 1     # fast strings


@needs_kvm
def test_ap_state_never_claims_to_be_the_bsp(vm) -> None:
    m = vm(cpus=2)
    m.vcpus[1].set_state(real_mode_state())
    assert m.vcpus[1].get_state().apic_base == 0xFEE00800


@needs_kvm
def test_reset_platform_restores_power_on_state(vm) -> None:
    m = vm(cpus=2)
    bsp, ap = m.vcpus
    lapic_power_on = bsp.get_lapic()
    pic = abi.kvm_irqchip()
    pic.chip_id = abi.KVM_IRQCHIP_PIC_MASTER
    abi.ioctl(m.accel.vm_fd, abi.KVM_GET_IRQCHIP, pic)
    imr_power_on = pic.chip.pic.imr
    m.load("""
        mov $0x11, %al
        out %al, $0x20
        mov $0x20, %al
        out %al, $0x21
        mov $0x04, %al
        out %al, $0x21
        mov $0x01, %al
        out %al, $0x21
        mov $0x5A, %al
        out %al, $0x21         # IMR
        mov $0x1B, %ecx        # switch the LAPIC to x2APIC mode (reachable from real mode through MSRs)
        rdmsr
        or $0xC00, %eax        # EN | EXTD
        wrmsr
        mov $0x80F, %ecx       # x2APIC SVR: software-enable, spurious vector 0xEE
        mov $0x1EE, %eax
        xor %edx, %edx
        wrmsr
        mov $0x510, %dx
        out %al, %dx
        jmp .
    """)
    assert bsp.run().reason == ExitReason.KICKED
    abi.ioctl(m.accel.vm_fd, abi.KVM_GET_IRQCHIP, pic)
    assert pic.chip.pic.imr == 0x5A
    assert bsp.get_lapic() != lapic_power_on
    assert bsp.get_state().apic_base & 0xC00 == 0xC00
    ap.set_state(real_mode_state())

    m.accel.reset_platform()
    st = bsp.get_state()
    assert (st.rip, st.cs.selector, st.cs.base) == (0xFFF0, 0xF000, 0xFFFF_0000)
    assert st.apic_base == 0xFEE00900          # back to xAPIC mode, enabled, BSP
    assert bsp.get_lapic() == lapic_power_on
    assert bsp.get_mp_state() == abi.KVM_MP_STATE_RUNNABLE
    assert ap.get_mp_state() == abi.KVM_MP_STATE_UNINITIALIZED
    assert bsp.get_msrs([MSR_IA32_PAT])[MSR_IA32_PAT] == PAT_POWER_ON
    abi.ioctl(m.accel.vm_fd, abi.KVM_GET_IRQCHIP, pic)
    assert pic.chip.pic.imr == imr_power_on


@needs_kvm
def test_close_releases_the_vcpu_and_vm(vm) -> None:
    m = vm()
    fds = [m.accel.kvm_fd, m.accel.vm_fd, m.vcpus[0].fd]
    m.accel.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    m.vcpus[0].kick()                       # harmless after close
    assert m.vcpus[0].run().reason == ExitReason.ERROR


@needs_kvm
def test_msi_reaches_the_local_apic(vm) -> None:
    """An MSI (address 0xFEE00000 = APIC ID 0, data = fixed delivery, vector 0x40; SDM vol. 3, 10.11) arrives
    as interrupt 0x40, here through the real-mode IVT with the LAPIC enabled through its x2APIC MSRs."""
    m = vm()
    m.load("""
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        mov $0xFF, %al         # 8259As masked: only the MSI can interrupt
        out %al, $0x21
        out %al, $0xA1
        movw $handler, 0x40 * 4
        movw $0, 0x40 * 4 + 2
        mov $0x1B, %ecx
        rdmsr
        or $0xC00, %eax        # x2APIC mode
        wrmsr
        mov $0x80F, %ecx       # SVR: software-enable, spurious vector 0xFF
        mov $0x1FF, %eax
        xor %edx, %edx
        wrmsr
        mov $0x3E0, %dx
        out %al, %dx           # "ready"
        sti
1:      hlt
        cmpw $1, count
        jb 1b
        mov $0x510, %dx
        out %al, %dx
        jmp .
handler:
        incw count
        mov $0x80B, %ecx       # x2APIC EOI
        xor %eax, %eax
        xor %edx, %edx
        wrmsr
        iret
count:  .word 0
    """)
    if not m.accel.has_signal_msi:
        pytest.skip("no KVM_CAP_SIGNAL_MSI")
    m.ports.on_write = lambda port, size, value: port == DATA_PORT and m.accel.send_msi(0xFEE0_0000, 0x40)
    ex = m.vcpus[0].run()
    assert ex.reason == ExitReason.KICKED, ex.detail
