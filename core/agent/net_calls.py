"""The service's calls for a VM's network cards (core/host/net_ops.py through the wire): net_status,
net_reconnect and net_set, mixed into core/agent/connection.py's Connection. The arguments come from a client and
are checked here; the Host checks what they mean."""
from __future__ import annotations

from typing import Any

from core.agent import wire


def _nic(value: Any, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 64:
        raise wire.WireError("nic must be a card's index")
    return value


class NetCalls:
    """m_net_* handlers; `self.host` is the service's Host."""

    def m_net_status(self, uuid: str, **_: Any) -> list[dict[str, Any]]:
        return self.host.net_status(str(uuid))

    def m_net_reconnect(self, uuid: str, nic: int | None = None, **_: Any) -> None:
        self.host.net_reconnect(str(uuid), _nic(nic, optional=True))

    def m_net_set(self, uuid: str, nic: int, link: bool | None = None, forwards: list[str] | None = None,
                  **_: Any) -> dict[str, Any]:
        if link is not None and not isinstance(link, bool):
            raise wire.WireError("link must be true or false")
        if forwards is not None and (not isinstance(forwards, list) or len(forwards) > 64
                                     or not all(isinstance(f, str) for f in forwards)):
            raise wire.WireError("forwards must be a list of strings")
        return wire.vminfo_to(self.host.net_set(str(uuid), _nic(nic), link=link, forwards=forwards))
