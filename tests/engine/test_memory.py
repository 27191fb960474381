"""GuestMemory: the bounds-checked API is the only way into guest RAM."""
import pytest

from core.memory import HIGH_MEMORY_START, PCI_HOLE_START, GuestMemory, GuestMemoryError


def test_read_write_round_trip_and_widths():
    mem = GuestMemory(1 << 20)
    mem.write(0x1000, b"vireo")
    assert mem.read(0x1000, 5) == b"vireo"
    mem.write_u32(0x2000, 0xDEADBEEF)
    assert mem.read_u8(0x2000) == 0xEF
    assert mem.read_u16(0x2002) == 0xDEAD
    mem.write_u64(0x3000, 0x1122334455667788)
    assert mem.read_u64(0x3000) == 0x1122334455667788
    assert mem.read(0x3000, 2) == b"\x88\x77"


@pytest.mark.parametrize("gpa,length", [(1 << 20, 1), ((1 << 20) - 2, 4), (-1, 1), (0, (1 << 20) + 1),
                                        (1 << 63, 8)])
def test_out_of_range_accesses_raise_guest_error(gpa, length):
    mem = GuestMemory(1 << 20)
    with pytest.raises(GuestMemoryError):
        mem.read(gpa, length)
    with pytest.raises(GuestMemoryError):
        mem.write(gpa, b"\0" * max(length, 0))


def test_last_byte_is_accessible():
    mem = GuestMemory(1 << 20)
    mem.write_u8((1 << 20) - 1, 0x5A)
    assert mem.read_u8((1 << 20) - 1) == 0x5A


def test_ram_above_pci_hole_moves_above_4g():
    size = PCI_HOLE_START + (64 << 20)
    mem = GuestMemory(size)
    assert [(r.gpa, r.size) for r in mem.regions] == [(0, PCI_HOLE_START), (HIGH_MEMORY_START, 64 << 20)]
    with pytest.raises(GuestMemoryError):
        mem.read_u8(PCI_HOLE_START)           # the hole is MMIO, not RAM
    mem.write_u32(HIGH_MEMORY_START + 8, 7)
    assert mem.read_u32(HIGH_MEMORY_START + 8) == 7
    with pytest.raises(GuestMemoryError):      # an access may not straddle the end of a region
        mem.read(PCI_HOLE_START - 2, 4)


def test_write_listeners_see_host_writes():
    mem = GuestMemory(1 << 20)
    seen = []
    mem.add_write_listener(lambda gpa, n: seen.append((gpa, n)))
    mem.write(0x100, b"abc")
    mem.fill(0x200, 16, 0xFF)
    assert seen == [(0x100, 3), (0x200, 16)]
    assert mem.read(0x200, 2) == b"\xff\xff"


def test_view_is_zero_copy_and_bounded():
    mem = GuestMemory(1 << 20)
    v = mem.view(0x10, 4)
    v[:] = b"wxyz"
    assert mem.read(0x10, 4) == b"wxyz"
    with pytest.raises(GuestMemoryError):
        mem.view((1 << 20) - 2, 4)


def test_size_must_be_page_multiple():
    with pytest.raises(ValueError):
        GuestMemory(1000)


def test_cpu_mappings_leave_the_vga_window_to_the_device():
    mem = GuestMemory(64 << 20)
    maps = [(r.gpa, r.size, r.offset) for r in mem.cpu_mappings()]
    assert maps == [(0, 0xA0000, 0), (0xC0000, (64 << 20) - 0xC0000, 0xC0000)]
