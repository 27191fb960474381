"""An RFB client (RFC 6143) on the same protocol code as the server: connects (3.8, 3.7 or 3.3; None or VNC
password), asks for a pixel format and encodings, and keeps the remote screen as a numpy array by decoding Raw,
CopyRect, ZRLE and DesktopSize. It is a core.display.frame.FrameSource (render() gives a Frame when an update
arrived) and a core.keymap.InputSink (set-2 keys as XT scan codes or keysyms, relative motion as pointer
positions), so anything that shows a Vireo console can show any VNC server's (QEMU's, libvirt's); bench/vnc.py
reads Vireo's and QEMU's servers with it.

Every length the server sends is checked against the screen it announced, and decompression is bounded, so a
hostile server cannot make the client allocate without limit.
"""
from __future__ import annotations

import socket
import struct
import time
import zlib

import numpy as np

from core.display.frame import Frame, Rect
from core.vnc import auth
from core.vnc.keys import KEYSYM_OF, XT_CODES, set2_key
from core.vnc.pixels import cpixel_slice
from core.vnc.protocol import (
    ENC_COPYRECT,
    ENC_DESKTOP_SIZE,
    ENC_QEMU_EXTENDED_KEY,
    ENC_RAW,
    ENC_ZRLE,
    MSG_BELL,
    MSG_FB_UPDATE,
    MSG_FB_UPDATE_REQUEST,
    MSG_KEY_EVENT,
    MSG_POINTER_EVENT,
    MSG_QEMU,
    MSG_SERVER_CUT_TEXT,
    MSG_SET_COLOUR_MAP,
    MSG_SET_ENCODINGS,
    MSG_SET_PIXEL_FORMAT,
    SEC_NONE,
    SEC_VNC_AUTH,
    PixelFormat,
    RfbError,
    parse_version,
    recv_exact,
)

MAX_SIDE = 16384
MAX_TEXT = 1 << 20
CLIENT_FORMAT = PixelFormat()          # 32 bpp little-endian 0x00RRGGBB: a Frame's layout


class VncClient:
    def __init__(self, sock: socket.socket, password: str = "", version: tuple[int, int] = (3, 8),
                 encodings: tuple[int, ...] = (ENC_ZRLE, ENC_COPYRECT, ENC_RAW, ENC_DESKTOP_SIZE),
                 decode: bool = True) -> None:
        self.sock = sock
        self.decode = decode
        self.bytes_received = 0
        self.updates = 0
        self.rects_by_encoding: dict[int, int] = {}
        self._zlib = zlib.decompressobj()
        self._sequence = 0
        self._shown = 0
        self._dirty: list[Rect] = []
        self.extended_keys = False
        self._pointer = (0, 0)
        self._handshake(password, version)
        self._send(struct.pack(">B3x", MSG_SET_PIXEL_FORMAT) + CLIENT_FORMAT.pack())
        self._send(struct.pack(">BxH", MSG_SET_ENCODINGS, len(encodings)) + struct.pack(f">{len(encodings)}i",
                                                                                       *encodings))

    @classmethod
    def connect(cls, address: str | tuple[str, int], timeout: float = 10.0, **kwargs) -> VncClient:
        """`address`: (host, port) or a UNIX socket path."""
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address)
        else:
            sock = socket.create_connection(address, timeout=timeout)
        try:
            return cls(sock, **kwargs)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def _recv(self, n: int) -> bytes:
        data = recv_exact(self.sock, n)
        self.bytes_received += n
        return data

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _handshake(self, password: str, version: tuple[int, int]) -> None:
        server = parse_version(self._recv(12))
        if server < (3, 3):
            raise RfbError(f"server speaks RFB {server[0]}.{server[1]}")
        version = min(version, server if server >= (3, 7) else (3, 3))
        self.version = version
        self._send(b"RFB %03d.%03d\n" % version)
        if version == (3, 3):
            security = struct.unpack(">I", self._recv(4))[0]
            if security == 0:
                raise RfbError(self._reason())
        else:
            count = self._recv(1)[0]
            if count == 0:
                raise RfbError(self._reason())
            offered = self._recv(count)
            security = SEC_VNC_AUTH if password and SEC_VNC_AUTH in offered else SEC_NONE
            if security not in offered:
                raise RfbError(f"the server offers security types {list(offered)}; give a password for type 2")
            self._send(bytes((security,)))
        if security == SEC_VNC_AUTH:
            if not password:
                raise RfbError("the server wants a VNC password")
            self._send(auth.encrypt_challenge(password, self._recv(16)))
        if security == SEC_VNC_AUTH or version == (3, 8):
            if struct.unpack(">I", self._recv(4))[0] != 0:
                raise RfbError(self._reason() if version == (3, 8) else "authentication failed")
        self._send(b"\x01")                      # shared
        width, height = struct.unpack(">HH", self._recv(4))
        self.server_format = PixelFormat.unpack(self._recv(16))
        self.name = self._recv(min(struct.unpack(">I", self._recv(4))[0], 4096)).decode("utf-8", "replace")
        self._resize(width, height)

    def _reason(self) -> str:
        length = struct.unpack(">I", self._recv(4))[0]
        return self._recv(min(length, 4096)).decode("utf-8", "replace") or "refused"

    def _resize(self, width: int, height: int) -> None:
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            raise RfbError(f"the server announced a {width}x{height} screen")
        self.width, self.height = width, height
        self.pixels = np.zeros((height, width), np.uint32) if self.decode else None
        self._dirty = [(0, 0, width, height)]

    # -- requests and input ---------------------------------------------------------------------------------
    def request(self, incremental: bool = True) -> None:
        self._send(struct.pack(">BBHHHH", MSG_FB_UPDATE_REQUEST, int(incremental), 0, 0, self.width, self.height))

    def key(self, keysym: int, down: bool) -> None:
        self._send(struct.pack(">BBxxI", MSG_KEY_EVENT, int(down), keysym))

    def scancode(self, code: int, down: bool, keysym: int = 0) -> None:
        """QEMU's extended key event (the server acknowledged it: `extended_keys`)."""
        self._send(struct.pack(">BBHII", MSG_QEMU, 0, int(down), keysym, code))

    def pointer(self, x: int, y: int, mask: int = 0) -> None:
        self._send(struct.pack(">BBHH", MSG_POINTER_EVENT, mask, x, y))

    # -- core.keymap.InputSink: a console widget types and points through this client -----------------------
    def key_event(self, set2_bytes: bytes) -> None:
        """One set-2 make or break code, sent as the key's XT scan code when the server takes QEMU's extended
        key events, else as the keysym the key types on a US layout."""
        key = set2_key(set2_bytes)
        if key is None:
            return
        name, pressed = key
        if self.extended_keys and name in XT_CODES:
            self.scancode(XT_CODES[name], pressed, KEYSYM_OF.get(name, 0))
            if name == "pause" and pressed:          # Pause has no break code in set 2
                self.scancode(XT_CODES[name], False, KEYSYM_OF.get(name, 0))
        elif name in KEYSYM_OF:
            self.key(KEYSYM_OF[name], pressed)

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        """Relative motion (screen pixels, dy down) -> an absolute RFB pointer position inside the screen; buttons
        bit 0 left, 1 right, 2 middle; each wheel notch a press and release of button 4 (away) or 5."""
        x = min(max(self._pointer[0] + dx, 0), self.width - 1)
        y = min(max(self._pointer[1] + dy, 0), self.height - 1)
        self._pointer = (x, y)
        mask = (buttons & 1) | (buttons << 1 & 4) | (buttons >> 1 & 2)
        self.pointer(x, y, mask)
        for _ in range(abs(dz)):
            wheel = 8 if dz > 0 else 16
            self.pointer(x, y, mask | wheel)
            self.pointer(x, y, mask)

    # -- server messages ------------------------------------------------------------------------------------
    def read_update(self) -> list[tuple[Rect, int]]:
        """Read server messages until one FramebufferUpdate has been applied; its rectangles and encodings."""
        while True:
            kind = self._recv(1)[0]
            if kind == MSG_FB_UPDATE:
                return self._update()
            if kind == MSG_SET_COLOUR_MAP:
                _, _, count = struct.unpack(">xHH", self._recv(5))
                self._recv(6 * count)
            elif kind == MSG_BELL:
                continue
            elif kind == MSG_SERVER_CUT_TEXT:
                length = struct.unpack(">3xI", self._recv(7))[0]
                if length > MAX_TEXT:
                    raise RfbError(f"ServerCutText of {length} bytes")
                self._recv(length)
            else:
                raise RfbError(f"unknown server message type {kind}")

    def _update(self) -> list[tuple[Rect, int]]:
        count = struct.unpack(">xH", self._recv(3))[0]
        done: list[tuple[Rect, int]] = []
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", self._recv(12))
            if encoding == ENC_DESKTOP_SIZE:
                self._resize(w, h)
            elif encoding == ENC_QEMU_EXTENDED_KEY:
                self.extended_keys = True
            else:
                if x + w > self.width or y + h > self.height:
                    raise RfbError(f"rectangle {w}x{h}+{x}+{y} outside the {self.width}x{self.height} screen")
                if encoding == ENC_RAW:
                    data = self._recv(w * h * 4)
                    if self.decode:
                        self.pixels[y:y + h, x:x + w] = np.frombuffer(data, "<u4").reshape(h, w)
                elif encoding == ENC_COPYRECT:
                    sx, sy = struct.unpack(">HH", self._recv(4))
                    if sx + w > self.width or sy + h > self.height:
                        raise RfbError("CopyRect source outside the screen")
                    if self.decode:
                        self.pixels[y:y + h, x:x + w] = self.pixels[sy:sy + h, sx:sx + w].copy()
                elif encoding == ENC_ZRLE:
                    length = struct.unpack(">I", self._recv(4))[0]
                    if length > w * h * 4 + 4096 + (w * h // 4096 + 1) * 64:
                        raise RfbError(f"ZRLE data of {length} bytes for a {w}x{h} rectangle")
                    data = self._recv(length)
                    if self.decode:
                        self._zrle(data, x, y, w, h)
                else:
                    raise RfbError(f"the server sent encoding {encoding}, which was not asked for")
                self._dirty.append((x, y, w, h))
            self.rects_by_encoding[encoding] = self.rects_by_encoding.get(encoding, 0) + 1
            done.append(((x, y, w, h), encoding))
        self.updates += 1
        self._sequence += 1
        return done

    def _zrle(self, data: bytes, x: int, y: int, w: int, h: int) -> None:
        # Each tile's raw form is at most 1 + 64*64*3 bytes: a bound on what this much input may inflate to.
        tiles = -(-w // 64) * -(-h // 64)
        stream = self._zlib.decompress(data, tiles * (1 + 64 * 64 * 4))
        k = 3 if cpixel_slice(CLIENT_FORMAT) is not None else 4
        pos = 0

        def cpix(n: int) -> np.ndarray:
            nonlocal pos
            raw = np.frombuffer(stream, np.uint8, n * k, pos).reshape(n, k)
            pos += n * k
            out = raw[:, 0].astype(np.uint32) | raw[:, 1].astype(np.uint32) << 8 | raw[:, 2].astype(np.uint32) << 16
            return out | np.uint32(0xFF000000)

        try:
            for ty in range(y, y + h, 64):
                for tx in range(x, x + w, 64):
                    tw, th = min(64, x + w - tx), min(64, y + h - ty)
                    sub = stream[pos]
                    pos += 1
                    tile = self.pixels[ty:ty + th, tx:tx + tw]
                    if sub == 0:
                        tile[:] = cpix(tw * th).reshape(th, tw)
                    elif sub == 1:
                        tile[:] = cpix(1)[0]
                    elif 2 <= sub <= 16:
                        palette = cpix(sub)
                        bits = 1 if sub == 2 else 2 if sub <= 4 else 4
                        row_bytes = -(-tw * bits // 8)
                        packed = np.frombuffer(stream, np.uint8, row_bytes * th, pos).reshape(th, row_bytes)
                        pos += row_bytes * th
                        shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint8)
                        index = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
                        tile[:] = palette[index.reshape(th, -1)[:, :tw]]
                    elif sub == 128 or sub >= 130:
                        palette = cpix(sub - 128) if sub >= 130 else None
                        flat = np.empty(tw * th, np.uint32)
                        filled = 0
                        while filled < tw * th:
                            if palette is None:
                                colour, run = cpix(1)[0], True
                            else:
                                index = stream[pos]
                                pos += 1
                                colour, run = palette[index & 0x7F], bool(index & 0x80)
                            length = 1
                            if run:
                                while stream[pos] == 255:
                                    length += 255
                                    pos += 1
                                length += stream[pos]
                                pos += 1
                            if filled + length > tw * th:
                                raise RfbError("ZRLE run past the end of its tile")
                            flat[filled:filled + length] = colour
                            filled += length
                        tile[:] = flat.reshape(th, tw)
                    else:
                        raise RfbError(f"ZRLE subencoding {sub}")
        except (IndexError, ValueError) as exc:
            raise RfbError(f"ZRLE data ends early or is malformed: {exc}") from None

    def render(self, force: bool = False) -> Frame | None:
        """The screen as a Frame when an update arrived since the last call (FrameSource)."""
        if self.pixels is None or (self._shown == self._sequence and not force):
            return None
        self._shown = self._sequence
        dirty, self._dirty = self._dirty, []
        return Frame(self.width, self.height, self.pixels, dirty or [(0, 0, self.width, self.height)], "vnc",
                     self._sequence)

    def screen(self, timeout: float = 10.0) -> np.ndarray:
        """A complete picture: a non-incremental request, read until answered; a copy of the screen."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        self.request(incremental=False)
        while True:
            rects = self.read_update()
            if any(enc in (ENC_RAW, ENC_ZRLE, ENC_COPYRECT) for _, enc in rects) or time.monotonic() > deadline:
                return self.pixels.copy()
