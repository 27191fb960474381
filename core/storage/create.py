"""Creating raw and qcow2 images (what `qemu-img create` does), and resizing them.

A new qcow2 image (QEMU docs/interop/qcow2.txt) has QEMU's own layout: the header in cluster 0 followed by its
extensions (backing format) and the backing file name, then the refcount table, the refcount blocks that cover
the metadata, and the L1 table sized for the virtual size; no L2 tables or data clusters yet. Version 3
(compat 1.1) by default; version 2 (compat 0.10) on request. Raw images are sparse files of the virtual size.

The target file is locked as a writer before it is truncated, so creating over a disk a VM is using fails
instead of destroying it.
"""
from __future__ import annotations

import os
import stat
import struct

from core.storage.device import BlockDevice
from core.storage.errors import ImageError
from core.storage.hostfile import HostFile
from core.storage.probe import FORMATS, open_image
from core.storage.qcow2 import resolve_backing_path
from core.storage.qcow2_header import (
    MAX_BACKING_NAME,
    MAX_L1_BYTES,
    V2_HEADER_LENGTH,
    V3_HEADER_LENGTH,
    Qcow2Header,
)

DEFAULT_CLUSTER_SIZE = 65536
REFCOUNT_ORDER = 4


def create_image(path: str, fmt: str, size: int | None, backing_file: str | None = None,
                 backing_format: str | None = None, cluster_size: int = DEFAULT_CLUSTER_SIZE,
                 compat: str = "1.1") -> None:
    """Create (or overwrite, if not in use) an image at `path`.

    `size` None takes the backing file's virtual size. A relative `backing_file` is stored as given and
    resolved against the new image's directory, as QEMU does. `backing_format` None detects it.
    Raises ImageError with a one-line reason for bad input or a failed creation.
    """
    if fmt not in FORMATS:
        raise ImageError(f"{path}: unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")
    if backing_file is not None:
        if fmt != "qcow2":
            raise ImageError(f"{path}: only qcow2 images can have a backing file (-b); use -f qcow2")
        backing_size, backing_format = _inspect_backing(path, backing_file, backing_format)
        if size is None:
            size = backing_size
    if size is None:
        raise ImageError(f"{path}: an image size is needed (e.g. 10G) unless a backing file gives it")
    if size < 0:
        raise ImageError(f"{path}: the image size cannot be negative")
    if fmt == "qcow2":
        if size % 512:
            raise ImageError(f"{path}: a qcow2 image size must be a multiple of 512 bytes (got {size})")
        if cluster_size < 512 or cluster_size > (2 << 20) or cluster_size & (cluster_size - 1):
            raise ImageError(f"{path}: cluster size {cluster_size} must be a power of two from 512 to 2M")
        if compat not in ("1.1", "v3", "0.10", "v2"):
            raise ImageError(f"{path}: unknown compat level {compat!r}; use 1.1 (qcow2 v3) or 0.10 (v2)")
        layout = _qcow2_layout(path, size, cluster_size, backing_file, backing_format,
                               version=3 if compat in ("1.1", "v3") else 2)
    _write_new(path, fmt, size, layout if fmt == "qcow2" else None)


def _inspect_backing(path: str, backing_file: str, backing_format: str | None) -> tuple[int, str]:
    if len(backing_file.encode()) > MAX_BACKING_NAME:
        raise ImageError(f"{path}: the backing file name is longer than {MAX_BACKING_NAME} bytes")
    resolved = resolve_backing_path(path, backing_file)
    if os.path.abspath(resolved) == os.path.abspath(path):
        raise ImageError(f"{path}: an image cannot be its own backing file")
    try:
        with open_image(resolved, fmt=backing_format, read_only=True) as dev:
            return dev.size, dev.format_name
    except ImageError as exc:
        raise ImageError(f"{path}: cannot use backing file {backing_file!r} (looked for {resolved}): {exc}") from exc


def _qcow2_layout(path: str, size: int, cs: int, backing_file: str | None, backing_format: str | None,
                  version: int) -> list[tuple[int, bytes]]:
    """The (offset, bytes) pieces of a new, empty qcow2 image."""
    cluster_bits = cs.bit_length() - 1
    l1_entries = -(-size // (cs * (cs // 8)))
    if l1_entries * 8 > MAX_L1_BYTES:
        raise ImageError(f"{path}: {size} bytes is too large for {cs}-byte clusters (the L1 table would exceed "
                         f"{MAX_L1_BYTES >> 20} MiB); use a larger cluster size")
    l1_clusters = max(1, -(-l1_entries * 8 // cs))
    per_block = cs * 8 // (1 << REFCOUNT_ORDER)
    reftable_clusters, refblocks = 1, 1
    while True:
        total = 1 + reftable_clusters + refblocks + l1_clusters
        need_blocks = -(-total // per_block)
        need_table = -(-need_blocks * 8 // cs)
        if (need_blocks, need_table) == (refblocks, reftable_clusters):
            break
        refblocks, reftable_clusters = need_blocks, need_table
    reftable_at = cs
    refblocks_at = reftable_at + reftable_clusters * cs
    l1_at = refblocks_at + refblocks * cs
    hdr = Qcow2Header(
        version=version, backing_file_offset=0, backing_file_size=0, cluster_bits=cluster_bits, size=size,
        crypt_method=0, l1_size=l1_entries, l1_table_offset=l1_at, refcount_table_offset=reftable_at,
        refcount_table_clusters=reftable_clusters, nb_snapshots=0, snapshots_offset=0,
        refcount_order=REFCOUNT_ORDER, header_length=V3_HEADER_LENGTH if version == 3 else V2_HEADER_LENGTH,
        backing_format=backing_format if backing_file else None,
    )
    head = hdr.pack() + hdr.pack_extensions()
    if backing_file:
        name = backing_file.encode()
        hdr.backing_file_offset, hdr.backing_file_size = len(head), len(name)
        head = hdr.pack() + hdr.pack_extensions() + name
    if len(head) > cs:
        raise ImageError(f"{path}: the header and backing file name do not fit in one {cs}-byte cluster; use a "
                         "larger cluster size or a shorter backing file name")
    table = [refblocks_at + i * cs for i in range(refblocks)]
    table_bytes = struct.pack(f">{len(table)}Q", *table)
    counts = bytearray(refblocks * cs)
    total = 1 + reftable_clusters + refblocks + l1_clusters
    for i in range(total):
        struct.pack_into(">H", counts, i * 2, 1)
    # The L1 table is all zeros: it is made by extending the file, which keeps a huge table sparse.
    return [(0, head), (reftable_at, table_bytes), (refblocks_at, bytes(counts)), (l1_at + l1_clusters * cs, b"")]


def _write_new(path: str, fmt: str, size: int, layout: list[tuple[int, bytes]] | None) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ImageError(f"{path}: is not a regular file or a block device; choose another path for the image")
    try:
        # O_NONBLOCK: a FIFO at `path` must not block the open (HostFile then refuses it).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, 0o644))
    except OSError as exc:
        raise ImageError(f"{path}: cannot create the file: {exc.strerror}") from exc
    file = HostFile(path, read_only=False)
    try:
        file.truncate(0)
        if layout is None:
            file.truncate(size)
        else:
            # The header goes last, so a half-created image is never taken for a valid one.
            for offset, data in layout[1:]:
                if data:
                    file.pwrite(offset, data)
                else:
                    file.truncate(offset)
            file.barrier()
            file.pwrite(layout[0][0], layout[0][1])
        file.fsync()
    finally:
        file.close()


def resize_image(dev: BlockDevice, new_size: int, shrink: bool = False) -> None:
    """Set the virtual size of an open image; shrinking needs `shrink` and is supported for raw only."""
    if new_size < 0:
        raise ImageError(f"{dev.path}: the new size cannot be negative")
    if new_size < dev.size and not shrink:
        raise ImageError(f"{dev.path}: the new size {new_size} is smaller than the current {dev.size}; "
                         "add --shrink to shrink (data past the new end is lost)")
    resize = getattr(dev, "resize", None)
    if resize is None:
        raise ImageError(f"{dev.path}: {dev.format_name} images cannot be resized")
    resize(new_size)
