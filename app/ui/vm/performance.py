"""The VM window's Performance tab: CPU, memory, disk I/O and network I/O over the last two minutes (pyqtgraph),
redrawn on each statistics sample the HostBridge takes (once a second, off the GUI thread). The network graph is
the virtio-net cards' own received and sent byte counters (core/host/vm_stats.py), as rates."""
from __future__ import annotations

from PyQt6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from app.host_bridge import HostBridge
from app.widgets.graphs import time_plot


class PerformanceView(QWidget):
    def __init__(self, bridge: HostBridge, uuid: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.uuid = bridge, uuid
        info = bridge.info(uuid)
        memory = info.config.memory_mib if info else None
        self.cpu = time_plot("CPU usage", "%", "#2e9e48", 100, self)
        self.mem = time_plot("Memory in use", "MiB", "#1e78c8", memory, self)
        self.disk = time_plot("Disk I/O (read + write)", "KiB/s", "#9a6700", None, self)
        self.net = time_plot("Network I/O (received + sent)", "KiB/s", "#75507b", None, self)
        self.summary = QLabel(self)
        self.summary.setObjectName("perfSummary")
        grid = QGridLayout()
        for i, plot in enumerate((self.cpu, self.mem, self.disk, self.net)):
            grid.addWidget(plot, i // 2, i % 2)
        lay = QVBoxLayout(self)
        lay.addWidget(self.summary)
        lay.addLayout(grid, 1)
        bridge.statsUpdated.connect(self._stats)
        bridge.vmStateChanged.connect(self._state)
        self.refresh()

    def _stats(self, uuid: str) -> None:
        if uuid == self.uuid:
            self.refresh()

    def _state(self, uuid: str, state: str, reason: str) -> None:
        if uuid == self.uuid:
            self.refresh()

    def refresh(self) -> None:
        history = self.bridge.history(self.uuid)
        info = self.bridge.info(self.uuid)
        if not history:
            idle = "not running" if info is None or not info.state.active else "waiting for the first sample"
            for plot in (self.cpu, self.mem, self.disk, self.net):
                plot.set_series([], [], idle)
            self.summary.setText(f"<b>{info.name if info else ''}</b>: {idle}")
            return
        now = history[-1].timestamp
        ages = [now - s.timestamp for s in history]
        self.cpu.set_series(ages, [s.cpu_percent for s in history])
        self.mem.set_series(ages, [s.memory_resident_mib for s in history])

        def rate(a: float | None, b: float | None) -> float | None:
            return None if a is None and b is None else ((a or 0) + (b or 0)) / 1024

        disk = [rate(s.disk_read_bps, s.disk_write_bps) for s in history]
        net = [rate(s.net_rx_bps, s.net_tx_bps) for s in history]
        self.disk.set_series(ages, disk, "" if any(v is not None for v in disk) else "no disk device")
        self.net.set_series(ages, net, "" if any(v is not None for v in net) else "no network device")
        last = history[-1]
        mem = f"{last.memory_resident_mib:.0f}" if last.memory_resident_mib is not None else "?"
        self.summary.setText(f"CPU <b>{last.cpu_percent:.0f} %</b> of {info.config.vcpus if info else '?'} vCPU · "
                             f"memory <b>{mem}</b> of {last.memory_mib} MiB · "
                             f"vCPU time {last.cpu_seconds:.1f} s"
                             + (f" · network {net[-1]:.0f} KiB/s" if net[-1] is not None else "")
                             + f" · last {ages[0]:.0f} s shown")
