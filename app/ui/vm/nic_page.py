"""Details ▸ Network: the VM's network card (issue 13; core/net/nic.py, docs/network.md).

- Model (virtio-net), MAC (kept in the definition, editable while the VM is shut off, checked as typed: six
  lower-case hex pairs, not a multicast address), backend: user-mode NAT through passt, or a TAP interface (and
  optionally a bridge to add it to).
- The link switch: on a shut-off VM saved with Apply; on a running one it acts at once (the guest's carrier goes
  down or up, core/vmproc/net_control.py) and is saved too.
- Reconnect restarts the card's backend (passt) of a running VM; the status line says whether the backend lives,
  or the one line why it died (passt killed, a host port it cannot bind), with the card's traffic counters.
- Port forwards (user-mode NAT only), each shown as "host 127.0.0.1:2222 → guest :22" (UDP ones with "udp" in
  front): added and removed in the table. A shut-off VM takes them with Apply; a running one at once, its passt
  restarting with them; one whose host port is taken is refused with passt's line naming the port, in red under
  the table.

**Card** chooses which of the VM's cards the form shows; Add Card and Remove Card change how many it has (shut
off). No card at all is a VM without network."""
from __future__ import annotations

import os
import re

from PyQt6.QtCore import Qt, QTimer, pyqtSignal
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.host_bridge import HostBridge
from app.widgets.wrap_label import WrapLabel
from core.config import NicConfig, VmConfig
from core.host import VmInfo

BACKENDS = (("user", "User-mode NAT (passt)"), ("tap", "TAP interface"))
MAX_CARDS = 8
STATUS_MS = 1000
RED = "#b3261e"
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def _note(text: str = "") -> QLabel:
    label = WrapLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #666;")
    return label


def _error_label(name: str) -> QLabel:
    label = WrapLabel()
    label.setObjectName(name)
    label.setWordWrap(True)
    label.setStyleSheet(f"color: {RED};")
    return label


def describe_forward(rule: str) -> str:
    """"host 127.0.0.1:2222 → guest :22" for "tcp:127.0.0.1:2222-:22" (the engine's own wording)."""
    return NicConfig(forwards=[rule]).spec().forwards[0].describe()


def mac_problem(mac: str) -> str:
    if not mac:
        return ""
    if not _MAC_RE.match(mac):
        return f"MAC {mac!r}: write six hex pairs like 52:54:00:12:34:56"
    if int(mac[:2], 16) & 1:
        return f"MAC {mac}: the first byte is odd, which makes it a multicast address; use an even one (52:…)"
    return ""


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class NicPage(QWidget):
    changed = pyqtSignal()            # an edit for Apply (shut-off VM)
    liveApplied = pyqtSignal(object)  # VmInfo: a running VM's card changed and saved at once

    def __init__(self, bridge: HostBridge, uuid: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.uuid = bridge, uuid
        self.active = False
        self._loading = False
        self.cards: list[NicConfig] = []       # the cards as edited; the form shows cards[self.index]
        self.index = 0
        # In a scroll area: the forward table and the lines under it need more height than a small window has.
        inner = QWidget()
        self.scroll = scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(inner)
        page = QVBoxLayout(self)
        page.setContentsMargins(0, 0, 0, 0)
        page.addWidget(scroll)
        outer = QVBoxLayout(inner)
        outer.addWidget(QLabel("<h3>Network</h3>"))
        self.form = form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        outer.addLayout(form)

        card_row = QHBoxLayout()
        self.card = QComboBox(self)
        self.card.setObjectName("nicCard")
        self.add_card = QPushButton("Add Card", self)
        self.add_card.setObjectName("nicAddCard")
        self.remove_card = QPushButton("Remove Card", self)
        self.remove_card.setObjectName("nicRemoveCard")
        card_row.addWidget(self.card, 1)
        card_row.addWidget(self.add_card)
        card_row.addWidget(self.remove_card)
        form.addRow("Card:", card_row)

        self.backend = QComboBox(self)
        self.backend.setObjectName("nicBackend")
        for key, label in BACKENDS:
            self.backend.addItem(label, key)
        form.addRow("Network source:", self.backend)
        self.tap = QLineEdit(self)
        self.tap.setObjectName("nicTap")
        self.tap.setPlaceholderText("e.g. vtap0 (created if it does not exist)")
        self.bridge_name = QLineEdit(self)
        self.bridge_name.setObjectName("nicBridge")
        self.bridge_name.setPlaceholderText("optional: an existing bridge, e.g. br0")
        self.tap_row = QWidget(self)
        tap_lay = QHBoxLayout(self.tap_row)
        tap_lay.setContentsMargins(0, 0, 0, 0)
        tap_lay.addWidget(QLabel("Interface:"))
        tap_lay.addWidget(self.tap, 1)
        tap_lay.addWidget(QLabel("Bridge:"))
        tap_lay.addWidget(self.bridge_name, 1)
        form.addRow("", self.tap_row)
        self.model = QComboBox(self)
        self.model.setObjectName("nicModel")
        self.model.addItem("virtio-net", "virtio")
        form.addRow("Device model:", self.model)
        mac_row = QHBoxLayout()
        self.mac = QLineEdit(self)
        self.mac.setObjectName("nicMac")
        self.mac.setPlaceholderText("set when the card is saved")
        self.new_mac = QPushButton("New Address", self)
        self.new_mac.setObjectName("nicNewMac")
        self.new_mac.setToolTip("A random locally administered address in QEMU's 52:54:00 range")
        mac_row.addWidget(self.mac, 1)
        mac_row.addWidget(self.new_mac)
        form.addRow("MAC address:", mac_row)
        self.mac_error = _error_label("nicMacError")
        form.addRow("", self.mac_error)
        link_row = QHBoxLayout()
        self.link = QCheckBox("Link up (the virtual cable is plugged in)", self)
        self.link.setObjectName("nicLink")
        self.reconnect = QPushButton("Reconnect", self)
        self.reconnect.setObjectName("nicReconnect")
        self.reconnect.setToolTip("Restart this card's backend (passt, or the TAP) and bring the link back")
        link_row.addWidget(self.link, 1)
        link_row.addWidget(self.reconnect)
        form.addRow("Link state:", link_row)
        # Word-wrapped labels straight in the form (not inside a row layout), so a long line gets its height.
        self.status = WrapLabel("", self)
        self.status.setObjectName("nicStatus")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("Status:", self.status)
        self.traffic = QLabel(self)
        self.traffic.setObjectName("nicTraffic")
        form.addRow("Traffic:", self.traffic)

        self.forwards_box = QGroupBox("Port forwarding (host → guest)", self)
        box = QVBoxLayout(self.forwards_box)
        self.table = QTableWidget(0, 2, self.forwards_box)
        self.table.setObjectName("nicForwards")
        self.table.setHorizontalHeaderLabels(["Rule", "Protocol"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setMinimumHeight(84)
        self.table.setMaximumHeight(124)            # four rules in view; more scroll inside the table
        table_row = QHBoxLayout()
        table_row.addWidget(self.table, 1)
        box.addLayout(table_row)
        add_row = QHBoxLayout()
        self.proto = QComboBox(self.forwards_box)
        self.proto.setObjectName("fwdProto")
        self.proto.addItem("TCP", "tcp")
        self.proto.addItem("UDP", "udp")
        self.host_addr = QLineEdit("127.0.0.1", self.forwards_box)
        self.host_addr.setObjectName("fwdHostAddr")
        self.host_addr.setToolTip("The host address passt listens on: 127.0.0.1 keeps the port to this computer; "
                                  "0.0.0.0 opens it to the network")
        self.host_addr.setMinimumWidth(self.host_addr.fontMetrics().horizontalAdvance("127.0.0.1") + 16)
        self.host_addr.setPlaceholderText("host address")
        self.host_port = QSpinBox(self.forwards_box)
        self.host_port.setObjectName("fwdHostPort")
        self.host_port.setRange(1, 65535)
        self.host_port.setValue(2222)
        self.guest_port = QSpinBox(self.forwards_box)
        self.guest_port.setObjectName("fwdGuestPort")
        self.guest_port.setRange(1, 65535)
        self.guest_port.setValue(22)
        self.add_forward = QPushButton("Add", self.forwards_box)
        self.add_forward.setObjectName("fwdAdd")
        self.remove_forward = QPushButton("Remove", self.forwards_box)
        self.remove_forward.setObjectName("fwdRemove")
        for w in (self.proto, self.host_addr, QLabel(":"), self.host_port, QLabel("→ guest :"),
                  self.guest_port, self.add_forward):
            add_row.addWidget(w, 1 if w is self.host_addr else 0)
        buttons = QVBoxLayout()
        buttons.addWidget(self.remove_forward)
        buttons.addStretch(1)
        table_row.addLayout(buttons)
        box.addLayout(add_row)
        self.forward_error = _error_label("fwdError")
        box.addWidget(self.forward_error)
        self.forward_note = _note()
        box.addWidget(self.forward_note)
        outer.addWidget(self.forwards_box)
        outer.addStretch(1)

        self.card.currentIndexChanged.connect(self._card_chosen)
        self.add_card.clicked.connect(self._add_card)
        self.remove_card.clicked.connect(self._remove_card)
        self.backend.currentIndexChanged.connect(self._backend_changed)
        for edit in (self.tap, self.bridge_name, self.mac):
            edit.textChanged.connect(self._edited)
        self.new_mac.clicked.connect(self._new_mac)
        self.link.toggled.connect(self._link_toggled)
        self.reconnect.clicked.connect(self._reconnect)
        self.add_forward.clicked.connect(self._add_forward)
        self.remove_forward.clicked.connect(self._remove_forward)
        self.table.itemSelectionChanged.connect(self._update_enabled)
        self.timer = QTimer(self)
        self.timer.setInterval(STATUS_MS)
        self.timer.timeout.connect(self.poll_status)
        self._polling = False
        self._status: dict | None = None
        for label in (self.mac_error, self.traffic, self.forward_error, self.forward_note):
            self._line(label, "")

    def _line(self, label: QLabel, text: str) -> None:
        """A one-line message that takes no room while empty."""
        label.setText(text)
        if self.form.indexOf(label) >= 0:
            self.form.setRowVisible(label, bool(text))
        else:
            label.setVisible(bool(text))
        if text and label is self.forward_error:
            QTimer.singleShot(0, lambda: self.scroll.ensureWidgetVisible(label))     # once it is laid out

    # -- the definition ----------------------------------------------------------------------------------------
    def load(self, cfg: VmConfig) -> None:
        """Show the definition's cards (the one shown before stays shown)."""
        self.cards = [NicConfig(**{**vars(n), "forwards": list(n.forwards)}) for n in cfg.nics]
        self.index = min(self.index, max(0, len(self.cards) - 1))
        self._fill_cards()

    def _fill_cards(self) -> None:
        self._loading = True
        try:
            self.card.clear()
            for i, nic in enumerate(self.cards):
                self.card.addItem(f"{i + 1} \u00b7 {nic.mac or 'new card'}")
            if not self.cards:
                self.card.addItem("none")
            self.card.setCurrentIndex(self.index)
        finally:
            self._loading = False
        self._show_card()

    def _show_card(self) -> None:
        card = self.cards[self.index] if self.cards else NicConfig()
        self._loading = True
        try:
            self.backend.setCurrentIndex(max(0, self.backend.findData(card.backend)))
            self.tap.setText(card.tap)
            self.bridge_name.setText(card.bridge)
            self.model.setCurrentIndex(max(0, self.model.findData(card.model)))
            self.mac.setText(card.mac)
            self.link.setChecked(card.link)
            self._forward_rows(card.forwards)
            self._line(self.forward_error, "")
            self._line(self.mac_error, self.problem())
        finally:
            self._loading = False
        self._update_enabled()
        self._show_status()

    def _store(self) -> None:
        """The form's fields into the card shown."""
        if not self.cards or self._loading:
            return
        kind = self.backend.currentData()
        self.cards[self.index] = NicConfig(
            backend=kind, model=self.model.currentData(), mac=self.mac.text().strip().lower(),
            forwards=self.forwards() if kind == "user" else [], link=self.link.isChecked(),
            tap=self.tap.text().strip() if kind == "tap" else "",
            bridge=self.bridge_name.text().strip() if kind == "tap" else "")

    def _card_chosen(self, index: int) -> None:
        if self._loading or not self.cards or index < 0:
            return
        self._store()
        self.index = index
        self._status = None
        self._show_card()
        self.poll_status()

    def _add_card(self) -> None:
        self._store()
        self.cards.append(NicConfig())
        self.index = len(self.cards) - 1
        self._fill_cards()
        self.changed.emit()

    def _remove_card(self) -> None:
        if self.cards:
            del self.cards[self.index]
            self.index = max(0, self.index - 1)
            self._fill_cards()
            self.changed.emit()

    def forwards(self) -> list[str]:
        return [self.table.item(i, 0).data(Qt.ItemDataRole.UserRole) for i in range(self.table.rowCount())]

    def apply_to(self, cfg: VmConfig) -> None:
        """Put the page's cards into `cfg` (the form's edits, not yet validated)."""
        self._store()
        cfg.nics = [NicConfig(**{**vars(n), "forwards": list(n.forwards)}) for n in self.cards]

    def problem(self) -> str:
        """What keeps Apply disabled: a bad MAC or TAP name on the card shown (also in red by the field)."""
        if not self.cards:
            return ""
        mac = self.mac.text().strip().lower()
        problem = mac_problem(mac)
        twin = next((i for i, n in enumerate(self.cards) if i != self.index and mac and n.mac == mac), None)
        if not problem and twin is not None:
            problem = f"MAC {mac} is card {twin + 1}'s too: give each card its own (New Address)"
        if not problem and self.backend.currentData() == "tap":
            try:
                NicConfig(backend="tap", tap=self.tap.text().strip(),
                          bridge=self.bridge_name.text().strip()).spec().validate("TAP")
            except ValueError as exc:
                problem = str(exc)
        return problem

    def set_active(self, active: bool) -> None:
        """A started VM: its card's model, MAC and backend are fixed; the link switch, the forwards and
        Reconnect act at once."""
        self.active = active
        if active and self.isVisible():
            self.timer.start()
            self.poll_status()
        elif not active:
            self.timer.stop()
            self._status = None
        self._update_enabled()
        self._show_status()

    # -- reacting to the form -----------------------------------------------------------------------------------
    def _backend_changed(self) -> None:
        self._update_enabled()
        self._edited()

    def _edited(self) -> None:
        self._line(self.mac_error, self.problem())
        if not self._loading:
            self._store()
            self.changed.emit()

    def _update_enabled(self) -> None:
        card = bool(self.cards)
        kind = self.backend.currentData() if card else ""
        self.tap_row.setVisible(kind == "tap")
        for w in (self.backend, self.tap, self.bridge_name, self.model, self.mac, self.new_mac, self.link):
            w.setEnabled(card and (w is self.link or not self.active))
        self.card.setEnabled(card)
        self.add_card.setEnabled(not self.active and len(self.cards) < MAX_CARDS)
        self.remove_card.setEnabled(not self.active and card)
        user = kind == "user"
        self.forwards_box.setEnabled(user)
        self.remove_forward.setEnabled(user and self.table.currentRow() >= 0)
        self._line(self.forward_note, "Forwards need user-mode NAT: a TAP card is reached on its own address."
                                  if kind == "tap" else
                                  "Changes here restart the card's passt at once (a moment without network)."
                                  if self.active else "")
        self.reconnect.setEnabled(self.active and card)

    def _new_mac(self) -> None:
        self.mac.setText("52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3)))

    def _forward_rows(self, rules: list[str]) -> None:
        self.table.setRowCount(len(rules))
        for i, rule in enumerate(rules):
            try:
                text = describe_forward(rule)
            except ValueError:
                text = rule
            item = QTableWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, rule)
            self.table.setItem(i, 0, item)
            self.table.setItem(i, 1, QTableWidgetItem(rule.split(":", 1)[0].upper()))
        self._update_enabled()

    def _add_forward(self) -> None:
        rule = (f"{self.proto.currentData()}:{self.host_addr.text().strip()}:{self.host_port.value()}"
                f"-:{self.guest_port.value()}")
        rules = self.forwards() + [rule]
        try:
            NicConfig(forwards=rules).spec().validate("forward")
        except ValueError as exc:
            self._line(self.forward_error, str(exc))
            return
        self._set_forwards(rules)

    def _remove_forward(self) -> None:
        row = self.table.currentRow()
        if row >= 0:
            rules = self.forwards()
            del rules[row]
            self._set_forwards(rules)

    def _set_forwards(self, rules: list[str]) -> None:
        self._line(self.forward_error, "")
        if not self.active:
            self._forward_rows(rules)
            self._store()
            self.changed.emit()
            return
        self._live("Changing the port forwards", forwards=rules)

    def _link_toggled(self, up: bool) -> None:
        if self._loading:
            return
        if not self.active:
            self._store()
            self.changed.emit()
            return
        self._live("Switching the link " + ("up" if up else "down"), link=up)

    def _live(self, what: str, **change: object) -> None:
        """A running VM's card changed at once and saved (Host.net_set); a refusal (a port passt cannot bind)
        shows as one line under the table, and the page goes back to what the VM has."""
        host, uuid, index = self.bridge.host, self.uuid, self.index
        self.forwards_box.setEnabled(False)
        self.link.setEnabled(False)

        def done(info: VmInfo) -> None:
            self.load(info.config)
            self.liveApplied.emit(info)
            self.poll_status()

        def failed(message: str) -> None:
            info = self.bridge.info(uuid)
            if info is not None:
                self.load(info.config)
            self._line(self.forward_error, message)
            self.poll_status()

        self.bridge.call(what, lambda: host.net_set(uuid, index, **change), done, failed)

    def _reconnect(self) -> None:
        host, uuid, index = self.bridge.host, self.uuid, self.index
        self.reconnect.setEnabled(False)
        self.status.setText("Reconnecting…")

        def finished(message: str = "") -> None:
            self._line(self.forward_error, message if isinstance(message, str) else "")
            self._update_enabled()
            self.poll_status()

        self.bridge.call("Reconnecting the network card", lambda: host.net_reconnect(uuid, index),
                         lambda _: finished(), finished)

    # -- status of a running VM's card ------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self.active:
            self.timer.start()
            self.poll_status()

    def hideEvent(self, event) -> None:  # noqa: N802
        super().hideEvent(event)
        self.timer.stop()

    def poll_status(self) -> None:
        if self._polling or not self.active:
            return
        self._polling = True
        host, uuid = self.bridge.host, self.uuid

        def done(cards: list[dict]) -> None:
            self._polling = False
            self._status = cards[self.index] if self.index < len(cards) else None
            self._show_status()

        def failed(message: str) -> None:
            self._polling = False
            self._status = {"error": message}
            self._show_status()

        self.bridge.call("Reading the network card's status", lambda: host.net_status(uuid), done, failed)

    def _show_status(self) -> None:
        status = self._status
        self._line(self.traffic, "")
        if not self.cards:
            self.status.setText("The VM has no network card: Add Card gives it one.")
        elif not self.active or status is None:
            self.status.setText("Not running." if not self.active else "Reading…")
        elif "error" in status:
            self.status.setText(f"<span style='color:{RED}'>{status['error']}</span>")
        else:
            backend = "passt" if status["backend"] == "user" else f"TAP {self.tap.text()}"
            if not status["link_up"]:
                self.status.setText(f"<span style='color:{RED}'>Link down: {status['link_reason']}</span>")
                self.reconnect.setToolTip(f"Restart {backend} and bring the link back")
            elif not status["switch_up"]:
                self.status.setText(f"{backend} running; the link is switched off (the guest sees no carrier).")
            else:
                self.status.setText(f"Link up: {status['link_reason']}, MTU {status['mtu']}.")
            self._line(self.traffic, f"received {_size(status['rx_bytes'])} · sent {_size(status['tx_bytes'])}")
            self.traffic.setToolTip(f"{status['rx_packets']} frames received, {status['tx_packets']} sent; dropped: "
                                    f"{status['rx_dropped']} received, {status['tx_dropped']} sent")
