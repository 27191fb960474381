"""The VM window's Serial Console tab: a terminal on the guest's ttyS0 (app.widgets.terminal) fed by the
HostBridge's serial fan-out, and a banner saying why nothing can be typed when the VM is not running."""
from __future__ import annotations

from PyQt6.QtWidgets import QVBoxLayout, QWidget

from app.host_bridge import HostBridge
from app.widgets.banner import NoticeBanner
from app.widgets.terminal import SerialTerminal
from core.host import VmInfo, VmState


class SerialConsoleTab(QWidget):
    """The terminal plus a banner saying why nothing can be typed when the VM is not running."""

    def __init__(self, bridge: HostBridge, uuid: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.uuid = bridge, uuid
        self.terminal = SerialTerminal(self)
        self.terminal.setObjectName("serialTerminal")
        self.banner = NoticeBanner(self)
        self.banner_text, self.run_button = self.banner.text, self.banner.button
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.banner)
        lay.addWidget(self.terminal, 1)
        self.terminal.inputData.connect(lambda data: self.bridge.send_serial(self.uuid, data))
        bridge.serialReady.connect(self._drain)
        bridge.open_serial(uuid)             # the output so far, then each new piece, through _drain

    def _drain(self, uuid: str) -> None:
        if uuid == self.uuid:
            self.terminal.feed(self.bridge.take_serial(uuid))

    def update_state(self, info: VmInfo) -> None:
        running = info.state == VmState.RUNNING
        self.terminal.read_only = not running
        self.banner.setVisible(not running)
        self.run_button.setVisible(info.state in (VmState.SHUTOFF, VmState.CRASHED, VmState.PAUSED))
        self.run_button.setText("Resume" if info.state == VmState.PAUSED else "Run")
        text = {
            VmState.SHUTOFF: "The virtual machine is shut off.",
            VmState.STARTING: "Starting…",
            VmState.PAUSED: "The virtual machine is paused: it does not read its serial port.",
            VmState.CRASHED: f"The virtual machine crashed: {info.reason}",
        }.get(info.state, "")
        if info.state == VmState.SHUTOFF and info.reason:
            text = f"The virtual machine is shut off ({info.reason})."
        self.banner_text.setText(text)

    def close_serial(self) -> None:
        self.bridge.close_serial(self.uuid)
