"""Disk images for Vireo's virtual disks: raw and qcow2 (v2 read, v3 read/write), behind one BlockDevice API.

    from core.storage import open_image, create_image
    dev = open_image("disk.qcow2")            # format from the header; locked for writing
    dev.write(0, b"..."); dev.flush(); dev.read(0, 512); dev.close()

Modules: device (the BlockDevice interface), hostfile (positional I/O, fallocate, locking, refusing FIFOs and
character devices), locking (QEMU-compatible OFD byte locks), raw, qcow2_header, qcow2_refcount, qcow2_meta (the
metadata overlap guard), qcow2_snaptable (the snapshot table), qcow2 (open and read), qcow2_write (the allocating
write path), probe (open_image), create (create and resize), check (qcow2 consistency check), info (what
`img info` prints), sizes (qemu-img size strings), cli.
"""
from core.storage.create import create_image, resize_image
from core.storage.device import CACHE_MODES, BlockDevice
from core.storage.errors import (
    ImageCorruptError,
    ImageError,
    ImageFormatError,
    ImageIOError,
    ImageLockedError,
    ImageRangeError,
    ReadOnlyImageError,
    UnsupportedImageError,
)
from core.storage.probe import FORMATS, detect_format, open_image

__all__ = [
    "BlockDevice", "CACHE_MODES", "FORMATS", "ImageCorruptError", "ImageError", "ImageFormatError", "ImageIOError",
    "ImageLockedError", "ImageRangeError", "ReadOnlyImageError", "UnsupportedImageError", "create_image",
    "detect_format", "open_image", "resize_image",
]
