"""ServiceClient's (core/remote/service.py) clone() and migrate() calls: the Host API's copying requests carried to
the service (core/agent/connection.py m_clone/m_migrate, which run core/host/copies.py); docs/clone-and-move.md."""
from __future__ import annotations

from typing import Any

from core.agent import wire
from core.host.api import HostError, Progress, VmInfo
from core.remote.client import AgentGone


class ServiceCopies:
    def clone(self, vm_uuid: str, new_name: str, linked: bool = False, progress: Progress | None = None) -> VmInfo:
        client = self._agent()  # type: ignore[attr-defined]
        try:
            value, _ = client.call("clone", uuid=vm_uuid, new_name=new_name, linked=bool(linked), progress=progress,
                                   timeout=3600)
        except AgentGone as exc:
            raise HostError(f"{self.name}: {exc}") from None  # type: ignore[attr-defined]
        try:
            info = wire.vminfo_from(value)
        except wire.WireError as exc:
            raise HostError(f"the service sent a malformed answer: {exc}") from None
        with self._lock:  # type: ignore[attr-defined]
            self._vms.setdefault(info.uuid, info)  # type: ignore[attr-defined]
        return info

    def migrate(self, step: str, fields: dict[str, Any]) -> dict[str, Any]:
        value, _ = self._call("migrate", step=step, fields=fields, timeout=600)  # type: ignore[attr-defined]
        if not isinstance(value, dict):
            raise HostError(f"the service sent a malformed answer to migrate {step}")
        return value
