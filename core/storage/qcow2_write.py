"""The allocating write path of qcow2 images: writes, write-zeroes, discard, growing the disk and its L1 table.

QEMU docs/interop/qcow2.txt, "Cluster mapping" and "Host cluster management". A cluster is written in place
only when its L2 entry has the copied flag (refcount exactly 1: no snapshot shares it); anything else gets a
new cluster: refcount raised first, then the data, then the L2 entry, and the old cluster's reference dropped
last, so a kill -9 at any instant leaves at worst a leaked cluster. An L2 table without the copied flag (shared
with a snapshot) is copied the same way before an entry in it changes.

Every write is checked against the metadata map (qcow2_meta.MetadataGuard) first: guest data never lands on
metadata, and a metadata update lands only on metadata of its own kind.

Qcow2Writer is a mixin of Qcow2Image (core/storage/qcow2.py), which provides the lookup, the caches and the
file; it is split out so each module stays readable.
"""
from __future__ import annotations

import struct

from core.storage.errors import ImageCorruptError, ImageError, UnsupportedImageError
from core.storage.qcow2_header import (
    COMPRESSED,
    COPIED,
    L2_OFFSET_MASK,
    MAX_L1_BYTES,
    ZERO,
)
from core.storage.qcow2_meta import HEADER, L1, L2

# Cluster kinds (as Qcow2Image._classify returns them)
UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED_KIND = range(5)


class Qcow2Writer:
    """Writes, discard, write-zeroes and resize for Qcow2Image."""

    # --- writes --------------------------------------------------------------------------------------------

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        src = memoryview(data).cast("B")
        self._check_range(offset, len(src))
        with self._lock:
            self._write_locked(offset, src)

    def _write_locked(self, offset: int, src: memoryview) -> None:
        end = offset + len(src)
        pos = offset
        in_place: list = []                        # [host, src start, length] contiguous run
        pending: list[tuple[int, int, int, int]] = []   # clusters needing allocation: (ci, in_off, n, src pos)
        while pos < end:
            ci = pos >> self.cluster_bits
            in_off = pos & (self.cs - 1)
            n = min(self.cs - in_off, end - pos)
            entry = self._l2_entry(ci)
            kind, host = self._classify(entry, ci)
            if kind == NORMAL and entry & COPIED:
                # Merge only if both the host and the source ranges continue (a cluster between may be pending).
                if in_place and (in_place[0] + in_place[2], in_place[1] + in_place[2]) == (host + in_off, pos - offset):
                    in_place[2] += n
                else:
                    if in_place:
                        self._data_write(in_place[0], src[in_place[1]:in_place[1] + in_place[2]])
                    in_place = [host + in_off, pos - offset, n]
            else:
                pending.append((ci, in_off, n, pos - offset))
            pos += n
        if in_place:
            self._data_write(in_place[0], src[in_place[1]:in_place[1] + in_place[2]])
        # Allocate for runs of consecutive guest clusters so each run lands contiguously on the host.
        i = 0
        while i < len(pending):
            j = i + 1
            while j < len(pending) and pending[j][0] == pending[j - 1][0] + 1:
                j += 1
            self._write_allocating(pending[i:j], src)
            i = j

    def _write_allocating(self, clusters: list[tuple[int, int, int, int]], src: memoryview) -> None:
        first_ci, last_ci = clusters[0][0], clusters[-1][0]
        for l1_index in range(first_ci // self.l2_entries, last_ci // self.l2_entries + 1):
            self._ensure_l2_table(l1_index)
        old_entries = [self._l2_entry(ci) for ci, _, _, _ in clusters]
        count = len(clusters)
        buf = bytearray(count * self.cs)
        for k, (ci, in_off, n, src_pos) in enumerate(clusters):
            if n < self.cs:
                buf[k * self.cs:(k + 1) * self.cs] = self._cluster_contents(ci, old_entries[k])
            buf[k * self.cs + in_off:k * self.cs + in_off + n] = src[src_pos:src_pos + n]
        done = 0
        while done < count:
            host, n = self.refcounts.alloc_extent(count - done)     # refcounts first,
            self._data_write(host, memoryview(buf)[done * self.cs:(done + n) * self.cs])   # then the data,
            self._set_l2_entries(first_ci + done, [(host + k * self.cs) | COPIED for k in range(n)])  # the pointers,
            done += n
        self._release(old_entries)                  # and the old clusters last.

    def _ensure_l2_table(self, l1_index: int) -> int:
        """Return the offset of the L2 table for `l1_index`, creating (or un-sharing) it as needed."""
        if l1_index >= len(self.l1):
            raise ImageCorruptError(f"{self.path}: guest offset beyond the L1 table")
        entry = self.l1[l1_index]
        off = self._l2_table_offset(l1_index)
        if off and entry & COPIED:
            return off
        contents = bytes(self._l2_table(off)) if off else bytes(self.cs)
        new = self.refcounts.alloc(1)
        self._data_write(new, contents)
        self.guard.add(new, self.cs, L2)
        self._l2_cache[new] = bytearray(contents)
        self._set_l1_entry(l1_index, new | COPIED)
        if off:
            self._l2_cache.pop(off, None)
            self.refcounts.free(off, 1)
            if self.refcounts.get(off >> self.cluster_bits) == 0:     # not still a snapshot's table
                self.guard.forget(off, self.cs)
        return new

    def _data_write(self, host: int, data: bytes | bytearray | memoryview) -> None:
        """Write guest data (or a new metadata cluster before it is registered) where no metadata is."""
        self.guard.check(host, len(data))
        self.file.pwrite(host, data)

    def _set_l1_entry(self, l1_index: int, value: int) -> None:
        self.guard.check(self.header.l1_table_offset + l1_index * 8, 8, L1)
        self.file.pwrite(self.header.l1_table_offset + l1_index * 8, struct.pack(">Q", value))
        self.l1[l1_index] = value

    def _set_l2_entries(self, first_ci: int, entries: list[int]) -> None:
        """Write consecutive L2 entries (one pwrite per L2 table touched); the tables must exist."""
        i = 0
        while i < len(entries):
            ci = first_ci + i
            l1_index, idx = divmod(ci, self.l2_entries)
            n = min(len(entries) - i, self.l2_entries - idx)
            off = self._l2_table_offset(l1_index)
            table = self._l2_table(off)
            packed = struct.pack(f">{n}Q", *entries[i:i + n])
            self.guard.check(off + idx * 8, n * 8, L2)
            self.file.pwrite(off + idx * 8, packed)
            table[idx * 8:(idx + n) * 8] = packed
            i += n

    def _release(self, old_entries: list[int]) -> list[int]:
        """Drop the references old L2 entries held (after nothing points to them any more); return freed hosts."""
        freed = []
        for entry in old_entries:
            if entry & COMPRESSED:
                host, length = self._compressed_range(entry)
                first = host >> self.cluster_bits
                last = (host + length - 1) >> self.cluster_bits
                self.guard.check_data(list(range(first, last + 1)), "a compressed L2 entry")
                self.refcounts.update(first, last - first + 1, -1)
                if self._compressed_cache and self._compressed_cache[0] == entry:
                    self._compressed_cache = None
            elif entry & L2_OFFSET_MASK:
                host = entry & L2_OFFSET_MASK
                self.guard.check_data([host >> self.cluster_bits], "an L2 entry")
                self.refcounts.free(host, 1)
                if self.refcounts.get(host >> self.cluster_bits) == 0:
                    freed.append(host)
        return freed

    # --- discard and write-zeroes --------------------------------------------------------------------------

    def discard(self, offset: int, length: int) -> None:
        self._check_writable()
        self._check_range(offset, length)
        with self._lock:
            first, last = self._whole_clusters(offset, length)
            # With a backing file a discarded cluster must not show the backing data again: mark it zero (v3).
            new = ZERO if self.backing is not None and self.version >= 3 else 0
            self._replace_entries(first, last, new, punch=True)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check_writable()
        self._check_range(offset, length)
        with self._lock:
            first, last = self._whole_clusters(offset, length)
            if first >= last:
                self._zero_partial(offset, length)
                return
            self._zero_partial(offset, first * self.cs - offset)
            if offset + length > last * self.cs:
                self._zero_partial(last * self.cs, offset + length - last * self.cs)
            if self.version >= 3:
                self._replace_entries(first, last, ZERO, punch=True)
            elif self.backing is None:
                self._replace_entries(first, last, 0, punch=True)
            else:
                # Version 2 has no zero flag: the zeros have to be data over a backing file.
                step = 256 * self.cs
                for pos in range(first * self.cs, last * self.cs, step):
                    self._write_locked(pos, memoryview(bytes(min(step, last * self.cs - pos))))

    def _whole_clusters(self, offset: int, length: int) -> tuple[int, int]:
        """Clusters [first, last) entirely inside the range; a disk's short last cluster counts when reached."""
        end = offset + length
        first = -(-offset // self.cs)
        last = -(-end // self.cs) if end == self._size else end // self.cs
        return first, max(first, last)

    def _reads_as_zero(self, ci: int) -> bool:
        kind, _ = self._classify(self._l2_entry(ci), ci)
        return kind in (ZERO_PLAIN, ZERO_ALLOC) or kind == UNALLOCATED and self.backing is None

    def _zero_partial(self, offset: int, length: int) -> None:
        """Write zeros over parts of clusters, skipping clusters that already read as zeros."""
        end = offset + length
        while offset < end:
            n = min(end, (offset | (self.cs - 1)) + 1) - offset
            if not self._reads_as_zero(offset >> self.cluster_bits):
                self._write_locked(offset, memoryview(bytes(n)))
            offset += n

    def _replace_entries(self, first: int, last: int, new: int, punch: bool) -> None:
        """Set L2 entries of clusters [first, last) to `new` (0 or ZERO), then release their old clusters."""
        ci = first
        while ci < last:
            l1_index, idx = divmod(ci, self.l2_entries)
            n = min(last - ci, self.l2_entries - idx)
            off = self._l2_table_offset(l1_index)
            if not off and new == 0:
                ci += n          # no table: already unallocated, and there is no backing data to hide
                continue
            old = [self._l2_entry(c) for c in range(ci, ci + n)] if off else [0] * n
            if all(e == new for e in old):
                ci += n
                continue
            if not (off and self.l1[l1_index] & COPIED):
                self._ensure_l2_table(l1_index)
            self._set_l2_entries(ci, [new] * n)
            for host in self._release(old):
                if punch:
                    self.file.punch_hole(host, self.cs)
            ci += n


    def resize(self, new_size: int) -> None:
        """Grow the virtual disk to `new_size` bytes (shrinking is refused)."""
        self._check_writable()
        if new_size < self._size:
            raise UnsupportedImageError(f"{self.path}: shrinking a qcow2 image is not supported; use "
                                        "qemu-img resize --shrink")
        if new_size % 512:
            raise ImageError(f"{self.path}: a qcow2 image size must be a multiple of 512 bytes")
        with self._lock:
            needed = -(-new_size // (self.cs * self.l2_entries))
            if needed > len(self.l1):
                self._grow_l1(needed)
            self.guard.check(24, 8, HEADER)
            self.file.pwrite(24, struct.pack(">Q", new_size))
            self.file.fsync()
            self._size = new_size
            self.header.size = new_size

    def _grow_l1(self, needed: int) -> None:
        if needed * 8 > MAX_L1_BYTES:
            raise ImageError(f"{self.path}: the L1 table would exceed {MAX_L1_BYTES >> 20} MiB; the size is too "
                             "large for this cluster size")
        clusters = -(-needed * 8 // self.cs)
        entries = self.l1 + [0] * (needed - len(self.l1))
        new = self.refcounts.alloc(clusters)
        raw = struct.pack(f">{needed}Q", *entries)
        self._data_write(new, raw + bytes(clusters * self.cs - len(raw)))
        self.file.barrier()
        old_off, old_size = self.header.l1_table_offset, len(self.l1)
        self.guard.check(36, 12, HEADER)
        self.file.pwrite(36, struct.pack(">IQ", needed, new))     # header: l1_size, l1_table_offset
        self.file.barrier()
        self.header.l1_size, self.header.l1_table_offset = needed, new
        self.l1 = entries
        self.guard.forget(old_off, -(-old_size * 8 // self.cs) * self.cs)
        self.guard.add(new, clusters * self.cs, L1)
        if old_size:
            self.refcounts.free(old_off, -(-old_size * 8 // self.cs))

