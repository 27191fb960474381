"""virtio-blk (virtio 1.2, section 5.2): a disk for the guest, backed by a raw or qcow2 image.

Requests are a 16-byte header (type, reserved, sector), data buffers, and a status byte the device writes last
(5.2.6). Reads, writes, flush (durable: the image's flush is an fsync unless its cache mode is unsafe),
GET_ID (the serial string), discard and write-zeroes. A request outside the disk or with malformed buffers fails
with VIRTIO_BLK_S_IOERR / UNSUPP for that request only; an image I/O error does the same.

Requests are served one at a time, in ring order, on the transport's worker thread: a flush therefore covers
every write completed before it (5.2.6.2), and data moves between the image and guest RAM without copies
(readv/writev on views of GuestMemory; the software CPU is told which RAM changed, as it may hold code).
"""
from __future__ import annotations

import logging
import struct
from typing import Protocol

from core.devices.virtio.pci import Handoff, VirtioDevice
from core.devices.virtio.queue import DescriptorChain, Virtqueue, gather, scatter
from core.memory import GuestMemory
from core.storage.errors import ImageError

log = logging.getLogger(__name__)

SECTOR = 512
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2

F_SIZE_MAX, F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH = 1 << 1, 1 << 2, 1 << 5, 1 << 6, 1 << 9
F_DISCARD, F_WRITE_ZEROES = 1 << 13, 1 << 14

MAX_SEGMENTS = 254          # queue size - 2, as QEMU advertises: a 1 MiB request fits in one chain
MAX_SEGMENT_BYTES = 1 << 20
# Linux bounds a request by seg_max x size_max only (max_hw_sectors is unlimited), so that is the limit here too.
MAX_REQUEST_BYTES = MAX_SEGMENTS * MAX_SEGMENT_BYTES
ID_BYTES = 20


class BlockBackend(Protocol):
    """What virtio-blk needs from an image (core/storage implements it for raw and qcow2)."""

    size: int
    read_only: bool

    def read(self, offset: int, length: int) -> bytes: ...
    def readv(self, offset: int, bufs: list[memoryview]) -> None: ...
    def write(self, offset: int, data: bytes) -> None: ...
    def writev(self, offset: int, bufs: list[memoryview]) -> None: ...
    def flush(self) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def write_zeroes(self, offset: int, length: int) -> None: ...


# Completions are signalled when the queue runs dry, and at least every this many, so a long burst of
# requests does not hold back the first ones.
INTERRUPT_BATCH = 32
MAX_DISCARD_SEGMENTS = 1


class VirtioBlk(VirtioDevice):
    device_id = 2
    pci_class = 0x018000
    num_queues = 1
    queue_size = 256
    threaded = True

    def __init__(self, backend: BlockBackend, serial: str = "") -> None:
        super().__init__()
        self.backend = backend
        self.serial = serial.encode()[:ID_BYTES]
        self.stats = {"read_bytes": 0, "write_bytes": 0, "reads": 0, "writes": 0, "flushes": 0, "errors": 0}

    def features(self) -> int:
        f = F_SEG_MAX | F_SIZE_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES
        return f | F_RO if self.backend.read_only else f

    def config(self) -> bytes:
        sectors = self.backend.size // SECTOR
        max_sectors = MAX_REQUEST_BYTES // SECTOR
        cfg = struct.pack("<QII", sectors, MAX_SEGMENT_BYTES, MAX_SEGMENTS)
        cfg += struct.pack("<HBB", 0, 0, 0)                  # geometry: none
        cfg += struct.pack("<I", SECTOR)                      # blk_size
        cfg += struct.pack("<BBHI", 0, 0, 0, 0)               # topology
        cfg += struct.pack("<BBH", 1, 0, 1)                   # writeback, unused, num_queues
        cfg += struct.pack("<III", max_sectors, 1, 1)         # discard: max sectors, max segments, alignment
        cfg += struct.pack("<II", max_sectors, 1)             # write zeroes: max sectors, max segments
        cfg += struct.pack("<B3x", 1)                         # write_zeroes_may_unmap
        return cfg

    def process(self, queue: Virtqueue, memory: GuestMemory, handoff: Handoff | None = None) -> None:
        transport = self.transport
        assert transport is not None
        batch: tuple[int, int] | None = None      # (generation, used index) since the last signal
        count = 0
        while (item := transport.pop_request(queue)) is not None:
            chain, generation, used_before = item
            try:
                blocking = handoff is not None and self._may_block(chain, memory)
            except BaseException:
                # A header outside RAM: the popped request must not stay counted as in flight, or the next
                # reset waits 30 s for it on the vCPU thread.
                transport.abandon()
                raise
            if blocking:
                if batch is not None:
                    transport.used(queue, batch[1], batch[0])
                handoff(queue, chain, generation, used_before)
                return
            if batch is None or batch[0] != generation:
                batch, count = (generation, used_before), 0
            if not self._serve_one(queue, memory, chain, generation):
                batch = None                       # reset meanwhile: nothing to signal
                continue
            count += 1
            if count >= INTERRUPT_BATCH:
                transport.used(queue, batch[1], generation)
                batch = None
        if batch is not None:
            transport.used(queue, batch[1], batch[0])

    def serve(self, queue: Virtqueue, memory: GuestMemory, chain: DescriptorChain, generation: int,
              used_before: int) -> None:
        if self._serve_one(queue, memory, chain, generation):
            assert self.transport is not None
            self.transport.used(queue, used_before, generation)

    def _serve_one(self, queue: Virtqueue, memory: GuestMemory, chain: DescriptorChain, generation: int) -> bool:
        transport = self.transport
        assert transport is not None
        try:
            written = self._request(chain, memory)
        except BaseException:
            transport.abandon()
            raise
        return transport.complete(queue, chain, written, generation) is not None

    def _may_block(self, chain: DescriptorChain, memory: GuestMemory) -> bool:
        """Whether serving this request may wait for the host's disk (so it belongs on the worker): a flush,
        discard or write-zeroes always, reads and writes when the cache mode bypasses the page cache or
        syncs every write."""
        if chain.readable_len < 16:
            return False                           # malformed: fails at once
        if chain.readable[0][1] >= 4:
            rtype = memory.read_u32(chain.readable[0][0])
        else:
            head = gather(memory, chain.readable, 4)
            if len(head) < 4:
                return False                       # malformed: _request reports it
            rtype = struct.unpack_from("<I", head)[0]
        if rtype in (T_IN, T_OUT):
            return getattr(self.backend, "cache", "writeback") in ("writethrough", "none")
        return rtype in (T_FLUSH, T_DISCARD, T_WRITE_ZEROES)

    def _request(self, chain: DescriptorChain, memory: GuestMemory) -> int:
        """Serve one request; return the bytes written to the driver's buffers (data + status)."""
        if chain.readable_len < 16 or not chain.writable or chain.writable[-1][1] < 1:
            # No header or no status byte: nothing sensible can be reported back.
            self.stats["errors"] += 1
            return 0
        header = gather(memory, chain.readable, 16)
        rtype, _, sector = struct.unpack("<IIQ", header)
        status_gpa = chain.writable[-1][0] + chain.writable[-1][1] - 1
        data_in = list(chain.writable[:-1])
        if chain.writable[-1][1] > 1:
            data_in.append((chain.writable[-1][0], chain.writable[-1][1] - 1))
        data_out = _skip(chain.readable, 16)
        written = 0
        try:
            status, written = self._serve(rtype, sector, data_in, data_out, memory)
        except (OSError, ImageError) as exc:
            log.warning("virtio-blk: I/O error: %s", exc)
            status = S_IOERR
        if status != S_OK:
            self.stats["errors"] += 1
        memory.write_u8(status_gpa, status)
        return written + 1

    def _serve(self, rtype: int, sector: int, data_in, data_out, memory: GuestMemory) -> tuple[int, int]:
        backend = self.backend
        if rtype == T_IN:
            length = sum(n for _, n in data_in)
            if not self._in_range(sector, length):
                return S_IOERR, 0
            views = [memory.view(gpa, n) for gpa, n in data_in if n]
            try:
                backend.readv(sector * SECTOR, views)
            finally:
                for gpa, n in _coalesce(data_in):    # translated code in those pages is stale now
                    memory.notify_written(gpa, n)
            self.stats["reads"] += 1
            self.stats["read_bytes"] += length
            return S_OK, length
        if rtype == T_OUT:
            if backend.read_only:
                return S_IOERR, 0
            length = sum(n for _, n in data_out)
            if not self._in_range(sector, length):
                return S_IOERR, 0
            backend.writev(sector * SECTOR, [memory.view(gpa, n) for gpa, n in data_out if n])
            self.stats["writes"] += 1
            self.stats["write_bytes"] += length
            return S_OK, 0
        if rtype == T_FLUSH:
            backend.flush()   # the image's cache mode decides what a flush costs (fsync, or nothing if unsafe)
            self.stats["flushes"] += 1
            return S_OK, 0
        if rtype == T_GET_ID:
            return S_OK, scatter(memory, data_in, self.serial.ljust(ID_BYTES, b"\0"))
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            if backend.read_only:
                return S_IOERR, 0
            # Bounded before gathering: a chain may name the same RAM many times over.
            if sum(n for _, n in data_out) > 16 * MAX_DISCARD_SEGMENTS:
                return S_UNSUPP, 0
            segs = gather(memory, data_out)
            if not segs or len(segs) % 16:
                return S_UNSUPP, 0
            for i in range(0, len(segs), 16):
                seg_sector, count, flags = struct.unpack_from("<QII", segs, i)
                if flags & ~1 or (rtype == T_DISCARD and flags):
                    return S_UNSUPP, 0
                if not self._in_range(seg_sector, count * SECTOR):
                    return S_IOERR, 0
                if rtype == T_DISCARD:
                    backend.discard(seg_sector * SECTOR, count * SECTOR)
                else:
                    backend.write_zeroes(seg_sector * SECTOR, count * SECTOR)
            return S_OK, 0
        return S_UNSUPP, 0

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and length <= MAX_REQUEST_BYTES and sector * SECTOR + length <= self.backend.size


def _coalesce(buffers: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent guest ranges merged (one change notification each: the software CPU pays per call)."""
    out: list[tuple[int, int]] = []
    for gpa, n in sorted(b for b in buffers if b[1]):
        if out and out[-1][0] + out[-1][1] == gpa:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((gpa, n))
    return out


def _skip(buffers: list[tuple[int, int]], nbytes: int) -> list[tuple[int, int]]:
    """The buffers after the first `nbytes` (the header)."""
    out = []
    for gpa, n in buffers:
        if nbytes >= n:
            nbytes -= n
            continue
        out.append((gpa + nbytes, n - nbytes))
        nbytes = 0
    return out
