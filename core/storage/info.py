"""What `img info` reports about an image, as `qemu-img info` does: format, virtual and on-disk size, cluster size,
backing file and, for qcow2, the format-specific header information (QEMU docs/interop/qcow2.txt, "Header").
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from core.storage.probe import detect_format
from core.storage.qcow2 import Qcow2Image, resolve_backing_path
from core.storage.qcow2_header import (
    COMPAT_LAZY_REFCOUNTS,
    COMPRESSION_ZSTD,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    INCOMPAT_EXTL2,
)
from core.storage.qcow2_snaptable import Snapshot, format_listing
from core.storage.qcow2_snaptable import as_json as snapshot_json
from core.storage.raw import RawImage
from core.storage.sizes import format_size


@dataclass
class ImageInfo:
    """The facts `img info` prints; `specific` holds the qcow2 header details (empty for raw)."""

    path: str
    format_name: str
    virtual_size: int
    disk_size: int
    cluster_size: int | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    full_backing_path: str | None = None
    dirty: bool = False
    specific: dict[str, object] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)

    def human(self) -> str:
        lines = [f"image: {self.path}", f"file format: {self.format_name}",
                 f"virtual size: {format_size(self.virtual_size)} ({self.virtual_size} bytes)",
                 f"disk size: {format_size(self.disk_size)}"]
        if self.cluster_size:
            lines.append(f"cluster_size: {self.cluster_size}")
        if self.backing_file:
            actual = f" (actual path: {self.full_backing_path})" if self.full_backing_path != self.backing_file else ""
            lines.append(f"backing file: {self.backing_file}{actual}")
            if self.backing_format:
                lines.append(f"backing file format: {self.backing_format}")
        if self.snapshots:
            lines.append(format_listing(self.snapshots))
        if self.specific:
            lines.append("Format specific information:")
            for key, value in self.specific.items():
                text = str(value).lower() if isinstance(value, bool) else value
                lines.append(f"    {key.replace('-', ' ')}: {text}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        """The same keys qemu-img info --output=json uses."""
        out: dict[str, object] = {}
        if self.snapshots:
            out["snapshots"] = [snapshot_json(sn) for sn in self.snapshots]
        out |= {"virtual-size": self.virtual_size, "filename": self.path, "format": self.format_name,
                "actual-size": self.disk_size, "dirty-flag": self.dirty}
        if self.cluster_size:
            out["cluster-size"] = self.cluster_size
        if self.backing_file:
            out["backing-filename"] = self.backing_file
            out["full-backing-filename"] = self.full_backing_path
            if self.backing_format:
                out["backing-filename-format"] = self.backing_format
        if self.specific:
            out["format-specific"] = {"type": self.format_name, "data": self.specific}
        return out


def image_info(path: str, fmt: str | None = None, force_share: bool = False) -> ImageInfo:
    """Gather ImageInfo for `path` (the backing file is named, not opened). Raises ImageError."""
    fmt = fmt or detect_format(path)
    if fmt == "raw":
        with RawImage(path, read_only=True, lock=not force_share) as raw:
            return ImageInfo(path, "raw", raw.size, raw.allocated_bytes())
    img = Qcow2Image(path, read_only=True, lock=not force_share)     # the backing file is named, not opened
    try:
        hdr = img.header
        info = ImageInfo(path, "qcow2", img.size, img.allocated_bytes(), cluster_size=hdr.cluster_size,
                         dirty=bool(hdr.incompatible_features & INCOMPAT_DIRTY))
        if hdr.backing_file:
            info.backing_file = hdr.backing_file
            info.backing_format = hdr.backing_format
            info.full_backing_path = os.path.normpath(resolve_backing_path(path, hdr.backing_file))
        info.specific = {"compat": "1.1" if hdr.version == 3 else "0.10"}
        if hdr.version == 3:
            info.specific.update({
                "compression-type": "zstd" if hdr.compression_type == COMPRESSION_ZSTD else "zlib",
                "lazy-refcounts": bool(hdr.compatible_features & COMPAT_LAZY_REFCOUNTS),
                "refcount-bits": 1 << hdr.refcount_order,
                "corrupt": bool(hdr.incompatible_features & INCOMPAT_CORRUPT),
                "extended-l2": bool(hdr.incompatible_features & INCOMPAT_EXTL2),
            })
        else:
            info.specific.update({"compression-type": "zlib", "refcount-bits": 16})
        info.snapshots = list(img.snapshots)
        return info
    finally:
        img.close()
