"""What every IDE device shares: its place on a channel, power-on and software reset, and the PIO protocols that
move a command's data through the data port in DRQ blocks (ATA/ATAPI-6 section 9: the PIO data-in and data-out
protocols, 9.5-9.6).

An image error (ImageError, OSError) while filling or draining a block ends the command through io_error(): the
host sees the device's error status, never an exception.

Data-in (a read): the device fills the channel's buffer many blocks at a time from its source, offers one block,
announces it (status DRQ, and for ATAPI the byte count and interrupt reason, then INTRQ) and, once the host has
read it, offers the next; after the last one the command completes. Data-out (a write): the device offers room for
one block, the host writes it, the device hands it to its sink, and announces the next block or completion.
The device subclasses (ATA disk, ATAPI CD-ROM) decide the block sizes, the announcements and the completion.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.devices.ide.channel import BUF_SIZE
from core.storage.errors import ImageError

if TYPE_CHECKING:
    from core.devices.ide.channel import IdeChannel, Registers

Fill = Callable[[int, memoryview], None]       # (offset in the transfer, buffer to fill)
Sink = Callable[[int, memoryview], None]       # (offset in the transfer, data the host wrote)


class IdeDrive:
    """A device on an IDE channel. `packet` tells a PACKET (ATAPI) device from an ATA one."""

    packet = False
    signature: tuple[int, int] = (0, 0)

    def __init__(self) -> None:
        self.channel: IdeChannel | None = None
        self.unit = 0
        self.stats = {"commands": 0, "pio_bytes": 0, "dma_bytes": 0, "errors": 0}
        self._stream: _Stream | None = None

    @property
    def regs(self) -> Registers:
        assert self.channel is not None
        return self.channel.regs[self.unit]

    def attach(self, channel: IdeChannel, unit: int) -> None:
        self.channel = channel
        self.unit = unit

    # -- reset ------------------------------------------------------------------------------------------------
    def power_on(self) -> None:
        """Power-on or hardware reset: settings back to their defaults, then the reset signature."""
        self.regs.clear()
        self.soft_reset()

    def soft_reset(self) -> None:
        """SRST or EXECUTE DEVICE DIAGNOSTIC: the signature and the ready status (ATA-6 9.12)."""
        self.abort()
        self.regs.set_signature(self.signature)
        self.regs.status = self.ready_status()

    def ready_status(self) -> int:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the command in progress (the channel has already stopped its transfer)."""
        self._stream = None

    def execute(self, command: int) -> None:
        raise NotImplementedError

    def io_error(self, offset: int, exc: Exception) -> None:
        """The image failed at `offset` of the PIO transfer in progress: end the command with the device's error."""
        raise NotImplementedError

    # -- PIO data-in / data-out -------------------------------------------------------------------------------
    def data_in(self, total: int, block: int, fill: Fill, announce: Callable[[int], None],
                finish: Callable[[], None]) -> None:
        """Send `total` bytes from `fill` in DRQ blocks of at most `block` bytes (block <= BUF_SIZE);
        `announce(n)` tells the host a block of n bytes is ready, `finish()` ends the command after the last."""
        self._stream = _Stream(total, min(block, BUF_SIZE), fill, announce, finish)
        self._next_in()

    def _next_in(self) -> None:
        st = self._stream
        if st is None:
            return
        left = st.total - st.pos
        if left <= 0:
            self._stream = None
            st.finish()
            return
        n = min(st.block, left)
        offset = st.pos - st.buf_start
        if offset + n > st.buf_len:
            # Refill: as much of the rest as fits, so most blocks cost no I/O.
            length = min(left, BUF_SIZE)
            assert self.channel is not None
            try:
                st.fill(st.pos, memoryview(self.channel.buf)[:length])
            except (ImageError, OSError) as exc:
                self._stream = None
                self.stats["errors"] += 1
                self.io_error(st.pos, exc)
                return
            st.buf_start, st.buf_len, offset = st.pos, length, 0
        st.pos += n
        self.stats["pio_bytes"] += n
        assert self.channel is not None
        self.channel.pio_in(offset, n, self._next_in)
        st.announce(n)

    def data_out(self, total: int, block: int, sink: Sink, announce: Callable[[int, bool], None],
                 finish: Callable[[], None]) -> None:
        """Take `total` bytes from the host in DRQ blocks of at most `block` bytes, each handed to `sink`;
        `announce(n, first)` asks for a block, `finish()` ends the command after the last."""
        self._stream = _Stream(total, min(block, BUF_SIZE), sink, announce, finish)
        self._ask_out(first=True)

    def _ask_out(self, first: bool = False) -> None:
        st = self._stream
        assert st is not None and self.channel is not None
        n = min(st.block, st.total - st.pos)
        self.channel.pio_out(0, n, self._got_out)
        st.announce(n, first)

    def _got_out(self) -> None:
        st = self._stream
        if st is None or self.channel is None:
            return
        n = min(st.block, st.total - st.pos)
        try:
            st.fill(st.pos, memoryview(self.channel.buf)[:n])
        except (ImageError, OSError) as exc:
            self._stream = None
            self.stats["errors"] += 1
            self.io_error(st.pos, exc)
            return
        st.pos += n
        self.stats["pio_bytes"] += n
        if st.pos >= st.total:
            self._stream = None
            st.finish()
        else:
            self._ask_out()


class _Stream:
    """The state of one PIO transfer: where it is, and what of it the channel's buffer holds."""

    __slots__ = ("total", "block", "fill", "announce", "finish", "pos", "buf_start", "buf_len")

    def __init__(self, total: int, block: int, fill, announce, finish) -> None:
        self.total = total
        self.block = max(2, block)
        self.fill = fill
        self.announce = announce
        self.finish = finish
        self.pos = 0
        self.buf_start = 0
        self.buf_len = 0
