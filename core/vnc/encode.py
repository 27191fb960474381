"""Rectangle encodings of a framebuffer update (RFC 6143 7.7): Raw, CopyRect and ZRLE.

CopyRect has to be found: the renderer only says which pixels changed, not that they moved. A guest console that
scrolls (vgacon, fbcon on bochs-drm) redraws the whole screen one text line up; `find_scroll` looks, inside each
large changed rectangle, for the vertical shift that maps what the client already shows onto the new picture (rows
compared by hash, then verified pixel for pixel), and the matching band goes as one CopyRect, which costs 12 bytes
instead of megabytes.

ZRLE (7.7.6): the rectangle in 64x64 tiles, each tile solid, packed palette (2..16 colours), plain RLE or raw
CPIXELs, whichever is smallest, all through one zlib stream per connection (flushed with Z_SYNC_FLUSH after each
rectangle, as the protocol requires the client to inflate it in one continuous stream).
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

import numpy as np

from core.display.frame import Rect
from core.vnc.pixels import cpixels, to_bytes
from core.vnc.protocol import ENC_COPYRECT, ENC_RAW, ENC_ZRLE, PixelFormat, rect_header

TILE = 64
SCROLL_MIN_ROWS = 32           # a shorter band is not worth a CopyRect plus the two pieces around it
SCROLL_MIN_AREA = 256 * 64


def find_scroll(old: np.ndarray, new: np.ndarray, rect: Rect) -> tuple[int, int, int] | None:
    """(first destination row, rows, source minus destination) of the largest band of `rect` in `new` that is
    `old` shifted vertically (inside the same columns and rows of `rect`), or None."""
    x, y, w, h = rect
    if h < SCROLL_MIN_ROWS or w * h < SCROLL_MIN_AREA or old.shape != new.shape:
        return None
    old_rows = old[y:y + h, x:x + w]
    new_rows = new[y:y + h, x:x + w]
    where: dict[int, list[int]] = {}
    for i, row in enumerate(old_rows):
        where.setdefault(hash(row.tobytes()), []).append(i)
    candidates: dict[int, int] = {}
    for i in range(0, h, max(1, h // 16)):
        rows = where.get(hash(new_rows[i].tobytes()), ())
        if len(rows) > 4:         # a blank or uniform line matches anywhere: it tells nothing
            continue
        for j in rows:
            if j != i:
                candidates[j - i] = candidates.get(j - i, 0) + 1
    best: tuple[int, int, int] | None = None
    for shift, _ in sorted(candidates.items(), key=lambda kv: -kv[1])[:3]:
        top, bottom = max(0, -shift), min(h, h - shift)
        same = (new_rows[top:bottom] == old_rows[top + shift:bottom + shift]).all(axis=1)
        # The longest run of rows that match.
        edges = np.flatnonzero(np.diff(np.concatenate(([0], same.view(np.int8), [0]))))
        if not len(edges):
            continue
        starts, ends = edges[0::2], edges[1::2]
        k = int(np.argmax(ends - starts))
        rows = int(ends[k] - starts[k])
        if rows >= SCROLL_MIN_ROWS and (best is None or rows > best[1]):
            best = (y + top + int(starts[k]), rows, shift)
    return best


class Encoder:
    """One client's encoder: its zlib stream lives as long as the connection."""

    def __init__(self, level: int = 1) -> None:
        self._zlib = zlib.compressobj(level)

    def encode(self, pixels: np.ndarray, rects: Iterable[Rect], pf: PixelFormat, encoding: int,
               old: np.ndarray | None = None, copyrect: bool = False) -> list[bytes]:
        """The rectangles of one update, each with its header: CopyRects first (their sources are what the client
        showed before this update), then the rest in `encoding`."""
        copies: list[bytes] = []
        rest: list[Rect] = []
        for rect in rects:
            scroll = find_scroll(old, pixels, rect) if copyrect and old is not None else None
            if scroll is None:
                rest.append(rect)
                continue
            x, y, w, h = rect
            dst, rows, shift = scroll
            copies.append(rect_header(x, dst, w, rows, ENC_COPYRECT) + struct.pack(">HH", x, dst + shift))
            if dst > y:
                rest.append((x, y, w, dst - y))
            if dst + rows < y + h:
                rest.append((x, dst + rows, w, y + h - dst - rows))
        out = copies
        for x, y, w, h in rest:
            area = pixels[y:y + h, x:x + w]
            if encoding == ENC_ZRLE:
                data = self.zrle(area, pf)
                out.append(rect_header(x, y, w, h, ENC_ZRLE) + struct.pack(">I", len(data)) + data)
            else:
                out.append(rect_header(x, y, w, h, ENC_RAW) + to_bytes(area, pf))
        return out

    def zrle(self, area: np.ndarray, pf: PixelFormat) -> bytes:
        h, w = area.shape
        parts: list[bytes] = []
        for ty in range(0, h, TILE):
            for tx in range(0, w, TILE):
                parts.append(_zrle_tile(area[ty:ty + TILE, tx:tx + TILE], pf))
        return self._zlib.compress(b"".join(parts)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


def _zrle_tile(tile: np.ndarray, pf: PixelFormat) -> bytes:
    th, tw = tile.shape
    flat = tile.reshape(-1)
    first = flat[0]
    if (flat == first).all():
        return b"\x01" + cpixels(flat[:1], pf).tobytes()
    # Runs along the tile's rows, in order: what plain RLE would send.
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    colours, index = np.unique(flat, return_inverse=True)
    n = len(colours)
    k = cpixels(flat[:1], pf).shape[-1]
    raw_size = k * th * tw
    if n <= 16:
        bits = 1 if n == 2 else 2 if n <= 4 else 4
        packed = _pack_indices(index.reshape(th, tw).astype(np.uint8), bits)
        palette = bytes((n,)) + cpixels(colours, pf).tobytes() + packed
        if len(palette) <= raw_size:
            return palette
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    rle_size = len(starts) * k + int((lengths - 1).sum() // 255) + len(starts)
    if rle_size < raw_size:
        return b"\x80" + _rle(cpixels(flat[starts], pf), lengths - 1)
    return b"\x00" + cpixels(flat, pf).tobytes()


def _pack_indices(index: np.ndarray, bits: int) -> bytes:
    """Palette indices packed `bits` per pixel, most significant first, each row padded to a whole byte."""
    th, tw = index.shape
    per_byte = 8 // bits
    padded = -(-tw // per_byte) * per_byte
    if padded != tw:
        index = np.pad(index, ((0, 0), (0, padded - tw)))
    groups = index.reshape(th, padded // per_byte, per_byte).astype(np.uint8)
    shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
    return (groups << shifts).sum(axis=2, dtype=np.uint8).tobytes()


def _rle(colours: np.ndarray, minus_one: np.ndarray) -> bytes:
    """Plain RLE runs: each CPIXEL, then its length minus one as 255s and a final byte below 255."""
    k = colours.shape[-1]
    extra = minus_one // 255                  # the 255 bytes each run needs before its last length byte
    size = k + extra + 1
    offsets = np.concatenate(([0], np.cumsum(size)[:-1]))
    out = np.full(int(size.sum()), 255, np.uint8)
    out[(offsets[:, None] + np.arange(k)).reshape(-1)] = colours.reshape(-1)
    out[offsets + k + extra] = (minus_one % 255).astype(np.uint8)
    return out.tobytes()
