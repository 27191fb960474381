"""Save and restore of a local VM (docs/machine-state.md), the part of LocalHost (core/host/local.py) that deals
with state files: `save` stops a running or paused VM into a state file -- by default the VM's *managed* save
(virt-manager's word), which the next `start` resumes and then removes; `restore` starts the VM a state file
names (its uuid is in the file) from that file, which stays where it is.

Managed saves live beside the definitions, in `<definitions directory>/saved/<uuid>.state` (0700 directory,
0600 files).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from core.host.api import HostError, VmInfo, VmState

if TYPE_CHECKING:
    from core.host.local import LocalHost, _LocalVm


def managed_path(host: LocalHost, vm_uuid: str) -> Path:
    return Path(host.store.directory) / "saved" / f"{vm_uuid}.state"


def managed_state(host: LocalHost, vm: _LocalVm) -> str | None:
    """The VM's managed save, if it has one (what `start` resumes)."""
    path = managed_path(host, vm.config.uuid)
    return str(path) if path.is_file() else None


def discard(path: str | None) -> None:
    """The VM resumed from its managed save: the file has served (a second start must boot, not go back)."""
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def save(host: LocalHost, vm_uuid: str, path: str | None) -> str:
    """Stop the running or paused VM into `path` (default: its managed save); returns the file's path."""
    from core.vmproc.handle import VmProcessError

    vm = host._vm(vm_uuid)
    if path is None:
        target = managed_path(host, vm_uuid)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        path = str(target)
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise HostError(f"cannot save {vm.config.name} to {path}: no such directory")
    with vm.op_lock:
        proc = host._proc(vm, VmState.RUNNING, VmState.PAUSED)
        vm.reboot_pending = False
        try:
            proc.save(path)
        except VmProcessError as exc:
            raise HostError(f"{vm.config.name}: {exc}") from None
    return path


def restore(host: LocalHost, path: str) -> VmInfo:
    """Start the VM that `path` was saved from, resumed from it; the file stays."""
    from core.machine_state import read_header
    from core.state.container import StateReader
    from core.state.fields import StateError

    path = os.path.abspath(path)
    try:
        reader = StateReader(path)
        try:
            machine, _ = read_header(reader)
        finally:
            reader.close()
    except StateError as exc:
        raise HostError(str(exc)) from None
    owner = machine["vm"]
    if owner is None:
        raise HostError(f"state file {path}: it names no VM definition; run it with `vireo run --restore {path}`")
    try:
        host._vm(owner["uuid"])
    except HostError:
        raise HostError(f"state file {path}: VM {owner['name']} ({owner['uuid']}) is not defined on "
                        f"{host.name}; define it first") from None
    host.start(owner["uuid"], restore=path)
    return host.get(owner["uuid"])
