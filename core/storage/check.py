"""Consistency check of an image's metadata, as `qemu-img check` does it (QEMU docs/interop/qcow2.txt).

Every host cluster the metadata references is counted — the header cluster, the L1 tables (active and of each
internal snapshot), L2 tables, data clusters (a compressed one counts every host cluster its bytes touch), the
snapshot table, the refcount table and blocks, persistent bitmaps — and the counts are compared with the stored
refcounts: a stored count below the references is a corruption (the cluster could be handed out again while in
use), above them a leak (wasted space, harmless). Also reported as corruptions: misaligned or out-of-file
offsets and a "copied" flag that disagrees with a refcount of exactly 1. Leaks, and refcounts that are too low
where the block exists, can be repaired (-r leaks / -r all); -r all also rewrites wrong copied flags, as
qemu-img does (an interrupted snapshot create or delete can leave them).

Memory does not grow with the file's size: references are counted per refcount block, only for blocks that
something references, and every size read from the file is bounded before it is used (tables by QEMU's limits,
the bitmap directory by 64 MiB), so a huge sparse file or a hostile size field costs nothing.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from core.storage.errors import ImageError
from core.storage.hostfile import HostFile
from core.storage.probe import detect_format
from core.storage.qcow2_header import MAX_L1_BYTES, parse_header
from core.storage.qcow2_refcount import Refcounts
from core.storage.qcow2_snaptable import parse_table

_OFF = np.uint64(0x00FF_FFFF_FFFF_FE00)
_COPIED = np.uint64(1 << 63)
_COMPRESSED = np.uint64(1 << 62)
_MAX_MESSAGES = 200
MAX_BITMAP_DIRECTORY = 64 << 20     # QEMU: 65535 bitmaps, 1 KiB of directory entry each at most


@dataclass
class CheckResult:
    """What the check found; `clean` means neither corruptions nor check errors (leaks are allowed)."""

    path: str
    format_name: str
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    allocated_clusters: int = 0
    total_clusters: int = 0
    compressed_clusters: int = 0
    fragmented_clusters: int = 0
    image_end_offset: int = 0
    messages: list[str] = field(default_factory=list)
    supported: bool = True

    @property
    def clean(self) -> bool:
        return self.corruptions == 0 and self.check_errors == 0

    def note(self, text: str) -> None:
        if len(self.messages) < _MAX_MESSAGES:
            self.messages.append(text)
        elif len(self.messages) == _MAX_MESSAGES:
            self.messages.append("(further messages suppressed)")


def check_image(path: str, repair: str | None = None, fmt: str | None = None,
                force_share: bool = False) -> CheckResult:
    """Check the image at `path`; `repair` None, 'leaks' or 'all'. Raises ImageError if it cannot be opened.

    `force_share` skips the lock (like qemu-img -U) to look at an image a VM is using; the result may then
    be inconsistent.
    """
    if repair not in (None, "leaks", "all"):
        raise ImageError(f"{path}: unknown repair mode {repair!r}; use leaks or all")
    fmt = fmt or detect_format(path)
    if fmt == "raw":
        return CheckResult(path, "raw", supported=False)
    file = HostFile(path, read_only=repair is None, lock=not force_share or repair is not None)
    try:
        return _Checker(file, path, repair).run()
    finally:
        file.close()


class _Checker:
    def __init__(self, file: HostFile, path: str, repair: str | None) -> None:
        self.file = file
        self.path = path
        self.repair = repair
        head = file.pread(0, min(file.size, 512)) if file.size else b""
        bits = struct.unpack_from(">I", head, 20)[0] if len(head) >= 24 else 16
        self.hdr = parse_header(file.pread(0, min(file.size, 1 << min(max(bits, 9), 21))), file.size, path)
        self.cs = self.hdr.cluster_size
        self.res = CheckResult(path, "qcow2")
        self.nclusters = -(-file.size // self.cs)
        self.per_block = self.cs * 8 // (1 << self.hdr.refcount_order)
        self.refs: dict[int, np.ndarray] = {}                  # refcount block index -> references per cluster
        self.copied_l2: list[tuple[int, int, bool]] = []     # (l1 index, l2 cluster, copied flag)
        self.copied_data: list[tuple[int, np.ndarray, np.ndarray]] = []   # (L2 offset, indices, entries)

    # --- counting references -------------------------------------------------------------------------------

    def _block(self, bidx: int) -> np.ndarray:
        arr = self.refs.get(bidx)
        if arr is None:
            arr = self.refs[bidx] = np.zeros(self.per_block, dtype=np.uint32)
        return arr

    def _count(self, clusters: np.ndarray) -> None:
        """Add one reference to each cluster index in `clusters` (which lie inside the file)."""
        if not len(clusters):
            return
        clusters = np.sort(clusters)
        blocks = clusters // self.per_block
        cuts = np.flatnonzero(np.diff(blocks)) + 1
        for part in np.split(clusters, cuts):
            bidx = int(part[0]) // self.per_block
            np.add.at(self._block(bidx), part - bidx * self.per_block, 1)

    def inc(self, offset: int, length: int, what: str) -> bool:
        if length <= 0:
            return True
        first, last = offset // self.cs, (offset + length - 1) // self.cs
        if last >= self.nclusters:
            self.res.corruptions += 1
            self.res.note(f"ERROR {what} at offset {offset:#x} ({length} bytes) lies beyond the end of the file")
            last = min(last, self.nclusters - 1)
            if first > last:
                return False
        self._count(np.arange(first, last + 1, dtype=np.int64))
        return True

    def aligned(self, offset: int, what: str) -> bool:
        if offset % self.cs:
            self.res.corruptions += 1
            self.res.note(f"ERROR {what} offset {offset:#x} is not cluster-aligned")
            return False
        return True

    def walk_l1(self, l1_offset: int, l1_size: int, active: bool) -> None:
        name = "L1 table" if active else "snapshot L1 table"
        if not self.aligned(l1_offset, name) or not self.inc(l1_offset, l1_size * 8, name):
            return
        if l1_offset + l1_size * 8 > self.file.size:
            return
        l1 = np.frombuffer(self.file.pread(l1_offset, l1_size * 8), dtype=">u8").astype(np.uint64)
        for index in np.flatnonzero(l1 & _OFF).tolist():
            entry = int(l1[index])
            l2 = entry & int(_OFF)
            if not self.aligned(l2, f"L2 table (L1 index {index})"):
                continue
            if not self.inc(l2, self.cs, f"L2 table (L1 index {index})") or l2 + self.cs > self.file.size:
                continue
            if active:
                self.copied_l2.append((index, l2 // self.cs, bool(entry >> 63)))
            table = np.frombuffer(self.file.pread(l2, self.cs), dtype=">u8").astype(np.uint64)
            self.walk_l2(table, l2, index, active)

    def walk_l2(self, table: np.ndarray, l2_offset: int, l1_index: int, active: bool) -> None:
        compressed = (table & _COMPRESSED) != 0
        for i in np.flatnonzero(compressed).tolist():
            entry = int(table[i])
            if entry >> 63:
                self.res.corruptions += 1
                self.res.note(f"ERROR compressed cluster entry (L1 index {l1_index}, L2 index {i}) has the copied flag")
            x = 62 - (self.hdr.cluster_bits - 8)
            host = entry & ((1 << x) - 1)
            sectors = (entry >> x) & ((1 << (self.hdr.cluster_bits - 8)) - 1)
            length = (sectors + 1) * 512 - (host & 511)
            self.inc(host, length, "compressed cluster")
            if active:
                self.res.compressed_clusters += 1
                self.res.allocated_clusters += 1
                self.res.fragmented_clusters += 1
        positions = np.flatnonzero(~compressed & ((table & _OFF) != 0))
        if not len(positions):
            return
        entries = table[positions]
        hosts = (entries & _OFF).astype(np.int64)
        ok = hosts % self.cs == 0
        for h in hosts[~ok].tolist():
            self.aligned(h, f"data cluster (L1 index {l1_index})")
        idx = hosts // self.cs
        beyond = ok & (idx >= self.nclusters)
        for h in hosts[beyond].tolist():
            self.res.corruptions += 1
            self.res.note(f"ERROR data cluster at offset {h:#x} (L1 index {l1_index}) lies beyond the end of the file")
        good = ok & ~beyond
        self._count(idx[good])
        if active:
            self.copied_data.append((l2_offset, positions[good], entries[good]))
            data_idx = idx[good]
            self.res.allocated_clusters += len(data_idx)
            # As qemu-img counts it: a cluster not right after the previous one of the same L2 table.
            self.res.fragmented_clusters += int(np.count_nonzero(np.diff(data_idx) != 1))

    def walk_snapshots(self) -> None:
        snapshots, size = parse_table(self.file.pread, self.hdr.snapshots_offset, self.hdr.nb_snapshots, self.cs,
                                      self.file.size, self.path)
        for sn in snapshots:
            if sn.problem:
                self.res.corruptions += 1
                self.res.note(f"ERROR {sn.problem}")
                continue
            self.walk_l1(sn.l1_table_offset, sn.l1_size, active=False)
        self.inc(self.hdr.snapshots_offset, size, "snapshot table")

    def walk_bitmaps(self) -> None:
        ext = self.hdr.bitmaps_extension
        if ext is None or not self.hdr.autoclear_features & 1 or len(ext) < 24:
            return
        nb, _, dir_size, dir_off = struct.unpack_from(">IIQQ", ext)
        if dir_size > MAX_BITMAP_DIRECTORY or dir_off + dir_size > self.file.size:
            self.res.check_errors += 1
            self.res.note(f"ERROR bitmap directory of {dir_size} bytes at {dir_off:#x} is larger than "
                          f"{MAX_BITMAP_DIRECTORY >> 20} MiB or lies beyond the end of the file: File too large")
            return
        if not self.inc(dir_off, dir_size, "bitmap directory"):
            return
        directory = self.file.pread(dir_off, dir_size)
        pos = 0
        for _ in range(nb):
            if pos + 24 > len(directory):
                break
            table_off, table_size, _flags, _type, _gran, name_len, extra = struct.unpack_from(">QIIBBHI", directory,
                                                                                                pos)
            size = 24 + extra + name_len
            pos += size + (-size % 8)
            if table_size * 8 > MAX_L1_BYTES or table_off + table_size * 8 > self.file.size:
                self.res.corruptions += 1
                self.res.note(f"ERROR bitmap table of {table_size} entries at {table_off:#x} is too large or lies "
                              "beyond the end of the file")
                continue
            if self.inc(table_off, table_size * 8, "bitmap table"):
                table = np.frombuffer(self.file.pread(table_off, table_size * 8), dtype=">u8").astype(np.uint64)
                for h in (table & _OFF)[(table & _OFF) != 0].tolist():
                    self.inc(h, self.cs, "bitmap data cluster")

    # --- the check -----------------------------------------------------------------------------------------

    def run(self) -> CheckResult:
        hdr, res = self.hdr, self.res
        self.inc(0, self.cs, "header")
        self.walk_l1(hdr.l1_table_offset, hdr.l1_size, active=True)
        res.total_clusters = -(-(hdr.size - hdr.size % 512) // self.cs)
        if hdr.nb_snapshots:
            self.walk_snapshots()
        self.walk_bitmaps()
        rc = Refcounts(self.file, self.path, hdr.cluster_bits, hdr.refcount_order, hdr.refcount_table_offset,
                       hdr.refcount_table_clusters)
        self.inc(hdr.refcount_table_offset, hdr.refcount_table_clusters * self.cs, "refcount table")
        for bidx, entry in enumerate(rc.table):
            off = entry & int(_OFF)
            if off and self.aligned(off, f"refcount block {bidx}"):
                self.inc(off, self.cs, f"refcount block {bidx}")
        stored = self._compare(rc)
        self._check_copied(rc, stored)
        last = max((b for b, arr in self.refs.items() if arr.any()), default=None)
        if last is not None:
            res.image_end_offset = (last * self.per_block + int(np.flatnonzero(self.refs[last])[-1]) + 1) * self.cs
        return res

    def _stored_block(self, rc: Refcounts, bidx: int) -> np.ndarray:
        entry = rc.table[bidx] if bidx < len(rc.table) else 0
        off = entry & int(_OFF)
        if not off or off % self.cs or off + self.cs > self.file.size:
            return np.zeros(self.per_block, dtype=np.uint64)
        return rc.block_entries(self.file.pread(off, self.cs))

    def _compare(self, rc: Refcounts) -> dict[int, np.ndarray]:
        """Compare stored refcounts with the references, block by block; return the stored counts (as repaired)
        of the blocks something references (what the copied-flag check needs)."""
        kept: dict[int, np.ndarray] = {}
        blocks = sorted(set(self.refs) | {b for b, e in enumerate(rc.table) if e & int(_OFF)})
        for bidx in blocks:
            base = bidx * self.per_block
            stored = self._stored_block(rc, bidx)
            n = max(0, min(self.per_block, self.nclusters - base))
            for i in np.flatnonzero(stored[n:]).tolist():
                self._beyond_eof(rc, base + n + i, int(stored[n + i]))
            refs = self.refs.get(bidx)
            refs64 = refs.astype(np.uint64) if refs is not None else np.zeros(self.per_block, dtype=np.uint64)
            for i in np.flatnonzero(stored[:n] != refs64[:n]).tolist():
                self._mismatch(rc, stored, base, i, int(stored[i]), int(refs64[i]))
            if refs is not None:
                kept[bidx] = stored
        if self.repair:
            self.file.fsync()
        return kept

    def _mismatch(self, rc: Refcounts, stored: np.ndarray, base: int, i: int, s: int, r: int) -> None:
        low = s < r
        fixable = self.repair == "all" if low else self.repair is not None
        cluster = base + i
        if fixable and rc.block_offset(cluster // rc.per_block):
            rc.set(cluster, r)
            stored[i] = r
            if low:
                self.res.corruptions_fixed += 1
            else:
                self.res.leaks_fixed += 1
            self.res.note(f"Repairing cluster {cluster} refcount={s} reference={r}")
        elif low:
            self.res.corruptions += 1
            self.res.note(f"ERROR cluster {cluster} refcount={s} reference={r}")
        else:
            self.res.leaks += 1
            self.res.note(f"Leaked cluster {cluster} refcount={s} reference={r}")

    def _beyond_eof(self, rc: Refcounts, cluster: int, value: int) -> None:
        if self.repair:
            rc.set(cluster, 0)
            self.res.leaks_fixed += 1
            self.res.note(f"Repairing cluster {cluster} (beyond the end of the file) refcount={value} reference=0")
        else:
            self.res.leaks += 1
            self.res.note(f"Leaked cluster {cluster} (beyond the end of the file) refcount={value} reference=0")

    def _stored_of(self, stored: dict[int, np.ndarray], clusters: np.ndarray) -> np.ndarray:
        out = np.zeros(len(clusters), dtype=np.uint64)
        for k, c in enumerate(clusters.tolist()):
            arr = stored.get(c // self.per_block)
            out[k] = arr[c % self.per_block] if arr is not None else 0
        return out

    def _check_copied(self, rc: Refcounts, stored: dict[int, np.ndarray]) -> None:
        fix = self.repair == "all"
        for index, cluster, copied in self.copied_l2:
            count = int(self._stored_of(stored, np.array([cluster]))[0])
            if (count == 1) != copied:
                if fix:
                    entry = cluster * self.cs | (1 << 63 if count == 1 else 0)
                    self.file.pwrite(self.hdr.l1_table_offset + index * 8, struct.pack(">Q", entry))
                    self.res.corruptions_fixed += 1
                    self.res.note(f"Repairing OFLAG_COPIED L2 cluster: l1_index={index} refcount={count}")
                else:
                    self.res.corruptions += 1
                    self.res.note(f"ERROR OFLAG_COPIED L2 cluster: l1_index={index} refcount={count}")
        for l2_offset, positions, entries in self.copied_data:
            idx = ((entries & _OFF) // np.uint64(self.cs)).astype(np.int64)
            counts = np.zeros(len(idx), dtype=np.uint64)
            for bidx in np.unique(idx // self.per_block).tolist():
                sel = idx // self.per_block == bidx
                arr = stored.get(bidx)
                if arr is not None:
                    counts[sel] = arr[idx[sel] - bidx * self.per_block]
            copied = (entries & _COPIED) != 0
            wrong = np.flatnonzero((counts == 1) != copied)
            for k in wrong.tolist():
                e, count = int(entries[k]), int(counts[k])
                if fix:
                    e = e & ~(1 << 63) | (1 << 63 if count == 1 else 0)
                    self.file.pwrite(l2_offset + int(positions[k]) * 8, struct.pack(">Q", e))
                    self.res.corruptions_fixed += 1
                    self.res.note(f"Repairing OFLAG_COPIED data cluster: l2_entry={e:x} refcount={count}")
                else:
                    self.res.corruptions += 1
                    self.res.note(f"ERROR OFLAG_COPIED data cluster: l2_entry={e:x} refcount={count}")
        if fix:
            self.file.fsync()
