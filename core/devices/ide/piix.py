"""The PIIX3 IDE controller: PCI function 8086:7010 at 00:01.1, two legacy-mode channels and bus-master DMA.

Models the Intel 82371SB (PIIX3) datasheet, 290550, section 2.5 (the IDE function's configuration space) and 3.6:
- class 01h/01h, programming interface 80h: a bus-master capable controller whose channels both run in legacy
  (compatibility) mode, at the ISA addresses 1F0h-1F7h + 3F6h with IRQ 14 and 170h-177h + 376h with IRQ 15;
  there are no BARs 0-3 and no PCI interrupt pin;
- IDETIM at 40h (primary) and 42h (secondary): bit 15 enables the channel's decode of its legacy ports, together
  with the command register's I/O space enable. Firmware sets it (SeaBIOS writes 8000h to both); Linux's ata_piix
  treats a channel whose bit is clear (41h/43h bit 7) as disabled. SIDETIM (44h) and the timing bits are kept as
  written; timing has no effect here.
- BMIBA, BAR4: 16 I/O ports, the bus-master registers of the primary (0-7) and secondary (8-15) channel
  (busmaster.py).

Drives sit on four positions: 0 primary master, 1 primary slave, 2 secondary master, 3 secondary slave.
drive_positions() is the placement the board uses (and firmware boot order can name): disks fill the primary
channel first, the first CD-ROM goes to the secondary master as on QEMU's PC (its -cdrom), so no channel ever has
a slave without a master.
"""
from __future__ import annotations

import logging
import struct

from core.bus import BusConflictError, PortIoBus
from core.devices.ide.channel import IdeChannel
from core.devices.ide.drive import IdeDrive
from core.devices.ide.state import get_state as ide_get_state
from core.devices.ide.state import set_state as ide_set_state
from core.devices.pci import CMD_BUS_MASTER, CMD_IO, COMMAND, INTERRUPT_LINE, STATUS, Bar, PciDevice
from core.irq import IrqLine, IrqSink
from core.memory import GuestMemory
from core.state.fields import StateError

log = logging.getLogger(__name__)

# (command block base, control register, ISA IRQ) of the primary and secondary channel.
LEGACY_CHANNELS = ((0x1F0, 0x3F6, 14), (0x170, 0x376, 15))
IDETIM, SIDETIM, IDETIM_DECODE = 0x40, 0x44, 0x8000
BMIBA_BAR, BMIBA_SIZE = 4, 16
POSITIONS = 4
POSITION_NAMES = ("primary master", "primary slave", "secondary master", "secondary slave")


def drive_positions(disks: int, cdroms: int) -> tuple[list[int], list[int]]:
    """The positions (0-3) of `disks` IDE disks and `cdroms` CD-ROM drives, in their given order."""
    if disks < 0 or cdroms < 0 or disks + cdroms > POSITIONS:
        raise ValueError(f"{disks} IDE disks and {cdroms} CD-ROMs: the controller holds {POSITIONS} drives")
    disk_positions = ([0, 1, 3] if cdroms else [0, 1, 2, 3])[:disks]
    cd_positions = [p for p in (2, 3, 0, 1) if p not in disk_positions][:cdroms]
    return disk_positions, cd_positions


class PiixIde(PciDevice):
    """The IDE function. Interrupts go to `irq_sink` as ISA IRQs 14/15; DMA reaches `memory` only."""

    def __init__(self, memory: GuestMemory, irq_sink: IrqSink) -> None:
        super().__init__(0x8086, 0x7010, 0x010180)
        struct.pack_into("<H", self.config, STATUS, 0x0280)     # medium DEVSEL timing, fast back-to-back
        for offset in range(IDETIM, SIDETIM + 1):
            self.wmask[offset] = 0xFF
        self.channels = [IdeChannel(i, IrqLine(irq_sink, irq), memory, self._bus_master_enabled)
                         for i, (_, _, irq) in enumerate(LEGACY_CHANNELS)]
        self.add_bar(BMIBA_BAR, Bar(BMIBA_SIZE, True, _BusMasterPorts(self)))
        self.firmware_configured = False
        self._pio: PortIoBus | None = None
        self._decoding = [False, False]

    def attach(self, pio: PortIoBus) -> None:
        """Give the controller the port bus its legacy ports appear on (while decoding is enabled), and take the
        bus's data lanes for the two data ports where it has them (core/pio_lanes.py)."""
        self._pio = pio
        lanes = getattr(pio, "lanes", None)
        if lanes is not None:
            for channel, (base, _, _) in zip(self.channels, LEGACY_CHANNELS, strict=True):
                try:
                    channel.use_lane(lanes.lane(base))
                except ValueError as exc:      # every lane taken: this channel's data port stays plain
                    log.info("IDE channel %d without a data lane: %s", channel.index, exc)
        self._update_decode()

    def get_state(self) -> dict:
        """Machine state of the PCI function and its channels (docs/machine-state.md; core/state/ide_state.py)."""
        return {"pci": super().get_state(), "ide": ide_get_state(self)}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"pci", "ide"}:
            raise StateError("ide: expected a record with pci and ide")
        ide_set_state(self, state["ide"])
        super().set_state(state["pci"])

    def attach_drive(self, position: int, drive: IdeDrive) -> None:
        if not 0 <= position < POSITIONS:
            raise ValueError(f"IDE position {position} is out of range 0-{POSITIONS - 1}")
        self.channels[position // 2].attach(position % 2, drive)

    def drive(self, position: int) -> IdeDrive | None:
        return self.channels[position // 2].drives[position % 2]

    def configure_as_firmware(self) -> None:
        """Do what PC firmware does before an OS starts (for a kernel booted directly, with no firmware): enable
        both channels' decode in IDETIM and give the interrupt line register the primary channel's IRQ. The BAR
        and the command register are PciBus.assign_resources()'s. Kept across resets."""
        self.firmware_configured = True
        self._firmware_setup()

    def _firmware_setup(self) -> None:
        struct.pack_into("<HH", self.config, IDETIM, IDETIM_DECODE, IDETIM_DECODE)
        self.config[INTERRUPT_LINE] = LEGACY_CHANNELS[0][2]
        self._update_decode()

    def _bus_master_enabled(self) -> bool:
        return bool(self._u16(COMMAND) & CMD_BUS_MASTER)

    # -- configuration space ----------------------------------------------------------------------------------
    def config_written(self, offset: int, size: int) -> None:
        if offset < IDETIM + 4 and offset + size > IDETIM:
            self._update_decode()

    def _update_mappings(self) -> None:
        super()._update_mappings()
        self._update_decode()           # the command register's I/O enable gates the legacy ports too

    def _update_decode(self) -> None:
        pio = self._pio
        if pio is None:
            return
        io = bool(self._u16(COMMAND) & CMD_IO)
        for i, channel in enumerate(self.channels):
            want = io and bool(self._u16(IDETIM + 2 * i) & IDETIM_DECODE)
            if want == self._decoding[i]:
                continue
            base, control, _ = LEGACY_CHANNELS[i]
            if want:
                try:
                    pio.register(base, 1, channel.data_port)
                    pio.register(base + 1, 7, channel.command_port)
                    pio.register(control, 1, channel.control_port)
                except BusConflictError as exc:
                    log.warning("IDE channel %d stays off: %s", i, exc)
                    self._unregister(pio, i)
                    continue
                channel.command_port.base = base
            else:
                self._unregister(pio, i)
                with channel.lock:
                    channel.pio_stop()      # a lane must not answer for ports nobody decodes
            self._decoding[i] = want

    @staticmethod
    def _unregister(pio: PortIoBus, index: int) -> None:
        base, control, _ = LEGACY_CHANNELS[index]
        pio.unregister(base, 8)
        pio.unregister(control, 1)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Machine reset: the function's registers (IDETIM off, unless configure_as_firmware() asked otherwise)
        and both channels with their drives back to power-on state."""
        super().reset()
        self.config[IDETIM:SIDETIM + 1] = bytes(SIDETIM + 1 - IDETIM)
        for channel in self.channels:
            channel.reset()
        if self.firmware_configured:
            self._firmware_setup()
        self._update_decode()

    def close(self) -> None:
        """Stop the channels' workers (after the job in flight); call before closing the drives' images."""
        for channel in self.channels:
            channel.close()

    def stats(self) -> dict[str, int]:
        """Totals since power-on: DMA transfers completed and bytes moved by DMA, bytes moved by PIO, errors."""
        out = {"dma_transfers": 0, "dma_bytes": 0, "pio_bytes": 0, "errors": 0}
        for channel in self.channels:
            out["dma_transfers"] += channel.bm.stats["transfers"]
            out["dma_bytes"] += channel.bm.stats["bytes"]
            out["errors"] += channel.bm.stats["errors"]
            for drive in channel.drives:
                if drive is not None:
                    out["pio_bytes"] += drive.stats["pio_bytes"]
                    out["errors"] += drive.stats["errors"]
        return out


class _BusMasterPorts:
    """BAR4's 16 ports: byte accesses go to the channel's bus master under its lock; wider ones are split."""

    def __init__(self, ide: PiixIde) -> None:
        self.ide = ide

    def _base(self) -> int:
        return self.ide.bars[BMIBA_BAR].mapped_at or 0

    def io_read(self, port: int, size: int) -> int:
        offset = port - self._base()
        value = 0
        for i in range(size):
            o = offset + i
            byte = 0xFF
            if 0 <= o < BMIBA_SIZE:
                channel = self.ide.channels[o >> 3]
                with channel.lock:
                    byte = channel.bm.read(o & 7)
            value |= byte << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        offset = port - self._base()
        for i in range(size):
            o = offset + i
            if 0 <= o < BMIBA_SIZE:
                channel = self.ide.channels[o >> 3]
                with channel.lock:
                    channel.bm.write(o & 7, (value >> (8 * i)) & 0xFF)
