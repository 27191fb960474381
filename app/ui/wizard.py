"""The New VM wizard: (1) how to install — a Linux kernel + initrd booted directly, an existing disk image, or an
ISO/disk through firmware (greyed, with the reason, until the engine has BIOS boot); (2) the boot files;
(3) memory and CPUs within the host's limits; (4) storage — a new disk image, with progress for long work, or
none; (5) name, accelerator, network, "Customize before install". Finish creates the disk, defines the VM
through the Host, then starts it and opens its console (or opens Details when customizing first).

Each boot file is checked by the host as it is chosen (app/ui/file_check.py); Next may outrun that debounced
answer, so Finish asks again and refuses, with the host's line, a file that cannot serve. An imported image another
VM on the host lists is allowed but warned about in orange, on its page and in the summary, as virt-manager warns:
two running VMs writing one image corrupt it (issue 17)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from app.host_bridge import HostBridge
from app.icons import app_icon
from app.ui.accel_choice import fill_accel_combo
from app.ui.dialogs import image_users
from app.ui.file_check import ORANGE, FileCheck
from app.widgets.range_spin import RangeDoubleSpinBox, RangeSpinBox
from app.widgets.text import as_sentence
from core.config import (
    NETWORK_MODES,
    BootConfig,
    ConfigError,
    DiskConfig,
    NetworkConfig,
    VmConfig,
    images_dir,
)
from core.host import HostError

SOURCE_KERNEL, SOURCE_DISK, SOURCE_FIRMWARE = 0, 1, 2
NO_FIRMWARE = "needs BIOS boot, not implemented yet"
DEFAULT_CMDLINE = "console=tty0 console=ttyS0"


def _path_field(page: QWizardPage, edit: QLineEdit, caption: str, name_filter: str = "") -> QWidget:
    row = QWidget(page)
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    button = QPushButton("Browse…", row)

    def browse() -> None:
        start = edit.text() or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(page, caption, start, name_filter)
        if path:
            edit.setText(path)

    button.clicked.connect(browse)
    lay.addWidget(button)
    return row


def _note(text: str, parent: QWidget) -> QLabel:
    label = QLabel(text, parent)
    label.setWordWrap(True)
    label.setStyleSheet("color: #666;")
    return label


class SourcePage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        self.setTitle("Create a new virtual machine")
        self.setSubTitle("Step 1 of 5: choose how the operating system gets installed or booted.")
        lay = QVBoxLayout(self)
        self.group = QButtonGroup(self)
        self.kernel = QRadioButton("Linux kernel and initrd (direct boot)", self)
        self.disk = QRadioButton("Import an existing disk image", self)
        self.firmware = QRadioButton("Boot an ISO image or disk through firmware", self)
        for i, (button, note) in enumerate((
                (self.kernel, "Vireo loads a kernel (bzImage or Multiboot) and an initrd itself — fastest start."),
                (self.disk, "Use a disk image you already have; until BIOS boot exists a kernel you give boots it."),
                (self.firmware, ""))):
            self.group.addButton(button, i)
            lay.addWidget(button)
            if note:
                n = _note(note, self)
                n.setContentsMargins(24, 0, 0, 8)
                lay.addWidget(n)
        caps = wizard.bridge.capabilities
        self.firmware.setEnabled(caps.firmware_boot)
        self.firmware_note = _note("" if caps.firmware_boot else f"Not available: {NO_FIRMWARE}.", self)
        self.firmware_note.setObjectName("firmwareNote")
        self.firmware_note.setContentsMargins(24, 0, 0, 8)
        lay.addWidget(self.firmware_note)
        if not caps.firmware_boot:
            self.firmware.setToolTip(NO_FIRMWARE)
        lay.addStretch(1)
        self.kernel.setChecked(True)

    def source(self) -> int:
        return self.group.checkedId()

    def nextId(self) -> int:
        return 1


class BootPage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        self.wiz = wizard
        self.setTitle("Boot files")
        self.setSubTitle("Step 2 of 5: the kernel Vireo boots, its initial ramdisk and command line.")
        form = QFormLayout(self)
        self.disk = QLineEdit(self)
        self.disk.setObjectName("diskPath")
        self.disk_row = _path_field(self, self.disk, "Choose a disk image",
                                    "Disk images (*.img *.raw *.qcow2);;All files (*)")
        form.addRow("Disk image:", self.disk_row)
        self.kernel = QLineEdit(self)
        self.kernel.setObjectName("kernelPath")
        form.addRow("Kernel:", _path_field(self, self.kernel, "Choose a kernel"))
        self.initrd = QLineEdit(self)
        self.initrd.setObjectName("initrdPath")
        self.initrd.setPlaceholderText("optional")
        form.addRow("Initrd:", _path_field(self, self.initrd, "Choose an initrd"))
        # What each chosen file is, as the host reads it (grey), or why it cannot serve (red, and Next waits).
        self.disk_check = FileCheck(wizard.bridge, self.disk, "disk", self._check, self)
        self.kernel_check = FileCheck(wizard.bridge, self.kernel, "kernel", self._check, self)
        self.initrd_check = FileCheck(wizard.bridge, self.initrd, "initrd", self._check, self)
        form.insertRow(form.getWidgetPosition(self.disk_row)[0] + 1, "", self.disk_check.note)
        form.insertRow(form.getWidgetPosition(self.kernel)[0] + 1, "", self.kernel_check.note)
        form.insertRow(form.getWidgetPosition(self.initrd)[0] + 1, "", self.initrd_check.note)
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
        for edit in (self.kernel, self.initrd, self.disk, self.cmdline):
            edit.textChanged.connect(self._check)

    def initializePage(self) -> None:
        importing = self.wiz.source_page.source() == SOURCE_DISK
        self.disk_row.setVisible(importing)
        self.layout().labelForField(self.disk_row).setVisible(importing)
        self.disk_check.note.setVisible(importing)
        self.shared.setVisible(importing)
        if importing and "root=" not in self.cmdline.text():
            self.cmdline.setText((self.cmdline.text() + " root=/dev/vda").strip())
        self._check()

    def problem(self) -> str:
        checks = [("Kernel", self.kernel.text().strip(), True), ("Initrd", self.initrd.text().strip(), False)]
        if self.wiz.source_page.source() == SOURCE_DISK:
            checks.insert(0, ("Disk image", self.disk.text().strip(), True))
        for what, path, required in checks:
            if not path:
                if required:
                    return f"{what}: choose a file." if what != "Kernel" else ""
                continue
            if not os.path.isabs(path):
                return f"{what} {path}: give an absolute path."
            if not os.path.isfile(path):
                return f"{what} {path}: no such file."
            if not os.access(path, os.R_OK):
                return f"{what} {path}: not readable."
        if len(self.cmdline.text().encode()) >= 2048:
            return "Command line: Linux takes at most 2047 bytes."
        return ""

    def shared_warning(self) -> str:
        """The orange line when the imported image is one another VM on this host lists (from the bridge's cached
        list: no host call on the GUI thread). A warning only: that VM may never run at the same time."""
        path = self.disk.text().strip()
        if self.wiz.source_page.source() != SOURCE_DISK or not os.path.isabs(path):
            return ""
        users = image_users(path, self.wiz.bridge.vms())
        if not users:
            return ""
        names = ", ".join(f"'{name}'" for name in users)
        return f"Also used by VM{'s' if len(users) > 1 else ''} {names}: two running VMs writing one image corrupt it"

    def _check(self) -> None:
        self.error.setText(self.problem())
        self.shared.setText(self.shared_warning())
        self.completeChanged.emit()

    def file_checks(self) -> list[FileCheck]:
        """The host-side checks of the fields this page shows."""
        checks = [self.kernel_check, self.initrd_check]
        if self.wiz.source_page.source() == SOURCE_DISK:
            checks.insert(0, self.disk_check)
        return checks

    def isComplete(self) -> bool:
        return (bool(self.kernel.text().strip()) and not self.problem()
                and not any(check.problem for check in self.file_checks()))


class ResourcesPage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        host = wizard.bridge.host_info     # the wizard opens once the facts are read
        self.setTitle("Memory and CPUs")
        self.setSubTitle("Step 3 of 5: how much of this host the VM may use.")
        form = QFormLayout(self)
        # Out-of-range input stays visible, with the range, and keeps Next disabled (issue 17, defect 10).
        self.memory = RangeSpinBox("Memory", self)
        self.memory.setObjectName("memory")
        self.memory.setSingleStep(128)
        self.memory.setSuffix(" MiB")
        self.memory.setAllowedRange(16, host.memory_mib, f"this host's {host.memory_mib / 1024:.1f} GiB")
        self.memory.setValue(min(1024, host.memory_mib // 2))
        form.addRow("Memory:", self.memory)
        form.addRow("", self.memory.error)
        form.addRow("", _note(f"Up to {host.memory_mib} MiB on this host.", self))
        self.cpus = RangeSpinBox("CPUs", self, countable=True)
        self.cpus.setObjectName("cpus")
        self.cpus.setAllowedRange(1, host.cpus, f"this host's {host.cpus} logical CPUs")
        self.cpus.setValue(1)
        form.addRow("CPUs:", self.cpus)
        form.addRow("", self.cpus.error)
        form.addRow("", _note(f"Up to {host.cpus} on this host ({host.cpu_model}).", self))
        for spin in (self.memory, self.cpus):
            spin.problemChanged.connect(self.completeChanged)

    def isComplete(self) -> bool:
        return not self.memory.problem() and not self.cpus.problem()


class StoragePage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        self.wiz = wizard
        self.setTitle("Storage")
        self.setSubTitle("Step 4 of 5: a new disk for the VM, or none.")
        lay = QVBoxLayout(self)
        self.none = QRadioButton("No new disk", self)
        self.create = QRadioButton("Create a disk image for this virtual machine", self)
        self.create.setObjectName("createDisk")
        self.none.setChecked(True)
        lay.addWidget(self.none)
        lay.addWidget(self.create)
        form = QFormLayout()
        form.setContentsMargins(24, 0, 0, 0)
        self.size = RangeDoubleSpinBox("Disk size", self)
        self.size.setObjectName("diskSize")
        self.size.setDecimals(1)
        self.size.setSuffix(" GiB")
        self.size.setAllowedRange(0.1, 16384)
        self.size.setValue(20)
        form.addRow("Size:", self.size)
        form.addRow("", self.size.error)
        self.size.problemChanged.connect(self.completeChanged)
        self.format = QComboBox(self)
        self.format.addItem("raw", "raw")
        self.format.addItem("qcow2 (thin: grows as the guest writes)", "qcow2")
        form.addRow("Format:", self.format)
        self.preallocate = QCheckBox("Allocate the whole disk now (slower to create, no surprises later)", self)
        form.addRow("", self.preallocate)
        self.where = _note("", self)
        form.addRow("", self.where)
        lay.addLayout(form)
        if not wizard.bridge.capabilities.disks:
            lay.addWidget(_note("The engine does not attach disks to the machine yet; a disk made here is kept in "
                                "the definition and attached once it does.", self))
        lay.addStretch(1)
        self.create.toggled.connect(self._toggle)
        self.format.currentIndexChanged.connect(self._format_changed)
        self._toggle(False)

    def initializePage(self) -> None:
        self.where.setText(f"Created in {images_dir()}")

    def _toggle(self, on: bool) -> None:
        for w in (self.size, self.format):
            w.setEnabled(on)
        self._format_changed()
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        # The size only matters when a disk is made; out of range it keeps Next disabled.
        return not (self.create.isChecked() and self.size.problem())

    def _format_changed(self) -> None:
        # Preallocation is a raw-image choice; a qcow2 image allocates clusters as the guest writes.
        raw = self.format.currentData() == "raw"
        if not raw:
            self.preallocate.setChecked(False)
        self.preallocate.setEnabled(self.create.isChecked() and raw)


class FinishPage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        self.wiz = wizard
        self.setTitle("Ready to create the virtual machine")
        self.setSubTitle("Step 5 of 5: name it and check the summary.")
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.name = QLineEdit(self)
        self.name.setObjectName("vmName")
        form.addRow("Name:", self.name)
        self.accel = QComboBox(self)
        self.accel.setObjectName("accel")
        fill_accel_combo(self.accel, wizard.bridge)
        form.addRow("Accelerator:", self.accel)
        self.accel_note = _note("", self)
        form.addRow("", self.accel_note)
        self.network = QComboBox(self)
        for mode in NETWORK_MODES:
            self.network.addItem({"none": "No network", "user": "User-mode NAT"}[mode], mode)
        if not wizard.bridge.capabilities.network:
            self.network.model().item(self.network.findData("user")).setEnabled(False)
            self.network.setToolTip("The engine has no network card yet")
        form.addRow("Network:", self.network)
        lay.addLayout(form)
        self.summary = QLabel(self)
        self.summary.setObjectName("summary")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("QLabel { background: palette(base); border: 1px solid palette(mid); "
                                   "padding: 8px; }")
        lay.addWidget(self.summary)
        self.customize = QCheckBox("Customize configuration before install", self)
        self.customize.setObjectName("customize")
        lay.addWidget(self.customize)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("progress")
        self.progress.hide()
        lay.addWidget(self.progress)
        self.error = QLabel(self)
        self.error.setObjectName("finishError")
        self.error.setStyleSheet("color: #b3261e;")
        self.error.setWordWrap(True)
        lay.addWidget(self.error)
        lay.addStretch(1)
        self.name.textChanged.connect(self._update)
        self.accel.currentIndexChanged.connect(self._update)
        self.network.currentIndexChanged.connect(self._update)

    def initializePage(self) -> None:
        if not self.name.text():
            self.name.setText(self.wiz.suggest_name())
        self._update()

    def _update(self) -> None:
        try:
            name, why = self.wiz.bridge.accel_preview(self.accel.currentData())
            shown = {"kvm": "KVM", "software": "the software CPU"}.get(name, name)
            self.accel_note.setText(f"Uses {shown} on this host: {why}." if name else why)
        except HostError as exc:
            self.accel_note.setText(f"<span style='color:#b3261e'>{_html(as_sentence(str(exc)))}</span>")
        cfg = self.wiz.config()
        # Every disk the VM gets, each with its format: an imported image (its format follows the file's extension,
        # as the definition will say) and the new one the storage page creates.
        disks = [f"existing {d.format} image {d.path}" for d in cfg.disks]
        if self.wiz.storage_page.create.isChecked():
            storage = self.wiz.storage_page
            disks.append(f"new {storage.size.value():g} GiB {storage.format.currentData()} disk")
        disk = "; ".join(disks)
        rows = [("Boot", f"{Path(cfg.boot.kernel).name}" + (f" + {Path(cfg.boot.initrd).name}" if cfg.boot.initrd
                                                              else "")),
                ("Command line", cfg.boot.cmdline or "(empty)"),
                ("Memory", f"{cfg.memory_mib} MiB"), ("CPUs", str(cfg.vcpus)),
                ("Storage", disk or "none"), ("Network", self.network.currentText())]
        shared = self.wiz.boot_page.shared_warning()
        self.summary.setText("<table>" + "".join(f"<tr><td style='color:#666;padding-right:12px'>{k}</td>"
                                                 f"<td>{_html(v)}</td></tr>" for k, v in rows) + "</table>"
                             + (f"<p style='{ORANGE}'>{_html(shared)}</p>" if shared else ""))
        self.error.setText(self.problem())
        self.completeChanged.emit()

    def problem(self) -> str:
        name = self.name.text().strip()
        # A boot file the host refused (answered after Next was clicked, or at Finish's own check).
        refused = next((check.problem for check in self.wiz.boot_page.file_checks() if check.problem), "")
        if refused:
            return refused
        if not name:
            return ""
        if self.wiz.bridge.find(name) is not None:
            return f"A VM named “{name}” already exists."
        try:
            self.wiz.config().validate()
        except ConfigError as exc:
            return as_sentence(str(exc))
        return ""

    def isComplete(self) -> bool:
        return bool(self.name.text().strip()) and not self.problem() and not self.wiz.working


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class NewVmWizard(QWizard):
    created = pyqtSignal(str, bool)    # uuid, start it now (False: "customize before install" was chosen)
    _progress = pyqtSignal(int, int)

    def __init__(self, bridge: HostBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.working = False
        self.setWindowTitle("New Virtual Machine")
        self.setWindowIcon(app_icon())
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage)
        self.setPixmap(QWizard.WizardPixmap.LogoPixmap, app_icon().pixmap(48, 48))
        self.source_page = SourcePage(self)
        self.boot_page = BootPage(self)
        self.resources_page = ResourcesPage(self)
        self.storage_page = StoragePage(self)
        self.finish_page = FinishPage(self)
        for page in (self.source_page, self.boot_page, self.resources_page, self.storage_page, self.finish_page):
            self.addPage(page)
        self._progress.connect(self._on_progress)
        # A file check answering while the finish page shows updates its error and the Finish button.
        self.boot_page.completeChanged.connect(self.finish_page._update)
        self.resize(640, 500)

    def suggest_name(self) -> str:
        boot = self.boot_page
        source = boot.disk.text() if self.source_page.source() == SOURCE_DISK else boot.kernel.text()
        stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", Path(source).name.split(".")[0]).strip("-._+") or "vm"
        name, n = stem, 1
        while self.bridge.find(name) is not None:
            n += 1
            name = f"{stem}-{n}"
        return name

    def disk_path(self, name: str, fmt: str = "raw") -> str:
        safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", name)
        ext = "qcow2" if fmt == "qcow2" else "img"
        path = images_dir() / f"{safe}.{ext}"
        n = 1
        while path.exists():
            n += 1
            path = images_dir() / f"{safe}-{n}.{ext}"
        return str(path)

    def config(self) -> VmConfig:
        boot = self.boot_page
        disks = []
        if self.source_page.source() == SOURCE_DISK and boot.disk.text().strip():
            path = boot.disk.text().strip()
            disks.append(DiskConfig(path=path, format="qcow2" if path.endswith(".qcow2") else "raw"))
        return VmConfig(
            name=self.finish_page.name.text().strip(),
            memory_mib=self.resources_page.memory.value(), vcpus=self.resources_page.cpus.value(),
            accel=self.finish_page.accel.currentData(),
            boot=BootConfig(kernel=boot.kernel.text().strip(), initrd=boot.initrd.text().strip(),
                            cmdline=boot.cmdline.text().strip()),
            disks=disks, network=NetworkConfig(mode=self.finish_page.network.currentData()),
        )

    def accept(self) -> None:
        """Finish: when a boot file's check has not answered for the path shown (Next outran the debounce) or
        answered a refusal, ask the host again first; then create the disk (if asked) and define the VM on a
        worker; close when that succeeded."""
        if self.working:
            return
        stale = [check for check in self.boot_page.file_checks() if check.pending or check.problem]
        if not stale:
            self._define()
            return
        self.working = True
        page = self.finish_page
        page.error.setText("Checking the boot files…")
        page.completeChanged.emit()
        self.button(QWizard.WizardButton.BackButton).setEnabled(False)
        waiting = len(stale)

        def answered() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting:
                return
            self.working = False
            self.button(QWizard.WizardButton.BackButton).setEnabled(True)
            page._update()        # shows the refusal, if any, and keeps Finish disabled
            if not page.problem():
                self._define()

        for check in stale:
            check.verify(answered)

    def _define(self) -> None:
        """Create the disk (if asked) and define the VM on a worker; close when that succeeded."""
        cfg = self.config()
        storage = self.storage_page
        new_disk = None
        if storage.create.isChecked():
            fmt = storage.format.currentData()
            new_disk = (self.disk_path(cfg.name, fmt), int(storage.size.value() * 1024 ** 3) // 512 * 512,
                        fmt, storage.preallocate.isChecked())
            cfg.disks.append(DiskConfig(path=new_disk[0], format=new_disk[2]))
        host = self.bridge.host
        self.working = True
        self.finish_page.error.setText("")
        self.finish_page.completeChanged.emit()
        self.button(QWizard.WizardButton.BackButton).setEnabled(False)
        page = self.finish_page
        if new_disk:
            page.progress.setRange(0, 0)
            page.progress.setFormat("Creating the disk image… %p%")
            page.progress.show()

        def work():
            if new_disk:
                host.create_disk(new_disk[0], new_disk[1], new_disk[2], new_disk[3],
                                 progress=lambda done, total: self._progress.emit(done >> 20, total >> 20))
            try:
                return host.define(cfg)
            except Exception:
                if new_disk:   # do not leave an orphan image behind a definition that was refused
                    try:
                        os.unlink(new_disk[0])
                    except OSError:
                        pass
                raise

        def done(info) -> None:
            def listed() -> None:   # the new VM is in the bridge's cache: the windows can show it
                self.working = False
                self.created.emit(info.uuid, not page.customize.isChecked())
                super(NewVmWizard, self).accept()

            self.bridge.refresh(then=listed)

        def failed(message: str) -> None:
            self.working = False
            page.progress.hide()
            page.error.setText(as_sentence(message, f"Creating {cfg.name}"))
            self.button(QWizard.WizardButton.BackButton).setEnabled(True)
            page.completeChanged.emit()

        self.bridge.call(f"Creating {cfg.name}", work, done, failed)

    def _on_progress(self, done_mib: int, total_mib: int) -> None:
        bar = self.finish_page.progress
        bar.setRange(0, max(total_mib, 1))
        bar.setValue(done_mib)
