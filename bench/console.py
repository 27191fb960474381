"""Console benchmark (issue 5): frames per second and CPU cost of producing and painting a frame that changes
every frame — 1024x768x32 (Bochs VBE) and 80x25 text — and the latency from a Qt key event to the scan code
being readable at the i8042's data port; then, with a real guest (Debian's kernel on the software CPU, a busybox
shell on tty1, the tests' fixtures), the latency from a Qt key event to the guest reading the scan code at port
0x60 and to the typed character's echo landing in the VGA text buffer.

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python bench/console.py [--frames N] [--keys N] [--no-guest]
Painting is measured with the real ConsoleView: each frame is fetched from the Renderer and the widget is
repainted synchronously (repaint()), at 1:1 scale, so the number includes Qt's drawing of the dirty area.
"""
from __future__ import annotations

import argparse
import faulthandler
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
from core.devices.i8042 import I8042, translate_byte  # noqa: E402
from core.devices.vga import Vga  # noqa: E402
from core.display.renderer import Renderer  # noqa: E402
from core.irq import IrqLine  # noqa: E402
from core.keymap import Ps2InputSink, make_code  # noqa: E402


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
    ap.add_argument("--keys", type=int, default=100, help="keys typed into the real guest")
    ap.add_argument("--no-guest", action="store_true", help="skip the measurement with a booted guest")
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
    # The VM window's default: scaled to fit a window that is not a multiple of the frame (smooth scaling).
    view.set_scale_to_fit(True)
    view.resize(900, 640)
    app.processEvents()
    fps, cpu = measure(view, change_vbe, args.frames)
    print(f"1024x768x32 scaled to 853x640 (smooth): {fps:6.0f} frames/s; at 60 frames/s: {cpu:5.1f}% of one core")

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
    if not args.no_guest:
        guest_latency(args.keys)
    return 0


def _percentiles(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1e3  # noqa: E731
    return f"median {pick(0.5):.2f} ms, p90 {pick(0.9):.2f} ms, max {samples[-1] * 1e3:.2f} ms"


def guest_latency(keys: int) -> None:
    """Boot the test guest with its shell on tty1, type `keys` letters (each followed by Backspace) into a
    ConsoleView, and time each from QTest's key press to (a) the guest's IN from port 0x60 returning the
    letter's set-1 make code, (b) the guest's write of the echoed character into the VGA text buffer."""
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "out"
    kernel, initrd = fixtures / "vmlinuz-amd64", fixtures / "initramfs-amd64.cpio.gz"
    if not kernel.exists() or not initrd.exists():
        print(f"real guest: skipped ({kernel.name} / {initrd.name} missing: run tests/fixtures/build.py)")
        return
    faulthandler.disable()          # it slows the software CPU down (see tests/host/test_host.py)
    from core.display.renderer import text_snapshot
    from core.machine import Machine, MachineConfig

    machine = Machine(MachineConfig(kernel=str(kernel), initrd=str(initrd), memory_mib=256, accel="software",
                                    cmdline="console=ttyS0 quiet vireo.action=shell vireo.console=tty1"))
    kbc = machine.board.i8042
    read_at: dict[int, float] = {}
    echo_at: dict[int, float] = {}
    kbc_read, vga_write = kbc.io_read, machine.board.vga.memory.write

    def timed_read(port: int, size: int) -> int:
        value = kbc_read(port, size)
        if port == 0x60:
            read_at.setdefault(value, time.perf_counter())
        return value

    def timed_write(offset: int, value: int) -> None:
        vga_write(offset, value)
        echo_at.setdefault(value, time.perf_counter())

    kbc.io_read = timed_read
    machine.board.vga.memory.write = timed_write
    view = ConsoleView(Renderer(machine.board.vga), Ps2InputSink(kbc))
    view.show()
    view.setFocus()
    app = QApplication.instance()
    t0 = time.perf_counter()
    machine.start()
    # Wait for the prompt itself: keys typed before Linux's i8042 driver starts (a bare "#" can end a wrapped
    # kernel banner line) fill the buffer it flushes, and it then gives up on the controller.
    while not any(line.endswith("vireo:~#") for line in text_snapshot(machine.board.vga) or []):
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > 120:
            print("real guest: no shell prompt on tty1 within 120 s")
            machine.power_off()
            return
    print(f"real guest: shell prompt on tty1 after {time.perf_counter() - t0:.1f} s")
    # The make code the guest reads: set 1 if it left the controller's translation on, else set 2 as sent.
    translated = bool(kbc.ctr & 0x40)
    letters = [(Qt.Key.Key_A, "a"), (Qt.Key.Key_S, "s"), (Qt.Key.Key_D, "d")]
    to_read, to_echo = [], []
    for i in range(keys):
        key, name = letters[i % len(letters)]
        make = make_code(name)[0]
        code, char = (translate_byte(make) if translated else make), ord(name)
        read_at.clear()
        echo_at.clear()
        start = time.perf_counter()
        QTest.keyPress(view, key)
        deadline = start + 2
        while (code not in read_at or char not in echo_at) and time.perf_counter() < deadline:
            time.sleep(0.0002)
        if code in read_at:
            to_read.append(read_at[code] - start)
        if char in echo_at:
            to_echo.append(echo_at[char] - start)
        QTest.keyRelease(view, key)
        QTest.keyClick(view, Qt.Key.Key_Backspace)
        time.sleep(0.02)
        app.processEvents()
    machine.power_off()
    machine.wait(10)
    print(f"real guest, key event -> guest reads the scan code at 0x60 (set {1 if translated else 2}): "
          f"{_percentiles(to_read)} ({len(to_read)}/{keys} keys)")
    print(f"real guest, key event -> echoed character written to the VGA text buffer: {_percentiles(to_echo)} "
          f"({len(to_echo)}/{keys} keys)")


if __name__ == "__main__":
    sys.exit(main())
