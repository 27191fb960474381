"""The qcow2 header and header extensions: parsing with validation, and serialization.

Follows QEMU's docs/interop/qcow2.txt ("QCOW2 Image Format"), sections "Header" and "Header extensions".
All fields are big-endian. Version 2 has the 72-byte header (no feature bits, 16-bit refcounts); version 3 adds
feature bitmaps, refcount_order, header_length and, from 104 bytes on, compression_type.

Validation rejects what cannot be a sane image before any offset in it is followed: cluster_bits outside 9..21,
tables that are misaligned or reach past the end of the file, sizes the L1 table cannot map, absurd table sizes
(the limits QEMU applies: 32 MiB of L1 table, 8 MiB of refcount table), and incompatible feature bits this
implementation does not know — each with a one-line reason.
"""
from __future__ import annotations

import struct

from core.storage.errors import ImageFormatError, UnsupportedImageError
from core.storage.plain_record import PlainRecord

TYPE_CHECKING = False     # not typing's: `img snapshot` starts without typing and collections (bench/snapshot.py)
if TYPE_CHECKING:
    from collections.abc import Callable

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 112          # 104 bytes of fields + compression_type + padding to a multiple of 8

MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_BACKING_NAME = 1023
MAX_SNAPSHOTS = 65536

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
COMPAT_LAZY_REFCOUNTS = 1 << 0

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1

# L1 and L2 entries ("Cluster mapping"): bit 63 "copied" (refcount exactly 1, may be written in place), bit 62
# compressed, bit 0 of a standard L2 entry "reads as zeros" (v3); bits 9-55 the host offset.
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
L1_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")          # 72 bytes
_V3_EXTRA = struct.Struct(">QQQII")             # 32 bytes: features, refcount_order, header_length

_FEATURE_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type", 4: "extended L2"}


class Qcow2Header(PlainRecord):
    """The decoded header, plus what the extensions say (a PlainRecord, not a dataclass: start-up time)."""

    _FIELDS = ("version", "backing_file_offset", "backing_file_size", "cluster_bits", "size", "crypt_method",
               "l1_size", "l1_table_offset", "refcount_table_offset", "refcount_table_clusters", "nb_snapshots",
               "snapshots_offset", "incompatible_features", "compatible_features", "autoclear_features",
               "refcount_order", "header_length", "compression_type", "backing_file", "backing_format",
               "feature_names", "unknown_extensions", "bitmaps_extension")

    def __init__(self, version: int, backing_file_offset: int, backing_file_size: int, cluster_bits: int, size: int,
                 crypt_method: int, l1_size: int, l1_table_offset: int, refcount_table_offset: int,
                 refcount_table_clusters: int, nb_snapshots: int, snapshots_offset: int,
                 incompatible_features: int = 0, compatible_features: int = 0, autoclear_features: int = 0,
                 refcount_order: int = 4, header_length: int = V2_HEADER_LENGTH,
                 compression_type: int = COMPRESSION_ZLIB, backing_file: str | None = None,
                 backing_format: str | None = None, feature_names: dict[tuple[int, int], str] | None = None,
                 unknown_extensions: list[tuple[int, bytes]] | None = None,
                 bitmaps_extension: bytes | None = None) -> None:
        self.version = version
        self.backing_file_offset = backing_file_offset
        self.backing_file_size = backing_file_size
        self.cluster_bits = cluster_bits
        self.size = size
        self.crypt_method = crypt_method
        self.l1_size = l1_size
        self.l1_table_offset = l1_table_offset
        self.refcount_table_offset = refcount_table_offset
        self.refcount_table_clusters = refcount_table_clusters
        self.nb_snapshots = nb_snapshots
        self.snapshots_offset = snapshots_offset
        self.incompatible_features = incompatible_features
        self.compatible_features = compatible_features
        self.autoclear_features = autoclear_features
        self.refcount_order = refcount_order
        self.header_length = header_length
        self.compression_type = compression_type
        self.backing_file = backing_file
        self.backing_format = backing_format
        self.feature_names: dict[tuple[int, int], str] = {} if feature_names is None else feature_names
        self.unknown_extensions: list[tuple[int, bytes]] = [] if unknown_extensions is None else unknown_extensions
        self.bitmaps_extension = bitmaps_extension

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    def pack(self) -> bytes:
        """The fixed header (without extensions), as long as header_length says."""
        head = _V2.pack(MAGIC, self.version, self.backing_file_offset, self.backing_file_size, self.cluster_bits,
                        self.size, self.crypt_method, self.l1_size, self.l1_table_offset,
                        self.refcount_table_offset, self.refcount_table_clusters, self.nb_snapshots,
                        self.snapshots_offset)
        if self.version == 2:
            return head
        extra = _V3_EXTRA.pack(self.incompatible_features, self.compatible_features, self.autoclear_features,
                               self.refcount_order, self.header_length)
        tail = bytes([self.compression_type]) + bytes(self.header_length - 105) if self.header_length > 104 else b""
        return head + extra + tail

    def pack_extensions(self) -> bytes:
        """Header extensions we write: backing format (if any) and the end marker."""
        out = b""
        if self.backing_format:
            out += pack_extension(EXT_BACKING_FORMAT, self.backing_format.encode())
        for ext_type, data in self.unknown_extensions:
            out += pack_extension(ext_type, data)
        return out + struct.pack(">II", EXT_END, 0)


def pack_extension(ext_type: int, data: bytes) -> bytes:
    pad = -len(data) % 8
    return struct.pack(">II", ext_type, len(data)) + data + bytes(pad)


def is_qcow2(head: bytes) -> bool:
    return head[:4] == MAGIC


def parse_header(buf: bytes, file_size: int, path: str) -> Qcow2Header:
    """Decode and validate the header from the image's first cluster (`buf`, at least 72 bytes when valid)."""
    def bad(why: str) -> ImageFormatError:
        return ImageFormatError(f"{path}: not a valid qcow2 image: {why}")

    if len(buf) < _V2.size or buf[:4] != MAGIC:
        raise bad("the header is truncated" if buf[:4] == MAGIC else "no qcow2 signature")
    fields = _V2.unpack_from(buf)
    hdr = Qcow2Header(*fields[1:])
    if hdr.version not in (2, 3):
        raise UnsupportedImageError(f"{path}: qcow2 version {hdr.version} is not supported (only 2 and 3)")
    if hdr.version == 3:
        if len(buf) < _V2.size + _V3_EXTRA.size:
            raise bad("the version 3 header is truncated")
        (hdr.incompatible_features, hdr.compatible_features, hdr.autoclear_features, hdr.refcount_order,
         hdr.header_length) = _V3_EXTRA.unpack_from(buf, _V2.size)
        if hdr.header_length < 104 or hdr.header_length % 8:
            raise bad(f"header_length {hdr.header_length} is invalid (at least 104, a multiple of 8)")
        if hdr.header_length > 104:
            if len(buf) < 105:
                raise bad("the header is truncated")
            hdr.compression_type = buf[104]
    if not 9 <= hdr.cluster_bits <= 21:
        raise bad(f"cluster_bits {hdr.cluster_bits} is outside 9..21 (cluster sizes 512 B to 2 MiB)")
    cs = hdr.cluster_size
    if hdr.version == 3 and hdr.header_length > cs:
        raise bad(f"header_length {hdr.header_length} is larger than a cluster")
    if file_size < cs and file_size < hdr.header_length:
        raise bad(f"the file ({file_size} bytes) is shorter than its header")

    _parse_extensions(hdr, buf[:min(cs, len(buf))], bad, path)
    _check_features(hdr, path)
    if hdr.crypt_method:
        raise UnsupportedImageError(f"{path}: encrypted qcow2 images (crypt_method {hdr.crypt_method}) are not "
                                    "supported; decrypt it with qemu-img convert first")
    if hdr.refcount_order > 6:
        raise bad(f"refcount_order {hdr.refcount_order} is above the maximum of 6 (64-bit refcounts)")

    if hdr.size > (1 << 63) - 1:
        raise bad(f"virtual size {hdr.size} is impossibly large")
    entries_per_l2 = cs // 8
    if hdr.l1_size * 8 > MAX_L1_BYTES:
        raise bad(f"L1 table of {hdr.l1_size} entries is larger than the 32 MiB limit")
    if hdr.size > hdr.l1_size * entries_per_l2 * cs:
        raise bad(f"virtual size {hdr.size} needs a larger L1 table than its {hdr.l1_size} entries")
    _check_table(bad, "L1 table", hdr.l1_table_offset, hdr.l1_size * 8, cs, file_size)
    if hdr.refcount_table_clusters == 0:
        raise bad("the refcount table is empty")
    if hdr.refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
        raise bad(f"refcount table of {hdr.refcount_table_clusters} clusters is larger than the 8 MiB limit")
    _check_table(bad, "refcount table", hdr.refcount_table_offset, hdr.refcount_table_clusters * cs, cs, file_size)
    if hdr.nb_snapshots > MAX_SNAPSHOTS:
        raise bad(f"{hdr.nb_snapshots} snapshots is more than the limit of {MAX_SNAPSHOTS}")
    if hdr.nb_snapshots:
        _check_table(bad, "snapshot table", hdr.snapshots_offset, 40, cs, file_size)

    if hdr.backing_file_offset:
        if hdr.backing_file_size == 0 or hdr.backing_file_size > MAX_BACKING_NAME:
            raise bad(f"backing file name length {hdr.backing_file_size} is not in 1..{MAX_BACKING_NAME}")
        end = hdr.backing_file_offset + hdr.backing_file_size
        if end > min(cs, len(buf)):
            raise bad("the backing file name lies outside the first cluster")
        raw = buf[hdr.backing_file_offset:end]
        try:
            hdr.backing_file = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad("the backing file name is not valid UTF-8") from exc
        if "\0" in hdr.backing_file:
            raise bad("the backing file name contains a NUL byte")
    return hdr


def _check_table(bad: Callable[[str], Exception], what: str, offset: int, length: int, cs: int, file_size: int) -> None:
    if offset % cs:
        raise bad(f"{what} offset {offset:#x} is not cluster-aligned")
    if length and (offset == 0 or offset + length > file_size):
        raise bad(f"{what} ({length} bytes at offset {offset:#x}) lies beyond the end of the file "
                  f"({file_size} bytes); the image is truncated or corrupt")


def _check_features(hdr: Qcow2Header, path: str) -> None:
    known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION
    if hdr.incompatible_features & INCOMPAT_DATA_FILE:
        raise UnsupportedImageError(f"{path}: qcow2 images with an external data file are not supported")
    if hdr.incompatible_features & INCOMPAT_EXTL2:
        raise UnsupportedImageError(f"{path}: qcow2 images with extended L2 entries (subclusters) are not supported")
    unknown = hdr.incompatible_features & ~known
    if unknown:
        names = ", ".join(feature_description(hdr, b) for b in range(64) if unknown >> b & 1)
        raise UnsupportedImageError(f"{path}: the image uses unknown incompatible qcow2 feature(s) {names}; "
                                    "it needs a newer tool (try qemu-img convert to a plain qcow2)")
    if hdr.compression_type not in (COMPRESSION_ZLIB, COMPRESSION_ZSTD):
        raise UnsupportedImageError(f"{path}: unknown qcow2 compression type {hdr.compression_type}")
    if hdr.compression_type and not hdr.incompatible_features & INCOMPAT_COMPRESSION:
        raise ImageFormatError(f"{path}: not a valid qcow2 image: compression type set without its feature bit")


def _parse_extensions(hdr: Qcow2Header, cluster0: bytes, bad: Callable[[str], Exception], path: str) -> None:
    offset = hdr.header_length if hdr.version == 3 else V2_HEADER_LENGTH
    while True:
        if offset + 8 > len(cluster0):
            return    # no end marker inside the first cluster: treat as the end, as QEMU does
        ext_type, length = struct.unpack_from(">II", cluster0, offset)
        if ext_type == EXT_END:
            return
        data_start = offset + 8
        if data_start + length > len(cluster0):
            raise bad(f"header extension {ext_type:#x} of {length} bytes runs past the first cluster")
        data = bytes(cluster0[data_start:data_start + length])
        if ext_type == EXT_BACKING_FORMAT:
            try:
                hdr.backing_format = data.decode("ascii").rstrip("\0")
            except UnicodeDecodeError as exc:
                raise bad("the backing format extension is not ASCII") from exc
        elif ext_type == EXT_FEATURE_TABLE:
            for i in range(0, len(data) - 47, 48):
                kind, bit = data[i], data[i + 1]
                hdr.feature_names[(kind, bit)] = data[i + 2:i + 48].split(b"\0")[0].decode("ascii", "replace")
        elif ext_type == EXT_BITMAPS:
            hdr.bitmaps_extension = data
        elif ext_type == EXT_CRYPTO:
            raise UnsupportedImageError(f"{path}: encrypted qcow2 images are not supported")
        elif ext_type == EXT_DATA_FILE:
            pass    # the incompatible bit (checked above) decides; the name alone changes nothing
        else:
            hdr.unknown_extensions.append((ext_type, data))
        offset = data_start + length + (-length % 8)


def feature_description(hdr: Qcow2Header, bit: int) -> str:
    """Name of incompatible feature `bit`, from the image's own feature table when it has one."""
    name = hdr.feature_names.get((0, bit)) or _FEATURE_NAMES.get(bit)
    return f"bit {bit} ({name})" if name else f"bit {bit}"
