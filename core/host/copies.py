"""The copying requests of LocalHost (core/host/local.py), mixed in as HostImages is: clone() (core/host/clone.py)
and the host's steps of moving a VM to another host, migrate() (core/host/move.py); docs/clone-and-move.md."""
from __future__ import annotations

from typing import Any

from core.host.api import Progress, VmInfo


class HostCopies:
    def clone(self, vm_uuid: str, new_name: str, linked: bool = False, progress: Progress | None = None) -> VmInfo:
        from core.host.clone import clone_vm

        return clone_vm(self, vm_uuid, new_name, linked, progress)  # type: ignore[arg-type]

    def migrate(self, step: str, fields: dict[str, Any]) -> dict[str, Any]:
        from core.host.move import migrate

        return migrate(self, step, fields)  # type: ignore[arg-type]
