"""PCI local bus, configuration mechanism #1 and base address registers.

Models the PCI Local Bus Specification 3.0: the CONFIG_ADDRESS/CONFIG_DATA ports (0xCF8/0xCFC, section 3.2.2.3.2),
the type-0 configuration header (section 6.1), BAR sizing by writing all ones (section 6.2.5.1), the command
register's I/O and memory decode enables, the capabilities list (section 6.7) and the expansion ROM BAR at 0x30
(section 6.2.5.2: decoded while both its enable bit and memory decode are on; how option ROMs reach firmware).
A device's BARs appear on the machine's port-I/O or MMIO bus only while the guest has them decoding, at the
address the guest programmed, as on real hardware. Bus 0 only; the host bridge at 00:00.0 is the board's i440FX
(core/devices/i440fx.py). A slot may hold up to eight functions (a PIIX3 is ISA bridge, IDE and more in one
slot): function 0 then reports a multi-function header type (section 6.2.1), and a function that is absent reads
as all ones, so enumeration moves on.

A memory BAR whose handler has `ram_backing` (host address, size) -- a framebuffer -- is in addition mapped as
guest RAM through the bus's `ram_mapper` (the CPU backend: Accelerator.map_ram), so guest accesses to it do not
exit; the MMIO registration stays as the fallback (a backend may apply the mapping at its next safe point) and is
the only path without a mapper or when the mapper refuses. The handler's optional `ram_mapping_changed(bool)`
hears when the RAM mapping comes and goes (a display must then re-read the memory: writes are untracked).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import struct
import threading
from dataclasses import dataclass

from core import platform
from core.bus import MmioBus, PortIoBus
from core.state.fields import StateError

log = logging.getLogger(__name__)

# Configuration header offsets (PCI 3.0, figure 6-1).
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_PROG, HEADER_TYPE = 0x08, 0x09, 0x0E
BAR0, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x10, 0x2C, 0x2E
EXPANSION_ROM = 0x30               # expansion ROM base address (section 6.2.5.2)
ROM_ENABLE = 0x1
ROM_MIN_SIZE = 2048                # address bits 31:11; the low 11 bits are the enable bit and reserved
CAPABILITIES_PTR, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D

CMD_IO, CMD_MEMORY, CMD_BUS_MASTER, CMD_INTX_DISABLE = 0x1, 0x2, 0x4, 0x400
STATUS_CAP_LIST, STATUS_INTERRUPT = 0x10, 0x08

NUM_BARS = 6


@dataclass
class Bar:
    """One base address register: its size (a power of two), kind and the handler behind it."""

    size: int
    is_io: bool
    handler: object                 # a PortIoDevice (io) or MmioDevice (memory); called with absolute addresses
    is_64bit: bool = False
    prefetchable: bool = False
    address: int = 0
    mapped_at: int | None = None
    ram_mapped: bool = False        # also mapped as guest RAM at mapped_at (see the module docstring)
    rom: bool = False               # the expansion ROM: decoded only while its enable bit is set as well


class ExpansionRom:
    """The contents behind an expansion ROM BAR (PCI 3.0, 6.3.1: a PC-compatible image, 0x55AA...), read-only;
    the MMIO bus calls it with absolute addresses. Its memory is also offered for a read-only RAM mapping
    (`ram_backing`, `ram_readonly`), so firmware copying the ROM does not exit per access."""

    ram_readonly = True

    def __init__(self, data: bytes, size: int) -> None:
        self.data = bytes(data).ljust(size, b"\xff")
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._map[:] = self.data
        self._anchor = ctypes.c_char.from_buffer(self._map)
        self.bar: Bar | None = None

    @property
    def ram_backing(self) -> tuple[int, int]:
        return ctypes.addressof(self._anchor), len(self.data)

    def mmio_read(self, addr: int, size: int) -> int:
        off = addr - (self.bar.mapped_at or 0) if self.bar is not None else 0
        return int.from_bytes(self.data[off:off + size].ljust(size, b"\xff"), "little")

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        pass                        # a ROM


class PciDevice:
    """A PCI function: 256 bytes of configuration space, with per-byte writable masks so read-only fields stay so."""

    def __init__(self, vendor_id: int, device_id: int, class_code: int, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0, interrupt_pin: int = 0) -> None:
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        self.bars: dict[int, Bar] = {}
        self.rom_bar: Bar | None = None
        self.bus: PciBus | None = None
        self.slot = -1
        self.function = 0
        struct.pack_into("<HH", self.config, VENDOR_ID, vendor_id, device_id)
        self.config[REVISION_ID] = revision
        self.config[CLASS_PROG:CLASS_PROG + 3] = class_code.to_bytes(3, "little")
        struct.pack_into("<HH", self.config, SUBSYSTEM_VENDOR_ID, subsystem_vendor_id, subsystem_id)
        self.config[INTERRUPT_PIN] = interrupt_pin
        self.wmask[INTERRUPT_LINE] = 0xFF
        # Command: I/O, memory, bus master, INTx disable are guest-controlled.
        struct.pack_into("<H", self.wmask, COMMAND, CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE)
        self._last_cap = 0

    # -- set-up by the device model -----------------------------------------------------------------------
    def add_bar(self, index: int, bar: Bar) -> None:
        if bar.size & (bar.size - 1) or bar.size < (4 if bar.is_io else 16):
            raise ValueError(f"BAR size {bar.size:#x} must be a power of two (>= 4 for I/O, 16 for memory)")
        self.bars[index] = bar
        low = 0x1 if bar.is_io else (0x4 if bar.is_64bit else 0) | (0x8 if bar.prefetchable else 0)
        struct.pack_into("<I", self.config, BAR0 + 4 * index, low)

    def set_expansion_rom(self, data: bytes) -> None:
        """Offer `data` (an option ROM image) through the expansion ROM BAR at 0x30, sized to the next power of
        two of at least 2 KiB, disabled until the guest enables it (PCI 3.0, 6.2.5.2)."""
        size = ROM_MIN_SIZE
        while size < len(data):
            size <<= 1
        handler = ExpansionRom(data, size)
        self.rom_bar = handler.bar = Bar(size=size, is_io=False, handler=handler, rom=True)
        struct.pack_into("<I", self.config, EXPANSION_ROM, 0)
        struct.pack_into("<I", self.wmask, EXPANSION_ROM, (~(size - 1) & 0xFFFF_F800) | ROM_ENABLE)

    def add_capability(self, cap_id: int, body: bytes, writable: bytes | None = None) -> int:
        """Append a capability (id, next pointer, body) to the list; return its offset in config space."""
        offset = self._next_cap_offset
        if offset + 2 + len(body) > 256:
            raise ValueError("configuration space full")
        self.config[offset] = cap_id
        self.config[offset + 1] = 0
        self.config[offset + 2:offset + 2 + len(body)] = body
        if writable:
            self.wmask[offset + 2:offset + 2 + len(writable)] = writable
        if self._last_cap:
            self.config[self._last_cap + 1] = offset
        else:
            self.config[CAPABILITIES_PTR] = offset
            struct.pack_into("<H", self.config, STATUS, self._u16(STATUS) | STATUS_CAP_LIST)
        self._last_cap = offset
        self._next_cap_offset = (offset + 2 + len(body) + 3) & ~3
        return offset

    _next_cap_offset = 0x40

    # -- interrupts --------------------------------------------------------------------------------------
    def set_intx(self, level: bool) -> None:
        """Drive INTx (level-triggered, shared). Masked by the command register's INTx-disable bit."""
        status = self._u16(STATUS)
        status = status | STATUS_INTERRUPT if level else status & ~STATUS_INTERRUPT
        struct.pack_into("<H", self.config, STATUS, status)
        if self.bus is not None:
            self.bus.route_intx(self, level and not self._u16(COMMAND) & CMD_INTX_DISABLE)

    # -- configuration space access (called by PciBus) ---------------------------------------------------
    def _u16(self, off: int) -> int:
        return struct.unpack_from("<H", self.config, off)[0]

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        if BAR0 <= offset < BAR0 + 4 * NUM_BARS:
            self._write_bar(offset, size, value)
            return
        old_cmd = self._u16(COMMAND)
        old_rom = self.config[EXPANSION_ROM:EXPANSION_ROM + 4]
        data = value.to_bytes(size, "little")
        for i, b in enumerate(data):
            off = offset + i
            if off == STATUS or off == STATUS + 1:
                continue  # status bits are read-only or write-one-to-clear; we have none to clear
            m = self.wmask[off]
            self.config[off] = (self.config[off] & ~m) | (b & m)
        if self.rom_bar is not None and self.config[EXPANSION_ROM:EXPANSION_ROM + 4] != old_rom:
            self.rom_bar.address = struct.unpack_from("<I", self.config, EXPANSION_ROM)[0] & 0xFFFF_F800
            self._update_mappings()
        if self._u16(COMMAND) != old_cmd:
            self._update_mappings()
            if (old_cmd ^ self._u16(COMMAND)) & CMD_INTX_DISABLE and self.bus is not None:
                self.bus.route_intx(self, bool(self._u16(STATUS) & STATUS_INTERRUPT)
                                    and not self._u16(COMMAND) & CMD_INTX_DISABLE)
        self.config_written(offset, size)

    def config_written(self, offset: int, size: int) -> None:
        """Hook for device models with live registers in config space (e.g. MSI-X enable)."""

    def _bar_for(self, offset: int) -> tuple[int, Bar | None, bool]:
        """Which BAR a dword at `offset` belongs to; the flag says it is the high half of a 64-bit BAR."""
        index = (offset - BAR0) // 4
        if index in self.bars:
            return index, self.bars[index], False
        if index - 1 in self.bars and self.bars[index - 1].is_64bit:
            return index - 1, self.bars[index - 1], True
        return index, None, False

    def _write_bar(self, offset: int, size: int, value: int) -> None:
        dword_off = offset & ~3
        index, bar, high = self._bar_for(dword_off)
        if bar is None:
            return
        cur = int.from_bytes(self.config[dword_off:dword_off + 4], "little")
        shift = (offset - dword_off) * 8
        mask = ((1 << (size * 8)) - 1) << shift
        new = (cur & ~mask) | ((value << shift) & mask)
        if high:
            addr = (bar.address & 0xFFFF_FFFF) | ((new & ((~(bar.size - 1) >> 32) & 0xFFFF_FFFF)) << 32)
            struct.pack_into("<I", self.config, dword_off, (addr >> 32) & 0xFFFF_FFFF)
        else:
            flag_bits = 0x3 if bar.is_io else 0xF
            base_mask = ~(bar.size - 1) & 0xFFFF_FFFF & ~flag_bits
            low = (new & base_mask) | (cur & flag_bits)
            struct.pack_into("<I", self.config, dword_off, low)
            addr = (bar.address & ~0xFFFF_FFFF) | (low & ~flag_bits)
        bar.address = addr
        self._update_mappings()

    def _update_mappings(self) -> None:
        if self.bus is not None:
            self.bus.update_bar_mappings(self)

    # -- machine state (docs/machine-state.md) ------------------------------------------------------------
    STATE_VERSION = 1

    def get_state(self) -> dict:
        """Configuration space and BAR addresses (subclasses add their own registers)."""
        return {"config": bytes(self.config), "bars": {str(i): bar.address for i, bar in self.bars.items()},
                "rom": self.rom_bar.address if self.rom_bar is not None else None}

    def set_state(self, state: dict) -> None:
        """Load what get_state gave. Only guest-writable bits of configuration space are taken (identity and
        capability layout stay this model's); BAR addresses must be aligned to their BAR's size."""
        where = f"pci {self.slot:02x}.{self.function}"
        config, bars, rom = (state.get(k) for k in ("config", "bars", "rom"))
        if not isinstance(config, bytes) or len(config) != 256:
            raise StateError(f"{where}: configuration space must be 256 bytes")
        if not isinstance(bars, dict) or sorted(bars) != sorted(str(i) for i in self.bars):
            raise StateError(f"{where}: the BARs saved ({sorted(bars) if isinstance(bars, dict) else bars}) are "
                             f"not this device's ({sorted(self.bars)})")
        addresses = {}
        for key, address in bars.items():
            bar = self.bars[int(key)]
            limit = 1 << (64 if bar.is_64bit else 32)
            if type(address) is not int or not 0 <= address < limit or address % bar.size:
                raise StateError(f"{where}: BAR {key} address {address!r} is not aligned inside its range")
            addresses[int(key)] = address
        if (rom is None) != (self.rom_bar is None) or rom is not None and (
                type(rom) is not int or not 0 <= rom < 1 << 32 or rom % self.rom_bar.size):
            raise StateError(f"{where}: expansion ROM address {rom!r} does not fit this device")
        for off in range(256):
            if not BAR0 <= off < BAR0 + 4 * NUM_BARS and off not in range(STATUS, STATUS + 2):
                m = self.wmask[off]
                self.config[off] = (self.config[off] & ~m) | (config[off] & m)
        for index, address in addresses.items():
            bar = self.bars[index]
            flags = int.from_bytes(self.config[BAR0 + 4 * index:BAR0 + 4 * index + 4], "little") & \
                (0x3 if bar.is_io else 0xF)
            struct.pack_into("<I", self.config, BAR0 + 4 * index, (address & 0xFFFF_FFFF) | flags)
            if bar.is_64bit:
                struct.pack_into("<I", self.config, BAR0 + 4 * index + 4, address >> 32)
            bar.address = address
        if self.rom_bar is not None and rom is not None:
            self.rom_bar.address = rom
        self._update_mappings()
        self.set_intx(bool(int.from_bytes(config[STATUS:STATUS + 2], "little") & STATUS_INTERRUPT))

    def reset(self) -> None:
        """Power-on state of the guest-writable registers (BAR addresses, command, interrupt line)."""
        struct.pack_into("<H", self.config, COMMAND, 0)
        self.config[INTERRUPT_LINE] = 0
        for index, bar in self.bars.items():
            bar.address = 0
            low = int.from_bytes(self.config[BAR0 + 4 * index:BAR0 + 4 * index + 4], "little")
            struct.pack_into("<I", self.config, BAR0 + 4 * index, low & (0x3 if bar.is_io else 0xF))
            if bar.is_64bit:
                struct.pack_into("<I", self.config, BAR0 + 4 * index + 4, 0)
        if self.rom_bar is not None:
            self.rom_bar.address = 0
            struct.pack_into("<I", self.config, EXPANSION_ROM, 0)
        self._update_mappings()


class PciBus:
    """Bus 0 behind configuration mechanism #1, and the INTx routing of its slots to GSIs.

    INTx routing follows the PIIX swizzle QEMU and SeaBIOS use: slot s, pin p (INTA=0) reaches PIRQ (s + p) mod 4,
    and PIRQ A-D are wired to I/O APIC pins 16-19 (platform.PCI_INTX_GSIS), away from the ISA IRQs; the DSDT's
    _PRT tells the guest the same, and the interrupt line register holds the GSI.
    """

    PIRQ_GSIS = platform.PCI_INTX_GSIS

    def __init__(self, pio: PortIoBus, mmio: MmioBus, set_irq, ram_mapper=None,
                 host_bridge: PciDevice | None = None) -> None:
        self.pio = pio
        self.mmio = mmio
        self.ram_mapper = ram_mapper    # an Accelerator with map_ram/unmap_ram, or None: BARs are MMIO only
        self._set_irq = set_irq
        self.devices: dict[int, PciDevice] = {}      # by devfn: slot << 3 | function
        self._address = 0
        self._lock = threading.RLock()
        self._intx_levels: dict[int, set[int]] = {}
        self.pirq_router = None         # a Piix3IsaBridge also steering PIRQ A-D to ISA IRQs, or None
        # 00:00.0: the board's i440FX (core/devices/i440fx.py); a bus on its own gets bare i440FX identity
        # registers so that guests recognise bus 0.
        self.add(host_bridge or PciDevice(0x8086, 0x1237, 0x060000, revision=0x02), slot=0)

    def attach(self, pio: PortIoBus) -> None:
        # Only 0xCF8 itself: CONFIG_ADDRESS is dword-accessed there, and 0xCF9 is the PIIX reset register.
        pio.register(0xCF8, 1, _ConfigAddressPort(self))
        pio.register(0xCFC, 4, _ConfigDataPort(self))

    def add(self, device: PciDevice, slot: int | None = None, function: int = 0) -> int:
        """Put `device` at slot:function (the first free slot when `slot` is None); return the slot."""
        if not 0 <= function < 8:
            raise ValueError(f"PCI function {function} is out of range 0-7")
        with self._lock:
            if slot is None:
                slot = next(s for s in range(1, 32) if not self.slot_in_use(s))
            devfn = slot << 3 | function
            if devfn in self.devices:
                raise ValueError(f"PCI slot {slot} function {function} is taken")
            self.devices[devfn] = device
            device.bus = self
            device.slot = slot
            device.function = function
            pin = device.config[INTERRUPT_PIN]
            if pin:
                device.config[INTERRUPT_LINE] = self.gsi_for(slot, pin)
            functions = [d for df, d in self.devices.items() if df >> 3 == slot]
            if len(functions) > 1 and slot << 3 in self.devices:
                self.devices[slot << 3].config[HEADER_TYPE] |= 0x80
            return slot

    def slot_in_use(self, slot: int) -> bool:
        return any(devfn >> 3 == slot for devfn in self.devices)

    def gsi_for(self, slot: int, pin: int) -> int:
        return self.PIRQ_GSIS[self.pirq_for(slot, pin)]

    @staticmethod
    def pirq_for(slot: int, pin: int) -> int:
        """PIRQ A-D (0-3) that INTx pin `pin` (INTA = 1) of `slot` is wired to."""
        return (slot + pin - 1) % 4

    def route_intx(self, device: PciDevice, level: bool) -> None:
        """PCI interrupts are level-triggered and shared: a GSI is asserted while any device on it asserts."""
        gsi = self.gsi_for(device.slot, device.config[INTERRUPT_PIN] or 1)
        with self._lock:
            holders = self._intx_levels.setdefault(gsi, set())
            was = bool(holders)
            devfn = device.slot << 3 | device.function
            if level:
                holders.add(devfn)
            else:
                holders.discard(devfn)
            now = bool(holders)
        if now != was:
            self._set_irq(gsi, now)
            if self.pirq_router is not None:
                self.pirq_router.set_pirq(self.PIRQ_GSIS.index(gsi), now)

    # -- BAR decode --------------------------------------------------------------------------------------
    def update_bar_mappings(self, device: PciDevice) -> None:
        with self._lock:
            cmd = device._u16(COMMAND)
            bars = list(device.bars.values())
            if device.rom_bar is not None:
                bars.append(device.rom_bar)
            for bar in bars:
                enabled = cmd & (CMD_IO if bar.is_io else CMD_MEMORY)
                if bar.rom and not device.config[EXPANSION_ROM] & ROM_ENABLE:
                    enabled = 0
                want = bar.address if enabled and bar.address else None
                if want == bar.mapped_at:
                    continue
                if bar.mapped_at is not None:
                    if bar.is_io:
                        self.pio.unregister(bar.mapped_at, bar.size)
                    else:
                        self._bind_doorbells(bar, False)
                        if bar.ram_mapped:
                            self._unmap_ram(bar)
                        self.mmio.unregister(bar.mapped_at)
                    bar.mapped_at = None
                if want is None:
                    continue
                try:
                    if bar.is_io:
                        self.pio.register(want, bar.size, bar.handler)
                    else:
                        self.mmio.register(want, bar.size, bar.handler)
                    bar.mapped_at = want
                except Exception:
                    # The guest placed a BAR over something else: real hardware would decode both and
                    # misbehave; we leave this BAR unmapped so the other device keeps working.
                    bar.mapped_at = None
                    continue
                if not bar.is_io:
                    self._map_ram(bar)
                    self._bind_doorbells(bar, True)

    def _map_ram(self, bar: Bar) -> None:
        backing = getattr(bar.handler, "ram_backing", None)
        if self.ram_mapper is None or backing is None or bar.mapped_at is None:
            return
        host, size = backing
        if size != bar.size:
            return
        try:
            if getattr(bar.handler, "ram_readonly", False):
                self.ram_mapper.map_ram(bar.mapped_at, host, size, readonly=True)   # writes reach the handler
            else:
                self.ram_mapper.map_ram(bar.mapped_at, host, size)
        except Exception as exc:
            # Refused (overlap, outside what the backend maps, unsupported): the MMIO path serves the BAR.
            log.info("BAR at %#x stays MMIO: %s", bar.mapped_at, exc)
            return
        bar.ram_mapped = True
        self._notify_ram_mapping(bar, True)

    def _unmap_ram(self, bar: Bar) -> None:
        bar.ram_mapped = False
        try:
            self.ram_mapper.unmap_ram(bar.mapped_at)
        except Exception:
            log.exception("unmapping the RAM behind the BAR at %#x failed", bar.mapped_at)
        self._notify_ram_mapping(bar, False)

    def _bind_doorbells(self, bar: Bar, bind: bool) -> None:
        """Hand the accelerator the doorbells of a BAR's notification addresses (core/devices/doorbell.py), or
        take them back before the BAR moves. One it refuses (no such support, a full table) is still rung from
        Python when the write reaches the BAR's MMIO handler."""
        doorbells = getattr(bar.handler, "doorbells", None)
        if doorbells is None or self.ram_mapper is None or bar.mapped_at is None:
            return
        for offset, fd in doorbells():
            try:
                if bind:
                    self.ram_mapper.add_ioeventfd(bar.mapped_at + offset, fd)
                else:
                    self.ram_mapper.remove_ioeventfd(bar.mapped_at + offset)
            except NotImplementedError:
                return
            except (OSError, ValueError) as exc:
                log.info("the doorbell at %#x stays an MMIO exit: %s", bar.mapped_at + offset, exc)

    @staticmethod
    def _notify_ram_mapping(bar: Bar, mapped: bool) -> None:
        changed = getattr(bar.handler, "ram_mapping_changed", None)
        if changed is not None:
            changed(mapped)

    # -- configuration mechanism #1 ----------------------------------------------------------------------
    def _target(self) -> tuple[PciDevice | None, int]:
        addr = self._address
        if not addr & 0x8000_0000:
            return None, 0
        bus, slot, func = (addr >> 16) & 0xFF, (addr >> 11) & 0x1F, (addr >> 8) & 0x7
        if bus != 0:
            return None, 0
        return self.devices.get(slot << 3 | func), addr & 0xFC

    def config_data_read(self, port: int, size: int) -> int:
        with self._lock:
            dev, reg = self._target()
            if dev is None:
                return (1 << (size * 8)) - 1
            return dev.config_read(reg + (port & 3), size)

    def config_data_write(self, port: int, size: int, value: int) -> None:
        with self._lock:
            dev, reg = self._target()
            if dev is not None:
                dev.config_write(reg + (port & 3), size, value)

    def reset(self) -> None:
        with self._lock:
            self._address = 0
            for dev in self.devices.values():
                dev.reset()
            self._intx_levels.clear()
            if self._firmware_windows is not None:
                self.assign_resources(*self._firmware_windows)

    _firmware_windows: tuple[int, int, int, int] | None = None
    STATE_VERSION = 1

    def get_state(self) -> dict:
        """The configuration address latch and every function's state, by device/function number."""
        with self._lock:
            return {"address": self._address,
                    "functions": {f"{devfn:02x}": dev.get_state() for devfn, dev in self.devices.items()}}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"address", "functions"}:
            raise StateError("pci: expected a record with address and functions")
        functions, address = state["functions"], state["address"]
        mine = {f"{devfn:02x}": dev for devfn, dev in self.devices.items()}
        if not isinstance(functions, dict) or sorted(functions) != sorted(mine):
            raise StateError(f"pci: the saved machine has PCI functions {sorted(functions)}, this one "
                             f"{sorted(mine)}: restore with the VM definition it was saved with")
        if type(address) is not int or not 0 <= address <= 0xFFFF_FFFF:
            raise StateError(f"pci.address: {address!r} is not a 32-bit value")
        with self._lock:
            self._address = address
            self._intx_levels.clear()
        for key, dev in mine.items():
            if not isinstance(functions[key], dict):
                raise StateError(f"pci function {key}: expected a record")
            dev.set_state(functions[key])

    def assign_resources(self, mem_base: int = platform.PCI_MMIO_WINDOW[0],
                         mem_limit: int = platform.PCI_MMIO_WINDOW[1],
                         io_base: int = 0xC000, io_limit: int = 0x1_0000) -> None:
        """Do what PC firmware does before the OS starts: give every BAR an address inside the windows (largest
        first, each aligned to its size) and enable decoding, so a directly booted kernel finds its devices
        usable. Done again after every reset."""
        with self._lock:
            self._firmware_windows = (mem_base, mem_limit, io_base, io_limit)
            bars = [(dev, index, bar) for devfn, dev in sorted(self.devices.items()) for index, bar in dev.bars.items()]
            next_mem, next_io = mem_base, io_base
            for dev, index, bar in sorted(bars, key=lambda t: -t[2].size):
                if bar.is_io:
                    addr = (next_io + bar.size - 1) & ~(bar.size - 1)
                    if addr + bar.size > io_limit:
                        raise ValueError(f"PCI I/O window exhausted placing a {bar.size:#x}-byte BAR")
                    next_io = addr + bar.size
                else:
                    addr = (next_mem + bar.size - 1) & ~(bar.size - 1)
                    if addr + bar.size > mem_limit:
                        raise ValueError(f"PCI memory window exhausted placing a {bar.size:#x}-byte BAR")
                    next_mem = addr + bar.size
                dev.config_write(BAR0 + 4 * index, 4, addr & 0xFFFF_FFFF)
                if bar.is_64bit:
                    dev.config_write(BAR0 + 4 * index + 4, 4, addr >> 32)
            for dev in self.devices.values():
                if dev.bars:
                    cmd = dev._u16(COMMAND)
                    want = cmd | (CMD_IO if any(b.is_io for b in dev.bars.values()) else 0) \
                        | (CMD_MEMORY if any(not b.is_io for b in dev.bars.values()) else 0)
                    dev.config_write(COMMAND, 2, want)


class _ConfigAddressPort:
    def __init__(self, bus: PciBus) -> None:
        self.bus = bus

    def io_read(self, port: int, size: int) -> int:
        if size == 4:
            return self.bus._address
        return (1 << (size * 8)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        # Only dword accesses are CONFIG_ADDRESS (mechanism #1); narrower ones are other legacy registers.
        if size == 4:
            self.bus._address = value & 0x80FF_FFFC


class _ConfigDataPort:
    def __init__(self, bus: PciBus) -> None:
        self.bus = bus

    def io_read(self, port: int, size: int) -> int:
        return self.bus.config_data_read(port, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.bus.config_data_write(port, size, value)
