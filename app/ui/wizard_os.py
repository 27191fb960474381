"""The New VM wizard's operating system (issue 17, "OS detection"): when the host has read the chosen ISO, its
volume ID is looked up in Debian's osinfo-db (app/osinfo.py) and the system found is shown, with the memory, CPUs
and disk size it recommends set on the next pages, as virt-manager does with libosinfo. The choice is a list of
every system the database knows, so a wrong or missing detection is changed by hand (typing any part of a
name finds it); "Generic" keeps the wizard's own defaults."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PyQt6 import sip
from PyQt6.QtCore import QObject, Qt
from PyQt6.QtWidgets import QComboBox, QCompleter

from app.osinfo import OsEntry, database, detect
from app.widgets.wrap_label import WrapLabel

if TYPE_CHECKING:
    from app.ui.wizard_media import BootPage

GENERIC = "Generic (not detected)"


class OsChoice(QObject):
    def __init__(self, page: BootPage) -> None:
        super().__init__(page)
        self.page = page
        self.entries: list[OsEntry] = []
        self.volume_id = ""             # the volume ID last looked up
        self.combo = QComboBox(page)
        self.combo.setObjectName("osChoice")
        self.combo.addItem(GENERIC, None)
        self.combo.setToolTip("Sets the memory, CPUs and disk size it recommends (osinfo-db); type part of a "
                              "name to find it")
        # Some 800 systems: typed, any part of the name finds it (Enter takes it; other text is not a choice).
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        completer = self.combo.completer()
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.combo.lineEdit().editingFinished.connect(
            lambda: self.combo.setEditText(self.combo.itemText(self.combo.currentIndex())))
        self.note = WrapLabel("Reading the list of operating systems…", page)
        self.note.setObjectName("osNote")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #666;")
        self.combo.currentIndexChanged.connect(self._chosen)
        page.wiz.bridge.call("Reading the list of operating systems", database, self._loaded,
                             lambda message: self._say(f"The list of operating systems cannot be read: {message}"))

    def _say(self, text: str) -> None:
        if not sip.isdeleted(self.note):
            self.note.setText(text)

    def chosen(self) -> OsEntry | None:
        return self.combo.currentData()

    def _loaded(self, entries: object) -> None:
        if sip.isdeleted(self.combo):
            return
        self.entries = list(entries)  # type: ignore[call-overload]
        self.combo.blockSignals(True)
        for entry in self.entries:
            self.combo.addItem(entry.name, entry)
        self.combo.blockSignals(False)
        if not self.entries:
            self._say("osinfo-db is not installed here (Debian's osinfo-db package): the wizard's own memory, "
                      "CPUs and disk size stay.")
            return
        self._say("")
        self.volume_id = ""
        self.update()

    def update(self) -> None:
        """Look up the ISO the host has just named (called whenever a file check answers)."""
        probe = self.page.iso_check.probe
        volume = probe.volume_id if probe is not None and probe.ok else ""
        if volume == self.volume_id or not self.entries:
            return
        self.volume_id = volume
        if not volume:
            # No disc the host has read (none yet, another file being checked, or not an ISO): a line about the
            # previous disc's volume ID would describe a file the field no longer names. The choice stays.
            self._say("")
            return
        found = detect(self.entries, volume)
        if found is None:
            self.combo.setCurrentIndex(0)
            self._say(f"The disc's volume ID “{volume}” is not in osinfo-db: choose its system, or keep Generic.")
            return
        self.combo.setCurrentIndex(self.combo.findText(found.name))
        self._say(f"Detected from the disc's volume ID “{volume}”; change it if it is wrong.")

    def _chosen(self) -> None:
        entry = self.chosen()
        if entry is not None:
            self.page.wiz.apply_os(entry)
