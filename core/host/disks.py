"""New disk images for VM definitions, as the Host API's create_disk makes them on the host that will use them:
raw (sparse, or preallocated with posix_fallocate(3)) or qcow2 (thin, through core/storage, the layout qemu-img
makes). An existing file is never replaced (O_EXCL claims the name). And which VM still needs a disk image —
lists it, or reads it as the backing file of a qcow2 overlay (QEMU docs/interop/qcow2.txt, "backing file") — so
deleting one VM never removes a file another one uses (issue 17).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from core.config import VmConfig, make_private_dirs
from core.host.api import DiskChoice, HostError, Progress

MAX_CHAIN = 32      # backing files followed per disk, as core.storage.qcow2.MAX_BACKING_DEPTH opens at most
MAX_DISK_BYTES = (1 << 63) - 512    # the largest size a file offset (off_t) can hold, in whole sectors


def create_disk_image(path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                      progress: Progress | None = None) -> None:
    """Create a new disk image: raw (sparse unless `preallocate`) or qcow2 (thin, through core/storage, the
    same layout qemu-img makes); never replaces an existing file."""
    from core.storage import ImageError, create_image

    if fmt not in ("raw", "qcow2"):
        raise HostError(f"unknown disk format {fmt!r}: use raw or qcow2")
    if fmt == "qcow2" and preallocate:
        raise HostError("preallocation applies to raw images; a qcow2 image grows as the guest writes")
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool):
        raise HostError(f"disk size {size_bytes!r}: give a whole number of bytes")
    if size_bytes <= 0 or size_bytes % 512 or size_bytes > MAX_DISK_BYTES:
        raise HostError(f"disk size {size_bytes} bytes: give a positive multiple of 512 below 2^63 (8 EiB)")
    if not isinstance(path, str) or not os.path.isabs(path):
        # Relative to what? The service's working directory is not the client's.
        raise HostError(f"disk path {path!r} is relative: give an absolute path")
    folder = Path(path).parent
    try:
        make_private_dirs(folder)
    except (FileExistsError, NotADirectoryError):
        # mkdir(exist_ok=True) still raises when the name (or one above it) is a file, not a folder.
        raise HostError(f"cannot create {path}: {_blocking_file(folder)} is a file, not a folder; move it "
                        "away or choose another place") from None
    except OSError as exc:
        raise HostError(f"cannot create the folder {folder} for {path}: {exc.strerror}") from None
    try:
        # O_EXCL claims the name, so an existing file (maybe another VM's disk) is never replaced.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise HostError(f"{path} already exists: choose another name") from None
    except OSError as exc:
        raise HostError(f"cannot create {path}: {exc.strerror}") from None
    # From here on any failure, whatever it is, closes the descriptor and removes the half-made file.
    try:
        if progress:
            progress(0, size_bytes)
        if fmt == "qcow2":
            os.close(fd)
            fd = -1
            create_image(path, "qcow2", size_bytes)
        else:
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
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)
        if isinstance(exc, ImageError):
            raise HostError(str(exc)) from None
        if isinstance(exc, OSError):
            raise HostError(f"cannot create {path}: {exc.strerror or exc}") from None
        if isinstance(exc, (OverflowError, ValueError)):
            raise HostError(f"cannot create {path} of {size_bytes} bytes: {exc}") from None
        raise
    if fd >= 0:
        os.close(fd)


def _blocking_file(folder: Path) -> Path:
    """The first existing non-folder on the way to `folder` (what stopped mkdir -p)."""
    for part in reversed([folder, *folder.parents]):
        if part.exists() and not part.is_dir():
            return part
    return folder


def file_key(path: str) -> tuple[int, int] | str:
    """What identifies a file: device and inode when it exists (a symlink, a hard link or another spelling of the
    path is the same file), else the absolute, symlink-resolved path."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def backing_chain(path: str) -> list[str]:
    """The backing files under the image at `path`, nearest first, resolved as QEMU resolves them. Only the
    header is read, without taking the image's lock (its VM may be running); the chain ends at a raw image, a
    file that cannot be read, a loop or MAX_CHAIN files."""
    from core.storage import ImageError
    from core.storage.info import image_info

    chain: list[str] = []
    seen = {file_key(path)}
    while len(chain) < MAX_CHAIN:
        try:
            info = image_info(path, force_share=True)
        except (ImageError, OSError):
            break
        if not info.full_backing_path:
            break
        path = info.full_backing_path
        key = file_key(path)
        if key in seen:
            break
        seen.add(key)
        chain.append(path)
    return chain


def disk_users(vms: Iterable[tuple[str, list[str]]]) -> dict[tuple[int, int] | str, str]:
    """For (VM name, its disk paths) of every other VM: each file those VMs need, mapped to one line saying why
    ("used by VM 'web'", or "backing file of /img/web.qcow2 (VM 'web')")."""
    users: dict[tuple[int, int] | str, str] = {}
    for name, paths in vms:
        for path in paths:
            users.setdefault(file_key(path), f"used by VM {name!r}")
        for path in paths:
            for base in backing_chain(path):
                users.setdefault(file_key(base), f"backing file of {path} (VM {name!r})")
    return users


def chosen_disks(config: VmConfig, delete_disks: DiskChoice) -> list[str]:
    """The disk paths delete()'s `delete_disks` names (True: all, False: none, or a list of paths), checked
    against the definition before anything is removed."""
    listed = [d.path for d in config.disks]
    if isinstance(delete_disks, bool):
        return listed if delete_disks else []
    if isinstance(delete_disks, str):
        raise HostError("delete_disks: give True, False or a list of disk paths, not one string")
    chosen = [str(p) for p in delete_disks]
    for path in chosen:
        if path not in listed:
            raise HostError(f"{path} is not a disk of {config.name}: choose among {', '.join(listed) or 'none'}")
    return list(dict.fromkeys(chosen))
