"""The Host API as one import: `from core.host import X` for the API and its values (core/host/api.py), the
engine-side LocalHost (core/host/local.py), RemoteHost (a service over SSH, core/remote/host.py), connect_local()
(this user's local service, core/host/service.py), and the values a client of the API handles: the SSH target
and host-key check of a remote host (core/remote/ssh.py, known_hosts.py), the console's Frame/FrameSource
(core/display/frame.py) and the set-2 key encoding its input sink takes (core/keymap.py). app/ imports from core/
only this package and core.config.

The client-side names load on first use (PEP 562 module __getattr__): core/remote/ is left out of the engine
bundle installed on remote hosts and imports core.host.api itself; core.display.frame needs numpy.
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
from core.keymap import EVDEV_KEYS, InputSink, break_code, combo_events, make_code, text_events

if TYPE_CHECKING:
    from core.display.frame import Frame, FrameSource
    from core.host.service import LocalServiceHost, connect_local
    from core.remote.host import RemoteHost
    from core.remote.known_hosts import Check
    from core.remote.ssh import SshTarget, parse_uri

__all__ = [
    "EVDEV_KEYS", "SERIAL_HISTORY", "TERMINAL_RESET", "Check", "EventKind", "Frame", "FrameSource", "Host",
    "HostCapabilities", "HostError", "HostEvent", "HostListener", "InputSink", "LocalHost", "LocalServiceHost",
    "Progress", "RemoteHost", "SerialListener", "SshTarget", "VmConsole", "VmInfo", "VmState", "VmStats",
    "break_code", "combo_events", "connect_local", "make_code", "parse_uri", "text_events",
]

_LAZY = {"RemoteHost": "core.remote.host", "LocalServiceHost": "core.host.service",
         "connect_local": "core.host.service", "SshTarget": "core.remote.ssh", "parse_uri": "core.remote.ssh",
         "Check": "core.remote.known_hosts", "Frame": "core.display.frame", "FrameSource": "core.display.frame"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'core.host' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
