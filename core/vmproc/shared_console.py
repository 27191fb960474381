"""A VM's screen in shared memory: the VM process renders its VGA into a file-backed MAP_SHARED mapping, and any
local process reads frames out of it without the pixels ever crossing a socket.

The file (`<runtime_dir>/vms/<uuid>.console`, mode 0600, on tmpfs under $XDG_RUNTIME_DIR) is a 4 KiB header and one
pixel buffer sized for the largest picture the display can produce (every byte of the Bochs VBE video memory as an
8-bit pixel, each 4 bytes once rendered). The header, little-endian:

   0 magic "VRCN"     4 version u32       8 seq u64 (seqlock: odd while the writer changes anything)
  16 frame u64 (number of the newest published frame)                 24 width u32   28 height u32
  32 stride u32 (bytes per row)           40 capacity u64 (bytes of pixel buffer after the header)
  48 heartbeat f64 (CLOCK_MONOTONIC seconds, written by readers)        56 ring_head u64 (rectangles ever written)
  64 mode: 48 bytes of UTF-8, NUL-padded
 112 ring: RING entries of (frame u64, x u32, y u32, w u32, h u32), entry i at ring_head % RING

Pixels are uint32 0xFFRRGGBB (core.display.frame.Frame's format), row y at 4096 + y * stride.

The writer publishes a frame by making seq odd, copying the changed rectangles into the buffer, updating the
geometry and mode, appending each changed rectangle to the ring tagged with the new frame number, storing the frame
number and making seq even again. It renders (64 times a second, and only when the picture changed; see
core.display.renderer.Renderer) only while some reader's heartbeat is less than READER_TIMEOUT old, so a VM nobody
watches spends nothing on its screen.

What a reader gets (SharedConsoleReader, a core.display.frame.FrameSource):
- Frames are never torn: pixels are copied out between two reads of seq, and a copy that raced the writer is
  retried (and otherwise not returned, the rows being copied again next time).
- Dirty rectangles are right for each reader whatever its polling rate: it returns the union of the ring's
  rectangles for every frame since its previous one, or the whole frame when the ring no longer holds them all, the
  geometry or mode changed, or on `force`.
- `Frame.pixels` is the reader's own buffer, updated in place by the next render() (only the dirty rows are
  copied, with pread(2) from the shared file: the one copy a frame makes on its way to a local viewer). Copy it to
  keep a picture across render() calls.
- The header is hostile input (a compromised VM process may write anything, or shrink the file): every field is
  checked against the file's real size and sane limits, and the pixels are read with pread, never through a mapping,
  so a truncated file gives short reads instead of SIGBUS. A reader never raises from render(): a bad header reads
  as "no new frame" (and is logged once).
"""
from __future__ import annotations

import logging
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Callable

import numpy as np

from core.display.frame import Frame, FrameSource, Rect

log = logging.getLogger(__name__)

MAGIC = b"VRCN"
VERSION = 1
HEADER_SIZE = 4096
RING = 64
MODE_BYTES = 48
READER_TIMEOUT = 1.0             # seconds after a reader's last heartbeat that the writer keeps rendering
HEARTBEAT_INTERVAL = 0.25
# A little faster than a 60 Hz viewer polls (the GUI's console every 16 ms), so each of its ticks finds a new frame
# while the guest animates; the writer renders only when the picture changed.
FRAME_INTERVAL = 1 / 64
IDLE_INTERVAL = 0.1              # how often a writer without readers looks for one
RENDER_FAILURES = 64             # consecutive failed frames (a second's worth) after which the console stops
MAX_SIDE = 16384                 # the reader's bounds on a hostile header (Bochs VBE allows 16000 x 12000)
MAX_CAPACITY = 256 * 1024 * 1024
MAX_RECTS = 16                   # more rectangles than this are sent as their bounding box

_FIXED = struct.Struct("<4sIQQIIIIQdQ48s")       # magic .. mode: offsets 0..111
_ENTRY = struct.Struct("<QIIII")
RING_OFFSET = _FIXED.size
HEADER_USED = RING_OFFSET + RING * _ENTRY.size
_SEQ, _FRAME, _CAPACITY, _HEARTBEAT, _RING_HEAD = 8, 16, 40, 48, 56
assert RING_OFFSET == 112 and HEADER_USED <= HEADER_SIZE


def capacity_for(vram_size: int) -> int:
    """Pixel buffer bytes for a display with `vram_size` bytes of video memory: its largest picture is one 8-bit
    pixel per byte of video memory (a text or planar mode is far smaller), rendered as 4 bytes each."""
    return max(vram_size, 1024 * 1024) * 4


def bounding_box(rects: list[Rect]) -> Rect:
    x0 = min(r[0] for r in rects)
    y0 = min(r[1] for r in rects)
    x1 = max(r[0] + r[2] for r in rects)
    y1 = max(r[1] + r[3] for r in rects)
    return (x0, y0, x1 - x0, y1 - y0)


class SharedConsoleWriter:
    """The VM process's side: owns the file, publishes the frames of `source` while someone watches."""

    def __init__(self, path: str, source: FrameSource, capacity: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.source = source
        self.clock = clock
        self.size = HEADER_SIZE + capacity
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, self.size)            # sparse: only the rows a picture uses take memory
            self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._u64 = np.frombuffer(self._map, np.uint64, HEADER_SIZE // 8)
        self._u32 = np.frombuffer(self._map, np.uint32, HEADER_SIZE // 4)
        self._pixels = np.frombuffer(self._map, np.uint32, capacity // 4, HEADER_SIZE)
        self._beat = np.frombuffer(self._map, np.float64, 1, _HEARTBEAT)
        self._map[0:8] = MAGIC + struct.pack("<I", VERSION)
        self._u64[_CAPACITY // 8] = capacity
        self._geometry: tuple[int, int, str] | None = None
        self._frame = 0
        self._head = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0

    # -- publishing -----------------------------------------------------------------------------------------
    def reader_active(self) -> bool:
        return 0 <= self.clock() - float(self._beat[0]) < READER_TIMEOUT

    def publish(self, frame: Frame) -> None:
        """Copy `frame`'s dirty rectangles (all of it when its geometry or mode changed) into the mapping."""
        w, h = frame.width, frame.height
        if w * h * 4 > self._pixels.nbytes:
            log.warning("a %dx%d picture does not fit the shared console's %d bytes", w, h, self._pixels.nbytes)
            self._geometry = None        # the next frame's rectangles are relative to this one: send it all
            return
        if self._geometry != (w, h, frame.mode):
            rects: list[Rect] = [(0, 0, w, h)]
        else:
            rects = [r for r in frame.dirty if r[2] > 0 and r[3] > 0]
            if not rects:
                return
            if len(rects) > MAX_RECTS:
                rects = [bounding_box(rects)]
        u64, u32 = self._u64, self._u32
        u64[_SEQ // 8] += np.uint64(1)                               # odd: readers retry
        target = self._pixels[: w * h].reshape(h, w)
        for x, y, rw, rh in rects:
            target[y:y + rh, x:x + rw] = frame.pixels[y:y + rh, x:x + rw]
        u32[24 // 4], u32[28 // 4], u32[32 // 4] = w, h, w * 4
        self._map[64:64 + MODE_BYTES] = frame.mode.encode("utf-8")[:MODE_BYTES].ljust(MODE_BYTES, b"\0")
        self._frame += 1
        for rect in rects:
            slot = RING_OFFSET + (self._head % RING) * _ENTRY.size
            _ENTRY.pack_into(self._map, slot, self._frame, *rect)
            self._head += 1
        u64[_RING_HEAD // 8] = self._head
        u64[_FRAME // 8] = self._frame
        u64[_SEQ // 8] += np.uint64(1)                               # even: consistent again
        self._geometry = (w, h, frame.mode)
        self.published += 1

    def poll(self) -> bool:
        """Render and publish once if a reader is watching; True when a frame was published."""
        if not self.reader_active():
            return False
        frame = self.source.render()
        if frame is None:
            return False
        self.publish(frame)
        return True

    # -- the rendering thread -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vireo-console", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        due = time.monotonic()
        failures = 0
        while not self._stop.is_set():
            active = False
            try:
                active = self.reader_active()
                if active:
                    self.poll()
                failures = 0
            except Exception:          # the screen must never take the VM down
                # The renderer reads the adapter without its vCPU's lock (core.devices.vga): a frame caught in
                # the middle of a mode change may fail once; the next one is tried. Only a failure that repeats
                # for every frame of RENDER_FAILURES in a row stops the console.
                failures += 1
                if failures == 1:
                    log.exception("rendering the shared console failed; trying the next frame")
                if failures >= RENDER_FAILURES:
                    log.error("rendering the shared console failed %d times in a row; it stops updating", failures)
                    return
            # A fixed schedule (not a sleep after each frame), so the rate does not sink by the render time.
            now = time.monotonic()
            due = max(due + (FRAME_INTERVAL if active else IDLE_INTERVAL), now)
            self._stop.wait(due - now)

    def close(self, unlink: bool = True) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class SharedConsoleReader:
    """A FrameSource reading the shared console at `path` (see the module docstring for its guarantees)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise OSError(f"{path} is not a regular file")
        self._buf: np.ndarray | None = None
        self._mode = ""
        self._frame_no = -1            # the writer's frame our buffer holds; -1: none (or rows to copy again)
        self._sequence = 0
        self._last_beat = -HEARTBEAT_INTERVAL
        self._complained = ""
        self.last_frame: Frame | None = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SharedConsoleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def render(self, force: bool = False) -> Frame | None:
        """A new Frame when the picture changed since the previous call (or `force`), else None. Never raises
        for anything in the file: a header that makes no sense reads as no new frame."""
        if self._fd < 0:
            return None
        try:
            self._heartbeat()
            for _ in range(4):
                result = self._try_render(force)
                if result is not _RETRY:
                    return result
                time.sleep(0.0005)      # the writer is mid-frame; a frame takes about a millisecond
            return None
        except _BadHeader as exc:
            self._frame_no = -1         # whatever was copied may be inconsistent: copy everything next time
            if str(exc) != self._complained:
                self._complained = str(exc)
                log.warning("shared console %s: %s", self.path, exc)
            return None
        except OSError as exc:
            log.warning("shared console %s: %s", self.path, exc)
            return None
        except Exception:               # a case the checks above missed: still no crash for the viewer
            self._frame_no = -1
            log.exception("shared console %s: unreadable", self.path)
            return None

    def _heartbeat(self) -> None:
        now = self.clock()
        if now - self._last_beat >= HEARTBEAT_INTERVAL:
            os.pwrite(self._fd, struct.pack("<d", now), _HEARTBEAT)
            self._last_beat = now

    def _try_render(self, force: bool):
        head = os.pread(self._fd, HEADER_USED, 0)
        if len(head) < HEADER_USED:
            raise _BadHeader(f"header cut short ({len(head)} bytes)")
        magic, version, seq, frame_no, w, h, stride, _pad, capacity, _beat, ring_head, mode_raw = \
            _FIXED.unpack_from(head)
        if magic != MAGIC or version != VERSION:
            raise _BadHeader(f"not a version {VERSION} console file (magic {magic!r}, version {version})")
        if seq & 1:
            return _RETRY
        if frame_no == 0:
            return None                 # nothing published yet (no reader was watching before)
        if frame_no == self._frame_no and not force and self._buf is not None:
            return None
        size = os.fstat(self._fd).st_size
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w * 4 <= stride <= MAX_SIDE * 4
                and capacity <= MAX_CAPACITY and stride * h <= capacity and HEADER_SIZE + capacity <= size):
            raise _BadHeader(f"geometry {w}x{h} stride {stride} capacity {capacity} does not fit the "
                             f"{size}-byte file")
        mode = mode_raw.rstrip(b"\0").decode("utf-8", "replace")
        same = self._buf is not None and self._buf.shape == (h, w) and mode == self._mode
        rects = None
        if same and not force and 0 <= self._frame_no < frame_no:
            rects = self._rects_since(head, ring_head, self._frame_no, frame_no, w, h)
        # In place when the geometry stays: an attempt that raced the writer leaves rows of a newer frame, which
        # the next attempt copies again (its rectangles, counted from the frame we last completed, cover them).
        target = self._buf if same else np.empty((h, w), np.uint32)
        copy = [(0, 0, w, h)] if rects is None else rects
        for y0, y1 in _row_bands(copy):
            self._copy_rows(target, stride, y0, y1)
        (seq_after,) = struct.unpack("<Q", os.pread(self._fd, 8, _SEQ).ljust(8, b"\0"))
        if seq_after != seq:
            return _RETRY
        self._buf, self._mode, self._frame_no = target, mode, frame_no
        if rects is None:
            dirty = [(0, 0, w, h)]
        else:
            dirty = rects if len(rects) <= MAX_RECTS else [bounding_box(rects)]
        self._sequence += 1
        self.last_frame = Frame(w, h, target, dirty, mode, self._sequence)
        return self.last_frame

    def _rects_since(self, head: bytes, ring_head: int, last: int, now: int, w: int, h: int) -> list[Rect] | None:
        """The ring's rectangles of frames last+1..now, clipped to the picture; None when some may be missing."""
        first = max(0, ring_head - RING)
        if ring_head > RING:
            oldest = _ENTRY.unpack_from(head, RING_OFFSET + (first % RING) * _ENTRY.size)[0]
            if oldest > last:
                return None             # entries of a frame we have not seen were overwritten
        rects: list[Rect] = []
        seen_newest = False
        for index in range(first, ring_head):
            frame, x, y, rw, rh = _ENTRY.unpack_from(head, RING_OFFSET + (index % RING) * _ENTRY.size)
            if frame <= last:
                continue
            if frame > now:
                return None             # inconsistent: a hostile or confused writer
            seen_newest |= frame == now
            x0, y0 = min(x, w), min(y, h)
            x1, y1 = min(x + rw, w), min(y + rh, h)
            if x1 > x0 and y1 > y0:
                rects.append((x0, y0, x1 - x0, y1 - y0))
        return rects if seen_newest and rects else None

    def _copy_rows(self, target: np.ndarray, stride: int, y0: int, y1: int) -> None:
        h, w = target.shape
        offset = HEADER_SIZE + y0 * stride
        if stride == w * 4:
            view = memoryview(target[y0:y1]).cast("B")
            got = os.preadv(self._fd, [view], offset)
        else:
            scratch = np.empty((y1 - y0, stride // 4), np.uint32)
            got = os.preadv(self._fd, [memoryview(scratch).cast("B")], offset)
            target[y0:y1] = scratch[:, :w]
        if got < (y1 - y0) * stride:
            raise _BadHeader("the file is shorter than its header says")


class _BadHeader(Exception):
    pass


_RETRY = object()


def _row_bands(rects: list[Rect]) -> list[tuple[int, int]]:
    """The rows the rectangles cover, as merged [y0, y1) bands (rows are what one pread copies)."""
    bands: list[tuple[int, int]] = []
    for y0, y1 in sorted((r[1], r[1] + r[3]) for r in rects):
        if bands and y0 <= bands[-1][1]:
            bands[-1] = (bands[-1][0], max(bands[-1][1], y1))
        else:
            bands.append((y0, y1))
    return bands
