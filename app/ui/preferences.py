"""Preferences (issue 17, "What to add"), as virt-manager's Preferences dialog has them: where new disk images go on
this computer, the accelerator a new VM asks for, how the console scales and which keys release its grab, whether
Force Off asks first, and how often the graphs sample the VMs.

They live in the manager's QSettings (section "preferences/"), the same store as the windows' geometry; the main
window names that store with use() and every window reads current(), so a change applies to what opens next (and
the graphs' poll interval to every host at once, app/ui/main_window.py)."""
from __future__ import annotations

import os

from PyQt6.QtCore import QSettings, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.widgets.console_keys import GRAB_COMBOS, grab_label
from app.widgets.console_scale import KEEP, SCALE_MODES
from app.widgets.range_spin import RangeDoubleSpinBox
from core.config import ACCELERATORS, images_dir

ACCEL_LABELS = {"auto": "Automatic", "kvm": "KVM", "software": "Software CPU"}
POLL_DEFAULT_MS, POLL_MIN_MS, POLL_MAX_MS = 1000, 250, 60_000


class Preferences:
    """Typed access to the preferences in `settings`; a value missing or malformed reads as its default."""

    def __init__(self, settings: QSettings) -> None:
        self.settings = settings

    def _get(self, key: str, default: str) -> str:
        value = self.settings.value(f"preferences/{key}", default)
        return value if isinstance(value, str) else default

    def _set(self, key: str, value: object) -> None:
        self.settings.setValue(f"preferences/{key}", value)

    @property
    def storage_folder(self) -> str:
        """Where the New VM wizard puts new disk images on this computer ("" : the service's images folder)."""
        return self._get("storage_folder", "")

    @storage_folder.setter
    def storage_folder(self, value: str) -> None:
        self._set("storage_folder", value)

    @property
    def accelerator(self) -> str:
        value = self._get("accelerator", "auto")
        return value if value in ACCELERATORS else "auto"

    @accelerator.setter
    def accelerator(self, value: str) -> None:
        self._set("accelerator", value)

    @property
    def console_scale(self) -> str:
        value = self._get("console_scale", KEEP)
        return value if value in dict(SCALE_MODES) else KEEP

    @console_scale.setter
    def console_scale(self, value: str) -> None:
        self._set("console_scale", value)

    @property
    def grab_keys(self) -> str:
        value = self._get("grab_keys", GRAB_COMBOS[0])
        return value if value in GRAB_COMBOS else GRAB_COMBOS[0]

    @grab_keys.setter
    def grab_keys(self, value: str) -> None:
        self._set("grab_keys", value)

    @property
    def confirm_force_off(self) -> bool:
        return self._get("confirm_force_off", "true") != "false"

    @confirm_force_off.setter
    def confirm_force_off(self, value: bool) -> None:
        self._set("confirm_force_off", "true" if value else "false")

    @property
    def poll_interval_ms(self) -> int:
        try:
            value = int(self._get("poll_interval_ms", str(POLL_DEFAULT_MS)))
        except ValueError:
            return POLL_DEFAULT_MS
        return min(max(value, POLL_MIN_MS), POLL_MAX_MS)

    @poll_interval_ms.setter
    def poll_interval_ms(self, value: int) -> None:
        self._set("poll_interval_ms", str(int(value)))


_current: Preferences | None = None


def use(settings: QSettings) -> Preferences:
    """Make `settings` the store every window reads its preferences from (the main window's)."""
    global _current
    _current = Preferences(settings)
    return _current


def current() -> Preferences:
    """The preferences in effect: the main window's store, or the application's default QSettings."""
    return _current if _current is not None else Preferences(QSettings())


class PreferencesDialog(QDialog):
    """Edit `prefs`; OK writes them and emits applied()."""

    applied = pyqtSignal()

    def __init__(self, prefs: Preferences, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prefs = prefs
        self.setObjectName("preferencesDialog")
        self.setWindowTitle("Preferences")
        self.setMinimumWidth(600)     # the storage folder's path is the longest field: show it whole
        lay = QVBoxLayout(self)
        form = QFormLayout()
        folder_row = QWidget(self)
        row = QHBoxLayout(folder_row)
        row.setContentsMargins(0, 0, 0, 0)
        self.storage = QLineEdit(prefs.storage_folder, self)
        self.storage.setObjectName("storageFolder")
        self.storage.setPlaceholderText(str(images_dir()))
        self.storage.setToolTip("On this computer; a VM made on an SSH host gets its disk in that host's folder")
        row.addWidget(self.storage, 1)
        browse = QPushButton("Browse…", folder_row)
        browse.setObjectName("browseStorage")
        browse.clicked.connect(self._browse)
        row.addWidget(browse)
        form.addRow("New disk images &go to:", folder_row)
        self.storage_error = QLabel(self)
        self.storage_error.setObjectName("storageError")
        self.storage_error.setStyleSheet("color: #b3261e;")
        self.storage_error.hide()
        form.addRow("", self.storage_error)
        self.accel = QComboBox(self)
        self.accel.setObjectName("defaultAccel")
        for value in ACCELERATORS:
            self.accel.addItem(ACCEL_LABELS.get(value, value), value)
        self.accel.setCurrentIndex(self.accel.findData(prefs.accelerator))
        form.addRow("New VMs &use:", self.accel)
        self.scale = QComboBox(self)
        self.scale.setObjectName("consoleScale")
        for value, label in SCALE_MODES:
            self.scale.addItem(label, value)
        self.scale.setCurrentIndex(self.scale.findData(prefs.console_scale))
        form.addRow("Console &scaling:", self.scale)
        self.grab_keys = QComboBox(self)
        self.grab_keys.setObjectName("grabKeys")
        for value in GRAB_COMBOS:
            self.grab_keys.addItem(grab_label(value), value)
        self.grab_keys.setCurrentIndex(self.grab_keys.findData(prefs.grab_keys))
        form.addRow("&Grab keys:", self.grab_keys)
        self.confirm_force_off = QCheckBox("Ask before Force Off", self)
        self.confirm_force_off.setObjectName("confirmForceOff")
        self.confirm_force_off.setChecked(prefs.confirm_force_off)
        form.addRow("Confirmations:", self.confirm_force_off)
        self.poll = RangeDoubleSpinBox("Graph interval", self)
        self.poll.setObjectName("pollInterval")
        self.poll.setDecimals(2)
        self.poll.setSuffix(" s")
        self.poll.setSingleStep(0.25)
        self.poll.setAllowedRange(POLL_MIN_MS / 1000, POLL_MAX_MS / 1000)
        self.poll.setValue(prefs.poll_interval_ms / 1000)
        form.addRow("&Update graphs every:", self.poll)
        form.addRow("", self.poll.error)
        lay.addLayout(form)
        hint = QLabel("Console and wizard settings apply to windows opened from now on.", self)
        hint.setStyleSheet("color: #666;")
        hint.setWordWrap(True)
        lay.addWidget(hint)
        lay.addStretch(1)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self.poll.problemChanged.connect(self._check)
        self.storage.textChanged.connect(self._check)

    def _check(self, *_: object) -> None:
        # The service makes the image at the path the wizard gives: a relative one would land in its own folder.
        folder = self.storage.text().strip()
        bad = f"{folder}: give an absolute path (or leave it empty)." if folder and not os.path.isabs(folder) else ""
        self.storage_error.setText(bad)
        self.storage_error.setVisible(bool(bad))
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(not bad and not self.poll.problem())

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "New disk images go to",
                                                  self.storage.text() or str(images_dir()))
        if folder:
            self.storage.setText(folder)

    def accept(self) -> None:
        prefs = self.prefs
        prefs.storage_folder = self.storage.text().strip()
        prefs.accelerator = self.accel.currentData()
        prefs.console_scale = self.scale.currentData()
        prefs.grab_keys = self.grab_keys.currentData()
        prefs.confirm_force_off = self.confirm_force_off.isChecked()
        prefs.poll_interval_ms = round(self.poll.value() * 1000)
        prefs.settings.sync()
        super().accept()
        self.applied.emit()
