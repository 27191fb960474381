"""`main.py run --display window`: the headless runner's VM shown in a bare console window (no manager).

The VM runs exactly as without a window (serial console on the terminal, same exit statuses); the window shows
its VGA screen and sends keyboard and mouse input to its i8042. Closing the window powers the VM off (exit 1, as
quitting from the console does); when the guest stops on its own, the window closes.
"""
from __future__ import annotations

import argparse
import sys
import threading

from PyQt6.QtCore import QObject, pyqtSignal
from PyQt6.QtWidgets import QApplication

from app.widgets.console import ConsoleWindow
from core.display.renderer import Renderer
from core.keymap import Ps2InputSink
from core.runner import RunSession, prepare


class _Finished(QObject):
    done = pyqtSignal(int)


class _RunnerWindow(ConsoleWindow):
    def __init__(self, session: RunSession, title: str) -> None:
        super().__init__(Renderer(session.machine.vga), Ps2InputSink(session.machine.i8042), title)
        self.session = session
        self.finished = False

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if not self.finished:
            self.session.quit()
        super().closeEvent(event)


def run_with_window(args: argparse.Namespace) -> int:
    session = prepare(args)
    if isinstance(session, int):
        return session
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = _RunnerWindow(session, f"Vireo — {args.kernel}")
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
