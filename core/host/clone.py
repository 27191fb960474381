"""Cloning a VM on its host (issue 15, "Clone"; docs/clone-and-move.md), as virt-clone(1) does for libvirt: a new
definition with a new name, uuid and MAC addresses, and new disk files in the host's images folder
(core.config.images_dir).

Two kinds:
  * full: each writable disk is copied byte for byte (holes stay holes, SEEK_DATA/SEEK_HOLE of lseek(2)), then
    fsynced. A qcow2 disk keeps the backing file it names (resolved as QEMU resolves it, so a relative name that
    would point elsewhere from the images folder is refused rather than silently broken).
  * linked: the clone's disk is a thin qcow2 overlay whose backing file is the original's disk content (QEMU's
    docs/interop/qcow2.txt, "backing file"). A backing file must never change under its overlays, so the original
    may no longer write to that file either: its content is renamed beside it as `<stem>.base-<id>.<ext>`, and a
    new overlay on it takes the original's path (the original's definition keeps its path; its format becomes
    qcow2). Original and clone then each write only to their own overlay; the shared base is read-only for both
    and delete() keeps it while either overlay reads it (core/host/disks.py).

A full clone also gets the original's VM snapshot list (its disks carry the snapshots); a linked clone starts with
none (the snapshots stay in the shared base). Read-only disks and CD-ROM discs are shared, not copied (virt-clone
does the same). Either kind refuses a VM that is running or paused, with one line: its disks are being written. A
VM with a managed save may be cloned (its disks are consistent with its saved state); the clone boots afresh, the
save stays the original's.
"""
from __future__ import annotations

import os
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.config import ConfigError, DiskConfig, images_dir, make_private_dirs
from core.host.api import HostError, Progress, VmInfo

if TYPE_CHECKING:
    from core.host.local import LocalHost

COPY_CHUNK = 4 << 20


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the parts of a file that hold data (the rest are holes); the whole file where the file
    system cannot say."""
    ranges: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:         # ENXIO: no data past pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, min(end, size) - start))
            pos = end
    except OSError:
        return [(0, size)]
    return ranges


def copy_file(src: str, dst: str, progress: Callable[[int], None] | None = None) -> int:
    """Copy `src` to the new file `dst` (never replacing one: O_EXCL), keeping holes, then fsync it. Calls
    progress(bytes) after each piece; returns the bytes of data copied."""
    copied = 0
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(sfd).st_size
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fast = hasattr(os, "copy_file_range")
            for offset, length in _data_ranges(sfd, size):
                end = offset + length
                while offset < end:
                    n = min(COPY_CHUNK, end - offset)
                    if fast:
                        # In the kernel, no trip through this process (and a shared extent where the file system
                        # offers one, as cp does); EXDEV/EINVAL/ENOSYS fall back to reading and writing.
                        try:
                            n = os.copy_file_range(sfd, dfd, n, offset, offset)
                        except OSError:
                            fast = False
                            continue
                    else:
                        piece = os.pread(sfd, n, offset)
                        os.pwrite(dfd, piece, offset)
                        n = len(piece)
                    if n == 0:
                        break           # the source shrank under us: what remains is a hole
                    offset += n
                    copied += n
                    if progress is not None:
                        progress(n)
            os.ftruncate(dfd, size)     # a trailing hole
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return copied


def data_bytes(path: str) -> int:
    """The bytes of data (not holes) in a file: what copy_file copies."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sum(length for _, length in _data_ranges(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _free_name(folder: str, stem: str, ext: str, taken: set[str]) -> str:
    """A path in `folder` that neither exists nor is already chosen for this clone."""
    n = 0
    while True:
        path = os.path.join(folder, f"{stem}{'' if n == 0 else f'-{n}'}{ext}")
        if path not in taken and not os.path.lexists(path):
            return path
        n += 1


def _ext(path: str, fmt: str) -> str:
    """The copy's file name ending: the original's when it is an image suffix, else one for its format."""
    ext = os.path.splitext(path)[1]
    if ext in (".img", ".raw", ".qcow2"):
        return ext
    return ".qcow2" if fmt == "qcow2" else ".img"


def _name_from(overlay: str, base: str) -> str:
    """How `overlay` names its backing file `base`: the bare name beside it, else the absolute path."""
    same = os.path.dirname(os.path.abspath(overlay)) == os.path.dirname(os.path.abspath(base))
    return os.path.basename(base) if same else os.path.abspath(base)


def _copy_snapshot_list(host: LocalHost, old_uuid: str, new_uuid: str) -> None:
    """A full copy's qcow2 disks carry the original's internal snapshots: give the clone their descriptions too
    (core/host/snapshots.py keeps them beside the definition, by uuid). A linked clone's overlays start empty."""
    from core.config import atomic_write
    from core.host.snapshots import _meta_path

    old = _meta_path(host, old_uuid)
    if old.is_file():
        atomic_write(_meta_path(host, new_uuid), old.read_bytes())


def clone_vm(host: LocalHost, vm_uuid: str, new_name: str, linked: bool = False,
             progress: Progress | None = None) -> VmInfo:
    """Clone a shut-off VM of `host` as `new_name` (full copies, or linked qcow2 overlays); returns the clone's
    info. HostError with one line when it cannot (running VM, name taken, a disk that cannot be read or copied);
    whatever files were made by then are removed."""
    from core.storage import ImageError, create_image
    from core.storage.info import image_info

    vm = host._vm(vm_uuid)
    new_name = (new_name or "").strip()
    if not new_name:
        raise HostError("give the clone a name")
    if any(i.name.casefold() == new_name.casefold() for i in host.list_vms()):
        raise HostError(f"a VM named {new_name!r} already exists on {host.name}")
    with vm.op_lock:
        if vm.state.active:
            raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: shut it down (or save it) before "
                            "cloning it; its disks are being written")
        source = vm.config.copy()
        folder = str(images_dir())
        make_private_dirs(folder)
        clone = source.copy(name=new_name, uuid=str(uuidlib.uuid4()), autostart=False)
        from core.net.nic import derived_mac
        for n, nic in enumerate(clone.nics):
            nic.mac = derived_mac(clone.uuid, n)     # as the store derives a new card's MAC from its VM's uuid
        clone.serial.log_file = ""       # two VMs appending to one log would interleave
        try:
            clone.validate()             # before the name becomes file names
        except ConfigError as exc:
            raise HostError(str(exc)) from None
        writable = [(i, d) for i, d in enumerate(source.disks) if not d.readonly]
        for _, disk in writable:
            if not os.path.isfile(disk.path):
                raise HostError(f"{source.name}'s disk {disk.path} is not a file on {host.name}")
        total = 0 if linked else sum(data_bytes(d.path) for _, d in writable)
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        made: list[str] = []        # files this clone created, removed again on failure
        renamed: list[tuple[str, str]] = []     # (base, original path) for a linked clone, undone on failure
        original_changes: list[DiskConfig] = []
        taken: set[str] = set()
        try:
            for i, disk in writable:
                stem = new_name if len(writable) == 1 else f"{new_name}-{i}"
                if linked:
                    new_path = _free_name(folder, stem, ".qcow2", taken)
                    taken.add(new_path)
                    root, ext = os.path.splitext(disk.path)
                    base = _free_name(os.path.dirname(disk.path), f"{os.path.basename(root)}.base-{clone.uuid[:8]}",
                                      ext or f".{disk.format}", taken)
                    os.rename(disk.path, base)
                    renamed.append((base, disk.path))
                    # The original's own overlay at its old path, then the clone's. Each names the base by its
                    # bare file name when they share a folder (QEMU resolves it beside the overlay), so overlay
                    # and base can move together to another host's folder (core/host/move.py); else absolutely.
                    create_image(disk.path, "qcow2", None, backing_file=_name_from(disk.path, base),
                                 backing_format=disk.format)
                    made.append(disk.path)
                    create_image(new_path, "qcow2", None, backing_file=_name_from(new_path, base),
                                 backing_format=disk.format)
                    made.append(new_path)
                    original_changes.append(DiskConfig(disk.path, "qcow2", disk.bus, disk.readonly))
                    clone.disks[i] = DiskConfig(new_path, "qcow2", disk.bus, disk.readonly)
                else:
                    info = image_info(disk.path, force_share=True)
                    if info.backing_file and not os.path.isabs(info.backing_file) \
                            and os.path.dirname(os.path.abspath(disk.path)) != folder:
                        raise HostError(f"{disk.path} names its backing file {info.backing_file!r} relative to its "
                                        f"folder, which a copy in {folder} would not find; use a linked clone")
                    new_path = _free_name(folder, stem, _ext(disk.path, disk.format), taken)
                    taken.add(new_path)
                    made.append(new_path)
                    copy_file(disk.path, new_path, step)
                    clone.disks[i] = DiskConfig(new_path, disk.format, disk.bus, disk.readonly)
            if linked:
                changed = source.copy()
                changed.disks = [next((c for c in original_changes if c.path == d.path), d) for d in source.disks]
                host.define(changed)
            else:
                _copy_snapshot_list(host, source.uuid, clone.uuid)
            return host.define(clone)
        except BaseException as exc:
            for path in made:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            for base, path in renamed:
                try:
                    os.rename(base, path)
                except OSError:
                    pass
            if renamed:
                try:
                    host.define(source)
                except HostError:
                    pass
            if isinstance(exc, ImageError):
                raise HostError(str(exc)) from None
            if isinstance(exc, OSError):
                raise HostError(f"cannot clone {source.name}: {exc.filename or ''}: {exc.strerror or exc}") \
                    from None
            raise
