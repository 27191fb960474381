"""The Host API as one import: `from core.host import X` for the API and its values (core/host/api.py), the
engine-side LocalHost the service runs (core/host/local.py), and the values a client of the API handles: the
console's Frame/FrameSource (core/display/frame.py) and the set-2 key encoding its input sink takes
(core/keymap.py). The clients that reach a host — connect_local(), RemoteHost — are core/connect.py's.

Frame and FrameSource load on first use (PEP 562 module __getattr__): core.display.frame needs numpy, which a
client of the API need not load to list VMs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.host.api import (
    SERIAL_HISTORY,
    TERMINAL_RESET,
    DeleteResult,
    DiskChoice,
    EventKind,
    FileProbe,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    HostListener,
    KeptDisk,
    Progress,
    SerialListener,
    VmConsole,
    VmInfo,
    VmState,
    VmStats,
)
from core.host.files import FileEntry, HostFiles
from core.host.hostload import HostCounters, rates
from core.host.images import ImageEntry
from core.host.local import LocalHost
from core.host.snapshot_info import MAX_DESCRIPTION, VmSnapshot, check_name
from core.keymap import EVDEV_KEYS, InputSink, break_code, combo_events, make_code, text_events

if TYPE_CHECKING:
    from core.display.frame import Frame, FrameSource

__all__ = [
    "EVDEV_KEYS", "SERIAL_HISTORY", "TERMINAL_RESET", "DeleteResult", "DiskChoice", "EventKind", "FileEntry",
    "FileProbe", "Frame", "FrameSource", "Host", "HostCapabilities", "HostCounters", "HostError", "HostEvent",
    "HostFiles", "HostListener", "ImageEntry", "InputSink", "KeptDisk", "LocalHost", "MAX_DESCRIPTION", "Progress",
    "SerialListener", "VmConsole", "VmInfo", "VmSnapshot", "VmState", "VmStats", "break_code", "check_name",
    "combo_events", "make_code", "rates", "text_events",
]


def __getattr__(name: str) -> Any:
    if name == "Frame":
        from core.display.frame import Frame as value
    elif name == "FrameSource":
        from core.display.frame import FrameSource as value
    else:
        raise AttributeError(f"module 'core.host' has no attribute {name!r}")
    globals()[name] = value
    return value
