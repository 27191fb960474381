"""Queue doorbells rung by the accelerator (Accelerator.add_ioeventfd): on KVM in the kernel (KVM API doc 4.59
KVM_IOEVENTFD), on the software CPU in the native MMIO write stub (core/hypervisor/uc_doorbells.py). A guest's
2-byte write to a bound address adds 1 to the eventfd and never reaches the MMIO handler; other widths and other
addresses do, and after remove_ioeventfd (asked from an exit on the vCPU thread) so does the bound address. The
PCI bus binds a virtio-net card's two notification addresses where the guest maps its BAR, and moves them with it.
"""
from __future__ import annotations

import os

import pytest

from tests.helpers.accel import ACCELS, require_accel, require_guest
from tests.helpers.software_guest import Rig, assemble, boot_sector_state

pytestmark = pytest.mark.parametrize("accel", ACCELS)

DEV, DEV_SIZE = 0x9_0000, 0x1_0000
UNBIND_PORT = 0x601

GUEST = """
        .code16
        mov $0x9000, %ax
        mov %ax, %es
        movw $1, %es:0x10         # the doorbell, twice: no exit
        movw $1, %es:0x10
        movl $7, %es:0x10         # 4 bytes at the doorbell: the MMIO handler
        movw $2, %es:0x20         # 2 bytes elsewhere: the MMIO handler
        movb $5, %es:0x10         # 1 byte at the doorbell: the MMIO handler
        mov $0x601, %dx
        out %al, %dx              # remove_ioeventfd
        jmp 1f
1:      movw $3, %es:0x10         # no longer a doorbell: the MMIO handler
        mov $0x510, %dx
        out %al, %dx              # done
        jmp .
"""


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def mmio_read(self, addr: int, size: int) -> int:
        return 0

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.writes.append((addr, size, value))


class Unbind:
    def __init__(self, accel, gpa: int) -> None:
        self.accel, self.gpa = accel, gpa

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.accel.remove_ioeventfd(self.gpa)


def _count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_a_two_byte_write_rings_the_eventfd_without_an_exit(accel: str) -> None:
    require_guest(accel, "realmode16")
    rig = Rig(accel=accel, memory_bytes=512 * 1024)
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        if accel == "kvm" and not rig.accel.has_ioeventfd:
            pytest.skip("this host's KVM has no KVM_CAP_IOEVENTFD")
        handler = Recorder()
        rig.mmio.register(DEV, DEV_SIZE, handler)
        rig.pio.register(UNBIND_PORT, 1, Unbind(rig.accel, DEV + 0x10))
        rig.accel.add_ioeventfd(DEV + 0x10, fd)
        with pytest.raises(ValueError):
            rig.accel.add_ioeventfd(DEV + 0x10, fd)          # one doorbell per address
        rig.memory.write(0x7C00, assemble(GUEST, 16, 0x7C00))
        ex = rig.run(boot_sector_state())
        assert rig.done, ex.detail
        assert _count(fd) == 2
        assert handler.writes == [(DEV + 0x10, 4, 7), (DEV + 0x20, 2, 2), (DEV + 0x10, 1, 5), (DEV + 0x10, 2, 3)]
        with pytest.raises(ValueError):
            rig.accel.remove_ioeventfd(DEV + 0x10)           # already taken back
    finally:
        rig.close()
        os.close(fd)


def test_the_pci_bus_binds_a_virtio_net_cards_doorbells_where_its_bar_is(accel: str) -> None:
    """Both queues' notification addresses (BAR 4 + 0x3000, + 0x3004) follow the BAR the guest programs: bound
    when memory decoding is on, moved with the BAR, taken back when decoding is off. A ring from the card's side
    is its eventfd, so the binding is tested by ringing through the accelerator's own table (software) or by the
    bound set KVM refuses to take twice."""
    require_accel(accel)
    from core.devices.pci import PciBus
    from core.devices.virtio.net import VirtioNet
    from core.devices.virtio.pci import VirtioPciDevice

    rig = Rig(accel=accel, mem_mib=16)
    net = VirtioNet("52:54:00:12:34:56", connect=lambda: (_ for _ in ()).throw(OSError("no backend")))
    try:
        if accel == "kvm" and not rig.accel.has_ioeventfd:
            pytest.skip("this host's KVM has no KVM_CAP_IOEVENTFD")
        bus = PciBus(rig.pio, rig.mmio, lambda gsi, level: None, ram_mapper=rig.accel)
        card = VirtioPciDevice(net, rig.memory)
        bus.attach(rig.pio)
        slot = bus.add(card)

        def cfg_write(offset: int, size: int, value: int) -> None:
            rig.pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | offset)
            rig.pio.write(0xCFC + (offset & 3), size, value)

        def bound() -> set[int]:
            if accel == "software":
                return set(rig.accel.doorbells.bound())
            return set(rig.accel._ioeventfds)

        cfg_write(0x20, 4, 0xE000_0000)                   # BAR 4, 64-bit: low then high
        cfg_write(0x24, 4, 0)
        assert bound() == set()                           # decoding is off
        cfg_write(0x04, 2, 0x2)                           # memory space on
        assert bound() == {0xE000_3000, 0xE000_3004}
        cfg_write(0x20, 4, 0xE100_0000)                   # the guest moves the BAR
        assert bound() == {0xE100_3000, 0xE100_3004}
        cfg_write(0x04, 2, 0x0)
        assert bound() == set()
        cfg_write(0x04, 2, 0x2)
        assert bound() == {0xE100_3000, 0xE100_3004}
        if accel == "software":
            # Re-bound doorbells reuse their entries (a rebooting VM does not fill the table), and each entry is
            # the card's eventfd: a write to the table's fd wakes the card's transmit queue doorbell.
            assert rig.accel.doorbells.words[0] == 2
            table_fd = rig.accel.doorbells.bound()[0xE100_3004]
            os.eventfd_write(table_fd, 1)
            assert net.doorbell(1).wait() == 1
    finally:
        net.stop()
        rig.close()
