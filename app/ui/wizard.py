"""The New VM wizard: (1) how to install — from an ISO image (booted once through the firmware, then the new disk),
an existing disk image (its boot loader, through the firmware, or a kernel given directly), or a Linux kernel and
initrd booted directly; (2) the ISO, disk or boot files (app/ui/wizard_media.py); (3) memory and CPUs within the
host's limits; (4) storage — a new disk image, its format and bus, with progress for long work, or none; (5) name,
accelerator, network, "Customize before install" and a summary of what will happen (app/ui/wizard_pages.py).
Finish creates the disk, defines the VM through the Host, then starts it and opens its console (or opens Details
when customizing first).

The definition an ISO install gets: the ISO in a CD-ROM drive, the new disk, the boot order disk then CD, and
boot-once CD (QEMU's -boot once=d): the first start boots the installer, the host clears the flag, and every later
start boots the disk, falling back to the CD while the disk has nothing bootable on it.

Each boot file is checked by the host as it is chosen (app/ui/file_check.py); Next may outrun that debounced
answer, so Finish asks again and refuses, with the host's line, a file that cannot serve."""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QWidget, QWizard

from app.host_bridge import HostBridge
from app.icons import app_icon
from app.osinfo import OsEntry
from app.ui import preferences
from app.ui.wizard_media import BootPage
from app.ui.wizard_pages import (
    SOURCE_DISK,
    SOURCE_ISO,
    FinishPage,
    ResourcesPage,
    SourcePage,
    StoragePage,
)
from app.widgets.text import as_sentence
from core.config import BootConfig, CdromConfig, DiskConfig, VmConfig, images_dir
from core.host import HostError


class NewVmWizard(QWizard):
    created = pyqtSignal(str, bool)    # uuid, start it now (False: "customize before install" was chosen)
    _progress = pyqtSignal(int, int)

    def __init__(self, bridge: HostBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        # The files of the host the VM is made on: boot files are browsed and the new disk is named there.
        self.files = bridge.files
        self.on_this_computer = self.files is not None and self.files.local
        self.working = False
        self.setWindowTitle("New Virtual Machine" if self.on_this_computer
                            else f"New Virtual Machine on {bridge.host.name}")
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
        source = self.source_page.source()
        if source == SOURCE_ISO:
            stem = Path(boot.iso.text().strip()).stem       # debian-12.8.0-amd64-netinst.iso: all but .iso
        else:
            stem = Path(boot.disk.text() if source == SOURCE_DISK else boot.kernel.text()).name.split(".")[0]
        stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-._+")[:48] or "vm"
        name, n = stem, 1
        while self.bridge.find(name) is not None:
            n += 1
            name = f"{stem}-{n}"
        return name

    def apply_os(self, entry: OsEntry) -> None:
        """Set what the operating system `entry` recommends (osinfo-db) on the next pages, within this host's
        limits: memory, CPUs and the new disk's size."""
        memory, cpus, size = self.resources_page.memory, self.resources_page.cpus, self.storage_page.size
        if entry.ram_mib:
            memory.setValue(min(entry.ram_mib, int(memory.maximum())))
        if entry.cpus:
            cpus.setValue(min(entry.cpus, int(cpus.maximum())))
        if entry.storage_gib:
            size.setValue(min(entry.storage_gib, size.maximum()))

    def images_folder(self) -> str:
        """Where new disk images go on the host the VM is made on (its service's images folder)."""
        # On this computer the Preferences may name another folder; another host's folder is its service's.
        chosen = preferences.current().storage_folder
        if self.on_this_computer and chosen:
            return chosen
        info = self.bridge.host_info
        if info is not None and info.images_dir:
            return info.images_dir
        return str(images_dir()) if self.on_this_computer else ""

    def disk_path(self, name: str, fmt: str = "raw") -> str:
        """A free path for the new disk image in the host's images folder. Asks the host's files: call it on a
        worker (over SFTP for an SSH host)."""
        folder = self.images_folder()
        if not folder or self.files is None:
            raise HostError(f"{self.bridge.host.name} did not say where its disk images go: reconnect to it")
        safe = re.sub(r"[^A-Za-z0-9._+-]+", "-", name)
        ext = "qcow2" if fmt == "qcow2" else "img"
        path = posixpath.join(folder, f"{safe}.{ext}")
        n = 1
        while self.files.exists(path):
            n += 1
            path = posixpath.join(folder, f"{safe}-{n}.{ext}")
        return path

    def config(self) -> VmConfig:
        """The definition the pages describe (the new disk, made at Finish, is added then)."""
        media, source = self.boot_page, self.source_page.source()
        disks, cdroms = [], []
        if source == SOURCE_DISK and media.disk.text().strip():
            path = media.disk.text().strip()
            disks.append(DiskConfig(path=path, format="qcow2" if path.endswith(".qcow2") else "raw",
                                    bus=media.bus.currentData()))
        if source == SOURCE_ISO:
            cdroms.append(CdromConfig(media.iso.text().strip()))
            # The installer once, then the disk it installed to (the CD behind it while the disk boots nothing).
            boot = (BootConfig(order=["disk", "cd"], cd_once=True) if self.storage_page.create.isChecked()
                    else BootConfig(order=["cd"]))
        elif media.direct_kernel():
            boot = BootConfig(kernel=media.kernel.text().strip(), initrd=media.initrd.text().strip(),
                              cmdline=media.cmdline.text().strip())
        else:
            boot = BootConfig(order=["disk"])
        return VmConfig(
            name=self.finish_page.name.text().strip(),
            memory_mib=self.resources_page.memory.value(), vcpus=self.resources_page.cpus.value(),
            accel=self.finish_page.accel.currentData(), boot=boot, disks=disks, cdroms=cdroms,
            nics=self.finish_page.network_choice.nics(),
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
            # The path is picked on the worker: whether a name is free is the host's files' answer (SFTP).
            fmt = storage.format.currentData()
            new_disk = (int(storage.size.value() * 1024 ** 3) // 512 * 512, fmt, storage.preallocate.isChecked(),
                        storage.bus.currentData())
        host, files = self.bridge.host, self.files
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
            path = None
            if new_disk:
                size, fmt, preallocate, bus = new_disk
                path = self.disk_path(cfg.name, fmt)
                host.create_disk(path, size, fmt, preallocate,
                                 progress=lambda done, total: self._progress.emit(done >> 20, total >> 20))
                cfg.disks.append(DiskConfig(path=path, format=fmt, bus=bus))
            try:
                return host.define(cfg)
            except Exception:
                if path:   # do not leave an orphan image behind a definition that was refused
                    try:
                        if files is not None:
                            files.remove(path)
                    except HostError:
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
