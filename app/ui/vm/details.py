"""The VM window's Details tab: the hardware list (Overview, CPU, Memory, Boot Options, Disks, CD-ROM, Network,
Display, Serial) with a form per item (Boot Options and CD-ROM are app/ui/vm/boot_pages.py's, Network is
app/ui/vm/nic_page.py's). Hardware is editable
while the VM is shut off; name, notes and autostart at any time, and the CD-ROM discs and the boot order too, for
the next start (the host keeps them: core.config.running_vm_takes). Apply saves through the Host (validated there,
written atomically); Revert goes back to the saved one."""
from __future__ import annotations

import dataclasses

from PyQt6 import sip
from PyQt6.QtCore import QSize, Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.host_bridge import HostBridge
from app.icons import resource_icon
from app.ui.accel_choice import fill_accel_combo, label_accel_combo
from app.ui.dialogs import show_error
from app.ui.host_file_dialog import choose_host_file
from app.ui.vm.boot_pages import BootOptionsPage, CdromPage
from app.ui.vm.nic_page import NicPage
from app.widgets.range_spin import RangeSpinBox
from core.config import (
    DISK_BUSES,
    DISPLAY_TYPES,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_MEMORY_MIB,
    SERIAL_MODES,
    DiskConfig,
    VmConfig,
)
from core.host import HostError, VmInfo

PAGES = ("Overview", "CPU", "Memory", "Boot Options", "Disks", "CD-ROM", "Network", "Display", "Serial")
_ICONS = ("vm", "hw-cpu", "hw-memory", "hw-boot", "hw-disks", "hw-cdrom", "hw-network", "hw-display", "hw-serial")
BUS_LABELS = {"virtio": "VirtIO", "ide": "IDE"}


def _note(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #666;")
    return label


class DetailsEditor(QWidget):
    applied = pyqtSignal(str)   # uuid, after a successful save

    def __init__(self, bridge: HostBridge, uuid: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.uuid = bridge, uuid
        self.saved: VmConfig | None = None
        self._loading = False
        self.pages = QListWidget(self)
        self.pages.setObjectName("hardwareList")
        self.pages.setMaximumWidth(200)
        self.pages.setIconSize(QSize(22, 22))
        self.pages.setSpacing(2)
        for name, icon in zip(PAGES, _ICONS, strict=True):
            QListWidgetItem(resource_icon(icon), name, self.pages)
        self.stack = QStackedWidget(self)
        self.boot_page = BootOptionsPage(bridge, self.stack)
        self.cdrom_page = CdromPage(bridge, self.stack)
        self.nic_page = NicPage(bridge, uuid, self.stack)
        # The boot page's fields under the names the other pages' fields have here.
        self.kernel, self.initrd, self.cmdline = self.boot_page.kernel, self.boot_page.initrd, self.boot_page.cmdline
        for build in (self._overview, self._cpu, self._memory, self.boot_page, self._disks, self.cdrom_page,
                      self.nic_page, self._display, self._serial):
            if isinstance(build, QWidget):
                self.stack.addWidget(build)
                continue
            page = QWidget(self.stack)
            build(page)
            self.stack.addWidget(page)
        self.pages.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.pages.setCurrentRow(0)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Apply | QDialogButtonBox.StandardButton.Reset)
        self.apply_button = self.buttons.button(QDialogButtonBox.StandardButton.Apply)
        self.revert_button = self.buttons.button(QDialogButtonBox.StandardButton.Reset)
        self.revert_button.setText("Revert")
        self.apply_button.clicked.connect(self.apply)
        self.revert_button.clicked.connect(self.revert)
        self.lock_note = _note("")
        split = QSplitter(self)
        split.addWidget(self.pages)
        split.addWidget(self.stack)
        split.setStretchFactor(1, 1)
        split.setSizes([170, 520])
        split.setChildrenCollapsible(False)
        lay = QVBoxLayout(self)
        lay.addWidget(split, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.lock_note, 1)
        bottom.addWidget(self.buttons)
        lay.addLayout(bottom)
        self._hardware = [self.vcpus, self.accel, self.memory, self.disk_table, self.add_disk, self.remove_disk,
                          self.display, self.serial_mode, self.serial_log]
        for w in (self.name, self.serial_log):
            w.textChanged.connect(self._changed)
        self.boot_page.changed.connect(self._changed)
        self.cdrom_page.changed.connect(self._changed)
        self.nic_page.changed.connect(self._changed)
        self.nic_page.liveApplied.connect(self._nic_applied)
        for w in (self.vcpus, self.memory):
            w.valueChanged.connect(self._changed)
            w.problemChanged.connect(self._changed)
        for w in (self.accel, self.display, self.serial_mode):
            w.currentIndexChanged.connect(self._changed)
        self.autostart.toggled.connect(self._changed)
        self.notes.textChanged.connect(self._changed)
        # Bound methods (not lambdas): PyQt disconnects them when this widget is destroyed.
        bridge.vmStateChanged.connect(self._state_changed)
        bridge.vmsChanged.connect(self._reload_if_clean)
        bridge.factsChanged.connect(self._show_facts)
        self._show_facts()
        self.revert()

    # -- pages -----------------------------------------------------------------------------------------------
    def _form(self, page: QWidget, title: str) -> QFormLayout:
        outer = QVBoxLayout(page)
        heading = QLabel(f"<h3>{title}</h3>")
        outer.addWidget(heading)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        outer.addLayout(form)
        outer.addStretch(1)
        page.outer = outer
        return form

    def _overview(self, page: QWidget) -> None:
        form = self._form(page, "Overview")
        self.name = QLineEdit(page)
        self.name.setObjectName("nameEdit")
        form.addRow("Name:", self.name)
        self.uuid_label = QLabel(page)
        self.uuid_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("UUID:", self.uuid_label)
        self.state_label = QLabel(page)
        form.addRow("State:", self.state_label)
        self.autostart = QCheckBox("Start this VM when the Vireo service starts (at login, with its unit)", page)
        form.addRow("Autostart:", self.autostart)
        self.notes = QPlainTextEdit(page)
        self.notes.setPlaceholderText("Notes about this VM")
        self.notes.setMaximumHeight(110)
        form.addRow("Notes:", self.notes)

    def _cpu(self, page: QWidget) -> None:
        form = self._form(page, "CPU")
        # Out-of-range input stays visible, with the range, and keeps Apply disabled (issue 17, defect 10).
        self.vcpus = RangeSpinBox("vCPUs", page, countable=True)
        self.vcpus.setObjectName("vcpus")
        form.addRow("vCPUs:", self.vcpus)
        form.addRow("", self.vcpus.error)
        self.cpu_note = _note("")
        form.addRow("", self.cpu_note)
        self.accel = QComboBox(page)
        self.accel.setObjectName("accel")
        fill_accel_combo(self.accel, self.bridge)
        form.addRow("Accelerator:", self.accel)
        self.accel_note = _note("")
        form.addRow("", self.accel_note)
        self.accel.currentIndexChanged.connect(self._accel_explain)

    def _accel_explain(self) -> None:
        requested = self.accel.currentData()
        try:
            name, why = self.bridge.accel_preview(requested)
        except HostError as exc:
            self.accel_note.setText(f"<span style='color:#b3261e'>{exc}</span>")
            return
        self.accel_note.setText(f"Uses <b>{ {'kvm': 'KVM', 'software': 'the software CPU'}.get(name, name)}</b>"
                                f" here: {why}." if name else why)

    def _memory(self, page: QWidget) -> None:
        form = self._form(page, "Memory")
        self.memory = RangeSpinBox("Memory", page)
        self.memory.setObjectName("memory")
        self.memory.setSuffix(" MiB")
        self.memory.setSingleStep(64)
        form.addRow("Memory:", self.memory)
        form.addRow("", self.memory.error)
        self.memory_note = _note("")
        form.addRow("", self.memory_note)

    def _disks(self, page: QWidget) -> None:
        form = self._form(page, "Disks")
        self.disk_table = QTableWidget(0, 4, page)
        self.disk_table.setObjectName("diskTable")
        self.disk_table.setHorizontalHeaderLabels(["Image", "Format", "Bus", "Read-only"])
        self.disk_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.disk_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.disk_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.disk_table.verticalHeader().hide()
        form.addRow(self.disk_table)
        row = QHBoxLayout()
        self.add_disk = QPushButton("Add Existing Image…", page)
        self.add_disk.clicked.connect(self._add_disk)
        self.remove_disk = QPushButton("Remove", page)
        self.remove_disk.clicked.connect(self._remove_disk)
        row.addWidget(self.add_disk)
        row.addWidget(self.remove_disk)
        row.addStretch(1)
        form.addRow(row)
        form.addRow(_note("Bus: VirtIO is the fastest; IDE serves a guest that has no virtio drivers. The CD-ROM "
                          "drives are on IDE too, which holds four drives in all."))
        self.disk_note = _note("The engine does not attach disks yet (virtio-blk is not wired into the machine); "
                               "they are kept in the definition and attached once it is.")
        form.addRow(self.disk_note)

    def _add_disk(self) -> None:
        # The image is chosen among the files of the VM's host (over SFTP for an SSH host).
        try:
            choose_host_file(self.bridge, self, "Choose a disk image",
                             "Disk images (*.img *.raw *.qcow2);;All files (*)", "", self._disk_chosen)
        except HostError as exc:
            show_error(self, "Browsing", str(exc))

    def _disk_chosen(self, path: str) -> None:
        if path:
            self._disk_rows(self._current_disks() + [DiskConfig(path=path, format="qcow2" if path.endswith(".qcow2")
                                                                else "raw")])
            self._changed()

    def _remove_disk(self) -> None:
        row = self.disk_table.currentRow()
        if row >= 0:
            disks = self._current_disks()
            del disks[row]
            self._disk_rows(disks)
            self._changed()

    def _disk_rows(self, disks: list[DiskConfig]) -> None:
        self.disk_table.setRowCount(len(disks))
        for i, d in enumerate(disks):
            item = QTableWidgetItem(d.path)
            item.setData(Qt.ItemDataRole.UserRole, d)
            item.setToolTip(d.path)
            self.disk_table.setItem(i, 0, item)
            self.disk_table.setItem(i, 1, QTableWidgetItem(d.format))
            # The bus is chosen per disk: VirtIO is fastest, IDE serves guests without virtio drivers.
            bus = QComboBox(self.disk_table)
            bus.setObjectName("diskBus")
            for name in DISK_BUSES:
                bus.addItem(BUS_LABELS[name], name)
            bus.setCurrentIndex(max(0, bus.findData(d.bus)))
            bus.setToolTip("VirtIO is the fastest; IDE serves guests without virtio drivers")
            bus.currentIndexChanged.connect(self._changed)
            self.disk_table.setCellWidget(i, 2, bus)
            self.disk_table.setItem(i, 3, QTableWidgetItem("yes" if d.readonly else "no"))
        self.disk_table.resizeColumnToContents(2)

    def _current_disks(self) -> list[DiskConfig]:
        disks = []
        for i in range(self.disk_table.rowCount()):
            disk = DiskConfig(**vars(self.disk_table.item(i, 0).data(Qt.ItemDataRole.UserRole)))
            disk.bus = self.disk_table.cellWidget(i, 2).currentData()
            disks.append(disk)
        return disks

    def _show_facts(self) -> None:
        """The host's limits and the engine's capabilities, from the bridge's cache (read on a worker); until they
        are known the fields allow what the engine does."""
        host, caps = self.bridge.host_info, self.bridge.capabilities
        # A saved value above a host's limit is not clamped: it shows as an error until it is changed.
        self.vcpus.setAllowedRange(1, host.cpus if host else MAX_VCPUS,
                                   f"this host's {host.cpus} logical CPUs" if host else "")
        self.memory.setAllowedRange(MIN_MEMORY_MIB, host.memory_mib if host else MAX_MEMORY_MIB,
                                    f"this host's {host.memory_mib / 1024:.1f} GiB" if host else "")
        label_accel_combo(self.accel, self.bridge)
        self.cpu_note.setText(f"This host has {host.cpus} logical CPUs ({host.cores} cores)." if host
                              else "Reading the host's limits…")
        self.memory_note.setText(f"This host has {host.memory_mib} MiB." if host else "")
        self.disk_note.setVisible(not caps.disks)
        self._accel_explain()

    def _display(self, page: QWidget) -> None:
        form = self._form(page, "Display")
        self.display = QComboBox(page)
        for kind in DISPLAY_TYPES:
            self.display.addItem({"vga": "VGA", "none": "None (serial console only)"}[kind], kind)
        form.addRow("Display:", self.display)

    def _serial(self, page: QWidget) -> None:
        form = self._form(page, "Serial")
        self.serial_mode = QComboBox(page)
        for mode in SERIAL_MODES:
            self.serial_mode.addItem({"console": "Console in the VM window (ttyS0)", "none": "Disconnected"}[mode],
                                     mode)
        form.addRow("ttyS0:", self.serial_mode)
        self.serial_log = QLineEdit(page)
        self.serial_log.setPlaceholderText("no log file")
        form.addRow("Also log to:", self.serial_log)

    # -- state -----------------------------------------------------------------------------------------------
    def info(self) -> VmInfo | None:
        return self.bridge.info(self.uuid)

    def edited(self) -> VmConfig:
        """The definition as the form shows it (not yet validated)."""
        base = self.saved.copy()
        base.name = self.name.text().strip()
        base.autostart = self.autostart.isChecked()
        base.notes = self.notes.toPlainText()
        base.vcpus = self.vcpus.value()
        base.accel = self.accel.currentData()
        base.memory_mib = self.memory.value()
        self.boot_page.apply_to(base, self.saved)
        base.disks = self._current_disks()
        base.cdroms = self.cdrom_page.cdroms()
        self.nic_page.apply_to(base)
        base.display.type = self.display.currentData()
        base.serial.mode = self.serial_mode.currentData()
        base.serial.log_file = self.serial_log.text().strip()
        return base

    def dirty(self) -> bool:
        return self.saved is not None and self.edited() != self.saved

    def problem(self) -> str:
        """The first field whose input cannot be applied (its own error line says the same), or ""."""
        return (self.vcpus.problem() or self.memory.problem() or self.boot_page.problem()
                or self.cdrom_page.problem() or self.nic_page.problem())

    def _changed(self, *_: object) -> None:
        if not self._loading:
            disks = self._current_disks()
            self.cdrom_page.set_ide_disks(sum(d.bus == "ide" for d in disks))
            self.boot_page.describe(self.cdrom_page.cdroms(), [d.path for d in disks])
            dirty = self.dirty()
            problem = self.problem()
            self.apply_button.setEnabled(dirty and not problem)
            self.apply_button.setToolTip(problem)
            self.revert_button.setEnabled(dirty)

    def _reload_if_clean(self) -> None:
        info = self.info()
        if info is None or info.config == self.saved:
            return
        if not self.dirty():
            self.revert()
        elif info.config == self.saved.copy(boot=dataclasses.replace(self.saved.boot, cd_once=False)):
            # The host cleared boot-once as the VM started, under edits not applied yet: take that change alone
            # (unless the box was changed by hand), so Apply does not put the flag back.
            shown = self.boot_page.cd_once.isChecked()
            self.saved = info.config.copy()
            if shown:
                self.boot_page.cd_once.setChecked(False)
            self._changed()

    def revert(self) -> None:
        info = self.info()
        if info is None:
            return
        cfg = info.config
        self.saved = cfg.copy()
        self._loading = True
        try:
            self.name.setText(cfg.name)
            self.uuid_label.setText(cfg.uuid)
            self.autostart.setChecked(cfg.autostart)
            self.notes.setPlainText(cfg.notes)
            self.vcpus.setValue(cfg.vcpus)
            self.accel.setCurrentIndex(max(0, self.accel.findData(cfg.accel)))
            self.memory.setValue(cfg.memory_mib)
            self.boot_page.load(cfg.boot)
            self._disk_rows([DiskConfig(**vars(d)) for d in cfg.disks])
            self.cdrom_page.load(cfg.cdroms)
            self.nic_page.load(cfg)
            self.display.setCurrentIndex(max(0, self.display.findData(cfg.display.type)))
            self.serial_mode.setCurrentIndex(max(0, self.serial_mode.findData(cfg.serial.mode)))
            self.serial_log.setText(cfg.serial.log_file)
        finally:
            self._loading = False
        self._accel_explain()
        self._lock_for_state()
        self._changed()

    def _nic_applied(self, info: VmInfo) -> None:
        # A running VM's link switch or forwards, saved by the NIC page itself: the form's other edits stay.
        if self.saved is not None:
            self.saved.nics = info.config.copy().nics
        self._changed()

    def _state_changed(self, uuid: str, state: str, reason: str) -> None:
        if uuid == self.uuid:
            self._lock_for_state()

    def _lock_for_state(self) -> None:
        info = self.info()
        if info is None:
            return
        active = info.state.active
        for w in self._hardware:
            w.setEnabled(not active)
        self.boot_page.set_active(active)
        self.cdrom_page.set_active(active)
        self.nic_page.set_active(active)
        self.state_label.setText(info.state.label + (f" — {info.reason}" if info.reason else ""))
        self.lock_note.setText("Shut the VM down to change its hardware. Name, notes, autostart, the network link "
                               "and port forwards change now; CD-ROM discs and the boot order at the next start."
                               if active else "")

    def apply(self) -> None:
        cfg = self.edited()
        self.apply_button.setEnabled(False)

        # The save and the refresh finish on a worker: the window may have been closed by then.
        def done(info: VmInfo) -> None:
            def listed() -> None:     # the bridge's cache holds the saved definition
                if sip.isdeleted(self):
                    return
                self.revert()
                self.applied.emit(self.uuid)

            self.bridge.refresh(then=listed)

        def failed(message: str) -> None:
            from app.ui.dialogs import show_error

            if sip.isdeleted(self):
                return
            show_error(self, "Saving the changes", message)
            self._changed()

        host = self.bridge.host
        self.bridge.call("Saving the changes", lambda: host.define(cfg), done, failed, uuid=self.uuid)
