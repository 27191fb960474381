"""A service client's network-card calls (core/agent/net_calls.py on the other end), mixed into
core/remote/service.py's ServiceClient. What the service answers is read as untrusted: net_status goes through
the same field-by-field check as the VM process's answer (core/vmproc/net_status.py)."""
from __future__ import annotations

from typing import Any

from core.agent import wire
from core.host.api import HostError, VmInfo
from core.vmproc.net_status import checked_nics


class NetClient:
    """Uses ServiceClient's _call."""

    def net_status(self, vm_uuid: str) -> list[dict[str, Any]]:
        value, _ = self._call("net_status", reconnect=False, uuid=vm_uuid)
        try:
            return checked_nics(value)
        except ValueError as exc:
            raise HostError(f"the service sent a malformed card status: {exc}") from None

    def net_reconnect(self, vm_uuid: str, nic: int | None = None) -> None:
        self._call("net_reconnect", uuid=vm_uuid, **({} if nic is None else {"nic": int(nic)}))

    def net_set(self, vm_uuid: str, nic: int, link: bool | None = None,
                forwards: list[str] | None = None) -> VmInfo:
        args: dict[str, Any] = {"uuid": vm_uuid, "nic": int(nic)}
        if link is not None:
            args["link"] = bool(link)
        if forwards is not None:
            args["forwards"] = [str(f) for f in forwards]
        value, _ = self._call("net_set", **args)
        try:
            return wire.vminfo_from(value)
        except wire.WireError as exc:
            raise HostError(f"the service sent a malformed answer: {exc}") from None
