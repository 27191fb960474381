"""One IDE channel: its command and control block registers, the selection of device 0/1, device control (nIEN,
SRST), the interrupt line, and the PIO data path of the data port.

Models ATA/ATAPI-6 (T13/1410D) section 7 (the I/O registers) and 9.2/9.12 (software reset and the signatures):
- Both devices latch every write to the command block registers (7.1); a read answers from the selected device.
  Each device position keeps its own register file, so after a reset device 1 shows its own signature. The 48-bit
  registers are two-deep FIFOs: each write pushes the previous value into the "high order byte", which reads back
  while Device Control's HOB bit is set (7.8); any command block write clears HOB.
- A position with no device: when the other position has one, its Status reads 00h (so drivers see nothing there)
  and its other registers read back what was written, as device 0 answers for an absent device 1; a channel with
  no device at all reads FFh everywhere, the floating bus that SeaBIOS and Linux take for "nothing here".
- SRST set: every device is busy and its command is abandoned; SRST cleared: each device places its signature
  (ATA 00h/00h, ATAPI 14h/EBh) with Sector Count and LBA Low 01h and the diagnostic code 01h, device 0 selected.
- INTRQ: a device sets it when a command or DRQ block needs the host, reading Status (not Alternate Status) or
  writing Command clears it, nIEN masks it. The channel drives ISA IRQ 14 or 15 (edge, as a PC wires them) and
  sets the bus master's interrupt bit on each assertion (82371SB 2.5.2).

The data port is the hot path: SeaBIOS loads boot loaders, kernels and initrds with `rep insw`, one port access
per two bytes. A DRQ block lives in the channel's preallocated buffer; the data port handler serves every access
but the last of a block with one index into a 16-bit view of it and two integer compares, no lock and no
allocation. The last access of a block (and anything unusual) takes the slow path under the channel lock, which
tells the drive the block is done. Accesses never cross a DRQ block: a 32-bit access with two bytes left moves
two (as the PIIX splits it), and an 8-bit access moves a word.

Where the port bus has data lanes (core/pio_lanes.py: `PortIoBus.lanes`), the channel offers each DRQ block on
its data port's lane instead, and the CPU backend moves the block's words without calling the model at all; only
the access that ends a block (and single accesses on KVM) reach the data port handler, which then takes it from
the lane under the lock and ends the block.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.devices.ide.busmaster import BM_INTERRUPT, BusMaster
from core.devices.ide.defs import (
    BSY,
    CMD_DEVICE_RESET,
    CMD_EXECUTE_DEVICE_DIAGNOSTIC,
    CTL_HOB,
    CTL_NIEN,
    CTL_SRST,
    DEV_SELECT,
    DIAG_PASSED,
    DRQ,
    SIG_NONE,
)
from core.devices.ide.worker import Worker
from core.irq import IrqLine
from core.memory import GuestMemory

if TYPE_CHECKING:
    from core.devices.ide.drive import IdeDrive

# The PIO buffer: the largest DRQ block is an ATAPI byte count of 0xFFFE; reads fill it many blocks at a time.
BUF_SIZE = 128 * 1024


class Registers:
    """The task-file registers one device position holds (ATA-6 7.1), with the 48-bit "previous" bytes."""

    __slots__ = ("feature", "hob_feature", "nsector", "hob_nsector", "lbal", "hob_lbal", "lbam", "hob_lbam",
                 "lbah", "hob_lbah", "device", "status", "error")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.feature = self.hob_feature = self.nsector = self.hob_nsector = 0
        self.lbal = self.hob_lbal = self.lbam = self.hob_lbam = self.lbah = self.hob_lbah = 0
        self.device = self.status = self.error = 0

    def lba28(self) -> int:
        return (self.device & 0x0F) << 24 | self.lbah << 16 | self.lbam << 8 | self.lbal

    def lba48(self) -> int:
        return (self.hob_lbah << 40 | self.hob_lbam << 32 | self.hob_lbal << 24
                | self.lbah << 16 | self.lbam << 8 | self.lbal)

    def count28(self) -> int:
        return self.nsector or 256

    def count48(self) -> int:
        return (self.hob_nsector << 8 | self.nsector) or 65536

    def set_lba(self, lba: int, ext: bool) -> None:
        """Report an address (the first failing sector of an error), in the form the command used."""
        self.lbal, self.lbam, self.lbah = lba & 0xFF, (lba >> 8) & 0xFF, (lba >> 16) & 0xFF
        if ext:
            self.hob_lbal, self.hob_lbam, self.hob_lbah = (lba >> 24) & 0xFF, (lba >> 32) & 0xFF, (lba >> 40) & 0xFF
        else:
            self.device = (self.device & 0xF0) | ((lba >> 24) & 0x0F)

    def set_signature(self, signature: tuple[int, int]) -> None:
        """The register contents after a reset or EXECUTE DEVICE DIAGNOSTIC (ATA-6 9.12)."""
        self.nsector = self.lbal = 1
        self.lbam, self.lbah = signature
        self.device = 0
        self.error = DIAG_PASSED


class IdeChannel:
    """Channel `index` (0 primary, 1 secondary) with up to two drives, interrupting on `irq`."""

    def __init__(self, index: int, irq: IrqLine, memory: GuestMemory,
                 bus_master_enabled: Callable[[], bool] = lambda: True) -> None:
        self.index = index
        self.lock = threading.RLock()
        self.regs = (Registers(), Registers())
        self.drives: list[IdeDrive | None] = [None, None]
        self.selected = 0
        self.control = 0
        self.irq = irq
        self.irq_pending = False
        self.generation = 0          # bumped by resets: a worker's completion from before is dropped
        self.bm = BusMaster(self, memory, bus_master_enabled)
        self._worker: Worker | None = None
        # PIO: the DRQ block is buf[pos:rd_end] (data-in) or buf[pos:wr_end] (data-out); the other end is 0.
        self.buf = bytearray(BUF_SIZE + 8)       # + slack: an odd ATAPI byte count reads one pad byte past
        self.w16 = memoryview(self.buf).cast("H")
        self.pos = self.rd_end = self.wr_end = 0
        self._block_done: Callable[[], None] | None = None
        self.lane = None             # a PioLane of the port bus serving the data port, when it has lanes
        self.data_port = DataPort(self)
        self.command_port = CommandBlockPort(self)
        self.control_port = ControlPort(self)
        self._power_on()

    # -- drives -----------------------------------------------------------------------------------------------
    def attach(self, unit: int, drive: IdeDrive) -> None:
        if self.drives[unit] is not None:
            raise ValueError(f"IDE channel {self.index} unit {unit} already has a drive")
        self.drives[unit] = drive
        drive.attach(self, unit)
        self._power_on()

    def worker(self) -> Worker:
        if self._worker is None:
            self._worker = Worker(f"vireo-ide{self.index}")
        return self._worker

    def _power_on(self) -> None:
        self.control = 0
        self.selected = 0
        self._lower_irq()
        self.pio_stop()
        self.bm.reset()
        for unit in (0, 1):
            drive = self.drives[unit]
            if drive is not None:
                drive.power_on()
            else:
                self.regs[unit].clear()
                self.regs[unit].set_signature(SIG_NONE)

    def reset(self) -> None:
        """Machine reset (every vCPU stopped): the work on the worker finishes first, then power-on state."""
        if self._worker is not None:
            self._worker.wait_idle()
        with self.lock:
            self.generation += 1
            self._power_on()

    def close(self) -> None:
        """The machine is going away: finish the worker's job before the images are closed."""
        if self._worker is not None:
            self._worker.stop()

    def reset_result(self, unit: int) -> int:
        """IDENTIFY word 93, the hardware reset result (ATA-6 8.15.48): how the devices found each other. SeaBIOS
        skips probing device 1 when device 0 says it answers for it."""
        other = self.drives[1 - unit] is not None
        if unit == 0:
            word = 0x4000 | 0x0008 | 0x0002 | 0x0001          # passed diagnostics, number set by jumper
            return word | (0x0030 if other else 0x0040)        # saw device 1's PDIAG-/DASP-, or answers for it
        return 0x4000 | 0x0800 | 0x0200 | 0x0100              # device 1: asserted PDIAG-, jumper

    # -- interrupts -------------------------------------------------------------------------------------------
    def raise_irq(self) -> None:
        self.irq_pending = True
        self._update_line()

    def _lower_irq(self) -> None:
        self.irq_pending = False
        self._update_line()

    def _update_line(self) -> None:
        level = self.irq_pending and not self.control & CTL_NIEN
        if level and not self.irq.level:
            self.bm.status |= BM_INTERRUPT
        self.irq.set(level)

    # -- PIO data transfer (drives call these with the lock held) -----------------------------------------------
    def use_lane(self, lane) -> None:
        """Serve the data port's blocks through `lane` (a PioLane of the port bus), or again without one (None)."""
        with self.lock:
            self.pio_stop()
            self.lane = lane

    def pio_in(self, start: int, length: int, done: Callable[[], None]) -> None:
        """Offer buf[start:start+length] to the host; `done` runs once it has all been read."""
        self.wr_end = 0
        self.pos = start
        self._block_done = done
        self.rd_end = start + length
        if self.lane is not None:
            self.lane.offer_read(memoryview(self.buf)[start:start + length])

    def pio_out(self, start: int, length: int, done: Callable[[], None]) -> None:
        """Take `length` bytes from the host into buf[start:]; `done` runs once they have all been written."""
        self.rd_end = 0
        self.pos = start
        self._block_done = done
        self.wr_end = start + length
        if self.lane is not None:
            self.lane.expect_write(length)

    def pio_stop(self) -> None:
        if self.lane is not None:
            self.lane.close()
        self.rd_end = self.wr_end = self.pos = 0
        self._block_done = None

    def _end_block(self) -> None:
        done, self._block_done = self._block_done, None
        if self.lane is not None:
            self.lane.close()
        self.rd_end = self.wr_end = self.pos = 0
        if done is not None:
            done()

    def lane_read(self, size: int) -> int:
        """An access the lane left to the model: the one ending a block, or one outside the CPU's string path."""
        with self.lock:
            lane = self.lane
            if lane is None or not self.rd_end:
                return 0xFFFF_FFFF if size == 4 else 0xFFFF
            value = lane.take(size)
            if lane.remaining == 0:
                self._end_block()
            return value

    def lane_write(self, size: int, value: int) -> None:
        with self.lock:
            lane = self.lane
            if lane is None or not self.wr_end:
                return
            lane.put(size, value)
            if lane.remaining == 0:
                written = lane.written()
                self.buf[self.pos:self.pos + len(written)] = written
                self._end_block()

    def data_read_slow(self, size: int) -> int:
        with self.lock:
            pos, end = self.pos, self.rd_end
            if pos >= end:
                return 0xFFFF_FFFF if size == 4 else 0xFFFF     # no DRQ: nothing drives the bus
            take = min(4 if size == 4 else 2, (end - pos + 1) & ~1)
            value = int.from_bytes(self.buf[pos:pos + take], "little")
            self.pos = pos + take
            if self.pos >= end:
                self._end_block()
            return value

    def data_write_slow(self, size: int, value: int) -> None:
        with self.lock:
            pos, end = self.pos, self.wr_end
            if pos >= end:
                return
            take = min(4 if size == 4 else 2, (end - pos + 1) & ~1)
            self.buf[pos:pos + take] = (value & ((1 << (8 * take)) - 1)).to_bytes(take, "little")
            self.pos = pos + take
            if self.pos >= end:
                self._end_block()

    # -- command block registers ------------------------------------------------------------------------------
    def _absent(self) -> bool:
        return self.drives[0] is None and self.drives[1] is None

    def read_register(self, reg: int) -> int:
        """Command block register `reg` (1-7)."""
        with self.lock:
            if self._absent():
                return 0xFF
            regs = self.regs[self.selected]
            if reg == 7:
                if self.drives[self.selected] is None:
                    return 0
                self._lower_irq()           # reading Status acknowledges the interrupt (ATA-6 5.2.13)
                return regs.status
            hob = self.control & CTL_HOB
            if reg == 1:
                return regs.error
            if reg == 2:
                return regs.hob_nsector if hob else regs.nsector
            if reg == 3:
                return regs.hob_lbal if hob else regs.lbal
            if reg == 4:
                return regs.hob_lbam if hob else regs.lbam
            if reg == 5:
                return regs.hob_lbah if hob else regs.lbah
            return regs.device

    def write_register(self, reg: int, value: int) -> None:
        with self.lock:
            self.control &= ~CTL_HOB
            if reg == 7:
                self._command(value)
                return
            for regs in self.regs:
                if reg == 1:
                    regs.hob_feature, regs.feature = regs.feature, value
                elif reg == 2:
                    regs.hob_nsector, regs.nsector = regs.nsector, value
                elif reg == 3:
                    regs.hob_lbal, regs.lbal = regs.lbal, value
                elif reg == 4:
                    regs.hob_lbam, regs.lbam = regs.lbam, value
                elif reg == 5:
                    regs.hob_lbah, regs.lbah = regs.lbah, value
                elif reg == 6:
                    regs.device = value
            if reg == 6:
                self.selected = 1 if value & DEV_SELECT else 0

    def _command(self, command: int) -> None:
        if command == CMD_EXECUTE_DEVICE_DIAGNOSTIC:
            self._diagnostic()          # addressed to both devices, whichever is selected (ATA-6 8.11)
            return
        drive = self.drives[self.selected]
        if drive is None:
            return                      # device 0 does not execute device 1's commands
        # Only DEVICE RESET may interrupt a command in progress, and only a PACKET device's (ATA-6 8.10).
        if self.regs[self.selected].status & (BSY | DRQ) and not (command == CMD_DEVICE_RESET and drive.packet):
            return
        self._lower_irq()
        drive.execute(command)

    def _diagnostic(self) -> None:
        if self._absent():
            return
        self._abort_all()
        for unit in (0, 1):
            self._reset_position(unit)
        self.raise_irq()

    def _abort_all(self) -> None:
        self.generation += 1
        self.pio_stop()
        self.bm.cancel()
        self._lower_irq()

    def _reset_position(self, unit: int) -> None:
        drive = self.drives[unit]
        if drive is not None:
            drive.soft_reset()
        else:
            self.regs[unit].set_signature(SIG_NONE)
            self.regs[unit].status = 0
        self.selected = 0

    # -- control block ----------------------------------------------------------------------------------------
    def read_alt_status(self) -> int:
        with self.lock:
            if self._absent():
                return 0xFF
            if self.drives[self.selected] is None:
                return 0
            return self.regs[self.selected].status

    def write_control(self, value: int) -> None:
        with self.lock:
            old = self.control
            self.control = value & (CTL_HOB | CTL_SRST | CTL_NIEN)
            if value & CTL_SRST and not old & CTL_SRST:
                # SRST asserted: every device drops its command and is busy until SRST is released (ATA-6 9.2).
                self._abort_all()
                for unit in (0, 1):
                    if self.drives[unit] is not None:
                        self.drives[unit].abort()
                        self.regs[unit].status = BSY
            elif old & CTL_SRST and not value & CTL_SRST:
                for unit in (0, 1):
                    self._reset_position(unit)
            self._update_line()

    def cancel_command(self, drive: IdeDrive) -> None:
        """The drive ended its command early (a medium change): forget the transfer in progress."""
        if self.drives[self.selected] is drive:
            self.generation += 1
            self.pio_stop()
            self.bm.cancel()


class DataPort:
    """The 16/32-bit data register (command block offset 0): see the module docstring for the fast path."""

    __slots__ = ("ch",)

    def __init__(self, channel: IdeChannel) -> None:
        self.ch = channel

    def io_read(self, port: int, size: int) -> int:
        ch = self.ch
        if ch.lane is not None:
            return ch.lane_read(size)
        pos = ch.pos
        if size == 2:
            if pos + 2 < ch.rd_end:
                ch.pos = pos + 2
                return ch.w16[pos >> 1]
        elif size == 4 and pos + 4 < ch.rd_end:
            ch.pos = pos + 4
            i = pos >> 1
            return ch.w16[i] | ch.w16[i + 1] << 16
        return ch.data_read_slow(size)

    def io_write(self, port: int, size: int, value: int) -> None:
        ch = self.ch
        if ch.lane is not None:
            ch.lane_write(size, value)
            return
        pos = ch.pos
        if size == 2:
            if pos + 2 < ch.wr_end:
                ch.pos = pos + 2
                ch.w16[pos >> 1] = value
                return
        elif size == 4 and pos + 4 < ch.wr_end:
            ch.pos = pos + 4
            i = pos >> 1
            ch.w16[i] = value & 0xFFFF
            ch.w16[i + 1] = value >> 16
            return
        ch.data_write_slow(size, value)


class CommandBlockPort:
    """Command block offsets 1-7 (error/features ... status/command), at base+1..base+7."""

    __slots__ = ("ch", "base")

    def __init__(self, channel: IdeChannel) -> None:
        self.ch = channel
        self.base = 0

    def io_read(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):      # a wider access reads consecutive registers (as the ISA bus splits it)
            reg = (port + i - self.base) & 7
            value |= (self.ch.read_register(reg) if reg else 0xFF) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            reg = (port + i - self.base) & 7
            if reg:
                self.ch.write_register(reg, (value >> (8 * i)) & 0xFF)


class ControlPort:
    """The control block register (0x3F6 / 0x376): Alternate Status when read, Device Control when written."""

    __slots__ = ("ch",)

    def __init__(self, channel: IdeChannel) -> None:
        self.ch = channel

    def io_read(self, port: int, size: int) -> int:
        return self.ch.read_alt_status() | (0xFFFF_FF00 if size > 1 else 0)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.ch.write_control(value & 0xFF)
