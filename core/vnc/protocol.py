"""The RFB wire format both ends share (RFC 6143; QEMU's extensions as the community RFB specification,
rfbproto.rst, documents them): protocol versions, security types, message and encoding numbers, the PIXEL_FORMAT
structure, and reading exact byte counts from a socket.

Every multi-byte number on the wire is big-endian (RFC 6143 section 7). Encoding numbers are signed 32-bit; the
negative ones are pseudo-encodings a client lists to say what it understands.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

VERSION_33 = b"RFB 003.003\n"
VERSION_37 = b"RFB 003.007\n"
VERSION_38 = b"RFB 003.008\n"

SEC_INVALID, SEC_NONE, SEC_VNC_AUTH = 0, 1, 2

# client -> server
MSG_SET_PIXEL_FORMAT, MSG_SET_ENCODINGS, MSG_FB_UPDATE_REQUEST = 0, 2, 3
MSG_KEY_EVENT, MSG_POINTER_EVENT, MSG_CLIENT_CUT_TEXT, MSG_QEMU = 4, 5, 6, 255
QEMU_EXTENDED_KEY_EVENT = 0             # MSG_QEMU's submessage

# server -> client
MSG_FB_UPDATE, MSG_SET_COLOUR_MAP, MSG_BELL, MSG_SERVER_CUT_TEXT = 0, 1, 2, 3

ENC_RAW, ENC_COPYRECT, ENC_ZRLE = 0, 1, 16
ENC_DESKTOP_SIZE = -223
ENC_QEMU_EXTENDED_KEY = -258

ENCODING_NAMES = {ENC_RAW: "raw", ENC_COPYRECT: "copyrect", ENC_ZRLE: "zrle"}

_PF = struct.Struct(">BBBBHHHBBB3x")
_RECT = struct.Struct(">HHHHi")


class RfbError(Exception):
    """A peer broke the protocol (or closed the connection); the message is one line naming what was wrong."""


@dataclass(frozen=True)
class PixelFormat:
    """RFC 6143 7.4: how a pixel is laid out on the wire. True colour: value = r << red_shift | ..., each channel
    scaled to 0..*_max. Without true colour (8 bpp only here) the value indexes the server's colour map."""

    bits_per_pixel: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    red_shift: int = 16
    green_shift: int = 8
    blue_shift: int = 0

    def pack(self) -> bytes:
        return _PF.pack(self.bits_per_pixel, self.depth, int(self.big_endian), int(self.true_colour),
                        self.red_max, self.green_max, self.blue_max, self.red_shift, self.green_shift,
                        self.blue_shift)

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        bpp, depth, be, tc, rm, gm, bm, rs, gs, bs = _PF.unpack(data)
        return cls(bpp, depth, bool(be), bool(tc), rm, gm, bm, rs, gs, bs)

    def check(self) -> None:
        """RfbError when a client asks for a format this server cannot produce (a hostile or broken client)."""
        if self.bits_per_pixel not in (8, 16, 32):
            raise RfbError(f"SetPixelFormat: {self.bits_per_pixel} bits per pixel (8, 16 or 32 are served)")
        if not self.true_colour:
            if self.bits_per_pixel != 8:
                raise RfbError("SetPixelFormat: a colour map is served at 8 bits per pixel only")
            return
        for name, top, shift in (("red", self.red_max, self.red_shift), ("green", self.green_max, self.green_shift),
                                 ("blue", self.blue_max, self.blue_shift)):
            if top == 0 or top & (top + 1) or shift + top.bit_length() > self.bits_per_pixel:
                raise RfbError(f"SetPixelFormat: {name} max {top} shift {shift} does not fit "
                               f"{self.bits_per_pixel} bits per pixel")

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8


SERVER_FORMAT = PixelFormat()          # 32 bpp little-endian xRGB: the Frame's own layout, sent as it is
# Without true colour the server's fixed map is 3-3-2 (blue in the top two bits), sent with SetColourMapEntries.
COLOUR_MAP_332 = PixelFormat(8, 8, False, False, 7, 7, 3, 0, 3, 6)


def rect_header(x: int, y: int, w: int, h: int, encoding: int) -> bytes:
    return _RECT.pack(x, y, w, h, encoding)


def unpack_rect_header(data: bytes) -> tuple[int, int, int, int, int]:
    return _RECT.unpack(data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes (n is bounded by the caller), or RfbError when the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError:
            raise RfbError("the peer stopped sending") from None
        if not chunk:
            raise RfbError("the peer closed the connection")
        buf += chunk
    return bytes(buf)


def parse_version(data: bytes) -> tuple[int, int]:
    """'RFB xxx.yyy\\n' -> (major, minor); RfbError for anything else."""
    if len(data) != 12 or data[:4] != b"RFB " or data[7:8] != b"." or data[11:] != b"\n" \
            or not (data[4:7] + data[8:11]).isdigit():
        raise RfbError(f"not an RFB protocol version: {data[:12]!r}")
    return int(data[4:7]), int(data[8:11])
