"""The New VM wizard's pages other than the install media (app/ui/wizard_media.py): (1) how the operating system
gets onto the VM — install from an ISO image, import a disk image, or boot a Linux kernel directly; (3) memory and
CPUs within the host's limits; (4) storage: a new disk image, its format and bus, or none; (5) name, accelerator,
network and a summary of what will happen. The wizard that turns the pages into a definition and creates it is
app/ui/wizard.py."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PyQt6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from app.host_bridge import HostBridge
from app.ui import preferences
from app.ui.accel_choice import fill_accel_combo
from app.ui.dialogs import show_error
from app.ui.file_check import ORANGE
from app.ui.host_file_dialog import choose_host_file
from app.ui.wizard_network import NetworkChoice
from app.widgets.range_spin import RangeDoubleSpinBox, RangeSpinBox
from app.widgets.text import as_sentence
from core.config import DISK_BUSES, ConfigError
from core.host import HostError

if TYPE_CHECKING:
    from app.ui.wizard import NewVmWizard

SOURCE_ISO, SOURCE_DISK, SOURCE_KERNEL = 0, 1, 2
NO_FIRMWARE = ("This host's engine cannot boot through firmware yet: a VM made from an ISO image or a disk image is "
               "defined now, and starts once Vireo on this host can.")
BUS_LABELS = {"virtio": "VirtIO (fastest; Linux and guests with virtio drivers)",
              "ide": "IDE (for guests without virtio drivers)"}


def path_field(page: QWidget, edit: QLineEdit, caption: str, name_filter: str, bridge: HostBridge) -> QWidget:
    """The path field and its Browse… button, which browses the files of the host the VM is made on."""
    row = QWidget(page)
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    button = QPushButton("Browse…", row)
    button.setObjectName("browse")

    def browse() -> None:
        try:
            choose_host_file(bridge, page, caption, name_filter, edit.text().strip(), edit.setText)
        except HostError as exc:
            show_error(page, "Browsing", str(exc))

    button.clicked.connect(browse)
    lay.addWidget(button)
    return row


def note(text: str, parent: QWidget) -> QLabel:
    label = QLabel(text, parent)
    label.setWordWrap(True)
    label.setStyleSheet("color: #666;")
    return label


def bus_combo(parent: QWidget, name: str) -> QComboBox:
    combo = QComboBox(parent)
    combo.setObjectName(name)
    for bus in DISK_BUSES:
        combo.addItem(BUS_LABELS[bus], bus)
    return combo


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SourcePage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        self.setTitle("Create a new virtual machine")
        elsewhere = "" if wizard.on_this_computer else f" It is made on {wizard.bridge.host.name}, from files there."
        self.setSubTitle(f"Step 1 of 5: choose how the operating system gets installed or booted.{elsewhere}")
        lay = QVBoxLayout(self)
        self.group = QButtonGroup(self)
        self.iso = QRadioButton("Install from an ISO image", self)
        self.disk = QRadioButton("Import an existing disk image", self)
        self.kernel = QRadioButton("Linux kernel and initrd (direct boot)", self)
        for number, (button, text) in ((SOURCE_ISO, (self.iso, "An installer or live CD/DVD image: the VM boots it "
                                                    "once through the firmware (SeaBIOS), then its new disk.")),
                                       (SOURCE_DISK, (self.disk, "A disk that holds an operating system and its boot "
                                                      "loader: the firmware boots it (a kernel can be given "
                                                      "instead).")),
                                       (SOURCE_KERNEL, (self.kernel, "Vireo loads a kernel (bzImage or Multiboot) "
                                                        "and an initrd itself — fastest start."))):
            self.group.addButton(button, number)
            lay.addWidget(button)
            n = note(text, self)
            n.setContentsMargins(24, 0, 0, 8)
            lay.addWidget(n)
        # Offered whatever the engine says: a definition made now starts once the host's engine boots firmware.
        self.firmware_note = QLabel(NO_FIRMWARE, self)
        self.firmware_note.setObjectName("firmwareNote")
        self.firmware_note.setWordWrap(True)
        self.firmware_note.setStyleSheet(ORANGE)
        self.firmware_note.setVisible(not wizard.bridge.capabilities.firmware_boot)
        lay.addWidget(self.firmware_note)
        lay.addStretch(1)
        self.iso.setChecked(True)

    def source(self) -> int:
        return self.group.checkedId()

    def nextId(self) -> int:
        return 1


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
        form.addRow("", note(f"Up to {host.memory_mib} MiB on this host.", self))
        self.cpus = RangeSpinBox("CPUs", self, countable=True)
        self.cpus.setObjectName("cpus")
        self.cpus.setAllowedRange(1, host.cpus, f"this host's {host.cpus} logical CPUs")
        self.cpus.setValue(1)
        form.addRow("CPUs:", self.cpus)
        form.addRow("", self.cpus.error)
        form.addRow("", note(f"Up to {host.cpus} on this host ({host.cpu_model}).", self))
        for spin in (self.memory, self.cpus):
            spin.problemChanged.connect(self.completeChanged)

    def isComplete(self) -> bool:
        return not self.memory.problem() and not self.cpus.problem()


class StoragePage(QWizardPage):
    def __init__(self, wizard: NewVmWizard) -> None:
        super().__init__(wizard)
        self.wiz = wizard
        self._source_seen: int | None = None
        self._offered = False          # "create" was checked by the page for an ISO install, not by the user
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
        self.bus = bus_combo(self, "newDiskBus")
        form.addRow("Bus:", self.bus)
        self.preallocate = QCheckBox("Allocate the whole disk now (slower to create, no surprises later)", self)
        form.addRow("", self.preallocate)
        self.where = note("", self)
        form.addRow("", self.where)
        lay.addLayout(form)
        if not wizard.bridge.capabilities.disks:
            lay.addWidget(note("The engine does not attach disks to the machine yet; a disk made here is kept in "
                               "the definition and attached once it does.", self))
        lay.addStretch(1)
        self.create.toggled.connect(self._toggle)
        self.none.clicked.connect(self._chosen)
        self.create.clicked.connect(self._chosen)
        self.format.currentIndexChanged.connect(self._format_changed)
        self._toggle(False)

    def initializePage(self) -> None:
        where = f" on {self.wiz.bridge.host.name}" if not self.wiz.on_this_computer else ""
        self.where.setText(f"Created in {self.wiz.images_folder()}{where}")
        # An install needs a disk to install to: offered checked when this page first shows for an ISO, and taken
        # back if the user goes back to another way without having touched it.
        source = self.wiz.source_page.source()
        if source != self._source_seen:
            self._source_seen = source
            if source == SOURCE_ISO and not self.create.isChecked():
                self.create.setChecked(True)
                self._offered = True
            elif source != SOURCE_ISO and self._offered:
                self.none.setChecked(True)
                self._offered = False

    def _chosen(self) -> None:
        self._offered = False          # the user's own choice (clicked, not set by the page) stays

    def _toggle(self, on: bool) -> None:
        for w in (self.size, self.format, self.bus):
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
        self._suggested = ""
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
        self.accel.setCurrentIndex(max(0, self.accel.findData(preferences.current().accelerator)))
        form.addRow("Accelerator:", self.accel)
        self.accel_note = note("", self)
        form.addRow("", self.accel_note)
        self.network_choice = NetworkChoice(wizard.bridge, self)      # app/ui/wizard_network.py
        self.network = self.network_choice.combo
        form.addRow("Network:", self.network_choice)
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
        self.network_choice.tap.textChanged.connect(self._update)
        self.network_choice.bridge.textChanged.connect(self._update)

    def initializePage(self) -> None:
        # A name the wizard suggested follows the file chosen (back, another ISO or way); one typed stays.
        if not self.name.text() or self.name.text() == self._suggested:
            self._suggested = self.wiz.suggest_name()
            self.name.setText(self._suggested)
        self._update()

    def _boot_rows(self) -> list[tuple[str, str]]:
        """What the VM boots, in words: the summary's first rows."""
        cfg = self.wiz.config()
        source = self.wiz.source_page.source()
        new_disk = self.wiz.storage_page.create.isChecked()
        if source == SOURCE_ISO:
            iso = Path(self.wiz.boot_page.iso.text().strip()).name
            system = self.wiz.boot_page.os_choice.chosen()
            return [("Install from", iso), ("Operating system", system.name if system else "generic"),
                    ("Boot", "boots the ISO once, then the disk" if new_disk else
                     "boots the ISO (no disk to install to)")]
        if not cfg.boot.kernel:
            return [("Boot", "the disk image's own boot loader, through the firmware (SeaBIOS)")]
        files = Path(cfg.boot.kernel).name + (f" + {Path(cfg.boot.initrd).name}" if cfg.boot.initrd else "")
        return [("Boot", f"{files} (direct kernel boot)"), ("Command line", cfg.boot.cmdline or "(empty)")]

    def _update(self) -> None:
        try:
            name, why = self.wiz.bridge.accel_preview(self.accel.currentData())
            shown = {"kvm": "KVM", "software": "the software CPU"}.get(name, name)
            self.accel_note.setText(f"Uses {shown} on this host: {why}." if name else why)
        except HostError as exc:
            self.accel_note.setText(f"<span style='color:#b3261e'>{_html(as_sentence(str(exc)))}</span>")
        cfg = self.wiz.config()
        # Every disk the VM gets, each with its format (and its bus when not the default VirtIO): an imported image
        # (its format follows the file's extension, as the definition will say) and the new one storage creates.
        on_ide = " on IDE"
        disks = [f"existing {d.format} image {d.path}" + (on_ide if d.bus == "ide" else "") for d in cfg.disks]
        storage = self.wiz.storage_page
        if storage.create.isChecked():
            disks.append(f"new {storage.size.value():g} GiB {storage.format.currentData()} disk"
                         + (on_ide if storage.bus.currentData() == "ide" else ""))
        # The host is named when it is another machine: the files above are read there, the disk made there.
        host = [] if self.wiz.on_this_computer else [("Host", self.wiz.bridge.host.name)]
        rows = host + self._boot_rows() + [("Memory", f"{cfg.memory_mib} MiB"), ("CPUs", str(cfg.vcpus)),
                                    ("Storage", "; ".join(disks) or "none"), ("Network", self.network_choice.text())]
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
