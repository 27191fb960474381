"""The bus-master IDE function of one channel: its three registers in BAR4 and the DMA engine walking PRD tables.

Models the Programming Interface for Bus Master IDE Controller, revision 1.0 (SFF-8038i), as the PIIX3 implements
it (Intel 82371SB datasheet, 290550, sections 2.5 and 3.6):
- the command register (offset 0): bit 0 starts/stops the engine, bit 3 the direction (1: the device's data is
  written to memory, a read command);
- the status register (offset 2): bit 0 active (read-only), bit 1 error and bit 2 interrupt (write 1 to clear),
  bits 5/6 "drive 0/1 is DMA capable" (software's, kept as written), bit 7 simplex (0: both channels at once);
- the descriptor table pointer (offsets 4-7), dword aligned.

A physical region descriptor (PRD) is 8 bytes: a base address (bit 0 ignored), a byte count (bit 0 ignored, 0
meaning 64 KiB) and bit 31 of the second dword marking the end of the table (EOT). A table may not cross a 64 KiB
boundary, which bounds it at 8192 entries. Every guest address goes through core.memory.GuestMemory: a descriptor
or a region outside RAM, or a table running past its 64 KiB page, is what a PCI master abort is on hardware -- the
error bit, the engine stopped, the command ended -- never an access outside guest memory.

How a transfer ends follows the interface's table: the device done and the table exactly used up: active clears,
interrupt sets; the table larger than the transfer: both stay set (the driver stops the engine); the table
exhausted first: active clears, no interrupt, and the device keeps the rest of its transfer for a new table.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.memory import GuestMemory, GuestMemoryError
from core.storage.errors import ImageError

if TYPE_CHECKING:
    from core.devices.ide.channel import IdeChannel

log = logging.getLogger(__name__)

BM_CMD_START, BM_CMD_TO_MEMORY = 0x01, 0x08
BM_ACTIVE, BM_ERROR, BM_INTERRUPT, BM_DMA_CAPABLE, BM_SIMPLEX = 0x01, 0x02, 0x04, 0x60, 0x80
PRD_EOT = 0x8000_0000
PRD_TABLE_SPAN = 0x1_0000
MAX_REGION = 0x1_0000

# What the drive's completion is told: the transfer's error, if any.
DMA_OK, DMA_IO_ERROR, DMA_BUS_ERROR = "ok", "io-error", "bus-error"


class DmaRequest:
    """What a drive asks the engine to move: `length` bytes between guest memory and the drive, `to_memory` for a
    read command. `io(offset, views)` moves the bytes from `offset` of the transfer into (or out of) the views of
    guest RAM and may raise ImageError/OSError; `complete(result)` ends the drive's command (DMA_OK, DMA_IO_ERROR,
    DMA_BUS_ERROR), under the channel lock. `may_block`: the I/O may wait on the host's disk, so it runs on the
    channel's worker thread."""

    __slots__ = ("to_memory", "length", "io", "complete", "may_block", "done")

    def __init__(self, to_memory: bool, length: int, io: Callable[[int, list[memoryview]], None],
                 complete: Callable[[str], None], may_block: bool = False) -> None:
        self.to_memory = to_memory
        self.length = length
        self.io = io
        self.complete = complete
        self.may_block = may_block
        self.done = 0


class PrdError(Exception):
    """The descriptor table or a region it names is not in guest RAM (a master abort on hardware)."""


def walk_prd(memory: GuestMemory, table: int, need: int) -> tuple[list[tuple[int, int]], bool]:
    """The guest regions of the table at `table` that carry the next `need` bytes, and whether the table holds more
    than that (the device finishes first). Fewer than `need` bytes come back when the table ends first. Raises
    PrdError for a table or region outside RAM, or a table crossing its 64 KiB page."""
    regions: list[tuple[int, int]] = []
    total = 0
    page = table & ~(PRD_TABLE_SPAN - 1)
    addr = table
    while True:
        if addr + 8 > page + PRD_TABLE_SPAN:
            raise PrdError(f"PRD table at {table:#x} runs past its 64 KiB page")
        try:
            base, word = struct.unpack("<II", memory.read(addr, 8))
        except GuestMemoryError as exc:
            raise PrdError(f"PRD at {addr:#x} is outside guest RAM") from exc
        base &= ~1
        count = (word & 0xFFFE) or MAX_REGION
        take = min(count, need - total)
        try:
            memory.view(base, take)             # bounds check only: the I/O takes its own views
        except GuestMemoryError as exc:
            raise PrdError(f"PRD region {base:#x}+{take:#x} is outside guest RAM") from exc
        regions.append((base, take))
        total += take
        if total == need:
            return regions, take < count or not word & PRD_EOT
        if word & PRD_EOT:
            return regions, False
        addr += 8


def coalesce(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent regions merged, so the software CPU hears of the written RAM in few notifications."""
    out: list[tuple[int, int]] = []
    for gpa, n in sorted(r for r in regions if r[1]):
        if out and out[-1][0] + out[-1][1] == gpa:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((gpa, n))
    return out


class BusMaster:
    """The bus-master registers and DMA engine of `channel` (its lock guards them, as the port handlers hold it)."""

    def __init__(self, channel: IdeChannel, memory: GuestMemory, bus_master_enabled: Callable[[], bool]) -> None:
        self.channel = channel
        self.memory = memory
        self._enabled = bus_master_enabled
        self.command = 0
        self.status = 0
        self.table = 0
        self.pending: DmaRequest | None = None
        self._running = False
        self.stats = {"transfers": 0, "bytes": 0, "errors": 0}

    def reset(self) -> None:
        self.command = 0
        self.status = 0
        self.table = 0
        self.pending = None
        self._running = False

    # -- registers (byte offsets 0-7 of this channel's half of BAR4) ---------------------------------------
    def read(self, offset: int) -> int:
        if offset == 0:
            return self.command
        if offset == 2:
            return self.status
        if 4 <= offset < 8:
            return (self.table >> (8 * (offset - 4))) & 0xFF
        return 0

    def write(self, offset: int, value: int) -> None:
        if offset == 0:
            self._write_command(value)
        elif offset == 2:
            # Interrupt and error are write-one-to-clear; the DMA-capable bits are the software's.
            cleared = value & (BM_ERROR | BM_INTERRUPT)
            self.status = (self.status & ~cleared & ~BM_DMA_CAPABLE) | (value & BM_DMA_CAPABLE)
        elif 4 <= offset < 8:
            shift = 8 * (offset - 4)
            self.table = ((self.table & ~(0xFF << shift)) | (value << shift)) & 0xFFFF_FFFC

    def _write_command(self, value: int) -> None:
        was = self.command & BM_CMD_START
        if not was:
            self.command = value & (BM_CMD_START | BM_CMD_TO_MEMORY)
        else:
            # The direction may not change while the engine runs (datasheet 2.5.1); only stopping counts.
            self.command = (self.command & BM_CMD_TO_MEMORY) | (value & BM_CMD_START)
        if value & BM_CMD_START and not was:
            self.status |= BM_ACTIVE
            self._kick()
        elif was and not value & BM_CMD_START:
            # Stopping in the middle of a transfer abandons it (the device is left waiting; the driver resets it).
            self.status &= ~BM_ACTIVE
            if self._running:
                self.channel.generation += 1
                self._running = False

    # -- transfers ------------------------------------------------------------------------------------------
    def request(self, req: DmaRequest) -> None:
        """A drive has data ready to move; it moves once the engine is started (perhaps already)."""
        self.pending = req
        self._kick()

    def cancel(self) -> None:
        """The command is gone (reset, or the drive ended it): forget its transfer."""
        self.pending = None
        self._running = False

    def _kick(self) -> None:
        req = self.pending
        if req is None or self._running or not self.command & BM_CMD_START or not self.status & BM_ACTIVE:
            return
        if not self._enabled():
            # Bus mastering disabled in the PCI command register: the engine cannot get the bus.
            self._finish(req, ([], False), PrdError("bus mastering is disabled"))
            return
        if bool(self.command & BM_CMD_TO_MEMORY) != req.to_memory:
            self._finish(req, ([], False), PrdError("the engine's direction does not match the command"))
            return
        self._running = True
        table = self.table
        if not req.may_block:
            self._finish(req, *self._transfer(req, table))
            return
        generation = self.channel.generation
        channel = self.channel

        def job() -> None:
            outcome = self._transfer(req, table)
            with channel.lock:
                if channel.generation == generation:
                    self._finish(req, *outcome)

        channel.worker().submit(job)

    def _transfer(self, req: DmaRequest, table: int) -> tuple[tuple[list[tuple[int, int]], bool], Exception | None]:
        """Walk the table and move the data; no device state changes here (the worker runs it unlocked)."""
        try:
            regions, longer = walk_prd(self.memory, table, req.length - req.done)
        except PrdError as exc:
            return ([], False), exc
        views = [self.memory.view(gpa, n) for gpa, n in regions]
        error: Exception | None = None
        try:
            req.io(req.done, views)
        except (ImageError, OSError) as exc:
            error = exc
        finally:
            if req.to_memory:
                for gpa, n in coalesce(regions):    # translated code in those pages is stale now
                    self.memory.notify_written(gpa, n)
        return (regions, longer), error

    def _finish(self, req: DmaRequest, walked: tuple[list[tuple[int, int]], bool], error: Exception | None) -> None:
        regions, longer = walked
        self._running = False
        moved = sum(n for _, n in regions)
        self.stats["bytes"] += moved
        if isinstance(error, PrdError):
            log.info("IDE bus master %d: %s", self.channel.index, error)
            self.stats["errors"] += 1
            self.status = (self.status | BM_ERROR) & ~BM_ACTIVE
            self.pending = None
            req.complete(DMA_BUS_ERROR)
            return
        if error is not None:
            log.warning("IDE channel %d: DMA I/O error: %s", self.channel.index, error)
            self.stats["errors"] += 1
            self.status &= ~BM_ACTIVE
            self.pending = None
            req.complete(DMA_IO_ERROR)
            return
        req.done += moved
        if req.done < req.length:
            # The table ran out first: the engine stops without an interrupt; the device waits for more.
            self.status &= ~BM_ACTIVE
            return
        self.stats["transfers"] += 1
        self.pending = None
        if not longer:
            self.status &= ~BM_ACTIVE
        req.complete(DMA_OK)
