"""The Host API as one import: `from core.host import X` for the API and its values (core/host/api.py), the
engine-side LocalHost (core/host/local.py), RemoteHost (a service over SSH, core/remote/host.py) and
connect_local() (this user's local service, core/host/service.py).

RemoteHost, LocalServiceHost and connect_local load on first use (PEP 562 module __getattr__): core/remote/ is the
client side, which the engine bundle installed on remote hosts leaves out, and it imports core.host.api itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.host.api import (
    SERIAL_HISTORY,
    TERMINAL_RESET,
    EventKind,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    HostListener,
    Progress,
    SerialListener,
    VmConsole,
    VmInfo,
    VmState,
    VmStats,
)
from core.host.local import LocalHost

if TYPE_CHECKING:
    from core.host.service import LocalServiceHost, connect_local
    from core.remote.host import RemoteHost

__all__ = [
    "SERIAL_HISTORY", "TERMINAL_RESET", "EventKind", "Host", "HostCapabilities", "HostError", "HostEvent",
    "HostListener", "LocalHost", "LocalServiceHost", "Progress", "RemoteHost", "SerialListener", "VmConsole",
    "VmInfo", "VmState", "VmStats", "connect_local",
]

_LAZY = {"RemoteHost": "core.remote.host", "LocalServiceHost": "core.host.service",
         "connect_local": "core.host.service"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'core.host' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
