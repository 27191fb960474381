"""New disk images for VM definitions, as the Host API's create_disk makes them on the host that will use them:
raw (sparse, or preallocated with posix_fallocate(3)) or qcow2 (thin, through core/storage, the layout qemu-img
makes). An existing file is never replaced (O_EXCL claims the name).
"""
from __future__ import annotations

import os
from pathlib import Path

from core.host.api import HostError, Progress


def create_disk_image(path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                      progress: Progress | None = None) -> None:
    """Create a new disk image: raw (sparse unless `preallocate`) or qcow2 (thin, through core/storage, the
    same layout qemu-img makes); never replaces an existing file."""
    from core.storage import ImageError, create_image

    if fmt not in ("raw", "qcow2"):
        raise HostError(f"unknown disk format {fmt!r}: use raw or qcow2")
    if fmt == "qcow2" and preallocate:
        raise HostError("preallocation applies to raw images; a qcow2 image grows as the guest writes")
    if size_bytes <= 0 or size_bytes % 512:
        raise HostError(f"disk size {size_bytes} bytes: give a positive multiple of 512")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL claims the name, so an existing file (maybe another VM's disk) is never replaced.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise HostError(f"{path} already exists: choose another name") from None
    except OSError as exc:
        raise HostError(f"cannot create {path}: {exc.strerror}") from None
    if progress:
        progress(0, size_bytes)
    if fmt == "qcow2":
        os.close(fd)
        try:
            create_image(path, "qcow2", size_bytes)
        except ImageError as exc:
            os.unlink(path)
            raise HostError(str(exc)) from None
        if progress:
            progress(size_bytes, size_bytes)
        return
    try:
        os.ftruncate(fd, size_bytes)
        if preallocate:
            chunk = 64 * 1024 * 1024
            for offset in range(0, size_bytes, chunk):
                os.posix_fallocate(fd, offset, min(chunk, size_bytes - offset))
                if progress:
                    progress(min(offset + chunk, size_bytes), size_bytes)
        os.fsync(fd)
        if progress:
            progress(size_bytes, size_bytes)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise HostError(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)
