"""The Host API as one import: `from core.host import X` for the API and its values (core/host/api.py), the
engine-side LocalHost (core/host/local.py), RemoteHost (a service over SSH, core/remote/host.py), connect_local()
(this user's local service, core/remote/local.py), and the values a client of the API handles: the SSH target
and host-key check of a remote host (core/remote/ssh.py, known_hosts.py), the console's Frame/FrameSource
(core/display/frame.py) and the set-2 key encoding its input sink takes (core/keymap.py). app/ imports from core/
only this package and core.config.

The client-side names load on first use (PEP 562 module __getattr__): core/remote/ (the clients of a service) is
left out of the engine bundle installed on remote hosts, and core.display.frame needs numpy, which a client of the
API need not load to list VMs. This re-export is the one place the core.host package depends on core.remote, which
implements the API it declares (core.remote -> core.host.api): a facade's dependency, declared in the import
graph test's allow-list.
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
    from core.remote.host import RemoteHost
    from core.remote.known_hosts import Check
    from core.remote.local import LocalServiceHost, connect_local
    from core.remote.ssh import SshTarget, parse_uri

__all__ = [
    "EVDEV_KEYS", "SERIAL_HISTORY", "TERMINAL_RESET", "Check", "EventKind", "Frame", "FrameSource", "Host",
    "HostCapabilities", "HostError", "HostEvent", "HostListener", "InputSink", "LocalHost", "LocalServiceHost",
    "Progress", "RemoteHost", "SerialListener", "SshTarget", "VmConsole", "VmInfo", "VmState", "VmStats",
    "break_code", "combo_events", "connect_local", "make_code", "parse_uri", "text_events",
]


def __getattr__(name: str) -> Any:
    # Written out (not looked up in a table of module names) so that the import graph sees each dependency.
    if name == "RemoteHost":
        from core.remote.host import RemoteHost as value
    elif name == "LocalServiceHost":
        from core.remote.local import LocalServiceHost as value
    elif name == "connect_local":
        from core.remote.local import connect_local as value
    elif name == "SshTarget":
        from core.remote.ssh import SshTarget as value
    elif name == "parse_uri":
        from core.remote.ssh import parse_uri as value
    elif name == "Check":
        from core.remote.known_hosts import Check as value
    elif name == "Frame":
        from core.display.frame import Frame as value
    elif name == "FrameSource":
        from core.display.frame import FrameSource as value
    else:
        raise AttributeError(f"module 'core.host' has no attribute {name!r}")
    globals()[name] = value
    return value
