"""A path field's check by the host (issue 17: a README was accepted as the kernel, and the failure only came at
start): when the path is chosen or edited, and the typing has paused for PROBE_DEBOUNCE_MS, the host's
probe_file(path, role) runs on a worker (HostBridge.call — the GUI thread never waits on the host) and the line
under the field says what the file is, in grey, or why it cannot serve, in red; a page asks `problem` before
enabling Next.

Next may be clicked before the debounced answer (typing then clicking at once), so the wizard's Finish asks again
through `verify`, which probes at once and reports when the host has answered for the path shown.

Answers for a path the field no longer shows are dropped (each probe carries a sequence number), so a slow answer
never describes another file. A host whose service predates probe_file answers "no method": that is said in grey
and blocks nothing, as before the check existed.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from PyQt6 import sip
from PyQt6.QtCore import QObject, Qt, QTimer
from PyQt6.QtWidgets import QLineEdit, QWidget

from app.host_bridge import HostBridge
from app.widgets.wrap_label import WrapLabel
from core.host import FileProbe

PROBE_DEBOUNCE_MS = 300
GREY = "color: #666;"
RED = "color: #b3261e;"
ORANGE = "color: #b45309;"   # a warning that blocks nothing (an image another VM lists)


class FileCheck(QObject):
    """Checks the file named in `edit` as a `role` ("kernel", "initrd", "disk", "iso") on the bridge's host and shows
    the answer in `note`; `changed()` runs whenever `problem` may have changed."""

    def __init__(self, bridge: HostBridge, edit: QLineEdit, role: str, changed: Callable[[], None],
                 parent: QWidget) -> None:
        super().__init__(parent)
        self.bridge, self.edit, self.role, self.changed = bridge, edit, role, changed
        self.note = WrapLabel("", parent)
        self.note.setObjectName(f"{role}Probe")
        self.note.setWordWrap(True)
        # A wrapping label in a form may be given more height than its lines take: keep the text under the field.
        self.note.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.note.setStyleSheet(GREY)
        self.problem = ""          # the host's one line when the file cannot serve as `role`, else ""
        self.probe: FileProbe | None = None     # the host's answer for the path shown (None while unanswered)
        self.pending = False       # a probe is waiting for the typing to pause or for the host's answer
        self._seq = 0
        self._waiting: list[Callable[[], None]] = []   # verify() callers, told once the path shown is answered
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(PROBE_DEBOUNCE_MS)
        self.timer.timeout.connect(self._probe)
        edit.textChanged.connect(self._edited)

    def _show(self, text: str, problem: str = "") -> None:
        self.note.setText(text)
        self.note.setStyleSheet(RED if problem else GREY)
        self.problem = problem
        self.changed()

    def verify(self, then: Callable[[], None]) -> None:
        """Probe the path shown now, not after the pause, and run then() once the host has answered for it (or
        at once when there is nothing to ask); `problem` then holds the answer."""
        self._waiting.append(then)
        if not os.path.isabs(self.edit.text().strip()):
            self._answered()
            return
        self.pending = True
        self.timer.stop()
        self._probe()

    def _answered(self) -> None:
        waiting, self._waiting = self._waiting, []
        for then in waiting:
            then()

    def _edited(self) -> None:
        self._seq += 1           # any answer still on its way describes the old text
        self.probe = None
        path = self.edit.text().strip()
        # A relative path or an empty field is the page's own error (or optional): nothing to ask the host.
        self.pending = os.path.isabs(path)
        self._show("")
        if self.pending:
            self.timer.start()
        else:
            self.timer.stop()
            self._answered()      # nothing to ask the host about this text: a verify() waiting is done

    def _probe(self) -> None:
        path, seq, role = self.edit.text().strip(), self._seq, self.role
        host = self.bridge.host

        def done(probe: FileProbe) -> None:
            # The wizard may have been closed (and its pages deleted) while the host was answering.
            if sip.isdeleted(self):
                return
            if seq == self._seq:
                self.pending = False
                self.probe = probe
                self._show(probe.kind if probe.ok else probe.message, "" if probe.ok else probe.message)
                self._answered()

        def failed(message: str) -> None:
            if sip.isdeleted(self) or seq != self._seq:
                return
            self.pending = False
            # The host's errors about the file itself (missing, unreadable, a folder) name it first; anything
            # else (an older service without probe_file, a dropped connection) leaves the file unchecked.
            if message.startswith(path):
                self._show(message, message)
            else:
                self._show(f"Not checked by the host: {message}")
            self._answered()

        self.bridge.call(f"check {path}", lambda: host.probe_file(path, role), done, failed)
