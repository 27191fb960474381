"""Device memory mapped as guest RAM on KVM (KvmAccelerator.map_ram / unmap_ram: a memory slot of its own),
requested from a port-I/O exit on the vCPU thread as the PCI bus does for a framebuffer BAR."""
from __future__ import annotations

import ctypes
import mmap
import struct

import pytest

from core.hypervisor.base import ExitReason
from tests.kvm.test_kvm_vcpu import DATA_PORT, Mmio, Vm, needs_kvm

DEV = 0x9_0000                # above the 512 KiB of RAM, reachable from real mode
DEV_SIZE = 0x1_0000


@pytest.fixture
def vm():
    machines: list[Vm] = []

    def make(**kw) -> Vm:
        machines.append(Vm(**kw))
        return machines[-1]
    yield make
    for m in machines:
        m.close()


@needs_kvm
def test_map_ram_from_an_exit_then_unmap(vm) -> None:
    m = vm(memory_bytes=512 * 1024)
    buf = mmap.mmap(-1, DEV_SIZE)
    host = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fallback = Mmio()
    m.mmio.register(DEV, DEV_SIZE, fallback)
    steps = iter([lambda: m.accel.map_ram(DEV, host, DEV_SIZE), lambda: m.accel.unmap_ram(DEV)])
    m.ports.on_write = lambda port, size, value: next(steps)() if port == DATA_PORT else None
    m.load("""
        mov $0x9000, %ax
        mov %ax, %es
        mov $0x3E0, %dx
        out %al, %dx              # map_ram
        movl $0x11223344, %es:0x10
        movl %es:0x10, %eax
        mov %eax, 0x6000
        mov $0x3E0, %dx
        out %al, %dx              # unmap_ram
        movl $0x55667788, %es:0x20
        mov $0x510, %dx
        out %al, %dx
        jmp .
    """)
    ex = m.vcpus[0].run()
    assert ex.reason == ExitReason.KICKED, ex.detail
    assert buf[0x10:0x14] == struct.pack("<I", 0x11223344)       # straight into the memory, no exit
    assert m.memory.read_u32(0x6000) == 0x11223344
    assert fallback.reads == [] and fallback.writes == [(DEV + 0x20, 4, 0x55667788)]
    assert buf[0x20:0x24] == bytes(4)


@needs_kvm
def test_map_ram_refuses_overlaps_and_reuses_slots(vm) -> None:
    m = vm(memory_bytes=512 * 1024)
    buf = mmap.mmap(-1, 2 * DEV_SIZE)
    host = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    with pytest.raises(ValueError):
        m.accel.map_ram(0x7_0000, host, DEV_SIZE)               # overlaps RAM
    with pytest.raises(ValueError):
        m.accel.map_ram(DEV + 0x800, host, DEV_SIZE)            # not page-aligned
    for _ in range(3):                                          # a BAR moved back and forth keeps one slot
        m.accel.map_ram(DEV, host, DEV_SIZE)
        with pytest.raises(ValueError):
            m.accel.map_ram(DEV + 0x8000, host, DEV_SIZE)       # overlaps the device RAM
        m.accel.unmap_ram(DEV)
    assert m.accel._next_slot <= len(m.memory.cpu_mappings()) + 2    # slot ids are recycled, not used up
    with pytest.raises(ValueError):
        m.accel.unmap_ram(DEV)
