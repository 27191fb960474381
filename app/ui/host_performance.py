"""The whole host's load in Host Details (issue 17, "Host details"): CPU, memory, disk and network graphs over the
last two minutes, from the host's counters (Host.host_counters, core/host/hostload.py) sampled on a worker at the
Preferences' graph interval; each rate is taken between two of this window's own samples."""
from __future__ import annotations

from collections import deque

from PyQt6 import sip
from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from app.host_bridge import HostBridge
from app.ui import preferences
from app.widgets.graphs import time_plot
from core.host import HostCounters, rates

HISTORY = 120       # samples kept


class HostPerformanceView(QWidget):
    def __init__(self, bridge: HostBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setObjectName("hostPerformance")
        info = bridge.host_info
        total = info.memory_mib if info is not None else None
        # Short titles: four graphs share the dialog's width.
        self.cpu = time_plot("CPU usage", "%", "#2e9e48", 100, self)
        self.mem = time_plot("Memory in use", "MiB", "#1e78c8", total, self)
        self.disk = time_plot("Disk read + write", "KiB/s", "#9a6700", None, self)
        self.net = time_plot("Network in + out", "KiB/s", "#75507b", None, self)
        self.summary = QLabel("<b>Performance</b> · reading the host's counters…", self)
        self.summary.setObjectName("hostPerfSummary")
        grid = QGridLayout()
        for i, plot in enumerate((self.cpu, self.mem, self.disk, self.net)):
            plot.setMinimumHeight(150)
            grid.addWidget(plot, 0, i)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.summary)
        lay.addLayout(grid, 1)
        self.samples: deque[HostCounters] = deque(maxlen=HISTORY + 1)
        self.points: deque[tuple[float, tuple[float, float, float, float]]] = deque(maxlen=HISTORY)
        self._asking = False
        self.timer = QTimer(self)
        self.timer.setInterval(preferences.current().poll_interval_ms)
        self.timer.timeout.connect(self.sample)
        self.timer.start()
        self.sample()

    def sample(self) -> None:
        if self._asking:
            return      # a slow host: one question at a time
        self._asking = True
        host = self.bridge.host
        self.bridge.call(f"Reading {host.name}'s load", host.host_counters, self._sampled, self._failed)

    def _sampled(self, counters: object) -> None:
        if sip.isdeleted(self):
            return
        self._asking = False
        if not isinstance(counters, HostCounters):
            return
        if self.samples:
            self.points.append((counters.timestamp, rates(self.samples[-1], counters)))
        self.samples.append(counters)
        self._draw()

    def _failed(self, message: str) -> None:
        if sip.isdeleted(self):
            return
        self._asking = False
        self.timer.stop()       # a host without the request (an older service) is not asked every second
        self.summary.setText(f"<b>Performance</b> · not available: {message}")

    def _draw(self) -> None:
        if not self.points:
            return
        now = self.points[-1][0]
        ages = [now - t for t, _ in self.points]
        for i, plot in enumerate((self.cpu, self.mem, self.disk, self.net)):
            plot.set_series(ages, [values[i] for _, values in self.points])
        cpu, mem, disk, net = self.points[-1][1]
        last = self.samples[-1]
        self.summary.setText(f"<b>Performance</b> · CPU <b>{cpu:.0f} %</b> · memory <b>{mem:.0f}</b> of "
                             f"{last.memory_total_mib} MiB · disk {disk:.0f} KiB/s · network {net:.0f} KiB/s")

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.timer.stop()           # a closed Host Details asks the host nothing more
        super().hideEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.timer.start()
        super().showEvent(event)
