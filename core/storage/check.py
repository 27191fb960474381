"""Consistency check of an image's metadata, as `qemu-img check` does it (QEMU docs/interop/qcow2.txt).

Every host cluster the metadata references is counted — the header cluster, the L1 tables (active and of each
internal snapshot), L2 tables, data clusters (a compressed one counts every host cluster its bytes touch), the
snapshot table, the refcount table and blocks, persistent bitmaps — and the counts are compared with the stored
refcounts: a stored count below the references is a corruption (the cluster could be handed out again while in
use), above them a leak (wasted space, harmless). Also reported as corruptions: misaligned or out-of-file
offsets and a "copied" flag that disagrees with a refcount of exactly 1. Leaks, and refcounts that are too low
where the block exists, can be repaired (-r leaks / -r all).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from core.storage.errors import ImageError
from core.storage.hostfile import HostFile
from core.storage.probe import detect_format
from core.storage.qcow2_header import parse_header
from core.storage.qcow2_refcount import Refcounts

_OFF = np.uint64(0x00FF_FFFF_FFFF_FE00)
_COPIED = np.uint64(1 << 63)
_COMPRESSED = np.uint64(1 << 62)
_MAX_MESSAGES = 200


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
        self.refs = np.zeros(self.nclusters + 1, dtype=np.uint32)
        self.copied_l2: list[tuple[int, int, bool]] = []     # (l1 index, l2 cluster, copied flag)
        self.copied_data: list[np.ndarray] = []               # arrays of active data entries (with flags)
        self.beyond_eof: list[tuple[int, int]] = []           # (cluster, refcount) of counted clusters past EOF

    # --- counting references -------------------------------------------------------------------------------

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
        self.refs[first:last + 1] += 1
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
        l1 = np.frombuffer(self.file.pread(l1_offset, l1_size * 8), dtype=">u8").astype(np.uint64)
        prev_host = None
        for index, entry in enumerate(l1.tolist()):
            l2 = entry & int(_OFF)
            if not l2:
                continue
            if not self.aligned(l2, f"L2 table (L1 index {index})"):
                continue
            if not self.inc(l2, self.cs, f"L2 table (L1 index {index})"):
                continue
            if active:
                self.copied_l2.append((index, l2 // self.cs, bool(entry >> 63)))
            table = np.frombuffer(self.file.pread(l2, self.cs), dtype=">u8").astype(np.uint64)
            prev_host = self.walk_l2(table, index, active, prev_host)

    def walk_l2(self, table: np.ndarray, l1_index: int, active: bool, prev_host: int | None) -> int | None:
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
        standard = table[~compressed]
        hosts = standard & _OFF
        present = hosts != 0
        entries = standard[present]
        hosts = hosts[present].astype(np.int64)
        if not len(hosts):
            return prev_host
        bad_align = hosts % self.cs != 0
        for h in hosts[bad_align].tolist():
            self.aligned(h, f"data cluster (L1 index {l1_index})")
        ok = ~bad_align
        idx = hosts[ok] // self.cs
        beyond = idx >= self.nclusters
        for h in hosts[ok][beyond].tolist():
            self.res.corruptions += 1
            self.res.note(f"ERROR data cluster at offset {h:#x} (L1 index {l1_index}) lies beyond the end of the file")
        np.add.at(self.refs, idx[~beyond], 1)
        if active:
            self.copied_data.append(entries[ok][~beyond])
            data_idx = idx[~beyond]
            self.res.allocated_clusters += len(data_idx)
            # As qemu-img counts it: a cluster not right after the previous one of the same L2 table.
            self.res.fragmented_clusters += int(np.count_nonzero(np.diff(data_idx) != 1))
        return None

    def walk_snapshots(self) -> None:
        off = self.hdr.snapshots_offset
        pos = off
        for n in range(self.hdr.nb_snapshots):
            fixed = self.file.pread(pos, 40)
            l1_off, l1_size, id_len, name_len = struct.unpack_from(">QIHH", fixed)
            extra = struct.unpack_from(">I", fixed, 36)[0]
            size = 40 + extra + id_len + name_len
            pos += size + (-size % 8)
            if l1_size * 8 > 32 << 20:
                self.res.corruptions += 1
                self.res.note(f"ERROR snapshot {n} has an impossibly large L1 table ({l1_size} entries)")
                continue
            self.walk_l1(l1_off, l1_size, active=False)
        self.inc(off, pos - off, "snapshot table")

    def walk_bitmaps(self) -> None:
        ext = self.hdr.bitmaps_extension
        if ext is None or not self.hdr.autoclear_features & 1 or len(ext) < 24:
            return
        nb, _, dir_size, dir_off = struct.unpack_from(">IIQQ", ext)
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
            if self.inc(table_off, table_size * 8, "bitmap table"):
                table = np.frombuffer(self.file.pread(table_off, table_size * 8), dtype=">u8").astype(np.uint64)
                for h in (table & _OFF)[(table & _OFF) != 0].tolist():
                    self.inc(h, self.cs, "bitmap data cluster")

    # --- the check -----------------------------------------------------------------------------------------

    def run(self) -> CheckResult:
        hdr, res = self.hdr, self.res
        self.inc(0, self.cs, "header")
        self.walk_l1(hdr.l1_table_offset, hdr.l1_size, active=True)
        res.total_clusters = -(-hdr.size // self.cs)
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
        stored = self._stored(rc)
        self._compare(rc, stored)
        self._check_copied(stored)
        used = np.flatnonzero(self.refs)
        res.image_end_offset = (int(used[-1]) + 1) * self.cs if len(used) else 0
        return res

    def _stored(self, rc: Refcounts) -> np.ndarray:
        stored = np.zeros(self.nclusters + 1, dtype=np.uint64)
        for bidx, entry in enumerate(rc.table):
            off = entry & int(_OFF)
            if not off or off % self.cs or off + self.cs > self.file.size:
                continue
            base = bidx * rc.per_block
            values = rc.block_entries(self.file.pread(off, self.cs))
            n = max(0, min(rc.per_block, self.nclusters - base))
            stored[base:base + n] = values[:n]
            for i in np.flatnonzero(values[n:]).tolist():
                self.beyond_eof.append((base + n + i, int(values[n + i])))
        return stored

    def _compare(self, rc: Refcounts, stored: np.ndarray) -> None:
        refs = self.refs[:self.nclusters].astype(np.uint64)
        have = stored[:self.nclusters]
        for i in np.flatnonzero(have != refs).tolist():
            s, r = int(have[i]), int(refs[i])
            low = s < r
            fixable = self.repair == "all" if low else self.repair is not None
            if fixable and rc.block_offset(i // rc.per_block):
                rc.set(i, r)
                stored[i] = r
                if low:
                    self.res.corruptions_fixed += 1
                else:
                    self.res.leaks_fixed += 1
                self.res.note(f"Repairing cluster {i} refcount={s} reference={r}")
            elif low:
                self.res.corruptions += 1
                self.res.note(f"ERROR cluster {i} refcount={s} reference={r}")
            else:
                self.res.leaks += 1
                self.res.note(f"Leaked cluster {i} refcount={s} reference={r}")
        for cluster, value in self.beyond_eof:
            if self.repair:
                rc.set(cluster, 0)
                self.res.leaks_fixed += 1
                self.res.note(f"Repairing cluster {cluster} (beyond the end of the file) refcount={value} reference=0")
            else:
                self.res.leaks += 1
                self.res.note(f"Leaked cluster {cluster} (beyond the end of the file) refcount={value} reference=0")
        if self.repair:
            self.file.fsync()

    def _check_copied(self, stored: np.ndarray) -> None:
        for index, cluster, copied in self.copied_l2:
            if cluster < len(stored) and (int(stored[cluster]) == 1) != copied:
                self.res.corruptions += 1
                self.res.note(f"ERROR OFLAG_COPIED L2 cluster: l1_index={index} refcount={int(stored[cluster])}")
        for entries in self.copied_data:
            idx = ((entries & _OFF) // np.uint64(self.cs)).astype(np.int64)
            copied = (entries & _COPIED) != 0
            wrong = (stored[idx] == 1) != copied
            for e in entries[wrong].tolist():
                self.res.corruptions += 1
                self.res.note(f"ERROR OFLAG_COPIED data cluster: l2_entry={e:x} "
                              f"refcount={int(stored[(e & int(_OFF)) // self.cs])}")

