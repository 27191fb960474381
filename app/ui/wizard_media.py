"""The New VM wizard's second page: what the VM boots, for the way chosen on the first page.

  * Install from an ISO image: the ISO (which must be bootable: El Torito).
  * Import an existing disk image: the image and the bus it sits on; the firmware boots its boot loader, or, as an
    advanced choice, a kernel given here boots directly with the disk as its root (root=/dev/vda on VirtIO,
    /dev/sda on IDE).
  * Linux kernel and initrd: the kernel, initrd and command line Vireo loads itself.

Each file is checked by the host as it is chosen (app/ui/file_check.py); Next may outrun that debounced answer, so
Finish asks again (NewVmWizard.accept). An imported image another VM on the host lists is allowed but warned about
in orange, on this page and in the summary, as virt-manager warns: two running VMs writing one image corrupt it
(issue 17)."""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QCheckBox, QFormLayout, QLabel, QLineEdit, QWizardPage

from app.ui.dialogs import image_users
from app.ui.file_check import ORANGE, FileCheck
from app.ui.wizard_os import OsChoice
from app.ui.wizard_pages import SOURCE_DISK, SOURCE_ISO, SOURCE_KERNEL, bus_combo, path_field
from app.widgets.wrap_label import WrapLabel

if TYPE_CHECKING:
    from app.ui.wizard import NewVmWizard

DEFAULT_CMDLINE = "console=tty0 console=ttyS0"
_ROOT = {"virtio": "root=/dev/vda", "ide": "root=/dev/sda"}
_TITLES = {SOURCE_ISO: ("Installation media", "Step 2 of 5: the ISO image the VM boots to install from."),
           SOURCE_DISK: ("Disk image", "Step 2 of 5: the disk image the VM boots, and how it is attached."),
           SOURCE_KERNEL: ("Boot files", "Step 2 of 5: the kernel Vireo boots, its initial ramdisk and command "
                                         "line.")}


class BootPage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        self.wiz = wizard
        self._rows: dict = {}
        form = self.form = QFormLayout(self)
        self.iso = QLineEdit(self)
        self.iso.setObjectName("isoPath")
        self.iso.setPlaceholderText("an installer or live ISO image")
        self.iso_row = path_field(self, self.iso, "Choose an ISO image", "ISO images (*.iso);;All files (*)",
                                  wizard.bridge)
        form.addRow("ISO image:", self.iso_row)
        self.disk = QLineEdit(self)
        self.disk.setObjectName("diskPath")
        self.disk_row = path_field(self, self.disk, "Choose a disk image",
                                   "Disk images (*.img *.raw *.qcow2);;All files (*)", wizard.bridge)
        form.addRow("Disk image:", self.disk_row)
        self.bus = bus_combo(self, "diskBus")
        form.addRow("Disk bus:", self.bus)
        self.direct = QCheckBox("Boot a Linux kernel directly instead of the disk's boot loader (advanced)", self)
        self.direct.setObjectName("directKernel")
        form.addRow("", self.direct)
        self.kernel = QLineEdit(self)
        self.kernel.setObjectName("kernelPath")
        self.kernel_row = path_field(self, self.kernel, "Choose a kernel", "", wizard.bridge)
        form.addRow("Kernel:", self.kernel_row)
        self.initrd = QLineEdit(self)
        self.initrd.setObjectName("initrdPath")
        self.initrd.setPlaceholderText("optional")
        self.initrd_row = path_field(self, self.initrd, "Choose an initrd", "", wizard.bridge)
        form.addRow("Initrd:", self.initrd_row)
        # What each chosen file is, as the host reads it (grey), or why it cannot serve (red, and Next waits).
        self.iso_check = FileCheck(wizard.bridge, self.iso, "boot-iso", self._check, self)
        self.disk_check = FileCheck(wizard.bridge, self.disk, "disk", self._check, self)
        self.kernel_check = FileCheck(wizard.bridge, self.kernel, "kernel", self._check, self)
        self.initrd_check = FileCheck(wizard.bridge, self.initrd, "initrd", self._check, self)
        for row, check in ((self.iso_row, self.iso_check), (self.disk_row, self.disk_check),
                           (self.kernel_row, self.kernel_check), (self.initrd_row, self.initrd_check)):
            form.insertRow(form.getWidgetPosition(row)[0] + 1, "", check.note)
        self.iso_note = WrapLabel("The VM boots this image once, through the firmware; later starts boot the disk you "
                               "install to. Take the disc out afterwards in the VM's Details (CD-ROM).", self)
        self.iso_note.setWordWrap(True)
        self.iso_note.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.iso_note.setStyleSheet("color: #666;")
        form.insertRow(form.getWidgetPosition(self.iso_check.note)[0] + 1, "", self.iso_note)
        self.os_choice = OsChoice(self)
        row = form.getWidgetPosition(self.iso_note)[0] + 1
        form.insertRow(row, "Operating system:", self.os_choice.combo)
        form.insertRow(row + 1, "", self.os_choice.note)
        self.shared = QLabel(self)
        self.shared.setObjectName("diskShared")
        self.shared.setWordWrap(True)
        self.shared.setStyleSheet(ORANGE)
        form.insertRow(form.getWidgetPosition(self.disk_check.note)[0] + 1, "", self.shared)
        # Kernel messages on the screen (tty0) and on the serial port; the last console= is /dev/console, so the
        # initramfs's shell stays on ttyS0, where the Serial Console tab reads it.
        self.cmdline = QLineEdit(DEFAULT_CMDLINE, self)
        self.cmdline.setObjectName("cmdline")
        form.addRow("Command line:", self.cmdline)
        self.error = QLabel(self)
        self.error.setStyleSheet("color: #b3261e;")
        self.error.setWordWrap(True)
        form.addRow(self.error)
        for edit in (self.iso, self.kernel, self.initrd, self.disk, self.cmdline):
            edit.textChanged.connect(self._check)
        self.direct.toggled.connect(self._shown)
        self.bus.currentIndexChanged.connect(self._root)

    def source(self) -> int:
        return self.wiz.source_page.source()

    def direct_kernel(self) -> bool:
        """Whether the VM boots a kernel given here (always for the kernel way; an advanced choice on import)."""
        source = self.source()
        return source == SOURCE_KERNEL or (source == SOURCE_DISK and self.direct.isChecked())

    def initializePage(self) -> None:
        title, subtitle = _TITLES[self.source()]
        self.setTitle(title)
        self.setSubTitle(subtitle)
        self._shown()

    def _shown(self) -> None:
        source = self.source()
        rows = {w: source == SOURCE_ISO for w in (self.iso_row, self.iso_check.note, self.iso_note,
                                                  self.os_choice.combo, self.os_choice.note)}
        for w in (self.disk_row, self.disk_check.note, self.shared, self.bus, self.direct):
            rows[w] = source == SOURCE_DISK
        for w in (self.kernel_row, self.kernel_check.note, self.initrd_row, self.initrd_check.note, self.cmdline):
            rows[w] = self.direct_kernel()
        self._rows = rows
        self._tidy()
        self._root()

    def _tidy(self) -> None:
        """Show the rows of the chosen way; a line under a field only while it says something (an empty one
        would leave a gap in the form)."""
        lines = (self.iso_check.note, self.disk_check.note, self.kernel_check.note, self.initrd_check.note,
                 self.shared, self.os_choice.note)
        for widget, visible in self._rows.items():
            self.form.setRowVisible(widget, visible and (widget not in lines or bool(widget.text())))

    def _root(self) -> None:
        """An imported disk booted with a kernel given here is its root: name it for the bus chosen (a root= of the
        user's own is left alone)."""
        if self.source() != SOURCE_DISK or not self.direct.isChecked():
            return
        text, root = self.cmdline.text(), _ROOT[self.bus.currentData()]
        if re.search(r"\broot=/dev/[vs]da\b", text):
            self.cmdline.setText(re.sub(r"\broot=/dev/[vs]da\b", root, text))
        elif "root=" not in text:
            self.cmdline.setText(f"{text} {root}".strip())

    def _fields(self) -> list[tuple[str, str, bool]]:
        """(what, path, required) of each file field the chosen way shows."""
        source = self.source()
        fields = []
        if source == SOURCE_ISO:
            fields.append(("ISO image", self.iso.text().strip(), True))
        if source == SOURCE_DISK:
            fields.append(("Disk image", self.disk.text().strip(), True))
        if self.direct_kernel():
            fields += [("Kernel", self.kernel.text().strip(), True), ("Initrd", self.initrd.text().strip(), False)]
        return fields

    def problem(self) -> str:
        for what, path, _required in self._fields():
            if not path:
                continue            # an empty field keeps Next disabled (isComplete): plain enough
            if not os.path.isabs(path):
                return f"{what} {path}: give an absolute path."
            if not self.wiz.on_this_computer:
                continue            # a file on another host: its probe (FileCheck) says whether it is there
            if not os.path.isfile(path):
                return f"{what} {path}: no such file."
            if not os.access(path, os.R_OK):
                return f"{what} {path}: not readable."
        if self.direct_kernel() and len(self.cmdline.text().encode()) >= 2048:
            return "Command line: Linux takes at most 2047 bytes."
        return ""

    def shared_warning(self) -> str:
        """The orange line when the imported image is one another VM on this host lists (from the bridge's cached
        list: no host call on the GUI thread). A warning only: that VM may never run at the same time."""
        path = self.disk.text().strip()
        if self.source() != SOURCE_DISK or not os.path.isabs(path):
            return ""
        users = image_users(path, self.wiz.bridge.vms())
        if not users:
            return ""
        names = ", ".join(f"'{name}'" for name in users)
        return f"Also used by VM{'s' if len(users) > 1 else ''} {names}: two running VMs writing one image corrupt it"

    def _check(self) -> None:
        self.os_choice.update()
        self.error.setText(self.problem())
        self.shared.setText(self.shared_warning())
        self._tidy()
        self.completeChanged.emit()

    def file_checks(self) -> list[FileCheck]:
        """The host-side checks of the fields this page shows for the chosen way."""
        checks = {SOURCE_ISO: [self.iso_check], SOURCE_DISK: [self.disk_check]}.get(self.source(), [])
        if self.direct_kernel():
            checks += [self.kernel_check, self.initrd_check]
        return checks

    def isComplete(self) -> bool:
        required = all(path for _what, path, needed in self._fields() if needed)
        return required and not self.problem() and not any(check.problem for check in self.file_checks())

