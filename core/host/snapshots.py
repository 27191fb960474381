"""VM snapshots of a local VM (docs/vm-snapshots.md), the part of LocalHost (core/host/local.py) that deals with
them; virsh's snapshot-create / snapshot-list / snapshot-revert / snapshot-delete.

A VM snapshot is a qcow2 internal snapshot of the same name on every writable disk of the VM (QEMU
docs/interop/qcow2.txt "Snapshots", core/storage/qcow2_snapshot.py), plus, when the VM was running or paused,
its machine state (docs/machine-state.md) in the first disk's VM-state area, as QEMU's savevm stores it. A VM
with a raw (writable) disk cannot have one: that is refused with one line, as virsh refuses internal snapshots
of raw disks.

- A shut-off VM: the images are opened here, one after the other, and snapshotted (disks only). A running or
  paused VM: its VM process holds the images, so it takes the snapshot itself, atomically
  (core/vmproc/snapshot_call.py).
- Revert: a started VM is powered off first (as virsh does for a snapshot it cannot apply live); every disk is
  reverted; a snapshot with machine state has its state read back out of the first disk into a temporary state
  file and the VM is started from it, so it resumes running where the snapshot was taken (a snapshot of a paused
  VM resumes running as well: the user asked to go back to it).
- What qcow2 has no field for -- the description, the state word and the screen thumbnail -- lives beside the
  definition in `<definitions directory>/snapshots/<uuid>.json` (0600), written atomically; libvirt likewise
  keeps its snapshot XML beside the domain. The file lists the VM's snapshots in the order they were taken.
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import atomic_write
from core.host.api import HostError, VmState
from core.host.saved import discard as discard_saved
from core.host.saved import managed_state
from core.host.snapshot_info import SnapshotRecordError, VmSnapshot, check_name

if TYPE_CHECKING:
    from core.host.local import LocalHost, _LocalVm

COPY_CHUNK = 4 << 20


def _meta_path(host: LocalHost, vm_uuid: str) -> Path:
    return Path(host.store.directory) / "snapshots" / f"{vm_uuid}.json"


def _load(host: LocalHost, vm_uuid: str) -> list[VmSnapshot]:
    path = _meta_path(host, vm_uuid)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [VmSnapshot.from_dict(r) for r in raw["snapshots"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, SnapshotRecordError) as exc:
        raise HostError(f"{path}: the snapshot list is unreadable ({exc}); move it away to start afresh") from None


def _store(host: LocalHost, vm_uuid: str, snapshots: list[VmSnapshot]) -> None:
    path = _meta_path(host, vm_uuid)
    if not snapshots:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write(path, json.dumps({"snapshots": [s.to_dict() for s in snapshots]}).encode())


def forget_snapshots(host: LocalHost, vm_uuid: str) -> None:
    """The VM's definition is deleted: its snapshot list goes too (the internal snapshots stay in kept images,
    where `vireo img snapshot -l` shows them)."""
    _meta_path(host, vm_uuid).unlink(missing_ok=True)


def _disks(vm: _LocalVm) -> list[str]:
    """The paths of the VM's writable disks; HostError with one line for a raw one (virsh: internal snapshots of
    raw disks are unsupported)."""
    out = []
    for i, disk in enumerate(vm.config.disks):
        if disk.readonly:
            continue
        if disk.format != "qcow2":
            raise HostError(f"{vm.config.name}: internal snapshots need qcow2 disks, and disk {i} ({disk.path}) is "
                            f"{disk.format}")
        out.append(disk.path)
    if not out:
        raise HostError(f"{vm.config.name} has no writable disk to snapshot")
    return out


def _by_name(image, name: str) -> str | None:
    return next((sn.id_str for sn in image.snapshots if sn.name == name), None)


def _open(path: str):
    from core.storage import ImageError, open_image
    try:
        return open_image(path, "qcow2")
    except (OSError, ImageError) as exc:
        raise HostError(str(exc)) from None


class LocalSnapshots:
    """snapshot_* of LocalHost."""

    def snapshot_list(self: LocalHost, vm_uuid: str) -> list[VmSnapshot]:
        self._vm(vm_uuid)
        return _load(self, vm_uuid)

    def snapshot_create(self: LocalHost, vm_uuid: str, name: str | None = None,
                        description: str = "") -> VmSnapshot:
        """Take VM snapshot `name` (default: the time in seconds, as virsh names them)."""
        from core.storage import ImageError
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        name = name or str(int(time.time()))
        if not check_name(name):
            raise HostError(f"snapshot name {name!r}: 1 to 255 printable bytes, no '/'")
        with vm.op_lock:
            existing = _load(self, vm_uuid)
            if any(s.name == name for s in existing):
                raise HostError(f"{vm.config.name}: a snapshot named {name} already exists")
            paths = _disks(vm)
            saved = managed_state(self, vm)
            if saved is not None and not vm.state.active:
                # Its disks belong with that state: a disk-only snapshot now would be reverted under it.
                raise HostError(f"{vm.config.name} has a saved state ({saved}); start it and take the snapshot "
                                "while it runs, or delete the saved state first")
            if vm.state in (VmState.RUNNING, VmState.PAUSED) and vm.proc is not None:
                try:
                    got = vm.proc.snapshot_create(name)
                except VmProcessError as exc:
                    raise HostError(f"{vm.config.name}: {exc}") from None
                snap = VmSnapshot(name, time.time(), description, got["state"], got["vm_state_size"],
                                  base64.b64decode(got["thumbnail"]))
            elif vm.state.active:
                raise HostError(f"{vm.config.name} is {vm.state.label.lower()}; try again in a moment")
            else:
                taken = []
                try:
                    for path in paths:
                        image = _open(path)
                        try:
                            if _by_name(image, name) is not None:
                                raise HostError(f"disk {path} already has a snapshot named {name!r}")
                            image.snapshot_create(name)
                            taken.append(path)
                        finally:
                            image.close()
                except (ImageError, HostError) as exc:
                    self._snapshot_undo(taken, name)
                    raise HostError(f"{vm.config.name}: {exc}") from None
                snap = VmSnapshot(name, time.time(), description, "shutoff")
            _store(self, vm_uuid, [*existing, snap])
            return snap

    def _snapshot_undo(self, paths: list[str], name: str) -> None:
        for path in paths:
            image = _open(path)
            try:
                sid = _by_name(image, name)
                if sid is not None:
                    image.snapshot_delete(sid)
            finally:
                image.close()

    def snapshot_delete(self: LocalHost, vm_uuid: str, name: str) -> None:
        from core.storage import ImageError
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        with vm.op_lock:
            existing = _load(self, vm_uuid)
            if not any(s.name == name for s in existing):
                raise HostError(f"{vm.config.name} has no snapshot named {name}")
            paths = [d.path for d in vm.config.disks if not d.readonly]
            if vm.state in (VmState.RUNNING, VmState.PAUSED) and vm.proc is not None:
                try:
                    vm.proc.snapshot_delete(name)
                except VmProcessError as exc:
                    raise HostError(f"{vm.config.name}: {exc}") from None
            elif vm.state.active:
                raise HostError(f"{vm.config.name} is {vm.state.label.lower()}; try again in a moment")
            else:
                try:
                    self._snapshot_undo(paths, name)
                except ImageError as exc:
                    raise HostError(f"{vm.config.name}: {exc}") from None
            _store(self, vm_uuid, [s for s in existing if s.name != name])

    def snapshot_revert(self: LocalHost, vm_uuid: str, name: str) -> None:
        """Go back to snapshot `name`: disks reverted; with machine state the VM resumes running from it,
        without it the VM is left shut off."""
        from core.storage import ImageError
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        snap = next((s for s in _load(self, vm_uuid) if s.name == name), None)
        if snap is None:
            raise HostError(f"{vm.config.name} has no snapshot named {name}")
        paths = _disks(vm)
        with vm.op_lock:
            if vm.state.active and vm.proc is not None:
                try:
                    vm.proc.power_off()
                except VmProcessError as exc:
                    raise HostError(f"{vm.config.name}: {exc}") from None
        self._wait_shutoff(vm)
        state_file = None
        try:
            with vm.op_lock:
                # Every disk is checked before any is reverted: a disk added since the snapshot must not leave
                # the VM half reverted.
                images = []
                try:
                    for path in paths:
                        images.append(_open(path))
                        if _by_name(images[-1], name) is None:
                            raise HostError(f"{vm.config.name}: disk {path} has no snapshot named {name} (added "
                                            "since?); no disk was reverted")
                    for i, image in enumerate(images):
                        sid = _by_name(image, name)
                        if i == 0 and snap.has_state:
                            state_file = self._extract_state(image, sid)
                        image.snapshot_apply(sid)
                    # A managed save belongs with the disks as they were; it would resume a guest whose disks
                    # changed under it, so it goes (the user chose to go back).
                    discard_saved(managed_state(self, vm))
                except ImageError as exc:
                    raise HostError(f"{vm.config.name}: {exc}") from None
                finally:
                    for image in images:
                        image.close()
            if state_file is not None:
                self.start(vm_uuid, restore=state_file)
        finally:
            if state_file is not None:
                os.unlink(state_file)

    def _wait_shutoff(self: LocalHost, vm: _LocalVm, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while vm.state.active:
            if time.monotonic() > deadline:
                raise HostError(f"{vm.config.name} did not stop within {timeout:.0f} s")
            time.sleep(0.02)

    def _extract_state(self: LocalHost, image, sid: str) -> str:
        """The snapshot's machine state copied out of the image's VM-state area into a temporary state file."""
        size = next(sn.vm_state_size for sn in image.snapshots if sn.id_str == sid)
        if not size:
            raise HostError(f"{image.path}: snapshot {sid} has no machine state")
        fd, tmp = tempfile.mkstemp(dir=self.runtime_dir, prefix=".revert-", suffix=".state")
        try:
            with os.fdopen(fd, "wb") as f:
                for offset in range(0, size, COPY_CHUNK):
                    f.write(image.read_vm_state(sid, offset, min(COPY_CHUNK, size - offset)))
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp
