"""qcow2 images (versions 2 and 3): reading, writing with allocation on write, backing files, zero clusters.

QEMU docs/interop/qcow2.txt: a guest offset is split into an L1 index, an L2 index and an offset in the cluster.
L1 entries point to L2 tables (bit 63 "copied": refcount is exactly 1); an L2 entry is either a standard
cluster descriptor (bits 9-55 host offset, bit 0 "reads as zeros" in version 3) or a compressed one (bit 62).
An unallocated cluster reads from the backing file, or as zeros without one (or past the backing file's end).

Writes to a cluster that is not exclusively ours (unallocated, zero, compressed, or without the copied flag)
allocate a new cluster, fill it (old data, backing data or zeros around the written part), and only then
point the L2 entry at it; the old cluster is released after the entry no longer points to it. Together with
Refcounts' rule (count before pointing) this keeps the image consistent after a kill -9 at any instant: every
metadata write is issued in dependency order and the page cache keeps issued writes. flush() is fsync.

Metadata that points outside the file, or is misaligned, fails the request it serves with ImageCorruptError;
the device stays usable for other requests. Images with internal snapshots, or marked dirty/corrupt, open only
read-only.
"""
from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable

from core.storage.device import BlockDevice
from core.storage.errors import (
    ImageCorruptError,
    ImageError,
    ImageFormatError,
    ImageIOError,
    UnsupportedImageError,
)
from core.storage.hostfile import HostFile
from core.storage.qcow2_header import (
    COMPRESSION_ZLIB,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    MAX_L1_BYTES,
    Qcow2Header,
    parse_header,
)
from core.storage.qcow2_refcount import Refcounts

COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
L1_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
_L2_CACHE = 64
MAX_BACKING_DEPTH = 32

# Opens a backing file read-only: (path, format named in the header or None to detect it, cache mode, depth in the
# chain). core.storage.probe passes its open_image, so a backing file may be of any format without this module
# importing the prober (which imports this module).
BackingOpener = Callable[[str, "str | None", str, int], BlockDevice]

# Cluster kinds
UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED_KIND = range(5)


class Qcow2Image(BlockDevice):
    """A qcow2 image file opened for reading or for reading and writing."""

    format_name = "qcow2"

    def __init__(self, path: str, read_only: bool = False, cache: str = "writeback", lock: bool = True,
                 open_backing: BackingOpener | None = None, _depth: int = 0) -> None:
        """Open the image at `path`; `open_backing` opens the backing file its header names (see BackingOpener).

        Without `open_backing` the backing file is named but not opened (`img info` reads only the header), which
        is allowed read-only only: a write would fill a new cluster with zeros instead of the backing data.
        """
        self.path = path
        self.read_only = read_only
        self.file = HostFile(path, read_only, cache, lock)
        self._lock = threading.RLock()
        self.backing: BlockDevice | None = None
        try:
            self._open(open_backing, cache, _depth)
        except BaseException:
            self.close()
            raise

    def _open(self, open_backing: BackingOpener | None, cache: str, depth: int) -> None:
        head = self.file.pread(0, min(self.file.size, 512)) if self.file.size else b""
        if len(head) < 24:
            raise ImageFormatError(f"{self.path}: not a valid qcow2 image: the file is truncated "
                                   f"({self.file.size} bytes)")
        cluster_bits = struct.unpack_from(">I", head, 20)[0]
        first = self.file.pread(0, min(self.file.size, 1 << min(max(cluster_bits, 9), 21)))
        hdr = parse_header(first, self.file.size, self.path)
        self.header: Qcow2Header = hdr
        self.cluster_bits = hdr.cluster_bits
        self.cs = hdr.cluster_size
        self.l2_entries = self.cs // 8
        self._size = hdr.size
        if not self.read_only:
            why = None
            if hdr.incompatible_features & INCOMPAT_DIRTY:
                why = "it is marked dirty (lazy refcounts were not written back); run qemu-img check -r all"
            elif hdr.incompatible_features & INCOMPAT_CORRUPT:
                why = "it is marked corrupt; run qemu-img check -r all"
            elif hdr.nb_snapshots:
                why = (f"it has {hdr.nb_snapshots} internal snapshot(s), which this implementation does not "
                       "update; open it read-only or remove them with qemu-img snapshot -d")
            elif hdr.backing_file and open_backing is None:
                why = "its backing file is not opened here; open it with core.storage.open_image"
            if why:
                raise UnsupportedImageError(f"{self.path}: cannot open for writing: {why}")
        l1_raw = self.file.pread(hdr.l1_table_offset, hdr.l1_size * 8) if hdr.l1_size else b""
        self.l1 = list(struct.unpack(f">{hdr.l1_size}Q", l1_raw))
        self.refcounts = Refcounts(self.file, self.path, hdr.cluster_bits, hdr.refcount_order,
                                   hdr.refcount_table_offset, hdr.refcount_table_clusters)
        self._l2_cache: OrderedDict[int, bytearray] = OrderedDict()
        self._compressed_cache: tuple[int, bytes] | None = None
        if not self.read_only and hdr.version == 3 and hdr.autoclear_features:
            # The spec: a writer that does not maintain an autoclear feature (e.g. persistent bitmaps) clears its bit.
            hdr.autoclear_features = 0
            self.file.pwrite(88, struct.pack(">Q", 0))
            self.file.barrier()
        if hdr.backing_file and open_backing is not None:
            self.backing = self._open_backing(hdr, open_backing, cache, depth)

    def _open_backing(self, hdr: Qcow2Header, opener: BackingOpener, cache: str, depth: int) -> BlockDevice:
        if depth >= MAX_BACKING_DEPTH:
            raise ImageFormatError(f"{self.path}: backing file chain longer than {MAX_BACKING_DEPTH} "
                                   "(a loop?)")
        name = hdr.backing_file or ""
        if name.startswith("json:") or "://" in name:
            raise UnsupportedImageError(f"{self.path}: backing file {name!r} is not a plain file name; "
                                        "only local files are supported")
        path = resolve_backing_path(self.path, name)
        try:
            return opener(path, hdr.backing_format, cache, depth + 1)
        except ImageError as exc:
            if depth:
                raise       # only the top of the chain adds its name, so the message stays one short line
            raise type(exc)(f"{self.path}: cannot open its backing file: {exc}") from exc

    @property
    def size(self) -> int:
        return self._size

    @property
    def version(self) -> int:
        return self.header.version

    # --- L1/L2 lookup --------------------------------------------------------------------------------------

    def _l2_table_offset(self, l1_index: int) -> int:
        if l1_index >= len(self.l1):
            return 0
        entry = self.l1[l1_index]
        off = entry & L1_OFFSET_MASK
        if off and (off % self.cs or off + self.cs > self.file.size):
            raise ImageCorruptError(f"{self.path}: L1 entry {l1_index} points to an L2 table at {off:#x} that is "
                                    "misaligned or past the end of the file; this request fails (the image is "
                                    "corrupt: qemu-img check)")
        return off

    def _l2_table(self, off: int) -> bytearray:
        table = self._l2_cache.get(off)
        if table is not None:
            self._l2_cache.move_to_end(off)
            return table
        table = bytearray(self.file.pread(off, self.cs))
        self._l2_cache[off] = table
        if len(self._l2_cache) > _L2_CACHE:
            self._l2_cache.popitem(last=False)
        return table

    def _l2_entry(self, cluster_index: int) -> int:
        l2_off = self._l2_table_offset(cluster_index // self.l2_entries)
        if not l2_off:
            return 0
        table = self._l2_table(l2_off)
        return struct.unpack_from(">Q", table, cluster_index % self.l2_entries * 8)[0]

    def _classify(self, entry: int, cluster_index: int) -> tuple[int, int]:
        """(kind, host offset) of an L2 entry, checking that a data cluster lies inside the file."""
        if entry & COMPRESSED:
            return COMPRESSED_KIND, 0
        host = entry & L2_OFFSET_MASK
        if entry & ZERO:
            return (ZERO_ALLOC if host else ZERO_PLAIN), host
        if not host:
            return UNALLOCATED, 0
        if host % self.cs:
            raise ImageCorruptError(f"{self.path}: the L2 entry for guest offset {cluster_index * self.cs:#x} points "
                                    f"to misaligned host offset {host:#x}; this request fails (run qemu-img check)")
        if host >= self.file.size:
            raise ImageCorruptError(f"{self.path}: the L2 entry for guest offset {cluster_index * self.cs:#x} points "
                                    f"to host offset {host:#x}, past the end of the {self.file.size}-byte file; "
                                    "this request fails (the image is truncated or corrupt)")
        return NORMAL, host

    # --- reads ---------------------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        view = memoryview(buf).cast("B")
        self._check_range(offset, len(view))
        with self._lock:
            self._read_locked(offset, [view])

    def readv(self, offset: int, bufs: list[memoryview]) -> None:
        self._check_range(offset, sum(len(b) for b in bufs))
        with self._lock:
            self._read_locked(offset, bufs)

    def _read_locked(self, offset: int, bufs: list[memoryview]) -> None:
        """Read into a scatter list: runs of clusters of one kind (and, for data, contiguous on the host) are
        one request each, e.g. one preadv for a sequential read of freshly written clusters."""
        end = offset + sum(len(b) for b in bufs)
        pos = offset
        run: list = []      # [kind, guest start, host start, length, entry] of the pending contiguous run
        while pos < end:
            ci = pos >> self.cluster_bits
            in_off = pos & (self.cs - 1)
            n = min(self.cs - in_off, end - pos)
            entry = self._l2_entry(ci)
            kind, host = self._classify(entry, ci)
            if kind == ZERO_ALLOC:
                kind = ZERO_PLAIN
            if run and run[0] == kind and kind != COMPRESSED_KIND and (
                    kind != NORMAL or run[2] + run[3] == host + in_off):
                run[3] += n
            else:
                if run:
                    self._read_run(run, offset, bufs)
                run = [kind, pos, host + in_off, n, entry]
            pos += n
        if run:
            self._read_run(run, offset, bufs)

    def _read_run(self, run: list, base: int, bufs: list[memoryview]) -> None:
        kind, guest, host, length, entry = run
        dst = _slice(bufs, guest - base, length)
        if kind == NORMAL:
            got = self.file.preadv(host, dst)
            if got < length:
                _zero(_slice(dst, got, length - got))   # a last cluster cut short by EOF reads as zeros past it
        elif kind == UNALLOCATED and self.backing is not None:
            self._read_backing(guest, dst, length)
        elif kind == COMPRESSED_KIND:
            data = self._decompress(entry, guest >> self.cluster_bits)
            pos = guest & (self.cs - 1)
            for d in dst:
                d[:] = data[pos:pos + len(d)]
                pos += len(d)
        else:
            _zero(dst)

    def _read_backing(self, guest: int, dst: list[memoryview], length: int) -> None:
        assert self.backing is not None
        inside = max(0, min(length, self.backing.size - guest))
        if inside:
            self.backing.readv(guest, _slice(dst, 0, inside))
        if inside < length:
            _zero(_slice(dst, inside, length - inside))

    def _compressed_range(self, entry: int) -> tuple[int, int]:
        """Host offset and byte length of a compressed cluster's data (its sector span, per the spec)."""
        x = 62 - (self.cluster_bits - 8)
        host = entry & ((1 << x) - 1)
        sectors = (entry >> x) & ((1 << (self.cluster_bits - 8)) - 1)
        return host, (sectors + 1) * 512 - (host & 511)

    def _decompress(self, entry: int, ci: int) -> bytes:
        if self._compressed_cache and self._compressed_cache[0] == entry:
            return self._compressed_cache[1]
        host, length = self._compressed_range(entry)
        if host >= self.file.size:
            raise ImageCorruptError(f"{self.path}: compressed cluster for guest offset {ci * self.cs:#x} points past "
                                    "the end of the file; this request fails")
        length = min(length, self.file.size - host)
        data = self.file.pread(host, length)
        if self.header.compression_type != COMPRESSION_ZLIB:
            raise UnsupportedImageError(f"{self.path}: zstd-compressed clusters are not supported; convert the image "
                                        "with qemu-img convert -O qcow2 (without -c)")
        try:
            out = zlib.decompressobj(wbits=-15).decompress(data, self.cs)
        except zlib.error as exc:
            raise ImageCorruptError(f"{self.path}: compressed cluster for guest offset {ci * self.cs:#x} does not "
                                    f"decompress ({exc}); this request fails") from exc
        if len(out) != self.cs:
            raise ImageCorruptError(f"{self.path}: compressed cluster for guest offset {ci * self.cs:#x} decompresses "
                                    f"to {len(out)} bytes, not {self.cs}; this request fails")
        self._compressed_cache = (entry, out)
        return out

    def _cluster_contents(self, ci: int, entry: int) -> bytes:
        """The current contents of guest cluster `ci` (for copy-on-write of a partly written cluster)."""
        kind, host = self._classify(entry, ci)
        if kind == NORMAL:
            data = bytearray(self.cs)
            got = self.file.preadinto(host, memoryview(data))
            data[got:] = bytes(self.cs - got)
            return bytes(data)
        if kind == COMPRESSED_KIND:
            return self._decompress(entry, ci)
        if kind == UNALLOCATED and self.backing is not None:
            data = bytearray(self.cs)
            guest = ci * self.cs
            n = min(self.cs, self._size - guest)
            self._read_backing(guest, [memoryview(data)[:n]], n)
            return bytes(data)
        return bytes(self.cs)

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
                        self.file.pwrite(in_place[0], src[in_place[1]:in_place[1] + in_place[2]])
                    in_place = [host + in_off, pos - offset, n]
            else:
                pending.append((ci, in_off, n, pos - offset))
            pos += n
        if in_place:
            self.file.pwrite(in_place[0], src[in_place[1]:in_place[1] + in_place[2]])
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
            self.file.pwrite(host, memoryview(buf)[done * self.cs:(done + n) * self.cs])   # then the data,
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
        self.file.pwrite(new, contents)
        self._l2_cache[new] = bytearray(contents)
        self._set_l1_entry(l1_index, new | COPIED)
        if off:
            self._l2_cache.pop(off, None)
            self.refcounts.free(off, 1)
        return new

    def _set_l1_entry(self, l1_index: int, value: int) -> None:
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
                self.refcounts.update(first, last - first + 1, -1)
                if self._compressed_cache and self._compressed_cache[0] == entry:
                    self._compressed_cache = None
            elif entry & L2_OFFSET_MASK:
                host = entry & L2_OFFSET_MASK
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

    # --- flush, resize, close ------------------------------------------------------------------------------

    def flush(self) -> None:
        with self._lock:
            self.file.fsync()

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
        self.file.pwrite(new, raw + bytes(clusters * self.cs - len(raw)))
        self.file.barrier()
        old_off, old_size = self.header.l1_table_offset, len(self.l1)
        self.file.pwrite(36, struct.pack(">IQ", needed, new))     # header: l1_size, l1_table_offset
        self.file.barrier()
        self.header.l1_size, self.header.l1_table_offset = needed, new
        self.l1 = entries
        if old_size:
            self.refcounts.free(old_off, -(-old_size * 8 // self.cs))

    def allocated_bytes(self) -> int:
        return self.file.allocated_bytes()

    def close(self) -> None:
        backing, self.backing = self.backing, None
        if backing is not None:
            backing.close()
        file = getattr(self, "file", None)
        if file is not None and file.fd >= 0:
            if not self.read_only:
                try:
                    file.fsync()
                except ImageIOError:
                    pass
            file.close()


def _slice(bufs: list[memoryview], start: int, length: int) -> list[memoryview]:
    """The views covering bytes [start, start+length) of a scatter list, as if it were one buffer."""
    out = []
    for b in bufs:
        n = len(b)
        if start >= n:
            start -= n
            continue
        piece = b[start:start + length]
        out.append(piece)
        length -= len(piece)
        start = 0
        if length <= 0:
            break
    return out


def _zero(bufs: list[memoryview]) -> None:
    for b in bufs:
        b[:] = bytes(len(b))


def resolve_backing_path(image_path: str, backing_name: str) -> str:
    """A relative backing file name is relative to the directory of the image that names it (as in QEMU)."""
    if os.path.isabs(backing_name):
        return backing_name
    return os.path.join(os.path.dirname(os.path.abspath(image_path)), backing_name)

