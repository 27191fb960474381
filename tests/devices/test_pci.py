"""PCI configuration mechanism #1, BAR sizing and decode, INTx routing."""
from core.bus import MmioBus, PortIoBus
from core.devices.pci import CMD_INTX_DISABLE, CMD_IO, CMD_MEMORY, Bar, PciBus, PciDevice


class Regs:
    def __init__(self):
        self.writes = []

    def io_read(self, port, size):
        return 0xAB

    def io_write(self, port, size, value):
        self.writes.append((port, value))

    def mmio_read(self, addr, size):
        return addr

    def mmio_write(self, addr, size, value):
        self.writes.append((addr, value))


def make():
    pio, mmio, irqs = PortIoBus(), MmioBus(), []
    bus = PciBus(pio, mmio, lambda gsi, level: irqs.append((gsi, level)))
    bus.attach(pio)
    return pio, mmio, bus, irqs


def cfg_read(pio, slot, reg, size=4):
    pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | (reg & 0xFC))
    return pio.read(0xCFC + (reg & 3), size)


def cfg_write(pio, slot, reg, value, size=4):
    pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | (reg & 0xFC))
    pio.write(0xCFC + (reg & 3), size, value)


def test_host_bridge_and_empty_slots():
    pio, _, _, _ = make()
    assert cfg_read(pio, 0, 0) == 0x1237_8086
    assert cfg_read(pio, 0, 0x08) >> 8 == 0x060000
    assert cfg_read(pio, 5, 0) == 0xFFFF_FFFF
    assert pio.read(0xCF8, 4) == 0x8000_0000 | 5 << 11


def test_bar_sizing_programming_and_decode():
    pio, mmio, bus, _ = make()
    dev = PciDevice(0x1AF4, 0x1042, 0x018000, interrupt_pin=1)
    mem_regs, io_regs = Regs(), Regs()
    dev.add_bar(0, Bar(0x20, True, io_regs))
    dev.add_bar(2, Bar(0x4000, False, mem_regs, is_64bit=True))
    slot = bus.add(dev)
    cfg_write(pio, slot, 0x10, 0xFFFF_FFFF)
    assert cfg_read(pio, slot, 0x10) == (~0x1F & 0xFFFF_FFFF) | 1           # 32 bytes of I/O
    cfg_write(pio, slot, 0x18, 0xFFFF_FFFF)
    cfg_write(pio, slot, 0x1C, 0xFFFF_FFFF)
    assert cfg_read(pio, slot, 0x18) == (~0x3FFF & 0xFFFF_FFFF) | 0x4      # 16 KiB, 64-bit
    assert cfg_read(pio, slot, 0x1C) == 0xFFFF_FFFF
    cfg_write(pio, slot, 0x10, 0xC000)
    cfg_write(pio, slot, 0x18, 0xFEB0_0000)
    cfg_write(pio, slot, 0x1C, 0)
    assert pio.read(0xC000, 1) == 0xFF               # not decoding until the command register says so
    cfg_write(pio, slot, 0x04, CMD_IO | CMD_MEMORY, size=2)
    assert pio.read(0xC004, 1) == 0xAB
    mmio.write(0xFEB0_0010, 4, 7)
    assert mem_regs.writes == [(0xFEB0_0010, 7)]
    cfg_write(pio, slot, 0x04, 0, size=2)
    assert mmio.find(0xFEB0_0010) is None


def test_read_only_fields_stay_read_only():
    pio, _, bus, _ = make()
    slot = bus.add(PciDevice(0x1234, 0x1111, 0x030000))
    cfg_write(pio, slot, 0x00, 0)
    assert cfg_read(pio, slot, 0x00) == 0x1111_1234


def test_intx_routing_is_shared_and_level_triggered():
    pio, _, bus, irqs = make()
    a, b = PciDevice(1, 1, 0, interrupt_pin=1), PciDevice(1, 2, 0, interrupt_pin=1)
    sa, sb = bus.add(a, slot=1), bus.add(b, slot=5)      # (1+0)%4 == (5+0)%4: both on PIRQB
    assert cfg_read(pio, sa, 0x3C, 1) == cfg_read(pio, sb, 0x3C, 1) == bus.gsi_for(1, 1)
    a.set_intx(True)
    b.set_intx(True)
    a.set_intx(False)
    assert irqs == [(bus.gsi_for(1, 1), True)]
    b.set_intx(False)
    assert irqs[-1] == (bus.gsi_for(1, 1), False)
    cfg_write(pio, sa, 0x04, CMD_INTX_DISABLE, size=2)
    a.set_intx(True)
    assert irqs[-1][1] is False


def test_firmware_assignment_places_bars_aligned_without_overlap_and_survives_reset():
    pio, mmio, bus, _ = make()
    a, b = PciDevice(1, 1, 0), PciDevice(1, 2, 0)
    a.add_bar(0, Bar(0x100_0000, False, Regs()))
    a.add_bar(2, Bar(0x1000, False, Regs()))
    b.add_bar(0, Bar(0x20, True, Regs()))
    b.add_bar(4, Bar(0x4000, False, Regs(), is_64bit=True))
    bus.add(a)
    bus.add(b)
    bus.assign_resources()
    spans = sorted((bar.mapped_at, bar.mapped_at + bar.size) for d in (a, b) for bar in d.bars.values()
                   if not bar.is_io)
    assert all(s % (e - s) == 0 for s, e in spans)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))
    assert b.bars[0].mapped_at is not None and pio.read(b.bars[0].mapped_at, 1) == 0xAB
    before = [bar.mapped_at for d in (a, b) for bar in d.bars.values()]
    bus.reset()
    assert [bar.mapped_at for d in (a, b) for bar in d.bars.values()] == before


class RamMapper:
    """Records what the bus asks of a CPU backend; refuses ranges listed in `refuse` as a backend would."""

    def __init__(self, refuse=()):
        self.mapped = {}
        self.calls = []
        self.refuse = set(refuse)

    def map_ram(self, gpa, host_addr, size):
        if gpa in self.refuse:
            raise ValueError("overlaps something")
        assert gpa not in self.mapped
        self.mapped[gpa] = (host_addr, size)
        self.calls.append(("map", gpa))

    def unmap_ram(self, gpa):
        del self.mapped[gpa]
        self.calls.append(("unmap", gpa))


class Framebuffer(Regs):
    ram_backing = (0x7F00_0000_0000, 0x10000)

    def __init__(self):
        super().__init__()
        self.changes = []

    def ram_mapping_changed(self, mapped):
        self.changes.append(mapped)


def make_fb(mapper):
    pio, mmio = PortIoBus(), MmioBus()
    bus = PciBus(pio, mmio, lambda gsi, level: None, ram_mapper=mapper)
    bus.attach(pio)
    fb, regs = Framebuffer(), Regs()
    dev = PciDevice(0x1234, 0x1111, 0x030000)
    dev.add_bar(0, Bar(size=0x10000, is_io=False, handler=fb, prefetchable=True))
    dev.add_bar(2, Bar(size=0x1000, is_io=False, handler=regs))
    slot = bus.add(dev)
    return pio, mmio, slot, fb, regs


def test_ram_backed_bar_is_mapped_moved_and_unmapped_with_decode():
    mapper = RamMapper()
    pio, mmio, slot, fb, regs = make_fb(mapper)
    cfg_write(pio, slot, 0x10, 0xE000_0000)
    cfg_write(pio, slot, 0x18, 0xE100_0000)
    assert mapper.mapped == {} and fb.changes == []            # memory decode still off
    cfg_write(pio, slot, 0x04, CMD_MEMORY, 2)
    # Only the BAR with RAM behind it becomes RAM; the register block stays MMIO.
    assert mapper.mapped == {0xE000_0000: fb.ram_backing}
    assert fb.changes == [True]
    # The MMIO registration stays as the fallback a lazily-applying backend needs, at the same address.
    assert mmio.read(0xE000_0010, 4) == 0xE000_0010
    # The guest moves the BAR: unmapped at the old address before it is mapped at the new one.
    cfg_write(pio, slot, 0x10, 0xE200_0000)
    assert mapper.calls == [("map", 0xE000_0000), ("unmap", 0xE000_0000), ("map", 0xE200_0000)]
    assert mapper.mapped == {0xE200_0000: fb.ram_backing}
    assert fb.changes == [True, False, True]
    assert mmio.read(0xE000_0010, 4) == 0xFFFF_FFFF          # nothing decodes the old range any more
    # Memory decode off: the RAM goes away with the MMIO registration.
    cfg_write(pio, slot, 0x04, 0, 2)
    assert mapper.mapped == {} and fb.changes[-1] is False
    assert mmio.read(0xE200_0010, 4) == 0xFFFF_FFFF


def test_refused_ram_mapping_falls_back_to_mmio():
    mapper = RamMapper(refuse={0xE000_0000})
    pio, mmio, slot, fb, _ = make_fb(mapper)
    cfg_write(pio, slot, 0x10, 0xE000_0000)
    cfg_write(pio, slot, 0x04, CMD_MEMORY, 2)
    assert mapper.mapped == {} and fb.changes == []
    mmio.write(0xE000_0020, 4, 7)
    assert fb.writes == [(0xE000_0020, 7)]
    cfg_write(pio, slot, 0x10, 0xE001_0000)                  # somewhere the mapper accepts
    assert mapper.mapped == {0xE001_0000: fb.ram_backing} and fb.changes == [True]


def test_without_a_mapper_bars_stay_mmio():
    pio, mmio, slot, fb, _ = make_fb(None)
    cfg_write(pio, slot, 0x10, 0xE000_0000)
    cfg_write(pio, slot, 0x04, CMD_MEMORY, 2)
    assert fb.changes == []
    assert mmio.read(0xE000_0004, 4) == 0xE000_0004


def test_vga_framebuffer_bar_reports_its_ram_mapping():
    from core.devices.vga import Vga
    mapper = RamMapper()
    pio, mmio = PortIoBus(), MmioBus()
    bus = PciBus(pio, mmio, lambda gsi, level: None, ram_mapper=mapper)
    vga = Vga(bus)
    assert not vga.lfb_mapped_as_ram
    bus.assign_resources()
    (gpa, (host, size)), = mapper.mapped.items()
    assert (host, size) == vga.lfb_host_memory() and gpa == vga.pci.fb_bar.address
    assert vga.lfb_mapped_as_ram
    bus.reset()                       # BARs cleared, then the firmware assignment again
    assert vga.lfb_mapped_as_ram and list(mapper.mapped) == [gpa]
    vga.pci.config_write(0x04, 2, 0)
    assert not vga.lfb_mapped_as_ram and mapper.mapped == {}
