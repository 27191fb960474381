"""Frame pixels (core.display.frame: uint32 0xFFRRGGBB) in a client's RFB pixel format (RFC 6143 7.4): each
channel scaled to its max, shifted into place, stored in 1, 2 or 4 bytes in the client's byte order; and the
ZRLE "CPIXEL" (RFC 6143 7.7.5): 3 bytes per pixel when a 32-bit true-colour format has all its colour bits in
three of the four bytes."""
from __future__ import annotations

import numpy as np

from core.vnc.protocol import SERVER_FORMAT, PixelFormat


def _channel(pixels: np.ndarray, src_shift: int, top: int) -> np.ndarray:
    value = (pixels >> np.uint32(src_shift)) & np.uint32(0xFF)
    if top == 255:
        return value
    bits = top.bit_length()
    if bits > 8:
        # A channel wider than the frame's 8 bits (a max up to 65535 is valid RFB): scale up, as QEMU does.
        return value << np.uint32(bits - 8)
    # Drop the low bits (what QEMU and TigerVNC do): for a power-of-two-minus-one max this is the rounding down.
    return value >> np.uint32(8 - bits)


def convert(pixels: np.ndarray, pf: PixelFormat) -> np.ndarray:
    """(h, w) 0xFFRRGGBB -> (h, w) array of the client's pixel values in its byte order (dtype u1, >u2/<u2, ...)."""
    if pf == SERVER_FORMAT:
        return pixels
    value = (_channel(pixels, 16, pf.red_max) << np.uint32(pf.red_shift)) \
        | (_channel(pixels, 8, pf.green_max) << np.uint32(pf.green_shift)) \
        | (_channel(pixels, 0, pf.blue_max) << np.uint32(pf.blue_shift))
    order = ">" if pf.big_endian else "<"
    return value.astype(f"{order}u{pf.bytes_per_pixel}")


def to_bytes(pixels: np.ndarray, pf: PixelFormat) -> bytes:
    return np.ascontiguousarray(convert(pixels, pf)).tobytes()


def cpixel_slice(pf: PixelFormat) -> slice | None:
    """Which 3 of each pixel's 4 wire bytes ZRLE sends, or None when the whole pixel goes (RFC 6143 7.7.5)."""
    if pf.bits_per_pixel != 32 or not pf.true_colour or pf.depth > 24:
        return None
    used = (pf.red_max << pf.red_shift) | (pf.green_max << pf.green_shift) | (pf.blue_max << pf.blue_shift)
    if used < 1 << 24:                       # in the least significant three bytes
        return slice(0, 3) if not pf.big_endian else slice(1, 4)
    if used & 0xFF == 0:                     # in the most significant three bytes
        return slice(1, 4) if not pf.big_endian else slice(0, 3)
    return None


def cpixels(pixels: np.ndarray, pf: PixelFormat) -> np.ndarray:
    """(n,) or (h, w) pixels -> (..., k) uint8 CPIXEL bytes (k = 3, or the pixel size)."""
    wire = np.ascontiguousarray(convert(pixels, pf))
    raw = wire.view(np.uint8).reshape(*wire.shape, pf.bytes_per_pixel)
    part = cpixel_slice(pf)
    return raw if part is None else raw[..., part]
