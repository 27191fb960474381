"""The host's half of moving a shut-off or saved VM to another host (issue 15, "Move to another host";
docs/clone-and-move.md). The client (core/remote/move.py) drives the move and carries the bytes between the two
hosts over the connections it already holds; each host's service answers these steps of Host.migrate():

  source       "out_plan"    the definition, and each file to carry — every disk, the managed save
                             (core/host/saved.py) and the VM snapshots' descriptions (core/host/snapshots.py)
                             when there are — with its size and modification time;
                             a qcow2 disk's backing files go too; refuses a VM that runs, or a backing file
                             named by a path rather than a bare name (one line each).
  destination  "in_prepare"  checks the name and uuid are free here, the kernel, initrd, firmware and CD-ROM
                             images the definition names are here (they are the host's, not carried), and
                             the images folder has room for the files' full sizes; answers the path each file
                             is written to ("….part" beside its final name, never an existing file) and the
                             final names.
  destination  "in_finish"   fsyncs each .part file and checks its size and SHA-256 against what the client read
                             at the source; renames them to their final names, installs the saved state as the
                             VM's managed save and defines the VM with its disks at their new paths. A mismatch
                             removes the .part files and refuses with one line.
  destination  "in_abort"    removes .part files of a move that failed (only names in_prepare gave out).
  source       "out_finish"  only after in_finish: checks nothing changed since out_plan (still shut off, same
                             sizes and times), then removes the definition, its disks, its managed save and
                             its snapshots' descriptions.

So the source copy is removed only once the destination has everything, fsynced and verified; until then any
failure leaves the source as it was.
"""
from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from core.config import ConfigError, DiskConfig, VmConfig, images_dir, make_private_dirs
from core.host.api import HostError
from core.host.disks import backing_chain
from core.host.saved import managed_path

if TYPE_CHECKING:
    from core.host.local import LocalHost

PART = ".vireo-move.part"
HASH_CHUNK = 4 << 20
SPACE_MARGIN = 64 << 20     # left free on the destination beyond the files themselves


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(HASH_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def _stat(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def out_plan(host: LocalHost, vm_uuid: str) -> dict[str, Any]:
    vm = host._vm(vm_uuid)
    with vm.op_lock:
        if vm.state.active:
            raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: save it or shut it down before moving "
                            "it (a running VM is not moved)")
        config = vm.config.copy()
    files = []
    carried: set[str] = set()
    for disk in config.disks:
        if not os.path.isfile(disk.path):
            raise HostError(f"{config.name}'s disk {disk.path} is not a file on {host.name}")
        files.append({"role": "disk", **_stat(disk.path)})
        # A qcow2 overlay's backing files go too (a linked clone, or a VM that was linked-cloned), under their own
        # names: each must name the next by a bare file name, which resolves beside it in the destination's folder
        # as it does here (QEMU resolves a relative name from the overlay's folder).
        chain = backing_chain(disk.path)
        for overlay, base in zip([disk.path, *chain], chain, strict=False):
            named = _backing_name(overlay)
            if os.path.basename(named) != named:
                raise HostError(f"{overlay} names its backing file by the path {named!r}, which another host "
                                "would not have: make a full clone before moving it")
            if os.path.realpath(base) not in carried:
                carried.add(os.path.realpath(base))
                files.append({"role": "backing", **_stat(base)})
    state = managed_path(host, vm_uuid)
    if state.is_file():
        files.append({"role": "state", **_stat(str(state))})
    snapshots = _snapshot_list(host, vm_uuid)
    if snapshots.is_file():
        files.append({"role": "snapshots", **_stat(str(snapshots))})
    return {"config": config.to_dict(), "files": files}


def _backing_name(path: str) -> str:
    """The backing file name as the qcow2 header stores it."""
    from core.storage.info import image_info

    return image_info(path, force_share=True).backing_file or ""


def _snapshot_list(host: LocalHost, vm_uuid: str):
    """The VM snapshots' descriptions beside the definition (core/host/snapshots.py); the snapshots themselves
    are inside the qcow2 disks, which travel whole."""
    from core.host.snapshots import _meta_path

    return _meta_path(host, vm_uuid)


def _config(value: Any) -> VmConfig:
    try:
        return VmConfig.from_dict(value)
    except ConfigError as exc:
        raise HostError(f"move: the definition sent is not valid: {exc}") from None


def in_prepare(host: LocalHost, config_value: Any, files: list[dict[str, Any]]) -> dict[str, Any]:
    config = _config(config_value)
    facts = host.info()
    try:
        config.validate_for_host(facts.memory_mib, facts.cpus)
    except ConfigError as exc:
        raise HostError(f"{host.name} cannot run {config.name}: {exc}") from None
    for info in host.list_vms():
        if info.uuid == config.uuid:
            raise HostError(f"{host.name} already has this VM ({info.name}, uuid {config.uuid})")
        if info.name.casefold() == config.name.casefold():
            raise HostError(f"a VM named {info.name!r} already exists on {host.name}: rename or remove it first")
    for what, path in (("kernel", config.boot.kernel), ("initrd", config.boot.initrd),
                       ("firmware", config.boot.firmware)):
        if path and not os.path.isfile(path):
            raise HostError(f"{config.name} boots the {what} {path}, which {host.name} does not have")
    for cd in config.cdroms:
        if cd.path and not os.path.isfile(cd.path):
            raise HostError(f"{config.name}'s CD-ROM holds {cd.path}, which {host.name} does not have: eject it "
                            "first")
    folder = str(images_dir())
    make_private_dirs(folder)
    need = sum(int(f["size"]) for f in files)
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if need + SPACE_MARGIN > free:
        raise HostError(f"not enough space on {host.name}: {config.name} needs {need / 2**30:.1f} GiB in {folder}, "
                        f"which has {free / 2**30:.1f} GiB free")
    targets = []
    taken: set[str] = set()
    for f in files:
        if f["role"] in ("state", "snapshots"):
            where = managed_path if f["role"] == "state" else _snapshot_list
            final = str(where(host, config.uuid))
            os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        elif f["role"] == "backing":
            # Named by its overlay: it must keep its name. One already there may be another VM's: not replaced.
            final = os.path.join(folder, os.path.basename(str(f["path"])))
            if final in taken:
                raise HostError(f"{config.name} reads two backing files named {os.path.basename(final)}")
            if os.path.lexists(final):
                # Moved before with another VM (a linked clone's base): kept and shared if it is the same file,
                # which in_finish checks by its SHA-256; nothing is written over it.
                if not os.path.isfile(final) or os.path.getsize(final) != int(f["size"]):
                    raise HostError(f"{final} exists on {host.name} already and is not {config.name}'s backing "
                                    "file of that name: make a full clone before moving it")
                taken.add(final)
                targets.append({"final": final, "part": None})
                continue
        else:
            stem, ext = os.path.splitext(os.path.basename(str(f["path"])))
            n, final = 0, os.path.join(folder, stem + ext)
            while final in taken or os.path.lexists(final) or os.path.lexists(final + PART):
                n += 1
                final = os.path.join(folder, f"{stem}-{n}{ext}")
        taken.add(final)
        part = final + PART
        if os.path.lexists(part):
            raise HostError(f"{part} exists on {host.name}: another move of this VM is under way (or failed: "
                            "delete it)")
        targets.append({"final": final, "part": part})
    return {"targets": targets}


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _part_ok(path: str) -> bool:
    return path.endswith(PART) and os.path.isabs(path)


def in_abort(host: LocalHost, parts: list[str]) -> None:
    for path in parts:
        if _part_ok(path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def in_finish(host: LocalHost, config_value: Any, files: list[dict[str, Any]]) -> dict[str, Any]:
    """`files`: [{role, part, final, size, sha256}] as the client wrote them."""
    config = _config(config_value)
    parts = [str(f["part"]) for f in files if f["part"] is not None]
    landed: list[str] = []
    try:
        for f in files:
            if f["part"] is None:       # a backing file already here: it must be the very same
                if file_sha256(str(f["final"])) != f["sha256"]:
                    raise HostError(f"{f['final']} on {host.name} differs from {config.name}'s backing file of that "
                                    "name: make a full clone before moving it")
                continue
            part = str(f["part"])
            if not _part_ok(part) or str(f["final"]) + PART != part:
                raise HostError(f"move: {part} is not a file this move wrote")
            fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)        # the data is on the destination's disk before the source lets go of it
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size != int(f["size"]):
                raise HostError(f"move: {f['final']} arrived with {size} bytes, the source has {f['size']}")
            got = file_sha256(part)
            if got != f["sha256"]:
                raise HostError(f"move: {f['final']} arrived damaged (SHA-256 {got[:12]}…, the source's "
                                f"{str(f['sha256'])[:12]}…)")
        disks = iter(f for f in files if f["role"] == "disk")
        config.disks = [DiskConfig(str(next(disks)["final"]), d.format, d.bus, d.readonly) for d in config.disks]
        for f in files:
            if f["part"] is not None:
                os.rename(str(f["part"]), str(f["final"]))
                landed.append(str(f["final"]))
        for folder in {os.path.dirname(str(f["final"])) for f in files}:
            _fsync_dir(folder)          # the renames too survive a crash
        info = host.define(config)
    except BaseException:
        in_abort(host, parts)
        for path in landed:         # renamed already, but the VM was not defined: nothing here uses them
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    return {"uuid": info.uuid}


def out_finish(host: LocalHost, vm_uuid: str, planned: list[dict[str, Any]]) -> None:
    vm = host._vm(vm_uuid)
    with vm.op_lock:
        if vm.state.active:
            raise HostError(f"{vm.config.name} was started during the move: the copy on the destination is "
                            "kept, and so is this one")
        for f in planned:
            try:
                now = _stat(str(f["path"]))
            except OSError:
                now = None
            if now is None or now["size"] != f["size"] or now["mtime_ns"] != f["mtime_ns"]:
                raise HostError(f"{f['path']} changed during the move: the source is kept")
        host.delete(vm_uuid, True)
        for left in (managed_path(host, vm_uuid), _snapshot_list(host, vm_uuid)):
            try:
                os.unlink(left)
            except FileNotFoundError:
                pass


def migrate(host: LocalHost, step: str, fields: dict[str, Any]) -> dict[str, Any]:
    """One step of a move, as Host.migrate() names it; HostError with one line for whatever goes wrong."""
    try:
        return _step(host, step, fields)
    except OSError as exc:
        raise HostError(f"move on {host.name}: {exc.filename or ''}: {exc.strerror or exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise HostError(f"move: a malformed {step} request ({type(exc).__name__}: {exc})") from None


def _step(host: LocalHost, step: str, fields: dict[str, Any]) -> dict[str, Any]:
    if step == "out_plan":
        return out_plan(host, str(fields["uuid"]))
    if step == "in_prepare":
        return in_prepare(host, fields["config"], list(fields["files"]))
    if step == "in_finish":
        return in_finish(host, fields["config"], list(fields["files"]))
    if step == "in_abort":
        in_abort(host, [str(p) for p in fields["parts"]])
        return {}
    if step == "out_finish":
        out_finish(host, str(fields["uuid"]), list(fields["files"]))
        return {}
    raise HostError(f"move: unknown step {step!r}")
