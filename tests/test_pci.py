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
