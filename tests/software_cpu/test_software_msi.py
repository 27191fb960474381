"""Message-signalled interrupts on the software CPU: decoding the address/data pair (SDM vol. 3, 10.11), routing
through the APIC bus (physical, logical, broadcast, lowest priority, NMI), and a guest taking an MSI's vector
through its IDT -- `PcInterruptControllers.send_msi`, the sink PCI devices use for MSI-X on the software CPU."""
from __future__ import annotations

import threading
import time

import pytest

from core.devices.apic_bus import decode_msi
from core.devices.lapic import DM_FIXED, DM_NMI, REG_LDR, REG_TPR
from core.hypervisor.base import ExitReason
from tests.helpers.software_guest import Rig, assemble

pytest.importorskip("unicorn")


def msi_address(dest: int, logical: bool = False, hint: bool = False) -> int:
    return 0xFEE0_0000 | dest << 12 | (8 if hint else 0) | (4 if logical else 0)


def test_decode_fields():
    m = decode_msi(msi_address(3, logical=True, hint=True), 0x0000_4000 | 0x8000 | 1 << 8 | 0x45)
    assert (m.dest, m.logical, m.lowest_priority, m.mode, m.vector, m.level_triggered) == (
        3, True, True, DM_FIXED, 0x45, True)
    m = decode_msi(msi_address(1), 0x31)
    assert (m.dest, m.logical, m.lowest_priority, m.mode, m.vector, m.level_triggered) == (
        1, False, False, DM_FIXED, 0x31, False)
    assert decode_msi(msi_address(0), DM_NMI << 8).mode == DM_NMI


@pytest.mark.parametrize("address, data", [
    (0xFEC0_0000, 0x41),                     # not the interrupt window: a memory write, not an interrupt
    (1 << 32 | 0xFEE0_0000, 0x41),           # above 4 GiB
    (0xFEE0_0000, 6 << 8 | 0x41),            # SIPI is not a valid MSI delivery mode
    (0xFEE0_0000, 3 << 8 | 0x41),            # reserved
    (0xFEE0_0000, 0x8000 | 0x41),            # level-triggered de-assert: no effect
])
def test_decode_rejects(address, data):
    assert decode_msi(address, data) is None


@pytest.fixture
def rig2():
    r = Rig(cpus=2)
    yield r
    r.close()


def irr(rig: Rig, cpu: int) -> int:
    return rig.vcpus[cpu].lapic.irr


def test_physical_logical_broadcast_and_lowest_priority_routing(rig2):
    pc = rig2.controllers
    a0, a1 = rig2.vcpus[0].lapic, rig2.vcpus[1].lapic
    pc.send_msi(msi_address(1), 0x41)
    assert (irr(rig2, 0), irr(rig2, 1)) == (0, 1 << 0x41)
    pc.send_msi(msi_address(0xFF), 0x42)                           # physical broadcast
    assert irr(rig2, 0) == 1 << 0x42 and irr(rig2, 1) == 1 << 0x41 | 1 << 0x42
    a0.mmio_write(REG_LDR, 4, 0x01 << 24)                          # flat logical IDs 1 and 2
    a1.mmio_write(REG_LDR, 4, 0x02 << 24)
    pc.send_msi(msi_address(0x02, logical=True), 0x43)
    assert not irr(rig2, 0) & 1 << 0x43 and irr(rig2, 1) & 1 << 0x43
    pc.send_msi(msi_address(0x03, logical=True), 0x44)             # both in the logical group
    assert irr(rig2, 0) & 1 << 0x44 and irr(rig2, 1) & 1 << 0x44
    a0.mmio_write(REG_TPR, 4, 0x20)                                # CPU 0 busier: lowest priority picks CPU 1
    pc.send_msi(msi_address(0x03, logical=True, hint=True), 0x50)
    assert not irr(rig2, 0) & 1 << 0x50 and irr(rig2, 1) & 1 << 0x50
    pc.send_msi(msi_address(0x03, logical=True), 1 << 8 | 0x51)   # delivery mode lowest priority
    assert not irr(rig2, 0) & 1 << 0x51 and irr(rig2, 1) & 1 << 0x51
    before = (irr(rig2, 0), irr(rig2, 1))
    pc.send_msi(0xFEC0_0000, 0x52)
    assert (irr(rig2, 0), irr(rig2, 1)) == before and pc.dropped_msis == 1


def test_nmi_message_reaches_the_vcpu(rig2):
    rig2.interrupts.send_msi(msi_address(1), DM_NMI << 8)
    assert rig2.vcpus[1].nmi_pending and not rig2.vcpus[0].nmi_pending


MSI_GUEST = r"""
        .code32
        lgdt gdtr
        lidt idtr
        mov $handler, %eax              # IDT[0x61]: 32-bit interrupt gate
        mov %ax, idt + 0x61 * 8
        movw $0x08, idt + 0x61 * 8 + 2
        movw $0x8E00, idt + 0x61 * 8 + 4
        shr $16, %eax
        mov %ax, idt + 0x61 * 8 + 6
        movl $0x1FF, 0xFEE000F0         # SVR: APIC software enable
        mov $'R', %al                   # ready
        out %al, $0xE9
        sti
1:      hlt
        jmp 1b
handler:
        mov $'M', %al
        out %al, $0xE9
        movl $0, 0xFEE000B0             # EOI
        cli
        hlt
        .align 8
gdt:    .quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF
gdtr:   .word gdtr - gdt - 1
        .long gdt
idtr:   .word 256 * 8 - 1
        .long idt
        .align 8
idt:    .fill 256 * 8, 1, 0
"""


def test_guest_takes_an_msi_through_its_idt():
    from core.hypervisor.base import CpuState, Segment
    rig = Rig()
    try:
        rig.memory.write(0x10000, assemble(MSI_GUEST, 32, 0x10000))
        s = CpuState()
        flat = dict(base=0, limit=0xFFFF_FFFF, db=True, g=True)
        s.cs = Segment(selector=0x08, type=0xB, **flat)
        for name in ("ds", "es", "ss", "fs", "gs"):
            setattr(s, name, Segment(selector=0x10, type=3, **flat))
        s.cr0 = 0x11
        s.rip = 0x10000
        s.regs["rsp"] = 0x9000

        def send_when_ready() -> None:
            deadline = time.monotonic() + 5
            while b"R" not in rig.debug.out and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.01)                    # the guest is (very likely) in HLT by now
            rig.interrupts.send_msi(msi_address(0), 0x61)
        t = threading.Thread(target=send_when_ready)
        t.start()
        ex = rig.run(s)
        t.join()
        assert bytes(rig.debug.out) == b"RM", ex
        assert ex.reason == ExitReason.HALTED
    finally:
        rig.close()
