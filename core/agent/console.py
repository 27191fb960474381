"""The framebuffer console over the agent protocol: frames as zlib-compressed dirty rectangles, input back.

Sender (agent side): `encode_frame` turns a core.display Frame into messages — each dirty rectangle is cut into
horizontal strips of at most STRIP_BYTES raw pixels (so any message stays far below protocol.MAX_FRAME whatever
the screen size), each strip's 0xFFRRGGBB pixels compressed with zlib (RFC 1950) — then one "fb_end" that closes
the frame. Strips of a frame go out back to back; the receiver acknowledges finished frames ("fb_ack" with a
count) as its viewer takes them, and the sender keeps at most MAX_IN_FLIGHT frames unacknowledged, so a slow link
or a slow viewer skips intermediate pictures instead of queueing them, and a console nobody looks at costs nothing.
Nothing is lost by skipping: the renderer compares each new picture with the last one it produced, so the next
frame's dirty rectangles cover every change since the last frame sent.

Receiver (client side): `FrameAssembler` keeps the screen as a numpy array, checks every strip (inside the
screen, decompressing to exactly its size, with a bound on the output so a compression bomb cannot grow memory)
and offers the result through `render(force)`, the same call core.display.renderer.Renderer answers, so the
console widget shows a remote VM exactly as a local one.
"""
from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from core.display.frame import Frame, Rect
from core.protocol import Message, ProtocolError

STRIP_BYTES = 256 * 1024
MAX_IN_FLIGHT = 2
MAX_SCREEN = 4096          # pixels per side: beyond any VBE mode the VGA offers
ZLIB_LEVEL = 1             # fast: at 1024x768 a full-screen change must compress within a frame's time


def merge_rects(a: list[Rect], b: list[Rect]) -> list[Rect]:
    """Union of two rectangle lists as a short list (more than 16 collapse into their bounding box)."""
    rects = a + b
    if len(rects) <= 16:
        return rects
    x0 = min(r[0] for r in rects)
    y0 = min(r[1] for r in rects)
    x1 = max(r[0] + r[2] for r in rects)
    y1 = max(r[1] + r[3] for r in rects)
    return [(x0, y0, x1 - x0, y1 - y0)]


def encode_frame(uuid: str, seq: int, pixels: np.ndarray, rects: list[Rect], mode: str) -> list[Message]:
    """Messages carrying `rects` of `pixels` (height, width) uint32, then the frame's end."""
    height, width = pixels.shape
    out: list[Message] = []
    for x, y, w, h in rects:
        x, y = max(0, x), max(0, y)
        w, h = min(w, width - x), min(h, height - y)
        if w <= 0 or h <= 0:
            continue
        rows = max(1, STRIP_BYTES // (w * 4))
        for top in range(y, y + h, rows):
            n = min(rows, y + h - top)
            raw = np.ascontiguousarray(pixels[top:top + n, x:x + w]).tobytes()
            out.append(({"t": "fb", "uuid": uuid, "seq": seq, "w": width, "h": height, "x": x, "y": top,
                         "rw": w, "rh": n}, zlib.compress(raw, ZLIB_LEVEL)))
    out.append(({"t": "fb_end", "uuid": uuid, "seq": seq, "w": width, "h": height, "mode": mode}, b""))
    return out


def _int(header: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"console message: {key} must be an integer in {lo}..{hi}")
    return value


class FrameAssembler:
    """The client's copy of a remote screen. apply() runs on the connection's reader thread; render() on the
    GUI's; a lock keeps them apart."""

    def __init__(self, session: int = 0, ack: Callable[[int], None] | None = None) -> None:
        self.session = session
        self.ack = ack              # tells the sender how many frames render() consumed (its flow control)
        self._unacked = 0
        self._lock = threading.Lock()
        self._pixels: np.ndarray | None = None
        self._dirty: list[Rect] = []
        self._mode = ""
        self._sequence = 0
        self._complete = False      # a finished frame is waiting for render()
        self._resized = False
        self.frames = 0             # frames completed (for statistics and the benchmark)
        self.bytes = 0              # compressed bytes received
        self.last_frame: Frame | None = None

    def apply(self, header: dict[str, Any], payload: bytes) -> int | None:
        """Take one "fb" or "fb_end" message; returns the sequence number when a frame is complete."""
        width = _int(header, "w", 1, MAX_SCREEN)
        height = _int(header, "h", 1, MAX_SCREEN)
        seq = _int(header, "seq", 0, 1 << 62)
        with self._lock:
            if self._pixels is None or self._pixels.shape != (height, width):
                self._pixels = np.zeros((height, width), dtype=np.uint32)
                self._dirty = [(0, 0, width, height)]
                self._resized = True
            if header["t"] == "fb_end":
                mode = header.get("mode", "")
                self._mode = mode if isinstance(mode, str) else ""
                self._complete = True
                self.frames += 1
                self._unacked += 1
                return seq
            x = _int(header, "x", 0, width - 1)
            y = _int(header, "y", 0, height - 1)
            rw = _int(header, "rw", 1, width - x)
            rh = _int(header, "rh", 1, height - y)
            expected = rw * rh * 4
            inflater = zlib.decompressobj()
            try:
                raw = inflater.decompress(payload, expected + 1)
            except zlib.error as exc:
                raise ProtocolError(f"console strip does not decompress: {exc}") from None
            if len(raw) != expected or inflater.unconsumed_tail or not inflater.eof:
                raise ProtocolError(f"console strip decompresses to {len(raw)} bytes, not {rw}x{rh}x4")
            self._pixels[y:y + rh, x:x + rw] = np.frombuffer(raw, dtype=np.uint32).reshape(rh, rw)
            last = self._dirty[-1] if self._dirty else None
            if last is not None and last[0] == x and last[2] == rw and last[1] + last[3] == y:
                self._dirty[-1] = (x, last[1], rw, last[3] + rh)     # the next strip of the same rectangle
            else:
                self._dirty = merge_rects(self._dirty, [(x, y, rw, rh)])
            self.bytes += len(payload)
        return None

    def render(self, force: bool = False) -> Frame | None:
        """A new Frame when one completed since the last call (or `force` and a picture exists), else None.
        Acknowledges the frames it consumed, so the sender runs at the pace the viewer paints (and stops when
        nobody looks)."""
        with self._lock:
            consumed, self._unacked = self._unacked, 0
        if consumed and self.ack is not None:
            try:
                self.ack(consumed)
            except Exception:   # the connection is gone: the picture stays as it was
                pass
        with self._lock:
            if self._pixels is None or not (self._complete or force):
                return None
            height, width = self._pixels.shape
            dirty = [(0, 0, width, height)] if force or self._resized else self._dirty
            self._sequence += 1
            frame = Frame(width, height, self._pixels.copy(), dirty, self._mode, self._sequence)
            self._dirty = []
            self._complete = False
            self._resized = False
            self.last_frame = frame
            return frame
