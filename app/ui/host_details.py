"""Host Details (issue 17, defect 13): what the manager knows about one host, from a host row's menu — the facts
the bridge read (core.hoststats.HostInfo: CPU model, CPUs and cores, memory, whether KVM is usable and why), how
many VMs are defined and running, and, for a host reached through a Vireo service (every host the manager shows:
this computer's service or one over SSH), the service's version and connection state and whether it can run a
software CPU. The service's status is one call, made on a worker (HostBridge.call): never on the GUI thread.
Under the facts, graphs of the whole host's load (app/ui/host_performance.py) and its storage folder
(app/ui/host_storage.py).
"""
from __future__ import annotations

from typing import Any

from PyQt6 import sip
from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from app.host_bridge import HostBridge


class HostDetailsDialog(QDialog):
    """A form of labels, each with the objectName "detail_<key>" (tests read them), and a Close button."""

    def __init__(self, parent: QWidget | None, bridge: HostBridge) -> None:
        super().__init__(parent)
        self.bridge = bridge
        host = bridge.host
        self.setObjectName("hostDetails")
        self.setWindowTitle(f"Host Details — {host.name}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.form = QFormLayout()
        self.labels: dict[str, QLabel] = {}
        facts = bridge.facts
        info = facts.info if facts is not None else None
        if info is None:
            self._row("facts", "Host", facts.error if facts is not None and facts.error else "not read yet")
        else:
            self._row("hostname", "Host name", info.hostname)
            if info.system:
                self._row("system", "System", info.system)
            self._row("cpu_model", "CPU", info.cpu_model)
            self._row("cpus", "CPUs", f"{info.cpus} logical CPUs, {info.cores} cores")
            self._row("memory", "Memory", f"{info.memory_mib / 1024:.1f} GiB ({info.memory_mib} MiB)")
            kvm = ("usable, hardware virtualization" if info.kvm_usable and info.kvm_hardware
                   else "usable, without hardware virtualization" if info.kvm_usable else "not usable")
            self._row("kvm", "KVM", kvm)
            self._row("kvm_reason", "", info.kvm_reason)
        vms = bridge.vms()
        self._row("vms", "Virtual machines", f"{len(vms)} defined, {sum(1 for i in vms if i.state.active)} running")
        # Duck-typed: the GUI may hold a service client wrapped (a test's recording proxy); a host without a
        # service has none of these.
        status = getattr(host, "agent_status", None)
        if callable(status):
            self._row("service_version", "Service version", str(getattr(host, "agent_version", "")) or "unknown")
            self._row("service_state", "Connection", str(getattr(host, "state", "")) or "unknown")
            if getattr(host, "connected", False):
                self._row("software_cpu", "Software CPU", "asking the service…")
                bridge.call(f"Reading the status of {host.name}'s service", status, self._status,
                            self._status_failed)
            else:       # asking would connect (over SSH, perhaps): Connect is the host menu's, not this dialog's
                self._row("software_cpu", "Software CPU", f"unknown: not connected ({getattr(host, 'error', '')})")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        column = QVBoxLayout(self)
        column.addLayout(self.form)
        self.storage = self.performance = None
        if info is not None:
            from app.ui.host_performance import HostPerformanceView
            from app.ui.host_storage import StorageView

            self.performance = HostPerformanceView(bridge, self)
            column.addWidget(self.performance, 1)
            self.storage = StorageView(bridge, self)
            column.addWidget(self.storage, 1)
            # The four graphs side by side, the images table's five columns and the facts' longer lines, whole.
            self.resize(1000, 860)
        column.addWidget(buttons)

    def _row(self, key: str, title: str, text: str) -> None:
        label = QLabel(text, self)
        label.setObjectName(f"detail_{key}")
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.labels[key] = label
        self.form.addRow(title, label)

    def text(self, key: str) -> str:
        label = self.labels.get(key)
        return label.text() if label is not None else ""

    def _status(self, status: Any) -> None:
        if sip.isdeleted(self):
            return      # closed before the service answered
        status = status if isinstance(status, dict) else {}
        if status.get("version"):
            self.labels["service_version"].setText(str(status["version"]))
        self.labels["service_state"].setText(
            f"{getattr(self.bridge.host, 'state', '') or 'connected'}; service process {status.get('pid', '?')}, "
            f"{status.get('connections', '?')} client connection(s)")
        ok = status.get("software_cpu")
        why = str(status.get("software_cpu_reason") or "")
        self.labels["software_cpu"].setText(("available" if ok else "not available") + (f": {why}" if why else "")
                                            if ok is not None else "not reported by this service")

    def _status_failed(self, message: str) -> None:
        if sip.isdeleted(self):
            return
        self.labels["software_cpu"].setText(f"unknown: {message}")


def show_host_details(parent: QWidget | None, bridge: HostBridge) -> HostDetailsDialog:
    """Open the Host Details dialog of `bridge`'s host (non-modal: the window stays usable) and return it."""
    dialog = HostDetailsDialog(parent, bridge)
    dialog.show()
    return dialog
