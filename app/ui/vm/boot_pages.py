"""The VM window's Details pages for how a VM boots (issue 12): Boot Options — the boot order (CD-ROM, hard disk,
and the direct kernel when one is given), "boot from the CD-ROM once", the firmware (Debian's SeaBIOS or a file),
and direct kernel boot's kernel, initrd and command line — and CD-ROM — each drive's ISO image with Change…,
Eject and Remove Drive, and Add CD-ROM Drive.

Each page loads from a definition and writes its fields back into the one DetailsEditor applies through the Host
(app/ui/vm/details.py). While the VM runs, the discs and the boot order stay editable — the host keeps them for the
next start (core.config.running_vm_takes) — and the rest is locked. An ISO typed or chosen is checked by the host
(app/ui/file_check.py) and named under its field; a file that is not an ISO image keeps Apply disabled."""
from __future__ import annotations

import os
from pathlib import Path

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.host_bridge import HostBridge
from app.ui.dialogs import show_error
from app.ui.file_check import FileCheck
from app.ui.host_file_dialog import choose_host_file
from app.widgets.boot_order import BootOrderList
from core.config import IDE_POSITIONS, BootConfig, CdromConfig, VmConfig
from core.host import HostError

DEBIAN_SEABIOS = "SeaBIOS (Debian)"
ISO_FILTER = "ISO images (*.iso);;All files (*)"


def note(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    # A wrapping label in a form may get more height than its lines: keep the text at the top of it.
    label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
    label.setStyleSheet("color: #666;")
    return label


def choose_file(parent: QWidget, edit: QLineEdit, caption: str, name_filter: str, bridge: HostBridge) -> None:
    """A file on the VM's host (this computer's file dialog, or its SSH host's files over SFTP), starting at the
    field's file; the choice replaces the field's text."""
    try:
        choose_host_file(bridge, parent, caption, name_filter, edit.text().strip(), edit.setText)
    except HostError as exc:
        show_error(parent, "Browsing", str(exc))


def path_row(edit: QLineEdit, caption: str, parent: QWidget, bridge: HostBridge, label: str = "Browse…") -> QWidget:
    row = QWidget(parent)
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    button = QPushButton(label, row)
    button.clicked.connect(lambda: choose_file(parent, edit, caption, "", bridge))
    lay.addWidget(button)
    row.button = button
    return row


def _page(parent: QWidget, title: str) -> tuple[QVBoxLayout, QFormLayout]:
    outer = QVBoxLayout(parent)
    outer.addWidget(QLabel(f"<h3>{title}</h3>"))
    form = QFormLayout()
    # Every field as wide as the page: a wrapping note too (it would otherwise wrap at its own narrow width).
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    outer.addLayout(form)
    return outer, form


class BootOptionsPage(QWidget):
    changed = pyqtSignal()

    def __init__(self, bridge: HostBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        outer, form = _page(self, "Boot Options")
        self.order = BootOrderList(self)
        form.addRow("Boot order:", self.order)
        self.cd_once = QCheckBox("Boot from the CD-ROM once, at the next start (then in this order)", self)
        self.cd_once.setObjectName("cdOnce")
        form.addRow("", self.cd_once)
        self.order_note = note()
        form.addRow("", self.order_note)
        self.firmware = QComboBox(self)
        self.firmware.setObjectName("firmware")
        self.firmware.addItem(DEBIAN_SEABIOS, "")
        self.firmware.addItem("Another firmware image…", "file")
        form.addRow("Firmware:", self.firmware)
        self.firmware_path = QLineEdit(self)
        self.firmware_path.setObjectName("firmwarePath")
        self.firmware_path.setPlaceholderText("a SeaBIOS image, e.g. /usr/share/seabios/bios-256k.bin")
        self.firmware_row = path_row(self.firmware_path, "Choose a firmware image", self, bridge)
        form.addRow("", self.firmware_row)

        kernel_box = QGroupBox("Direct kernel boot", self)
        kform = QFormLayout(kernel_box)
        kform.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        kform.addRow(note("Vireo loads a Linux bzImage or Multiboot kernel and its initrd itself, without the "
                          "firmware: the fastest start. Leave the kernel empty to boot the CD-ROM or the disk."))
        self.kernel = QLineEdit(kernel_box)
        self.kernel.setObjectName("kernelEdit")
        self.kernel.setPlaceholderText("none: boot through the firmware")
        self.kernel_row = path_row(self.kernel, "Choose a kernel", kernel_box, bridge)
        kform.addRow("Kernel:", self.kernel_row)
        self.initrd = QLineEdit(kernel_box)
        self.initrd.setPlaceholderText("none")
        self.initrd_row = path_row(self.initrd, "Choose an initrd", kernel_box, bridge)
        kform.addRow("Initrd:", self.initrd_row)
        self.cmdline = QLineEdit(kernel_box)
        self.cmdline.setPlaceholderText("console=ttyS0")
        kform.addRow("Command line:", self.cmdline)
        outer.addWidget(kernel_box)
        outer.addStretch(1)

        self.order.changed.connect(self._changed)
        self.cd_once.toggled.connect(self._changed)
        self.firmware.currentIndexChanged.connect(self._firmware_shown)
        for edit in (self.firmware_path, self.initrd, self.cmdline):
            edit.textChanged.connect(self._changed)
        self.kernel.textChanged.connect(self._kernel_changed)
        self._firmware_shown()

    def _changed(self, *_: object) -> None:
        self._explain()
        self.changed.emit()

    def _firmware_shown(self) -> None:
        self.firmware_row.setVisible(self.firmware.currentData() == "file")
        self._changed()

    def _kernel_changed(self) -> None:
        # A kernel given is a boot device, put first; taking it away removes its row.
        if self.kernel.text().strip():
            self.order.add_device("kernel")
        else:
            self.order.remove_device("kernel")
        self._changed()

    def _explain(self) -> None:
        """What the next start (and, with boot-once, the starts after it) will do, in words."""
        order = self.order.order()
        if not order:
            self.order_note.setText("")
            return
        if self.cd_once.isChecked():
            first = ["cd"] + [d for d in order if d != "cd"]
            self.order_note.setText(f"Next start: {self._words(first)}. Later starts: {self._words(order)}.")
        else:
            self.order_note.setText(f"Each start: {self._words(order)}.")

    def _words(self, devices: list[str]) -> str:
        if devices[0] == "kernel" and self.firmware.currentData() != "file":
            return "the kernel, loaded directly (no firmware runs)"
        words = {"cd": "the CD-ROM", "disk": "the hard disk", "kernel": "the kernel"}
        return "the firmware boots " + ", else ".join(words[d] for d in devices)

    # -- definition ------------------------------------------------------------------------------------------
    def load(self, boot: BootConfig) -> None:
        devices = ["cd", "disk"] + (["kernel"] if boot.kernel else [])
        self.order.set_devices(devices, boot.effective_order())
        self.cd_once.setChecked(boot.cd_once)
        self.firmware.setCurrentIndex(1 if boot.firmware else 0)
        self.firmware_path.setText(boot.firmware)
        self.kernel.blockSignals(True)          # the order was just set from the definition itself
        self.kernel.setText(boot.kernel)
        self.kernel.blockSignals(False)
        self.initrd.setText(boot.initrd)
        self.cmdline.setText(boot.cmdline)
        self._firmware_shown()

    def apply_to(self, cfg: VmConfig, saved: VmConfig) -> None:
        """Write the page into `cfg`. The order shown for a definition with no order of its own is kept empty
        while it is what empty means (so an untouched page changes nothing in the definition)."""
        boot = cfg.boot
        boot.kernel = self.kernel.text().strip()
        boot.initrd = self.initrd.text().strip()
        boot.cmdline = self.cmdline.text()
        order = self.order.order()
        boot.order = [] if not saved.boot.order and order == boot.effective_order() and \
            boot.kernel == saved.boot.kernel else order
        boot.cd_once = self.cd_once.isChecked()
        boot.firmware = self.firmware_path.text().strip() if self.firmware.currentData() == "file" else ""

    def problem(self) -> str:
        if not self.order.order():
            return "Boot order: check at least one device to boot from."
        if self.firmware.currentData() == "file":
            path = self.firmware_path.text().strip()
            if not path:
                return "Firmware: choose the image file, or SeaBIOS (Debian)."
            if not os.path.isabs(path):
                return f"Firmware {path}: give an absolute path."
        return ""

    def set_active(self, active: bool) -> None:
        """A running VM takes a new boot order for its next start; its firmware and kernel wait for a shutdown."""
        for w in (self.firmware, self.firmware_row, self.kernel_row, self.initrd_row, self.cmdline):
            w.setEnabled(not active)

    def describe(self, cdroms: list[CdromConfig], disks: list[str]) -> None:
        """What the CD-ROM and hard disk rows stand for, from the other pages' current contents."""
        discs = [Path(c.path).name for c in cdroms if c.path]
        self.order.set_detail("cd", ", ".join(discs) if discs else ("no disc" if cdroms else "no drive"))
        self.order.set_detail("disk", ", ".join(Path(d).name for d in disks) if disks else "no disk")


class _Drive(QGroupBox):
    """One CD-ROM drive: its ISO image (typed, or chosen with Change…), Eject, and Remove Drive."""

    def __init__(self, page: CdromPage, number: int, path: str) -> None:
        super().__init__(f"CD-ROM {number} (IDE)", page)
        self.setObjectName(f"cdrom{number}")
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form = form
        self.edit = QLineEdit(self)
        self.edit.setObjectName("isoPath")
        self.edit.setPlaceholderText("no disc")
        self.change = QPushButton("Change…", self)
        self.change.setObjectName("changeIso")
        self.eject = QPushButton("Eject", self)
        self.eject.setObjectName("ejectIso")
        row = QHBoxLayout()
        row.addWidget(self.edit, 1)
        row.addWidget(self.change)
        row.addWidget(self.eject)
        form.addRow("ISO image:", row)
        self.check = FileCheck(page.bridge, self.edit, "iso", lambda: self._checked(page), self)
        form.addRow("", self.check.note)
        form.setRowVisible(self.check.note, False)
        self.remove = QPushButton("Remove Drive", self)
        self.remove.setObjectName("removeDrive")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.remove)
        form.addRow(buttons)
        self.edit.setText(path)
        self.change.clicked.connect(lambda: choose_file(self, self.edit, "Choose an ISO image", ISO_FILTER,
                                                             page.bridge))
        self.eject.clicked.connect(self.edit.clear)
        self.edit.textChanged.connect(self._eject_shown)
        self.edit.textChanged.connect(page._changed)
        self._eject_shown()

    def _checked(self, page: CdromPage) -> None:
        # The host's line under the field only while there is one: an empty drive shows no gap.
        self.form.setRowVisible(self.check.note, bool(self.check.note.text()))
        page._changed()

    def _eject_shown(self) -> None:
        self.eject.setEnabled(bool(self.edit.text().strip()))

    def problem(self, number: int) -> str:
        path = self.edit.text().strip()
        if path and not os.path.isabs(path):
            return f"CD-ROM {number} {path}: give an absolute path."
        return self.check.problem


class CdromPage(QWidget):
    changed = pyqtSignal()

    def __init__(self, bridge: HostBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.drives: list[_Drive] = []
        self.active = False
        self.ide_disks = 0
        outer, _form = _page(self, "CD-ROM")
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        inner = QWidget(scroll)
        self.box = QVBoxLayout(inner)
        self.box.setContentsMargins(0, 0, 0, 0)
        self.empty = note("No CD-ROM drive. Add one to install from an ISO image or to read a disc.")
        self.box.addWidget(self.empty)
        bottom = QHBoxLayout()
        self.add = QPushButton("Add CD-ROM Drive", inner)
        self.add.setObjectName("addCdrom")
        self.add.clicked.connect(self.add_drive)
        bottom.addWidget(self.add)
        bottom.addStretch(1)
        self.box.addLayout(bottom)
        self.running_note = note("")
        self.box.addWidget(self.running_note)
        self.box.addStretch(1)
        scroll.setWidget(inner)
        outer.addWidget(scroll, 1)

    def _changed(self, *_: object) -> None:
        self.changed.emit()

    def load(self, cdroms: list[CdromConfig]) -> None:
        for drive in self.drives:
            drive.setParent(None)
            drive.deleteLater()
        self.drives = []
        for cd in cdroms:
            self._append(cd.path)
        self._refresh()

    def _append(self, path: str) -> _Drive:
        drive = _Drive(self, len(self.drives) + 1, path)
        drive.remove.clicked.connect(lambda: self.remove_drive(drive))
        self.box.insertWidget(len(self.drives), drive)
        self.drives.append(drive)
        return drive

    def add_drive(self) -> None:
        """A new empty drive (IDE: disks on bus IDE and CD-ROMs share IDE_POSITIONS places)."""
        self._append("")
        self._refresh()
        self.changed.emit()

    def remove_drive(self, drive: _Drive) -> None:
        """Take the drive out of the VM, its disc with it (what is left after an install)."""
        paths = [d.edit.text() for d in self.drives if d is not drive]
        self.load([CdromConfig(p) for p in paths])
        self.changed.emit()

    def cdroms(self) -> list[CdromConfig]:
        return [CdromConfig(d.edit.text().strip()) for d in self.drives]

    def set_ide_disks(self, count: int) -> None:
        """How many of the VM's disks (as the Disks page shows them) sit on IDE."""
        self.ide_disks = count
        self._refresh()

    def set_active(self, active: bool) -> None:
        """A running VM takes another disc for its next start; drives come and go only while it is shut off."""
        self.active = active
        self._refresh()

    def _refresh(self) -> None:
        self.empty.setVisible(not self.drives)
        room = IDE_POSITIONS - self.ide_disks - len(self.drives)
        self.add.setEnabled(not self.active and room > 0)
        self.add.setToolTip("" if room > 0 else f"The IDE controller holds {IDE_POSITIONS} drives (IDE disks and "
                                                "CD-ROMs): remove one, or put a disk on VirtIO")
        for drive in self.drives:
            drive.remove.setEnabled(not self.active)
        self.running_note.setText("The VM is running: a disc changed now is used from its next start."
                                  if self.active and self.drives else "")

    def problem(self) -> str:
        for number, drive in enumerate(self.drives, 1):
            found = drive.problem(number)
            if found:
                return found
        return ""

    def pending(self) -> bool:
        return any(d.check.pending for d in self.drives)

