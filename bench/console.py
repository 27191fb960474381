"""Console benchmark (issue 5): frames per second and CPU cost of producing and painting a frame that changes
every frame — 1024x768x32 (Bochs VBE) and 80x25 text — and the latency from a Qt key event to the scan code
being readable at the i8042's data port.

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python bench/console.py [--frames N]
Painting is measured with the real ConsoleView: each frame is fetched from the Renderer and the widget is
repainted synchronously (repaint()), at 1:1 scale, so the number includes Qt's drawing of the dirty area.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt6.QtCore import Qt  # noqa: E402
from PyQt6.QtTest import QTest  # noqa: E402
from PyQt6.QtWidgets import QApplication  # noqa: E402

from app.widgets.console import ConsoleView  # noqa: E402
from core.bus import PortIoBus  # noqa: E402
from core.devices.i8042 import I8042  # noqa: E402
from core.devices.vga import Vga  # noqa: E402
from core.display.renderer import Renderer  # noqa: E402
from core.irq import IrqLine  # noqa: E402
from core.keymap import Ps2InputSink  # noqa: E402


def measure(view: ConsoleView, change, frames: int) -> tuple[float, float]:
    """(frames per second, CPU % of one core at 60 frames/s) for change()+render+paint per frame."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(frames):
        change(i)
        assert view.refresh()
        view.repaint()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return frames / wall, cpu / frames * 60 * 100


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    app = QApplication.instance() or QApplication(sys.argv)

    vga = Vga()
    for index, value in ((3, 32), (1, 1024), (2, 768), (4, 0x41)):
        vga.vbe.write_reg(index, value)
    view = ConsoleView(Renderer(vga))
    view.set_scale_to_fit(False)
    view.resize(1024, 768)
    view.show()
    app.processEvents()
    pixels = vga.vbe.array[:1024 * 768 * 4].view("u4")
    rng_row = (pixels.reshape(768, 1024))

    def change_vbe(i: int) -> None:
        rng_row[:, :] = i * 0x010203              # every pixel changes every frame
        vga.regs.generation += 1

    fps, cpu = measure(view, change_vbe, args.frames)
    print(f"1024x768x32, whole frame changing: {fps:6.0f} frames/s; at 60 frames/s: {cpu:5.1f}% of one core")

    text = Vga()
    tview = ConsoleView(Renderer(text))
    tview.set_scale_to_fit(False)
    tview.resize(720, 400)
    tview.show()
    app.processEvents()

    def change_text(i: int) -> None:
        text.memory.planes[0, 0:4000:2] = 0x41 + i % 26   # every cell's character changes
        text.memory.planes[1, 0:4000:2] = 1 + i % 15
        text.regs.generation += 1

    fps, cpu = measure(tview, change_text, args.frames)
    print(f"80x25 text (720x400), all cells changing: {fps:6.0f} frames/s; at 60 frames/s: {cpu:5.1f}% of one core")

    class NoIrq:
        def set_irq(self, gsi: int, level: bool) -> None:
            pass

    pio = PortIoBus()
    kbc = I8042(lambda: None, IrqLine(NoIrq(), 1), IrqLine(NoIrq(), 12))
    kbc.attach(pio)
    kview = ConsoleView(Renderer(text), Ps2InputSink(kbc))
    kview.show()
    kview.setFocus()
    latencies = []
    for _ in range(200):
        t0 = time.perf_counter()
        QTest.keyPress(kview, Qt.Key.Key_A)
        if pio.read(0x64, 1) & 1:
            pio.read(0x60, 1)
            latencies.append(time.perf_counter() - t0)
        QTest.keyRelease(kview, Qt.Key.Key_A)
        while pio.read(0x64, 1) & 1:
            pio.read(0x60, 1)
    latencies.sort()
    print(f"key event -> scan code at port 0x60: median {latencies[len(latencies) // 2] * 1e6:.0f} us, "
          f"max {latencies[-1] * 1e6:.0f} us ({len(latencies)} keys; a guest then needs its IRQ 1 delivered)")
    vga.close()
    text.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
