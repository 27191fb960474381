"""Reading and typing into the manager's graphical console as a user does, for the GUI tests: the text a
ConsoleView shows (read back from its frame's pixels), keys typed into it as Qt key events, and how long the
event loop takes to run a zero-delay timer (whether the window still answers)."""
from __future__ import annotations

import time

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtTest import QTest

from tests.helpers.vmproc import screen_lines

_KEYS = {**{c: getattr(Qt.Key, f"Key_{c.upper()}") for c in "abcdefghijklmnopqrstuvwxyz0123456789"},
         " ": Qt.Key.Key_Space, "-": Qt.Key.Key_Minus, "\n": Qt.Key.Key_Return}


def view_lines(view) -> list[str]:
    """The text on the view's current frame when it is an 80x25 text screen, else nothing."""
    frame = view.frame if view is not None else None
    return screen_lines(frame) if frame is not None and frame.mode == "text 80x25" else []


def type_keys(view, text: str) -> None:
    """Key clicks into the view (lower-case letters, digits, space, '-' and Enter)."""
    for ch in text:
        QTest.keyClick(view, _KEYS[ch])


def event_loop_stall(qtbot, rounds: int = 20, pause_ms: int = 20) -> float:
    """The second-longest wait, in seconds, for a zero-delay timer over `rounds` tries `pause_ms` apart.

    One preemption of the test process by the host (a loaded 2-core CI runner) is forgiven; a GUI thread that our
    code blocks, or a vCPU thread that keeps the interpreter lock, shows in more than one try."""
    waits = []
    for _ in range(rounds):
        stamps: list[float] = []
        t0 = time.monotonic()
        QTimer.singleShot(0, lambda s=stamps: s.append(time.monotonic()))
        qtbot.waitUntil(lambda s=stamps: bool(s), timeout=2000)
        waits.append(stamps[0] - t0)
        qtbot.wait(pause_ms)
    return sorted(waits)[-2]
