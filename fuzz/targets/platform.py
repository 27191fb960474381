"""Port and MMIO device models of the PC platform (core/devices: 8259 PIC, 16550 UART, 8254 PIT, MC146818 RTC,
8042, POST, ACPI PM, reset control, port 92, debugcon, QEMU fw_cfg with its DMA interface, I/O APIC, VGA with
Bochs VBE): a hostile guest's register traffic may never raise to the caller (the vCPU loop), nor make a timer
callback fail. Under a real VM such an exception stops that VM (core/machine.py marks it crashed); here it is a
finding, as the devices are designed to absorb any guest behaviour."""
from __future__ import annotations

import struct

from core.bus import MmioBus, PortIoBus
from core.devices.acpi_pm import AcpiPm
from core.devices.debugcon import DebugConsole
from core.devices.fw_cfg import FwCfg
from core.devices.i440fx import I440fxHostBridge
from core.devices.i8042 import I8042
from core.devices.ioapic import IoApic
from core.devices.pci import PciBus
from core.devices.pic import Pic8259Pair
from core.devices.piix3 import Piix3IsaBridge
from core.devices.pit import Pit8254
from core.devices.port92 import SystemControlPortA
from core.devices.post import PostPort
from core.devices.reset_control import ResetControl
from core.devices.rtc import CmosRtc
from core.devices.serial import Uart16550
from core.devices.vga import Vga
from core.irq import IrqLine
from core.memory import GuestMemory
from core.timers import TimerQueue
from fuzz.harness import Program, target, untraced

IOAPIC = 0xFEC0_0000
VGA_WINDOW = 0xA0000
VGA_SLOT = 2
BAR_FB, BAR_MMIO = 0xFD00_0000, 0xFEB0_0000     # where the seeds program the VGA's BARs (as SeaBIOS would)
_mem: GuestMemory | None = None


class _Sink:
    def set_irq(self, gsi: int, level: bool) -> None:
        pass


class Rig:
    def __init__(self) -> None:
        global _mem
        if _mem is None:
            _mem = GuestMemory(2 << 20)
        self.mem = _mem
        self.mem.fill(0, self.mem.size)     # every input starts from the same RAM, so a crash replays alone
        self.timers = TimerQueue()
        self.errors: list[BaseException] = []
        self.timers.on_error = self.errors.append
        sink = _Sink()
        self.pio, self.mmio = PortIoBus(), MmioBus()
        self.pic = Pic8259Pair()
        self.uart = Uart16550(IrqLine(sink, 4), lambda b: None, timers=self.timers)   # as core/board.py builds it
        self.kbd = I8042(lambda: None, IrqLine(sink, 1), IrqLine(sink, 12))
        self.fw = FwCfg(self.mem)
        self.fw.add_file("etc/e820", bytes(range(256)) * 4)
        self.fw.add_file("etc/writable", bytes(64), writable=True)
        self.fw.add_u32(0x05, 1)
        self.host_bridge = I440fxHostBridge()
        self.pci = PciBus(self.pio, self.mmio, lambda gsi, level: None, host_bridge=self.host_bridge)
        self.isa_bridge = Piix3IsaBridge(lambda irq, level: None)
        self.pci.add(self.isa_bridge, slot=1, function=0)
        self.pci.pirq_router = self.isa_bridge
        self.vga = Vga(self.pci, pci_slot=VGA_SLOT)
        for dev in (self.pci, self.pic, self.uart, Pit8254(self.timers, IrqLine(sink, 0)),
                    CmosRtc(IrqLine(sink, 8), self.timers, 1 << 28), self.kbd, PostPort(),
                    AcpiPm(IrqLine(sink, 9), lambda: None, timers=self.timers), ResetControl(lambda: None),
                    SystemControlPortA(lambda: None), DebugConsole(), self.fw):
            dev.attach(self.pio)
        self.vga.attach(self.pio, self.mmio)
        self.ioapic = IoApic(lambda *m: None)
        self.ioapic.attach(self.mmio)
        self.ports = sorted(self.pio._ports)

    def close(self) -> None:
        self.timers.stop()


PIO_SIZES, MMIO_SIZES = (1, 2, 4), (1, 2, 4, 8)
IOAPIC_W, WINDOW_W, FB_W, MMIO_W = range(4)      # the MMIO op's `which`


def pio_w(port: int, size: int, value: int) -> bytes:
    """The program bytes of one port write (see fuzz_platform)."""
    return bytes([0, 0, PIO_SIZES.index(size)]) + struct.pack("<HI", port, value)


def pio_r(port: int, size: int) -> bytes:
    return bytes([1, 0, PIO_SIZES.index(size)]) + struct.pack("<H", port)


def mmio_w(which: int, size: int, off: int, value: int) -> bytes:
    return bytes([2, which, MMIO_SIZES.index(size)]) + struct.pack("<IQ", off, value)


def mmio_r(which: int, size: int, off: int) -> bytes:
    return bytes([3, which, MMIO_SIZES.index(size)]) + struct.pack("<I", off)


def mem_w(addr: int, data: bytes) -> bytes:
    return bytes([5]) + struct.pack("<HB", addr >> 4, len(data)) + data


def fw_cfg_dma(access_at: int) -> bytes:
    """Start a fw_cfg DMA transfer of the FWCfgDmaAccess at `access_at` (as SeaBIOS does: outl to 0x518)."""
    return pio_w(0x514, 4, 0) + pio_w(0x518, 4, int.from_bytes(access_at.to_bytes(4, "big"), "little"))


def _seeds() -> list[bytes]:
    def cfg_w(slot: int, reg: int, value: int) -> bytes:
        return pio_w(0xCF8, 4, 0x8000_0000 | slot << 11 | reg) + pio_w(0xCFC, 4, value)
    vga_bars = cfg_w(VGA_SLOT, 0x10, BAR_FB) + cfg_w(VGA_SLOT, 0x18, BAR_MMIO) + cfg_w(VGA_SLOT, 0x04, 3)
    fw_read = struct.pack(">IIQ", (0x20 << 16) | 0x0A, 64, 0x9000)     # select etc/e820, read 64 bytes to 0x9000
    return [
        vga_bars + mmio_w(FB_W, 4, 0x100, 0xFFFF) + mmio_w(MMIO_W, 2, 0x500, 0x41) + mmio_r(MMIO_W, 2, 0x502),
        cfg_w(0, 0x58, 0x33333330) + cfg_w(1, 0x60, 0x0B0A0905) + cfg_w(1, 0x68, 0x80) + cfg_w(0, 0x72, 0x0A),
        pio_w(0x20, 1, 0x11) + pio_w(0x21, 1, 0x08) + pio_w(0x21, 1, 0x04) + pio_w(0x21, 1, 0x01)
        + bytes([4, 0, 0x81]),
        pio_w(0x3F8 + 3, 1, 0x80) + pio_w(0x3F8, 1, 1) + pio_w(0x3F8 + 3, 1, 3) + bytes([4, 3, 5]) + b"hello"
        + pio_r(0x3F8, 1) + pio_r(0x3F8 + 5, 1),
        pio_w(0x43, 1, 0x34) + pio_w(0x40, 1, 0x9C) + pio_w(0x40, 1, 0x2E)
        + pio_w(0x70, 1, 0x0B) + pio_w(0x71, 1, 0x52) + pio_w(0x70, 1, 0x0C) + pio_r(0x71, 1),
        pio_w(0x64, 1, 0xD4) + pio_w(0x60, 1, 0xF4) + pio_w(0x64, 1, 0x20) + pio_r(0x60, 1)
        + bytes([4, 4, 0]) + b"\x1c" + bytes([4, 5, 3]) + struct.pack("<HH", 0x8010, 0x7FF0),
        pio_w(0x510, 2, 0x19) + pio_r(0x511, 1) * 8,
        mem_w(0x8000, fw_read) + fw_cfg_dma(0x8000),
        pio_w(0x1CE, 2, 4) + pio_w(0x1CF, 2, 0x41) + pio_w(0x3C4, 1, 2) + pio_w(0x3C5, 1, 0xF)
        + mmio_w(WINDOW_W, 4, 0x100, 0x11223344) + mmio_r(WINDOW_W, 2, 0x100),
        mmio_w(IOAPIC_W, 4, 0, 0x10) + mmio_w(IOAPIC_W, 4, 0x10, 0x1234) + mmio_r(IOAPIC_W, 4, 0x10)
        + bytes([4, 1, 0x83, 4, 2, 0x34]),
    ]


@target("platform", allowed=(), seeds=_seeds, max_len=2048)
def fuzz_platform(data: bytes) -> None:
    """Register traffic (port and MMIO, every width), guest-memory writes and interrupt/input events."""
    with untraced():
        rig = Rig()
    p = Program(data)
    try:
        while p.more():
            op = p.u8() % 6
            if op in (0, 1):
                idx, size = p.u8(), p.choice(PIO_SIZES)
                port = p.uint(2)
                port = port if port in rig.pio._ports else rig.ports[(port + idx) % len(rig.ports)]
                if op == 0:
                    rig.pio.write(port, size, p.uint(4) & ((1 << (8 * size)) - 1))
                else:
                    rig.pio.read(port, size)
            elif op in (2, 3):
                which, size = p.u8(), p.choice(MMIO_SIZES)
                off = p.uint(4)
                addr = (IOAPIC + (off & 0x3FF), VGA_WINDOW + off % 0x20000, BAR_FB + off % (16 << 20),
                        BAR_MMIO + off % 0x1000)[which % 4]
                if op == 2:
                    rig.mmio.write(addr, size, p.uint(8) & ((1 << (8 * size)) - 1))
                else:
                    rig.mmio.read(addr, size)
            elif op == 4:
                kind, arg = p.u8() % 6, p.u8()
                if kind == 0:
                    rig.pic.set_irq(arg % 16, bool(arg & 0x80))
                    if rig.pic.has_interrupt():
                        rig.pic.acknowledge()
                elif kind == 1:
                    rig.ioapic.set_irq(arg % 24, bool(arg & 0x80))
                elif kind == 2:
                    rig.ioapic.eoi(arg)
                elif kind == 3:
                    rig.uart.receive(p.take(arg % 32))
                elif kind == 4:
                    rig.kbd.press_key(p.take(1 + arg % 3))
                else:
                    rig.kbd.mouse_event(p.uint(2) - 0x8000, p.uint(2) - 0x8000, arg & 7, (arg >> 3) - 16)
            else:
                addr, n = p.uint(2) << 4, p.u8()
                rig.mem.write(addr, p.take(n))
        if rig.errors:
            raise rig.errors[0]
    finally:
        rig.close()
