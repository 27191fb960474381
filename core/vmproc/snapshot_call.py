"""VM snapshots of a running machine, inside its VM process (docs/vm-snapshots.md): the process owns the open disk
images (and their write locks), so the snapshot is taken here, atomically with respect to the guest:

1. the vCPUs are paused, the network cards held still and the disks' worker threads drained
   (core/machine_state.quiesce_board; release_board lets the cards run again at the end), retried as
   Machine.save does when a device is caught mid-transfer;
2. the machine state is written (core/machine_state.save_board, the format of docs/machine-state.md) to a
   temporary file beside the VM's socket, then copied into the first qcow2 disk's VM-state area -- where QEMU's
   savevm puts it (QEMU docs/interop/qcow2.txt "Snapshots": vm_state_size; the area starts at the first L1 entry
   past the disk), so `qemu-img snapshot -l` shows its VM SIZE;
3. every qcow2 disk takes the internal snapshot (the first with vm_state_size), in definition order; if one
   fails, the ones already taken are deleted again, so a snapshot exists on all disks or on none;
4. the screen is rendered to a small PNG (the thumbnail the GUI lists), and the vCPUs resume if they ran.

Deleting a snapshot of a running VM pauses and drains the same way, so no guest write races the refcount walk.
"""
from __future__ import annotations

import base64
import io
import os
import tempfile
import time
from typing import Any

from core.machine import SAVE_ATTEMPTS, Machine, MachineState
from core.machine_state import NotQuiescent, quiesce_board, release_board, save_board

THUMB_WIDTH = 160
COPY_CHUNK = 4 << 20


class SnapshotRefused(Exception):
    """The VM cannot take this snapshot (a raw disk, a name in use); one line."""


def snapshot_images(machine: Machine) -> list[Any]:
    """The open images of the machine's writable disks, in definition order; SnapshotRefused for a raw one."""
    from core.storage.qcow2 import Qcow2Image

    by_path = {os.path.realpath(getattr(img, "path", "")): img for img in machine.board.images}
    out = []
    for i, spec in enumerate(machine.config.disks):
        if spec.readonly:
            continue
        image = by_path.get(os.path.realpath(spec.path))
        if not isinstance(image, Qcow2Image):
            raise SnapshotRefused(f"disk {i} ({spec.path}) is raw: internal snapshots need qcow2 disks")
        out.append(image)
    return out


def has_name(image: Any, name: str) -> bool:
    return any(sn.name == name for sn in image.snapshots)


def by_name(image: Any, name: str) -> str:
    """The ID of the image's snapshot named `name`: a VM snapshot is found by name only, so a name that looks
    like another snapshot's ID (qemu-img's rule tries IDs first) never picks the wrong one."""
    return next(sn.id_str for sn in image.snapshots if sn.name == name)


def _stop(machine: Machine) -> bool:
    """Pause and drain the machine; True if it was running. The caller releases the board and resumes."""
    was_running = machine.state == MachineState.RUNNING
    if was_running:
        machine.pause()
    if machine.state != MachineState.PAUSED:
        raise RuntimeError(f"the machine stopped ({machine.state.value}: {machine.reason})")
    quiesce_board(machine.board)
    return was_running


def _thumbnail(machine: Machine) -> bytes:
    """The screen as a PNG THUMB_WIDTH wide ("" without a display or Pillow)."""
    vga = machine.board.vga
    if vga is None:
        return b""
    from core.display.renderer import Renderer
    frame = Renderer(vga).render(force=True)
    if frame is None:
        return b""
    image = frame.to_image()
    image.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 3 // 4))
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def create(machine: Machine, name: str, work_dir: str, vm: dict[str, str]) -> dict[str, Any]:
    """Take VM snapshot `name` of the running or paused machine; returns {"vm_state_size", "thumbnail" (base64
    PNG), "state" ("running" or "paused")}. SnapshotRefused or another exception with one line on failure (then no
    disk has the snapshot, and the machine carries on as it was)."""
    images = snapshot_images(machine)
    if not images:
        raise SnapshotRefused("the VM has no writable disk to snapshot")
    for image in images:
        if has_name(image, name):
            raise SnapshotRefused(f"disk {image.path} already has a snapshot named {name!r}")
    fd, tmp = tempfile.mkstemp(dir=work_dir, prefix=".snapshot-", suffix=".state")
    os.close(fd)
    was_running = False
    try:
        for attempt in range(SAVE_ATTEMPTS):
            was_running = _stop(machine) or was_running
            try:
                save_board(machine.board, machine.config, tmp, reset_count=machine.reset_count, vm=vm)
                break
            except NotQuiescent:
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                release_board(machine.board)
                machine.resume()
                time.sleep(0.002)
        state_size = os.path.getsize(tmp)
        clock = int((time.monotonic() - machine.started_at) * 1e9) if machine.started_at else 0
        first = images[0]
        with open(tmp, "rb") as f:
            offset = 0
            while chunk := f.read(COPY_CHUNK):
                first.write_vm_state(offset, chunk)
                offset += len(chunk)
        taken = []
        try:
            for image in images:
                image.snapshot_create(name, state_size if image is first else 0, clock)
                taken.append(image)
                image.flush()
        except BaseException:
            for image in taken:
                image.snapshot_delete(by_name(image, name))
            raise
        thumb = _thumbnail(machine)
        return {"vm_state_size": state_size, "thumbnail": base64.b64encode(thumb).decode(),
                "state": "running" if was_running else "paused"}
    finally:
        os.unlink(tmp)
        release_board(machine.board)
        if was_running and machine.state == MachineState.PAUSED:
            machine.resume()


def delete(machine: Machine, name: str) -> None:
    """Delete VM snapshot `name` from every disk of the running or paused machine that has it."""
    images = snapshot_images(machine)
    was_running = _stop(machine)
    try:
        for image in images:
            if has_name(image, name):
                image.snapshot_delete(by_name(image, name))
                image.flush()
    finally:
        release_board(machine.board)
        if was_running and machine.state == MachineState.PAUSED:
            machine.resume()
