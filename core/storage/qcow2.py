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
the device stays usable for other requests. A write that would land on metadata (a damaged refcount said the
cluster was free) is refused as QEMU refuses it: the image is marked corrupt and further writes fail, reads go
on. Images marked dirty or corrupt open only read-only. Internal snapshots are kept in step (qcow2_snapshot).

The allocating write path is the Qcow2Writer mixin (qcow2_write.py), snapshots the Qcow2Snapshots mixin.
"""
from __future__ import annotations

import os
import struct
import zlib
from _thread import RLock  # threading's RLock itself; threading (with functools, collections) is not needed

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
    COMPRESSED,
    COMPRESSION_ZLIB,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    L1_OFFSET_MASK,
    L2_OFFSET_MASK,
    ZERO,
    Qcow2Header,
    parse_header,
)
from core.storage.qcow2_meta import BITMAPDIR, HEADER, L1, L2, SNAP_L1, SNAPTABLE, MetadataGuard
from core.storage.qcow2_refcount import Refcounts
from core.storage.qcow2_snapshot import Qcow2Snapshots
from core.storage.qcow2_snaptable import Snapshot, parse_table
from core.storage.qcow2_write import COMPRESSED_KIND, NORMAL, UNALLOCATED, ZERO_ALLOC, ZERO_PLAIN, Qcow2Writer

_L2_CACHE = 64
MAX_BACKING_DEPTH = 32

# Opens a backing file read-only: (path, format named in the header or None to detect it, cache mode, depth in the
# chain). core.storage.probe passes its open_image, so a backing file may be of any format without this module
# importing the prober (which imports this module).
TYPE_CHECKING = False     # not typing's: `img snapshot` starts without typing and collections (bench/snapshot.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    BackingOpener = Callable[[str, "str | None", str, int], BlockDevice]

MAX_BITMAP_DIRECTORY = 64 << 20        # QEMU: 65535 bitmaps of at most 1 KiB of directory entry each


class Qcow2Image(Qcow2Writer, Qcow2Snapshots, BlockDevice):
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
        self._lock = RLock()
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
        # QEMU exposes whole 512-byte sectors: a virtual size that is not a multiple of 512 is rounded down.
        self._size = hdr.size - hdr.size % 512
        self.corrupt = False
        if not self.read_only:
            why = None
            if hdr.incompatible_features & INCOMPAT_DIRTY:
                why = "it is marked dirty (lazy refcounts were not written back); run qemu-img check -r all"
            elif hdr.incompatible_features & INCOMPAT_CORRUPT:
                why = "it is marked corrupt; run qemu-img check -r all"
            elif hdr.backing_file and open_backing is None:
                why = "its backing file is not opened here; open it with core.storage.open_image"
            if why:
                raise UnsupportedImageError(f"{self.path}: cannot open for writing: {why}")
        l1_raw = self.file.pread(hdr.l1_table_offset, hdr.l1_size * 8) if hdr.l1_size else b""
        self.l1 = list(struct.unpack(f">{hdr.l1_size}Q", l1_raw))
        self.snapshots: list[Snapshot] = []
        self.snapshot_table_size = 0
        if hdr.nb_snapshots:
            self.snapshots, self.snapshot_table_size = parse_table(
                self.file.pread, hdr.snapshots_offset, hdr.nb_snapshots, self.cs, self.file.size, self.path)
        self.guard = MetadataGuard(self.path, self.cluster_bits, self._corruption)
        self._map_metadata()
        self.refcounts = Refcounts(self.file, self.path, hdr.cluster_bits, hdr.refcount_order,
                                   hdr.refcount_table_offset, hdr.refcount_table_clusters, self.guard)
        self._l2_cache: dict[int, bytearray] = {}      # least recently used first
        self._compressed_cache: tuple[int, bytes] | None = None
        if not self.read_only and hdr.version == 3 and hdr.autoclear_features:
            # The spec: a writer that does not maintain an autoclear feature (e.g. persistent bitmaps) clears its bit.
            hdr.autoclear_features = 0
            self.guard.check(88, 8, HEADER)
            self.file.pwrite(88, struct.pack(">Q", 0))
            self.file.barrier()
        if hdr.backing_file and open_backing is not None:
            self.backing = self._open_backing(hdr, open_backing, cache, depth)

    def _map_metadata(self) -> None:
        """Register every metadata cluster the image names with the guard (refcount structures: Refcounts)."""
        g, hdr = self.guard, self.header
        g.add(0, self.cs, HEADER)
        g.add(hdr.l1_table_offset, hdr.l1_size * 8, L1)
        for entry in self.l1:
            if entry & L1_OFFSET_MASK:
                g.add(entry & L1_OFFSET_MASK, self.cs, L2)
        if self.snapshots:
            g.add(hdr.snapshots_offset, self.snapshot_table_size, SNAPTABLE)
        for sn in self.snapshots:
            if sn.problem:
                continue
            g.add(sn.l1_table_offset, sn.l1_size * 8, SNAP_L1)
            for entry in self.read_l1(sn.l1_table_offset, sn.l1_size):
                if entry & L1_OFFSET_MASK:
                    g.add(entry & L1_OFFSET_MASK, self.cs, L2)
        ext = hdr.bitmaps_extension
        if ext is not None and len(ext) >= 24:
            _, _, dir_size, dir_off = struct.unpack_from(">IIQQ", ext)
            if dir_size <= MAX_BITMAP_DIRECTORY and dir_off + dir_size <= self.file.size:
                g.add(dir_off, dir_size, BITMAPDIR)

    def read_l1(self, offset: int, entries: int) -> list[int]:
        """An L1 table's entries (bounded by the header/snapshot-table checks that found it)."""
        if not entries:
            return []
        return list(struct.unpack(f">{entries}Q", self.file.pread(offset, entries * 8)))

    def _corruption(self, message: str) -> ImageCorruptError:
        """Mark the image corrupt (QEMU's incompatible bit 1, v3 only) and refuse writes from now on."""
        if not self.corrupt and not self.read_only and self.header.version == 3:
            self.header.incompatible_features |= INCOMPAT_CORRUPT
            try:
                self.file.pwrite(72, struct.pack(">Q", self.header.incompatible_features))
                self.file.fsync()
            except ImageIOError:
                pass        # the request fails anyway; the message says what happened
        self.corrupt = True
        return ImageCorruptError(message)

    def _check_writable(self) -> None:
        super()._check_writable()
        if self.corrupt:
            raise ImageCorruptError(f"{self.path}: the image was marked corrupt (a write would have overwritten its "
                                    "metadata); writes fail until it is repaired with qemu-img check -r all")

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
        table = self._l2_cache.pop(off, None)
        if table is not None:
            self._l2_cache[off] = table              # now the most recently used
            return table
        table = bytearray(self.file.pread(off, self.cs))
        self._l2_cache[off] = table
        if len(self._l2_cache) > _L2_CACHE:
            del self._l2_cache[next(iter(self._l2_cache))]
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

    def _cluster_contents(self, ci: int, entry: int, backing: bool = True) -> bytes:
        """The current contents of guest cluster `ci` (for copy-on-write of a partly written cluster); past the
        disk (VM state), or without `backing`, an unallocated cluster is zeros, never backing data."""
        kind, host = self._classify(entry, ci)
        if kind == NORMAL:
            data = bytearray(self.cs)
            got = self.file.preadinto(host, memoryview(data))
            data[got:] = bytes(self.cs - got)
            return bytes(data)
        if kind == COMPRESSED_KIND:
            return self._decompress(entry, ci)
        if kind == UNALLOCATED and backing and self.backing is not None and ci * self.cs < self._size:
            data = bytearray(self.cs)
            guest = ci * self.cs
            n = min(self.cs, self._size - guest)
            self._read_backing(guest, [memoryview(data)[:n]], n)
            return bytes(data)
        return bytes(self.cs)

    # --- flush, resize, close ------------------------------------------------------------------------------

    def flush(self) -> None:
        with self._lock:
            self.file.fsync()

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

