"""The New VM wizard's network choice (issue 13): user-mode NAT through passt (the default: the guest gets an
address over DHCP and reaches the internet and the host, with no root needed), a TAP interface (optionally
added to an existing bridge; needs CAP_NET_ADMIN or a TAP made for the user beforehand), or no network card.
The MAC is left to the host, which derives a stable one from the VM's uuid when it saves the definition."""
from __future__ import annotations

from PyQt6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from app.host_bridge import HostBridge
from core.config import NicConfig

CHOICES = (("user", "User-mode NAT (passt): DHCP, internet and host access"),
           ("tap", "TAP interface (bridged networking)"),
           ("none", "No network"))


class NetworkChoice(QWidget):
    """The combo (`combo`, data user/tap/none) and, for TAP, the interface and bridge names."""

    def __init__(self, bridge: HostBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox(self)
        self.combo.setObjectName("network")
        for key, label in CHOICES:
            self.combo.addItem(label, key)
        if not bridge.capabilities.network:
            for key in ("user", "tap"):
                self.combo.model().item(self.combo.findData(key)).setEnabled(False)
            self.combo.setCurrentIndex(self.combo.findData("none"))
            self.combo.setToolTip("This host's engine has no network card")
        self.tap = QLineEdit("vtap0", self)
        self.tap.setObjectName("wizardTap")
        self.bridge = QLineEdit(self)
        self.bridge.setObjectName("wizardBridge")
        self.bridge.setPlaceholderText("optional, e.g. br0")
        self.tap_row = QWidget(self)
        row = QHBoxLayout(self.tap_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Interface:"))
        row.addWidget(self.tap, 1)
        row.addWidget(QLabel("Bridge:"))
        row.addWidget(self.bridge, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(self.tap_row)
        self.combo.currentIndexChanged.connect(self._shown)
        self._shown()

    def _shown(self) -> None:
        self.tap_row.setVisible(self.combo.currentData() == "tap")

    def nics(self) -> list[NicConfig]:
        kind = self.combo.currentData()
        if kind == "user":
            return [NicConfig()]
        if kind == "tap":
            return [NicConfig(backend="tap", tap=self.tap.text().strip(), bridge=self.bridge.text().strip())]
        return []

    def text(self) -> str:
        """For the summary."""
        kind = self.combo.currentData()
        if kind == "tap":
            bridge = self.bridge.text().strip()
            return f"TAP {self.tap.text().strip()}" + (f" on bridge {bridge}" if bridge else "")
        return {"user": "user-mode NAT (passt)", "none": "none"}[kind]
