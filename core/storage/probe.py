"""Opening an image by what its header says: format detection and the one entry point, open_image().

The format is decided by the file's contents (the qcow2 signature "QFI\\xfb"), never by its name; anything
without a known signature is raw. A caller that states the format gets exactly that format, and a mismatch
(a qcow2 header where raw was stated is fine — the guest owns those bytes — but a non-qcow2 file opened as
qcow2 is an error).
"""
from __future__ import annotations

import os

from core.storage.device import BlockDevice
from core.storage.errors import ImageError, ImageFormatError
from core.storage.hostfile import check_file_kind
from core.storage.qcow2 import Qcow2Image
from core.storage.qcow2_header import is_qcow2
from core.storage.raw import RawImage

FORMATS = ("raw", "qcow2")


def detect_format(path: str) -> str:
    """'qcow2' or 'raw', from the first bytes of the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file; check the path or create it with `img create`") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        check_file_kind(fd, path)
        head = os.pread(fd, 4, 0)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return "qcow2" if is_qcow2(head) else "raw"


def open_image(path: str, fmt: str | None = None, read_only: bool = False, cache: str = "writeback",
               lock: bool = True, _depth: int = 0) -> BlockDevice:
    """Open a disk image as a BlockDevice; `fmt` None means detect it from the header.

    Raises ImageError (with a one-line message naming the file) if the file is missing, locked by another
    user, not a valid image of the format, or uses unsupported features.
    """
    probed = fmt is None
    if fmt is None:
        fmt = detect_format(path)
    if fmt == "raw":
        return RawImage(path, read_only=read_only, cache=cache, lock=lock, probed=probed)
    if fmt == "qcow2":
        if not probed and detect_format(path) != "qcow2":
            raise ImageFormatError(f"{path}: not a qcow2 image (no qcow2 signature); open it as raw or check "
                                   "the format option")
        return Qcow2Image(path, read_only=read_only, cache=cache, lock=lock, open_backing=_open_backing,
                          _depth=_depth)
    raise ImageError(f"{path}: unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")


def _open_backing(path: str, fmt: str | None, cache: str, depth: int) -> BlockDevice:
    """A qcow2 image's backing file (any format, detected when the header names none), always read-only."""
    return open_image(path, fmt=fmt, read_only=True, cache=cache, _depth=depth)
