"""Live graphs with pyqtgraph: the small CPU sparkline shown in the main window's VM rows and the labelled
time-series plots of the VM window's Performance tab. Starting the app does not pay for pyqtgraph: preload()
imports it on a thread of its own once the window shows (its import takes ~0.3 s, which on the GUI thread stalled
the event loop when the first VM started and its sparkline appeared); a graph made before that finishes waits for
the same import (Python's import lock)."""
from __future__ import annotations

import threading

from PyQt6.QtCore import QSize
from PyQt6.QtWidgets import QWidget

_configured = False


def preload() -> None:
    """Import pyqtgraph in the background, so the first graph does not block the GUI thread on it."""
    threading.Thread(target=_import, name="vireo-preload-pyqtgraph", daemon=True).start()


def _import() -> None:
    import pyqtgraph  # noqa: F401


def _pg():
    global _configured
    import pyqtgraph as pg

    if not _configured:
        pg.setConfigOptions(antialias=True, background=None, foreground="#5f6b76")
        _configured = True
    return pg


def sparkline(parent: QWidget | None = None, color: str = "#2e9e48") -> QWidget:
    """A 0..100 line with no axes, sized for a tree row; give it data with set_values()."""
    pg = _pg()

    class Sparkline(pg.PlotWidget):
        def __init__(self) -> None:
            super().__init__(parent)
            self.setMouseEnabled(False, False)
            self.hideButtons()
            self.setMenuEnabled(False)
            for axis in ("left", "bottom"):
                self.hideAxis(axis)
            self.setYRange(0, 100, padding=0.05)
            self.getPlotItem().setContentsMargins(0, 1, 0, 1)
            self.setFrameShape(self.Shape.NoFrame)
            self.setBackground(None)                 # the row's own (selection) colour shows through
            self.setStyleSheet("background: transparent;")
            self.curve = self.plot([], pen=pg.mkPen(color, width=1.4), fillLevel=0,
                                   brush=pg.mkBrush(color + "40"))
            self.setToolTip("CPU usage, last 60 s")

        def set_values(self, values: list[float], span: int = 60) -> None:
            values = values[-span:]
            self.curve.setData(list(range(span - len(values), span)), values)
            self.setXRange(0, span - 1, padding=0)

        def sizeHint(self) -> QSize:
            return QSize(120, 22)

    return Sparkline()


def time_plot(title: str, unit: str, color: str, y_max: float | None = None, parent: QWidget | None = None):
    """A titled plot of the last HISTORY seconds; set_series(list of (seconds ago, value), label)."""
    pg = _pg()

    class TimePlot(pg.PlotWidget):
        def __init__(self) -> None:
            super().__init__(parent)
            self.setMouseEnabled(False, False)
            self.hideButtons()
            self.setMenuEnabled(False)
            self.showGrid(x=True, y=True, alpha=0.15)
            self.setLabel("left", unit)
            self.setLabel("bottom", "seconds ago")
            self.setTitle(f"<span style='font-size:10pt'>{title}</span>")
            self.getViewBox().invertX(True)
            if y_max is not None:
                self.setYRange(0, y_max, padding=0.02)
            else:
                self.enableAutoRange(axis="y")
                self.setLimits(yMin=0)
            self.setXRange(0, 120, padding=0)
            self.curve = self.plot([], pen=pg.mkPen(color, width=2), fillLevel=0, brush=pg.mkBrush(color + "30"))
            self.note = pg.TextItem("", color="#888888", anchor=(0.5, 0.5))
            self.addItem(self.note)
            self.note.setPos(60, (y_max or 1) / 2)

        def set_series(self, ages: list[float], values: list[float | None], note: str = "") -> None:
            pairs = [(a, v) for a, v in zip(ages, values, strict=True) if v is not None]
            self.curve.setData([a for a, _ in pairs], [v for _, v in pairs])
            self.note.setText(note)
            if y_max is None:
                top = max((v for _, v in pairs), default=1.0)
                self.setYRange(0, max(top * 1.15, 1.0), padding=0)
                self.note.setPos(60, max(top * 1.15, 1.0) / 2)

        def sizeHint(self) -> QSize:
            return QSize(360, 200)

    return TimePlot()
