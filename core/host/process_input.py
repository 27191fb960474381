"""The keyboard and mouse of a VM that runs in a process of its own (core.vmproc): a core.keymap.InputSink that
LocalHost (core/host/local.py) hands to its consoles and to the service's input messages. Apart from LocalHost to
keep that module within the size the project allows.
"""
from __future__ import annotations

import logging

log = logging.getLogger("core.host.local")     # its messages read as LocalHost's, as before it moved


class ProcessInput:
    """core.keymap.InputSink into a VM process: input for a process that has ended has nowhere to go and is
    dropped (its end is reported as a state change), as a key pressed on a powered-off machine."""

    def __init__(self, proc) -> None:
        self.proc = proc

    def key_event(self, set2_bytes: bytes) -> None:
        from core.vmproc.handle import VmProcessError
        try:
            self.proc.key_event(set2_bytes)
        except VmProcessError as exc:
            log.debug("key event dropped: %s", exc)

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        from core.vmproc.handle import VmProcessError
        try:
            self.proc.mouse_event(dx, dy, buttons, dz)
        except VmProcessError as exc:
            log.debug("mouse event dropped: %s", exc)
