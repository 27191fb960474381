"""`vireo run --display window`: the headless runner's VM shown in a bare console window (no manager).

The VM runs exactly as without a window (serial console on the terminal, same exit statuses); the window shows
its VGA screen and sends keyboard and mouse input to its i8042, both through the VmConsole the runner gives
(core/runner.py, RunSession.console()). Closing the window powers the VM off (exit 1, as quitting from the
console does); when the guest stops on its own, the window closes.

main.py builds the run (core.runner.prepare) and hands it here: this module sees only the session's three
controls (RunControls), never the machine.
"""
from __future__ import annotations

import sys
import threading
from typing import Protocol

from PyQt6.QtCore import QObject, pyqtSignal
from PyQt6.QtWidgets import QApplication

from app.widgets.console import ConsoleWindow
from core.host import VmConsole


class RunControls(Protocol):
    """What the window needs of a run (core.runner.RunSession has these)."""

    def console(self) -> VmConsole: ...

    def run(self) -> int: ...        # blocks until the VM stops; the exit status

    def quit(self) -> None: ...      # the user closed the window: power the VM off


class _Finished(QObject):
    done = pyqtSignal(int)


class _RunnerWindow(ConsoleWindow):
    def __init__(self, session: RunControls, title: str) -> None:
        console = session.console()
        super().__init__(console.frames, console.input, title)
        self.session = session
        self.finished = False

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if not self.finished:
            self.session.quit()
        super().closeEvent(event)


def run_with_window(session: RunControls, title: str) -> int:
    """Run the VM on a worker thread while the window shows it; returns the run's exit status."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = _RunnerWindow(session, title)
    window.resize(800, 600)
    result: dict[str, int] = {}
    finished = _Finished()

    def on_done(code: int) -> None:
        window.finished = True
        window.close()
        app.quit()

    finished.done.connect(on_done)

    def run_vm() -> None:
        result["code"] = session.run()
        finished.done.emit(result["code"])

    worker = threading.Thread(target=run_vm, name="vireo-run", daemon=True)
    window.show()
    worker.start()
    app.exec()
    worker.join(15)
    return result.get("code", 1)
