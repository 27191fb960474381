"""qcow2 reference counts: the two-level refcount structure and the cluster allocator built on it.

QEMU docs/interop/qcow2.txt, "Host cluster management": the refcount table (header fields
refcount_table_offset/_clusters) holds 64-bit offsets of refcount blocks; each block is one cluster of
2^refcount_order-bit big-endian entries, one per host cluster. A cluster is free when its count is 0.

Crash safety (the spec's ordering rule): a cluster's refcount is raised *before* anything points to it, and
lowered only *after* the last pointer to it is gone, so an interrupted update leaves at worst a leaked cluster
(refcount > references), never a cluster in use with a refcount too low. Every update is written through to the
file at once, in that order; a new refcount block describes itself (it is placed inside the range it covers),
so allocating one never needs another.
"""
from __future__ import annotations

import struct

from core.storage.errors import ImageCorruptError, ImageError
from core.storage.hostfile import HostFile
from core.storage.qcow2_header import MAX_REFTABLE_BYTES
from core.storage.qcow2_lanes import TYPECODES, add_one_each, find_lane, from_array, lanes_equal_to, to_array, zero_runs
from core.storage.qcow2_meta import HEADER, REFBLOCK, REFTABLE, MetadataGuard

TYPE_CHECKING = False     # not typing's: `img snapshot` imports neither typing nor numpy (tests/storage)
if TYPE_CHECKING:
    from array import array

    import numpy as np

OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00
_BLOCK_CACHE = 64


class Refcounts:
    """Read and update refcounts of host clusters; allocate and free runs of clusters."""

    def __init__(self, file: HostFile, path: str, cluster_bits: int, refcount_order: int,
                 table_offset: int, table_clusters: int, guard: MetadataGuard | None = None) -> None:
        self.file = file
        self.guard = guard
        self.path = path
        self.cluster_bits = cluster_bits
        self.cs = 1 << cluster_bits
        self.order = refcount_order
        self.bits = 1 << refcount_order
        self.max_refcount = (1 << self.bits) - 1
        self.per_block = self.cs * 8 // self.bits
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        raw = file.pread(table_offset, table_clusters * self.cs)
        self.table = list(struct.unpack(f">{len(raw) // 8}Q", raw))
        self._blocks: dict[int, bytearray] = {}        # least recently used first
        self.free_hint = 0
        if guard is not None:
            guard.add(table_offset, table_clusters * self.cs, REFTABLE)
            for entry in self.table:
                if entry & OFFSET_MASK:
                    guard.add(entry & OFFSET_MASK, self.cs, REFBLOCK)

    def _check(self, offset: int, length: int, allowed: str | None = None) -> None:
        if self.guard is not None:
            self.guard.check(offset, length, allowed)

    # --- lookup -------------------------------------------------------------------------------------------

    def block_offset(self, bidx: int) -> int:
        if bidx >= len(self.table):
            return 0
        off = self.table[bidx] & OFFSET_MASK
        if off and (off + self.cs > self.file.size or self.table[bidx] & 0x1FF):
            raise ImageCorruptError(f"{self.path}: refcount block {bidx} at offset {off:#x} is misaligned or lies "
                                    "beyond the end of the file; repair the image with qemu-img check -r all")
        return off

    def block(self, bidx: int) -> bytearray | None:
        """The refcount block `bidx` (cached), or None if it is not allocated."""
        blk = self._blocks.pop(bidx, None)
        if blk is not None:
            self._blocks[bidx] = blk                 # now the most recently used
            return blk
        off = self.block_offset(bidx)
        if not off:
            return None
        blk = bytearray(self.file.pread(off, self.cs))
        self._blocks[bidx] = blk
        if len(self._blocks) > _BLOCK_CACHE:
            del self._blocks[next(iter(self._blocks))]
        return blk

    def get(self, cluster: int) -> int:
        blk = self.block(cluster // self.per_block)
        return 0 if blk is None else self._entry(blk, cluster % self.per_block)

    def values(self, blk: bytes | bytearray) -> array | list[int]:
        """All entries of a refcount block as Python integers (an array for whole-byte widths)."""
        if self.bits >= 8:
            return to_array(blk, self.bits)
        table = _sub_byte_table(self.bits)
        return [v for byte in blk for v in table[byte]]

    def _pack_values(self, values: array | list[int]) -> bytes:
        if self.bits >= 8:
            if isinstance(values, list):
                from array import array  # here, as in qcow2_lanes.to_array
                values = array(TYPECODES[self.bits], values)
            return from_array(values)
        per_byte = 8 // self.bits
        out = bytearray(len(values) // per_byte)
        for k in range(per_byte):
            shift = k * self.bits
            for j, v in enumerate(values[k::per_byte]):
                out[j] |= v << shift
        return bytes(out)

    def block_entries(self, blk: bytes | bytearray) -> np.ndarray:
        """All entries of a refcount block as a numpy array (for check's scans of whole images)."""
        import numpy as np  # here, not at the top: opening an image or taking a snapshot needs no numpy
        if self.bits >= 8:
            return np.frombuffer(bytes(blk), dtype=f">u{self.bits // 8}").astype(np.uint64)
        per_byte = 8 // self.bits
        raw = np.frombuffer(bytes(blk), dtype=np.uint8)
        shifts = np.arange(per_byte, dtype=np.uint8) * self.bits
        return ((raw[:, None] >> shifts) & self.max_refcount).reshape(-1).astype(np.uint64)

    def all_equal_one(self, first: int, count: int) -> bool | None:
        """True if the refcounts of clusters [first, first+count) are all 1, False if none is, None if some are
        (or the entries are narrower than a byte): lets a whole L2 table's copied flags be set or cleared at once."""
        if self.bits < 8:
            return None
        nb = self.bits // 8
        one = bytes(nb - 1) + b"\x01"
        verdicts = set()
        while count:
            bidx, rel = divmod(first, self.per_block)
            n = min(count, self.per_block - rel)
            blk = self.block(bidx)
            if blk is None:
                verdicts.add(False)
            elif blk[rel * nb:(rel + n) * nb] == one * n:
                verdicts.add(True)
            elif find_lane(blk, one, rel * nb, (rel + n) * nb) < 0:
                verdicts.add(False)
            else:
                return None
            first, count = first + n, count - n
        return verdicts.pop() if len(verdicts) == 1 else None

    def _entry(self, blk: bytearray, i: int) -> int:
        if self.bits >= 8:
            nb = self.bits // 8
            return int.from_bytes(blk[i * nb:(i + 1) * nb], "big")
        per_byte = 8 // self.bits
        return blk[i // per_byte] >> (i % per_byte * self.bits) & self.max_refcount

    def _set_entry(self, blk: bytearray, i: int, value: int) -> None:
        if self.bits >= 8:
            nb = self.bits // 8
            blk[i * nb:(i + 1) * nb] = value.to_bytes(nb, "big")
            return
        per_byte = 8 // self.bits
        shift = i % per_byte * self.bits
        blk[i // per_byte] = blk[i // per_byte] & ~(self.max_refcount << shift) & 0xFF | value << shift

    def _entry_bytes(self, first: int, last: int) -> tuple[int, int]:
        """Byte range [start, end) of a block holding entries first..last (inclusive)."""
        return first * self.bits // 8, ((last + 1) * self.bits + 7) // 8

    # --- updates -------------------------------------------------------------------------------------------

    def update(self, cluster: int, count: int, delta: int) -> None:
        """Add `delta` to the refcounts of clusters [cluster, cluster+count); their blocks must exist."""
        end = cluster + count
        while cluster < end:
            bidx = cluster // self.per_block
            blk = self.block(bidx)
            if blk is None:
                raise ImageCorruptError(f"{self.path}: no refcount block for cluster {cluster} that is in use; "
                                        "repair the image with qemu-img check -r all")
            first = cluster % self.per_block
            last = min(end - cluster, self.per_block - first) + first - 1
            new_values = []
            for i in range(first, last + 1):
                value = self._entry(blk, i) + delta
                if value < 0 or value > self.max_refcount:
                    raise ImageCorruptError(f"{self.path}: refcount of cluster {bidx * self.per_block + i} would "
                                            f"become {value}; repair the image with qemu-img check -r all")
                new_values.append(value)
            lo, hi = self._entry_bytes(first, last)
            self._check(self.block_offset(bidx) + lo, hi - lo, REFBLOCK)
            for i, value in zip(range(first, last + 1), new_values, strict=True):
                self._set_entry(blk, i, value)
                if value == 0:
                    self.free_hint = min(self.free_hint, bidx * self.per_block + i)
            self.file.pwrite(self.block_offset(bidx) + lo, blk[lo:hi])
            cluster += last - first + 1

    def update_runs(self, runs: list[tuple[int, int]], delta: int) -> list[int]:
        """Add `delta` once to each cluster of each run (first cluster, count) in `runs`; a cluster may be in
        several runs and counts once per run. One write per refcount block touched, in block order; return the
        clusters whose count became 0 (ascending). Every block is checked before any is written, so a count that
        would leave 0..max fails the whole update unapplied."""
        runs = sorted(r for r in runs if r[1] > 0)
        if not runs:
            return []
        per = self.per_block
        by_block: dict[int, list[tuple[int, int]]] = {}
        overlap = False
        prev_end = -1
        for first, count in runs:
            overlap = overlap or first < prev_end
            prev_end = max(prev_end, first + count)
            while count:
                bidx, rel = divmod(first, per)
                n = min(count, per - rel)
                by_block.setdefault(bidx, []).append((rel, n))
                first, count = first + n, count - n
        plans, zeros = [], []
        for bidx, parts in by_block.items():     # ascending: runs were sorted
            base = bidx * per
            blk = self.block(bidx)
            if blk is None:
                raise ImageCorruptError(f"{self.path}: no refcount block for cluster {base + parts[0][0]} that is in "
                                        "use; repair the image with qemu-img check -r all")
            if self.bits >= 8 and abs(delta) == 1 and not overlap:
                new, became = self._add_runs(blk, base, parts, delta)
            else:
                new, became = self._add_each(blk, base, parts, delta)
            plans.append((bidx, blk, new))
            zeros += became
        for bidx, blk, new in plans:
            self._check(self.block_offset(bidx), self.cs, REFBLOCK)
            blk[:] = new
            self.file.pwrite(self.block_offset(bidx), blk)
        if zeros:
            self.free_hint = min(self.free_hint, zeros[0])
        return zeros

    def _bad(self, cluster: int, value: int) -> ImageCorruptError:
        return ImageCorruptError(f"{self.path}: refcount of cluster {cluster} would become {value}; repair the image "
                                 "with qemu-img check -r all")

    def _add_runs(self, blk: bytearray, base: int, parts: list[tuple[int, int]],
                  delta: int) -> tuple[bytearray, list[int]]:
        """±1 on disjoint runs of whole-byte entries, each as one big-integer addition on its bytes."""
        nb = self.bits // 8
        limit = b"\xff" * nb if delta > 0 else bytes(nb)     # the lane that would carry or borrow
        new = bytearray(blk)
        became: list[int] = []
        for rel, n in parts:
            lo, hi = rel * nb, (rel + n) * nb
            p = find_lane(blk, limit, lo, hi)
            if p >= 0:
                raise self._bad(base + p // nb, int.from_bytes(blk[p:p + nb], "big") + delta)
            new[lo:hi] = add_one_each(blk[lo:hi], nb, delta)
            if delta < 0:
                became += [base + q // nb for q in lanes_equal_to(new, bytes(nb), lo, hi)]
        return new, became

    def _add_each(self, blk: bytearray, base: int, parts: list[tuple[int, int]],
                  delta: int) -> tuple[bytes, list[int]]:
        """The general case (repeated clusters, sub-byte entries): entry by entry, then checked in order."""
        values = list(self.values(blk))
        touched = set()
        for rel, n in parts:
            for i in range(rel, rel + n):
                values[i] += delta
            touched.update(range(rel, rel + n))
        order = sorted(touched)
        for i in order:
            if values[i] < 0 or values[i] > self.max_refcount:
                raise self._bad(base + i, values[i])
        became = [base + i for i in order if values[i] == 0] if delta < 0 else []
        return self._pack_values(values), became

    def set(self, cluster: int, value: int) -> None:
        """Set one refcount to `value` (repair); the block must exist."""
        current = self.get(cluster)
        if value != current:
            self.update(cluster, 1, value - current)

    def alloc(self, count: int) -> int:
        """Allocate `count` contiguous free clusters with refcount 1; return the host offset of the first."""
        if count <= 0:
            raise ValueError("count must be positive")
        start, _ = self._find_free_run(count, exact=True)
        if self._missing_block(start, count) is not None:
            return self._alloc_at_end(count)
        self._check(start * self.cs, count * self.cs)
        self.update(start, count, +1)
        self.free_hint = max(self.free_hint, start + count)
        return start * self.cs

    def alloc_extent(self, count: int) -> tuple[int, int]:
        """Allocate the first free run of up to `count` clusters; return (host offset, clusters allocated)."""
        if count <= 0:
            raise ValueError("count must be positive")
        while True:
            start, n = self._find_free_run(count, exact=False)
            missing = self._missing_block(start, n)
            if missing is None:
                break
            if missing > start // self.per_block:
                n = missing * self.per_block - start      # stop where the next refcount block is missing
                break
            # The run starts in a range without a refcount block: create it there, describing itself.
            self._create_block(missing, start)
        self._check(start * self.cs, n * self.cs)
        self.update(start, n, +1)
        self.free_hint = max(self.free_hint, start + n)
        return start * self.cs, n

    def free(self, offset: int, count: int) -> None:
        """Drop one reference from clusters [offset, offset + count*cs)."""
        self.update(offset >> self.cluster_bits, count, -1)

    def _missing_block(self, start: int, count: int) -> int | None:
        return next((b for b in range(start // self.per_block, (start + count - 1) // self.per_block + 1)
                     if not self.block_offset(b)), None)

    def _find_free_run(self, count: int, exact: bool) -> tuple[int, int]:
        """First run of free clusters from the hint: of at least `count` if exact, else of any length (≤ count)."""
        idx = self.free_hint
        run_start, run_len = idx, 0
        while True:
            bidx = idx // self.per_block
            base = bidx * self.per_block
            blk = self.block(bidx)
            if blk is None:
                if run_len == 0:
                    run_start = idx
                run_len += base + self.per_block - idx
                if run_len >= count:
                    return run_start, count
                idx = base + self.per_block
                continue
            length_here = base + self.per_block - idx
            runs = self._zero_runs(blk, idx - base)
            first_run = next(runs, None)
            if run_len and first_run is not None and first_run[0] == 0:
                if run_len + first_run[1] >= count:
                    return run_start, count
                if first_run[1] == length_here:
                    run_len += length_here
                    idx = base + self.per_block
                    continue
                if not exact:
                    return run_start, run_len + first_run[1]
                first_run = next(runs, None)
            elif run_len and not exact:
                return run_start, min(run_len, count)
            run_len = 0
            last = None
            while first_run is not None:
                start, end = first_run
                length = end - start
                # Non-exact: a run that reaches the block's end may go on in the next block, unless it is long
                # enough.
                if length >= count if exact else length > 0 and (end < length_here or length >= count):
                    return idx + start, min(count, length)
                last = first_run
                first_run = next(runs, None)
            if last is not None and last[1] == length_here:
                run_start, run_len = idx + last[0], last[1] - last[0]
            idx = base + self.per_block

    def _zero_runs(self, blk: bytearray, start: int):
        """(first, end) of each run of free entries from entry `start`, relative to it, in order."""
        if self.bits >= 8:
            for first, end in zero_runs(blk, self.bits // 8, start):
                yield first - start, end - start
            return
        values = self.values(blk)
        i, n = start, len(values)
        while i < n:
            if values[i]:
                i += 1
                continue
            j = i
            while j < n and not values[j]:
                j += 1
            yield i - start, j - start
            i = j

    def _alloc_at_end(self, count: int) -> int:
        """Allocate `count` clusters past the end of the file, with the refcount blocks they need after them.

        Used when a contiguous run crosses ranges that have no refcount block yet: blocks placed inside the run
        (describing themselves) would split it, so they go right after it instead.
        """
        while True:
            start = -(-self.file.size // self.cs)
            blocks: list[int] = []
            while True:
                end = start + count + len(blocks)
                needed = [b for b in range(start // self.per_block, (end - 1) // self.per_block + 1)
                          if not self.block_offset(b)]
                if needed == blocks:
                    break
                blocks = needed
            if not blocks or max(blocks) < len(self.table):
                break
            self._grow_table(max(blocks) + 1)
        self._check(start * self.cs, (end - start) * self.cs)
        new = {b: bytearray(self.cs) for b in blocks}
        for cl in range(start, end):
            b = cl // self.per_block
            if b in new:
                self._set_entry(new[b], cl - b * self.per_block, 1)
            else:
                self.update(cl, 1, +1)
        for i, (b, blk) in enumerate(new.items()):
            at = (start + count + i) * self.cs
            self.file.pwrite(at, blk)                        # the block first, then the table entry to it
            self._add(at, REFBLOCK)
            self._check(self.table_offset + b * 8, 8, REFTABLE)
            self.file.pwrite(self.table_offset + b * 8, struct.pack(">Q", at))
            self.table[b] = at
            self._blocks[b] = blk
        return start * self.cs

    def _add(self, offset: int, kind: str, clusters: int = 1) -> None:
        if self.guard is not None:
            self.guard.add(offset, clusters * self.cs, kind)

    def _create_block(self, bidx: int, at_cluster: int) -> None:
        if bidx >= len(self.table):
            self._grow_table(bidx + 1)
            return
        blk = bytearray(self.cs)
        self._set_entry(blk, at_cluster - bidx * self.per_block, 1)
        # A table entry of 0 over clusters that hold metadata (a damaged image) must not put a block on them.
        self._check(at_cluster * self.cs, self.cs)
        self.file.pwrite(at_cluster * self.cs, blk)           # the block first, then the table entry to it
        self._add(at_cluster * self.cs, REFBLOCK)
        self._check(self.table_offset + bidx * 8, 8, REFTABLE)
        self.file.pwrite(self.table_offset + bidx * 8, struct.pack(">Q", at_cluster * self.cs))
        self.table[bidx] = at_cluster * self.cs
        self._blocks[bidx] = blk

    def _grow_table(self, min_entries: int) -> None:
        """Move the refcount table to a larger one past the end of the file (QEMU's layout does the same)."""
        per_table_cluster = self.cs // 8
        entries = max(min_entries, len(self.table) * 2)
        start = -(-self.file.size // self.cs)     # clusters past EOF are free in any sane image
        new_blocks: list[int] = []
        while True:
            n_table = -(-entries // per_table_cluster)
            end = start + n_table + len(new_blocks)
            needed = [b for b in range(start // self.per_block, (end - 1) // self.per_block + 1)
                      if b >= len(self.table) or not self.table[b]]
            if needed == new_blocks and max(needed, default=0) < entries:
                break
            new_blocks = needed
            entries = max(entries, max(needed, default=0) + 1)
        if n_table * self.cs > MAX_REFTABLE_BYTES:
            raise ImageError(f"{self.path}: the refcount table would exceed {MAX_REFTABLE_BYTES >> 20} MiB; the image "
                             "is too large for its cluster size")
        table_at = start * self.cs
        self._check(table_at, (end - start) * self.cs)
        block_at = {b: (start + n_table + i) for i, b in enumerate(new_blocks)}
        # Clusters of the new structures that fall in existing blocks are counted there first (via the old table).
        for cl in range(start, end):
            if cl // self.per_block not in block_at:
                self.update(cl, 1, +1)
        blocks = {b: bytearray(self.cs) for b in new_blocks}
        for cl in range(start, end):
            b = cl // self.per_block
            if b in blocks:
                self._set_entry(blocks[b], cl - b * self.per_block, 1)
        for b, blk in blocks.items():
            self.file.pwrite(block_at[b] * self.cs, blk)
            self._add(block_at[b] * self.cs, REFBLOCK)
        table = self.table + [0] * (n_table * per_table_cluster - len(self.table))
        for b in new_blocks:
            table[b] = block_at[b] * self.cs
        self.file.pwrite(table_at, struct.pack(f">{len(table)}Q", *table))
        self.file.barrier()
        old_offset, old_clusters = self.table_offset, self.table_clusters
        self._check(48, 12, HEADER)
        self.file.pwrite(48, struct.pack(">QI", table_at, n_table))   # header: refcount_table_offset/_clusters
        self.file.barrier()
        if self.guard is not None:
            self.guard.forget(old_offset, old_clusters * self.cs)
        self._add(table_at, REFTABLE, n_table)
        self.table, self.table_offset, self.table_clusters = table, table_at, n_table
        for b, blk in blocks.items():
            self._blocks[b] = blk
        self.free(old_offset, old_clusters)


_SUB_BYTE: dict[int, list[tuple[int, ...]]] = {}


def _sub_byte_table(bits: int) -> list[tuple[int, ...]]:
    """For 1-, 2- and 4-bit refcounts: the entries each byte value holds, lowest bits first (the spec's order)."""
    table = _SUB_BYTE.get(bits)
    if table is None:
        per_byte, mask = 8 // bits, (1 << bits) - 1
        table = _SUB_BYTE[bits] = [tuple(b >> (k * bits) & mask for k in range(per_byte)) for b in range(256)]
    return table
