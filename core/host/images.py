"""The host's storage folder as Host Details shows it (issue 17, "Host details"): the disk images in the folder new
disks go to (core.config.images_dir), each with its format, virtual size, the bytes it takes, and which VM uses
it; deleting one of them with the same safety as deleting a VM's disks (core/host/disks.py): an image a VM on
this host lists, or reads as a qcow2 backing file, is refused with a line naming that VM; and growing one that no
running VM has open.

HostImages is mixed into LocalHost, the engine side the service runs; clients reach it through the service
(core/agent/connection.py, core/remote/service.py)."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from core.config import images_dir
from core.host.api import HostError, VmInfo
from core.host.disks import disk_users, file_key

IMAGE_SUFFIXES = (".img", ".raw", ".qcow2")


@dataclass(frozen=True)
class ImageEntry:
    path: str
    format: str             # "raw", "qcow2", or "" when the file could not be read as an image
    virtual_size: int       # bytes the guest sees
    allocated: int          # bytes the file takes on the host's disk
    used_by: str = ""       # "used by VM 'web'", "backing file of … (VM 'web')", or "" when free
    error: str = ""         # why the file could not be read as an image


def list_images(vms: list[VmInfo], folder: str | None = None) -> list[ImageEntry]:
    """The disk images in `folder` (default: the images folder), by name, each with the VM that needs it."""
    from core.storage import ImageError
    from core.storage.info import image_info

    folder = folder or str(images_dir())
    users = disk_users((vm.name, [d.path for d in vm.config.disks]) for vm in vms)
    try:
        names = sorted(os.listdir(folder), key=str.casefold)
    except FileNotFoundError:
        return []               # no disk made here yet
    except OSError as exc:
        raise HostError(f"cannot list {folder}: {exc.strerror or exc}") from None
    entries = []
    for name in names:
        path = os.path.join(folder, name)
        if not name.endswith(IMAGE_SUFFIXES) or not os.path.isfile(path):
            continue
        used = users.get(file_key(path), "")
        try:
            # Shared: the image may be open in its running VM, whose lock must not stop the listing.
            info = image_info(path, force_share=True)
            entries.append(ImageEntry(path, info.format_name, info.virtual_size, info.disk_size, used))
        except (ImageError, OSError) as exc:
            entries.append(ImageEntry(path, "", 0, os.stat(path).st_size, used, str(exc)))
    return entries


def delete_image(vms: list[VmInfo], path: str) -> None:
    """Remove the image file `path`, unless a VM on this host lists it or reads it as a backing file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise HostError(f"{path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise HostError(f"{path} is not a disk image file: only files are deleted")
    users = disk_users((vm.name, [d.path for d in vm.config.disks]) for vm in vms)
    used = users.get(file_key(path))
    if used:
        raise HostError(f"{path} is {used}: remove it from that VM first")
    try:
        os.unlink(path)
    except OSError as exc:
        raise HostError(f"cannot delete {path}: {exc.strerror or exc}") from None


def resize_image(vms: list[VmInfo], path: str, new_size: int) -> None:
    """Grow the image `path` to `new_size` bytes (a multiple of 512). Shrinking is refused: the guest's data past
    the new end would be lost (`vireo img resize --shrink` is there for that). An image a running VM has open is
    locked, and refused with the lock's line."""
    from core.storage import ImageError
    from core.storage.create import resize_image as resize
    from core.storage.probe import open_image

    if new_size <= 0 or new_size % 512:
        raise HostError(f"new size {new_size} bytes: give a positive multiple of 512")
    running = [vm.name for vm in vms if vm.state.active
               and any(file_key(d.path) == file_key(path) for d in vm.config.disks)]
    if running:
        raise HostError(f"{path} is in use by the running VM {running[0]!r}: shut it down first")
    try:
        with open_image(path) as dev:
            if new_size < dev.size:
                raise HostError(f"{path}: {new_size} bytes is smaller than its {dev.size}; Vireo only grows "
                                "images (shrinking loses the data past the new end)")
            if new_size != dev.size:
                resize(dev, new_size)
                dev.flush()
    except ImageError as exc:
        raise HostError(str(exc)) from None


class HostImages:
    """The storage-folder requests of a host that holds its VMs' definitions (needs list_vms())."""

    def list_images(self) -> list[ImageEntry]:
        return list_images(self.list_vms())  # type: ignore[attr-defined]

    def delete_image(self, path: str) -> None:
        delete_image(self.list_vms(), path)  # type: ignore[attr-defined]

    def resize_image(self, path: str, new_size: int) -> None:
        resize_image(self.list_vms(), path, new_size)  # type: ignore[attr-defined]

    def run_img(self, fields: dict[str, object]) -> tuple[int, str, str]:
        from core.storage.cli import run_img

        return run_img(fields)
