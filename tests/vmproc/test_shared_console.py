"""The shared-memory console (core/vmproc/shared_console.py): every reader gets exact pictures and the right dirty
rectangles whatever its polling rate, a hostile file never crashes a reader, the writer renders only while someone
watches and goes on after a frame that failed to render, and a reader keeps up with 60 frames/s at 1024x768."""
from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest

from core.bus import MmioBus, PortIoBus
from core.devices.vga import Vga
from core.display.frame import Frame
from core.display.renderer import Renderer
from core.vmproc.shared_console import (
    HEADER_SIZE,
    RING,
    SharedConsoleReader,
    SharedConsoleWriter,
    capacity_for,
)
from tests.helpers.vmproc import screen_lines

W, H = 1024, 768


@pytest.fixture
def console(tmp_path):
    path = str(tmp_path / "vm.console")
    writer = SharedConsoleWriter(path, source=None, capacity=capacity_for(16 << 20))
    yield path, writer
    writer.close()


class Picture:
    """The writer's side of a test: a picture changed a few rectangles at a time, published frame by frame."""

    def __init__(self, writer: SharedConsoleWriter, w: int = W, h: int = H, seed: int = 1) -> None:
        self.writer = writer
        self.rng = np.random.default_rng(seed)
        self.pixels = np.full((h, w), 0xFF000000, np.uint32)
        writer.publish(Frame(w, h, self.pixels.copy(), [(0, 0, w, h)], "vbe test"))

    def change(self, count: int = 2) -> None:
        h, w = self.pixels.shape
        rects = []
        for _ in range(count):
            x, y = int(self.rng.integers(0, w - 1)), int(self.rng.integers(0, h - 1))
            rw, rh = int(self.rng.integers(1, min(64, w - x) + 1)), int(self.rng.integers(1, min(64, h - y) + 1))
            self.pixels[y:y + rh, x:x + rw] = self.rng.integers(0, 2**32, (rh, rw), dtype=np.uint32) | 0xFF000000
            rects.append((x, y, rw, rh))
        self.writer.publish(Frame(w, h, self.pixels.copy(), rects, "vbe test"))


def covered(rects, shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x, y, w, h in rects:
        assert 0 <= x and 0 <= y and x + w <= shape[1] and y + h <= shape[0], (x, y, w, h)
        mask[y:y + h, x:x + w] = True
    return mask


def test_readers_polling_at_different_rates_each_get_exact_frames_and_dirty_rects(console):
    path, writer = console
    picture = Picture(writer)
    readers = [SharedConsoleReader(path) for _ in range(3)]
    seen = [None, None, None]
    for step in range(1, 60):
        picture.change(count=1 + step % 3)
        for i, reader in enumerate(readers):
            if step % (1, 3, 7)[i]:
                continue
            frame = reader.render()
            assert frame is not None
            assert np.array_equal(frame.pixels, picture.pixels)
            if seen[i] is not None:
                # Every pixel that differs from what this reader showed before is inside its rectangles.
                changed = seen[i] != frame.pixels
                assert not (changed & ~covered(frame.dirty, changed.shape)).any()
                assert frame.dirty != [(0, 0, W, H)]         # and it is not the lazy answer
            seen[i] = frame.pixels.copy()
            assert reader.render() is None                   # nothing new since
    for reader in readers:
        reader.close()


def test_a_reader_that_fell_behind_the_ring_gets_the_whole_frame(console):
    path, writer = console
    picture = Picture(writer)
    reader = SharedConsoleReader(path)
    assert reader.render() is not None
    for _ in range(RING + 1):
        picture.change(count=1)
    frame = reader.render()
    assert frame.dirty == [(0, 0, W, H)] and np.array_equal(frame.pixels, picture.pixels)


def test_a_new_geometry_is_a_whole_frame_and_force_repeats_the_picture(console):
    path, writer = console
    Picture(writer)
    reader = SharedConsoleReader(path)
    reader.render()
    small = Picture(writer, 640, 480, seed=2)
    frame = reader.render()
    assert (frame.width, frame.height, frame.dirty) == (640, 480, [(0, 0, 640, 480)])
    assert np.array_equal(frame.pixels, small.pixels)
    again = reader.render(force=True)
    assert again is not None and again.dirty == [(0, 0, 640, 480)] and np.array_equal(again.pixels, small.pixels)


def test_the_writer_renders_only_while_a_reader_watches(tmp_path):
    vga = Vga()
    mmio = MmioBus()
    vga.attach(PortIoBus(), mmio)
    now = [100.0]
    writer = SharedConsoleWriter(str(tmp_path / "c"), Renderer(vga), capacity_for(vga.vbe.vram_size),
                                 clock=lambda: now[0])
    try:
        for i, ch in enumerate(b"HELLO"):
            mmio.write(0xB8000 + 2 * (2 * 80 + i), 2, 0x0700 | ch)      # row 2: away from the cursor at 0,0
        assert not writer.poll()                             # nobody watches: nothing rendered
        reader = SharedConsoleReader(writer.path, clock=lambda: now[0])
        assert reader.render() is None                       # its heartbeat wakes the writer ...
        assert writer.poll()
        frame = reader.render()                              # ... and the next poll shows the screen
        assert frame.mode == "text 80x25" and screen_lines(frame)[2] == "HELLO"
        now[0] += 5                                          # the reader went away
        assert not writer.poll()
        reader.close()
    finally:
        writer.close()
    assert not os.path.exists(writer.path)


def _corrupt(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("offset, data", [
    (0, b"\xff" * 4096),                                       # garbage over the whole header
    (0, b"XXXX"),                                              # wrong magic
    (24, struct.pack("<III", 0xFFFFFFFF, 0xFFFFFFFF, 4)),      # a huge picture
    (24, struct.pack("<III", 1024, 768, 1000)),                # stride shorter than a row
    (40, struct.pack("<Q", 1 << 40)),                          # capacity beyond the file
    (8, struct.pack("<Q", 7)),                                 # a writer forever mid-frame
    (112, struct.pack("<QIIII", 2, 0xFFFFFF00, 5, 0xFFFFFFFF, 9) * RING),   # rectangles far outside
    (56, struct.pack("<Q", 2**64 - 1)),                        # a nonsense ring position
])
def test_a_hostile_header_never_crashes_the_reader(console, offset, data):
    path, writer = console
    picture = Picture(writer)
    reader = SharedConsoleReader(path)
    reader.render()
    picture.change()
    _corrupt(path, offset, data)
    for force in (False, True, False):
        frame = reader.render(force=force)
        if frame is not None:                                 # what it returns is always a consistent frame
            assert frame.pixels.shape == (frame.height, frame.width) and frame.width * frame.height <= W * H
            covered(frame.dirty, frame.pixels.shape)


def test_random_header_damage_and_a_truncated_file_never_crash_the_reader(console):
    path, writer = console
    picture = Picture(writer, 320, 200)
    reader = SharedConsoleReader(path)
    rng = np.random.default_rng(7)
    for _ in range(300):
        picture.change()
        offset = int(rng.integers(0, 400))
        _corrupt(path, offset, rng.bytes(int(rng.integers(1, 24))))
        frame = reader.render(force=bool(rng.integers(0, 2)))
        if frame is not None:
            assert frame.pixels.shape == (frame.height, frame.width)
            covered(frame.dirty, frame.pixels.shape)
    os.truncate(path, HEADER_SIZE + 1000)                    # shrunk under the reader: no SIGBUS, just no frame
    _corrupt(path, 0, struct.pack("<4sIQQIII", b"VRCN", 1, 2, 9, 320, 200, 1280))
    assert reader.render(force=True) is None
    os.truncate(path, 10)
    assert reader.render(force=True) is None


def test_a_reader_keeps_up_with_60_full_frames_a_second_at_1024x768(console):
    path, writer = console
    reader = SharedConsoleReader(path)
    pixels = np.empty((H, W), np.uint32)
    frames, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        pixels[:] = 0xFF000000 | frames                       # every pixel changes every frame
        writer.publish(Frame(W, H, pixels, [(0, 0, W, H)], "vbe 1024x768x32"))
        frame = reader.render()
        assert frame is not None and frame.pixels[H - 1, W - 1] == 0xFF000000 | frames
        frames += 1
    rate = frames / (time.perf_counter() - start)
    print(f"shared console: {rate:.0f} full 1024x768 frames/s published and read")
    assert rate >= 60


class _FlakySource:
    """A frame source whose render() raises for its first `failures` calls (a frame caught mid-mode-change), then
    draws a picture."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def render(self, force: bool = False) -> Frame | None:
        self.calls += 1
        if self.calls <= self.failures:
            raise IndexError("a frame caught mid-mode-change")
        pixels = np.full((8, 8), 0xFF00FF00, np.uint32)
        return Frame(8, 8, pixels, [(0, 0, 8, 8)], "vbe test") if self.calls == self.failures + 1 else None


def _watch(path: str, seconds: float) -> Frame | None:
    """A reader watching for `seconds`: the last frame it got."""
    frame = None
    with SharedConsoleReader(path) as reader:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame = reader.render() or frame
            time.sleep(0.01)
    return frame


def test_a_frame_that_fails_to_render_is_followed_by_the_next(tmp_path):
    source = _FlakySource(failures=3)
    writer = SharedConsoleWriter(str(tmp_path / "c"), source, capacity_for(1 << 20))
    writer.start()
    try:
        frame = _watch(writer.path, 1.0)
        assert frame is not None and int(frame.pixels[0, 0]) == 0xFF00FF00
        assert writer._thread.is_alive()
    finally:
        writer.close()


def test_rendering_that_always_fails_stops_the_console_not_the_process(tmp_path):
    from core.vmproc.shared_console import RENDER_FAILURES
    source = _FlakySource(failures=10**9)
    writer = SharedConsoleWriter(str(tmp_path / "c"), source, capacity_for(1 << 20))
    writer.start()
    try:
        assert _watch(writer.path, 2.5) is None
        writer._thread.join(2)
        assert not writer._thread.is_alive() and source.calls == RENDER_FAILURES
    finally:
        writer.close()
