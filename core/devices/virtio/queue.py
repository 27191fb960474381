"""Split virtqueues (virtio 1.2, section 2.7): descriptor table, available ring, used ring in guest memory.

Everything the driver wrote is untrusted: ring indices are taken modulo the queue size, every descriptor's
address and length is checked against guest RAM through GuestMemory (a bad one raises VirtqueueError), a chain
may not be longer than the queue (so a loop in `next` pointers ends), and an indirect table (2.7.5.3) must be a
whole number of descriptors, may not nest, and is bounded the same way.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from core.memory import GuestMemory, GuestMemoryError

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
MAX_QUEUE_SIZE = 32768
DESC_SIZE = 16
_DESC = struct.Struct("<QIHH")         # addr, len, flags, next (2.7.5)
_U16 = struct.Struct("<H")


class VirtqueueError(Exception):
    """The driver put something impossible in the ring: the device must be reset (DEVICE_NEEDS_RESET)."""


@dataclass
class DescriptorChain:
    """One request: the descriptor head index and its buffers, split into device-readable and -writable parts."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)   # (gpa, length) the device reads
    writable: list[tuple[int, int]] = field(default_factory=list)   # (gpa, length) the device writes
    writable_len: int = 0                                             # sum of the writable lengths

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)



class Virtqueue:
    """The device side of one split virtqueue. Addresses and size are set by the transport from the driver's
    writes; `ready` once the driver enables the queue."""

    def __init__(self, memory: GuestMemory, index: int, max_size: int) -> None:
        self.memory = memory
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.ready = False
        self.msix_vector = 0xFFFF
        self.last_avail = 0
        self.used_idx = 0
        self.event_idx = False
        self._avail_seen = None         # the available index last read (see pop)
        self._views_key: tuple[int, int, int] | None = None       # what _views were made for
        self._views: tuple[memoryview, memoryview] | None = None

    def validate(self) -> None:
        """Check the ring areas lie in RAM with the alignment the spec demands (2.7, table 2.3)."""
        n = self.size
        if not n or n > MAX_QUEUE_SIZE or n & (n - 1):
            raise VirtqueueError(f"queue {self.index}: size {n} is not a power of two up to {MAX_QUEUE_SIZE}")
        for addr, length, align, what in ((self.desc_addr, DESC_SIZE * n, 16, "descriptor table"),
                                          (self.avail_addr, 6 + 2 * n, 2, "available ring"),
                                          (self.used_addr, 6 + 8 * n, 4, "used ring")):
            if addr % align or not self.memory.contains(addr, length):
                raise VirtqueueError(f"queue {self.index}: {what} at {addr:#x} is misaligned or outside RAM")
        self._avail_seen = None

    # -- available ring -----------------------------------------------------------------------------------
    def _avail_idx(self) -> int:
        return self.memory.read_u16(self.avail_addr + 2)

    def pop(self, event: bool = True) -> DescriptorChain | None:
        """Take the next available chain, or None when the ring is empty. event=False leaves avail_event for
        the caller's mark_read() after a batch of pops."""
        if not self.ready:
            return None
        # The available index only moves forward (2.7.6), so chains up to the one last read are still there: it
        # is read again only when they are used up (a receive frame takes 8-45 buffers, one read instead of each).
        seen = self._avail_seen
        if seen is None or not 0 < (seen - self.last_avail) & 0xFFFF <= self.size:
            seen = self._avail_seen = self._avail_idx()
            pending = (seen - self.last_avail) & 0xFFFF
            if pending == 0:
                return None
            if pending > self.size:
                raise VirtqueueError(f"queue {self.index}: available index jumped by {pending} (> size {self.size})")
        slot = self.last_avail % self.size
        head = _U16.unpack_from(self._ring_views()[1], 4 + 2 * slot)[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if event:
            self.mark_read()
        return self._walk(head)

    def mark_read(self) -> None:
        """avail_event (2.7.10): tell the driver how far the device has read, so it notifies only past that. A
        value older than the truth only brings a notification the device did not need."""
        if self.event_idx:
            self.memory.write_u16(self.used_addr + 4 + 8 * self.size, self.last_avail)

    def _ring_views(self) -> tuple[memoryview, memoryview]:
        """The descriptor table and the available ring (flags, idx, ring[size]) as views of guest RAM,
        bounds-checked when made and remade if the driver moved or resized them."""
        key = (self.desc_addr, self.avail_addr, self.size)
        if self._views_key != key:
            n = self.size
            self._views = (self.memory.view(self.desc_addr, DESC_SIZE * n),
                           self.memory.view(self.avail_addr, 4 + 2 * n))
            self._views_key = key
        return self._views

    def _walk(self, head: int) -> DescriptorChain:
        if head >= self.size:
            raise VirtqueueError(f"queue {self.index}: descriptor head {head} out of range")
        chain = DescriptorChain(head)
        table_size, i = self.size, head
        desc = self._ring_views()[0]
        seen = 0
        in_indirect = False
        indirect: list[tuple[int, int, int, int]] = []
        while True:
            seen += 1
            if seen > table_size:
                raise VirtqueueError(f"queue {self.index}: descriptor chain from {head} loops")
            addr, length, flags, nxt = indirect[i] if in_indirect else _DESC.unpack_from(desc, DESC_SIZE * i)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if in_indirect:
                    raise VirtqueueError(f"queue {self.index}: nested indirect descriptor table")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE:
                    raise VirtqueueError(f"queue {self.index}: indirect table length {length} is invalid")
                if not self.memory.contains(addr, length):
                    raise VirtqueueError(f"queue {self.index}: indirect table at {addr:#x} outside RAM")
                # One read of the whole table (a multi-segment request's table holds ~100 descriptors); the
                # driver may not change it while the request is ours (2.7.5.3), so a snapshot is what it means.
                indirect = list(struct.iter_unpack("<QIHH", self.memory.read(addr, length)))
                table_size, i, in_indirect, seen = length // DESC_SIZE, 0, True, 0
                continue
            if length and not self.memory.contains(addr, length):
                raise VirtqueueError(f"queue {self.index}: buffer {addr:#x}+{length:#x} outside RAM")
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append((addr, length))
                chain.writable_len += length
            else:
                if chain.writable:
                    raise VirtqueueError(f"queue {self.index}: readable buffer after a writable one")
                chain.readable.append((addr, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            if nxt >= table_size:
                raise VirtqueueError(f"queue {self.index}: next descriptor {nxt} out of range")
            i = nxt

    # -- used ring ----------------------------------------------------------------------------------------
    def push(self, chain: DescriptorChain, written: int, publish: bool = True) -> None:
        """Return a chain to the driver, saying how many bytes the device wrote into its writable part. With
        publish=False the used index is not moved yet: entries that belong together (virtio-net's mergeable
        buffers of one frame) must appear to the driver at once, by publish() after the last (2.7.8.2: the
        driver reads an entry as soon as the index covers it, and a frame announced over num_buffers entries of
        which some are not yet visible is a length error it drops)."""
        slot = self.used_idx % self.size
        self.memory.write(self.used_addr + 4 + 8 * slot, struct.pack("<II", chain.head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        if publish:
            self.publish()

    def push_all(self, entries: list[tuple[DescriptorChain, int]]) -> None:
        """push(chain, written, publish=False) for each entry, in order, in one write per contiguous stretch of
        the used ring (two when it wraps): virtio-net returns a large frame's 16-45 receive buffers at once."""
        while entries:
            slot = self.used_idx % self.size
            run = entries[:self.size - slot]
            self.memory.write(self.used_addr + 4 + 8 * slot,
                              b"".join(struct.pack("<II", chain.head, written) for chain, written in run))
            self.used_idx = (self.used_idx + len(run)) & 0xFFFF
            entries = entries[len(run):]

    def publish(self) -> None:
        """Make every entry pushed so far visible to the driver (the used ring's idx)."""
        self.memory.write_u16(self.used_addr + 2, self.used_idx)

    def needs_interrupt(self, old_used: int) -> bool:
        """Whether the driver wants an interrupt for the entries published since `old_used` (2.7.7, 2.7.10)."""
        if self.event_idx:
            used_event = self.memory.read_u16(self.avail_addr + 4 + 2 * self.size)
            return (self.used_idx - used_event - 1) & 0xFFFF < (self.used_idx - old_used) & 0xFFFF
        return not self.memory.read_u16(self.avail_addr) & VIRTQ_AVAIL_F_NO_INTERRUPT


def gather(memory: GuestMemory, buffers: list[tuple[int, int]], limit: int | None = None) -> bytes:
    """Concatenate guest buffers (already bounds-checked by the walk, re-checked by GuestMemory)."""
    out = bytearray()
    for gpa, n in buffers:
        if limit is not None:
            if len(out) >= limit:
                break
            n = min(n, limit - len(out))     # a zero-length buffer in the chain is skipped, not the end
        out += memory.view(gpa, n)
    return bytes(out)


def scatter(memory: GuestMemory, buffers: list[tuple[int, int]], data: bytes) -> int:
    """Write `data` across guest buffers in order; return the number of bytes written."""
    pos = 0
    for gpa, n in buffers:
        if pos >= len(data):
            break
        piece = data[pos:pos + n]
        memory.write(gpa, piece)
        pos += len(piece)
    return pos


__all__ = ["DescriptorChain", "Virtqueue", "VirtqueueError", "gather", "scatter", "GuestMemoryError"]
