"""Shared-console benchmark (issue 11): frames per second a viewer gets at 1024x768 from a VM process's shared
console (core/vmproc/shared_console.py), and what it costs each side.

Two measurements:
- pipeline: a writer process (the VM process's half: a Vga in Bochs VBE 1024x768x32 whose whole framebuffer
  changes continuously, its Renderer, a SharedConsoleWriter on its own thread, as in core/vmproc/child.py) and
  this process as the viewer, polling SharedConsoleReader.render() every 16 ms like the GUI's console; reports
  the viewer's frames/s, and the CPU of the viewer and of the writer process;
- reader ceiling: publish + read of a fully changed 1024x768 frame back to back in one process (no rendering),
  i.e. how far the shared mapping and the reader's copy are from being the limit.

Run: .venv/bin/python bench/shared_console.py [--seconds S]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core.devices.vga import Vga  # noqa: E402
from core.display.frame import Frame  # noqa: E402
from core.display.renderer import Renderer  # noqa: E402
from core.vmproc.shared_console import SharedConsoleReader, SharedConsoleWriter, capacity_for  # noqa: E402

W, H = 1024, 768
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def writer_process(path: str) -> None:
    """The VM process's half: a 1024x768x32 VBE screen changing all the time, published while watched."""
    vga = Vga()
    for index, value in ((3, 32), (1, W), (2, H), (4, 0x41)):      # BPP, XRES, YRES, ENABLE | LFB
        vga.vbe.write_reg(index, value)
    fb = np.frombuffer(vga.vbe.vram, np.uint32, W * H)
    writer = SharedConsoleWriter(path, Renderer(vga), capacity_for(vga.vbe.vram_size))
    writer.start()

    def animate() -> None:                 # a guest redrawing its whole screen ~120 times a second
        n = 0
        while True:
            fb[:] = 0x00101010 * (n % 16)
            vga.regs.generation += 1
            n += 1
            time.sleep(1 / 120)
    threading.Thread(target=animate, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()                       # until the viewer closes our stdin


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def pipeline(seconds: float) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="vireo-bench-"), "console")
    child = subprocess.Popen([sys.executable, __file__, "--writer", path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        reader = SharedConsoleReader(path)
        warm = time.monotonic() + 1.0
        while time.monotonic() < warm:                     # the writer wakes up on the first heartbeat
            reader.render()
            time.sleep(0.016)
        frames, cpu0, wcpu0, start = 0, time.process_time(), process_cpu(child.pid), time.perf_counter()
        tick = start
        while time.perf_counter() - start < seconds:
            frame = reader.render()
            if frame is not None:
                assert (frame.width, frame.height) == (W, H)
                frames += 1
            tick += 0.016
            time.sleep(max(0.0, tick - time.perf_counter()))
        wall = time.perf_counter() - start
        viewer_cpu = (time.process_time() - cpu0) / wall * 100
        writer_cpu = (process_cpu(child.pid) - wcpu0) / wall * 100
        print(f"pipeline, viewer polling every 16 ms: {frames / wall:.1f} frames/s at {W}x{H}; viewer CPU "
              f"{viewer_cpu:.1f} % of a core, writer (VM process side) CPU {writer_cpu:.1f} %")
        reader.close()
    finally:
        child.stdin.close()
        child.wait(10)


def ceiling(seconds: float) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="vireo-bench-"), "console")
    writer = SharedConsoleWriter(path, None, capacity_for(16 << 20))
    reader = SharedConsoleReader(path)
    pixels = np.empty((H, W), np.uint32)
    frames, start = 0, time.perf_counter()
    read_time = 0.0
    while time.perf_counter() - start < seconds:
        pixels[:] = 0xFF000000 | frames
        writer.publish(Frame(W, H, pixels, [(0, 0, W, H)], "vbe"))
        t = time.perf_counter()
        assert reader.render() is not None
        read_time += time.perf_counter() - t
        frames += 1
    wall = time.perf_counter() - start
    print(f"ceiling: {frames / wall:.0f} full {W}x{H} frames/s published and read; a reader's render() of a "
          f"whole frame takes {read_time / frames * 1000:.2f} ms")
    writer.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--writer", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.writer:
        writer_process(args.writer)
        return 0
    pipeline(args.seconds)
    ceiling(min(args.seconds, 2.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
