"""An RFB 3.8 server (RFC 6143) for one VM's console: its screen from a FrameSource (core.display.renderer.Renderer
over the VGA), its keyboard and mouse into an InputSink (core.keymap.Ps2InputSink into the i8042).

Threads: one accepts connections, one per client serves it; none is a vCPU thread, and nothing here is called from
one. The renderer is polled only while some client has asked for an update (at most 64 times a second, shared by
all clients through a FrameHub), so a VM nobody watches pays nothing.

What a client gets:
- Versions 3.8 and 3.7, and 3.3 (also for a client announcing 3.4-3.6, as RFC 6143 7.1.1 says; 3.9 and up are
  served 3.8). Security None, or VNC authentication (DES challenge, core/vnc/auth.py) when a password is set.
- SetPixelFormat: 8, 16 or 32 bits per pixel, true colour in either byte order; at 8 bpp without true colour a
  3-3-2 colour map (sent with SetColourMapEntries).
- Updates only on request. An incremental request is answered when the picture differs from what this client
  was last sent: the client's own copy of its screen (the "shadow") is compared with the renderer's newest frame
  (core.display.frame.dirty_rects), so a client that asks slowly gets every change, once.
- Raw, CopyRect (scrolling found by core/vnc/encode.py) and ZRLE, the client's first preference among them.
- DesktopSize when the guest switches between text and VBE modes; a client without it keeps its first size
  (the picture clipped or padded with black).
- QEMU's extended key event (XT scan codes) as well as keysym key events; pointer events as relative motion of the
  PS/2 mouse (VNC positions are absolute; the guest's cursor follows with its own acceleration, as with QEMU's
  PS/2 mouse). A client's held keys are released when it leaves.

A hostile client (bad lengths, an unknown message, more than MAX_ENCODINGS encodings, cut text over MAX_CUT_TEXT,
silence mid-message or mid-handshake) is disconnected with one log line; the buffer a client can make the server
hold is bounded by those limits. Nothing a client does reaches the VM except key and pointer events.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import stat
import struct
import threading
import time

import numpy as np

from core.display.frame import Frame, FrameSource, Rect, dirty_rects
from core.keymap import InputSink
from core.vnc import auth
from core.vnc.address import VncAddress
from core.vnc.encode import Encoder
from core.vnc.keys import KeyTranslator
from core.vnc.protocol import (
    COLOUR_MAP_332,
    ENC_COPYRECT,
    ENC_DESKTOP_SIZE,
    ENC_QEMU_EXTENDED_KEY,
    ENC_RAW,
    ENC_ZRLE,
    MSG_CLIENT_CUT_TEXT,
    MSG_FB_UPDATE,
    MSG_FB_UPDATE_REQUEST,
    MSG_KEY_EVENT,
    MSG_POINTER_EVENT,
    MSG_QEMU,
    MSG_SET_COLOUR_MAP,
    MSG_SET_ENCODINGS,
    MSG_SET_PIXEL_FORMAT,
    QEMU_EXTENDED_KEY_EVENT,
    SEC_NONE,
    SEC_VNC_AUTH,
    SERVER_FORMAT,
    VERSION_38,
    PixelFormat,
    RfbError,
    parse_version,
    rect_header,
    recv_exact,
)

log = logging.getLogger("vireo.vnc")

FRAME_INTERVAL = 1 / 64
HANDSHAKE_TIMEOUT = 10.0        # a connection that does not finish the handshake in this time is dropped
IO_TIMEOUT = 30.0               # a client that takes no data (or sends half a message) for this long is dropped
MAX_CLIENTS = 16
MAX_ENCODINGS = 256             # real clients list a few dozen
MAX_CUT_TEXT = 1 << 20          # bytes; the clipboard is read and dropped, but a longer one ends the client
RECV_CHUNK = 64 * 1024
MOUSE_STEP = 4096               # largest relative motion handed to the PS/2 model at once


class VncListenError(Exception):
    """The server's address cannot be listened on (in use, no permission); one line naming it."""


class FrameHub:
    """The newest frame of one FrameSource, shared by every client (each compares it with its own shadow)."""

    def __init__(self, source: FrameSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._polled = 0.0

    def latest(self, force: bool = False) -> Frame | None:
        with self._lock:
            now = time.monotonic()
            if force or self._frame is None or now - self._polled >= FRAME_INTERVAL:
                self._polled = now
                frame = self.source.render(force=force or self._frame is None)
                if frame is not None:
                    # A source may reuse its pixel buffer (SharedConsoleReader does): keep our own.
                    self._frame = Frame(frame.width, frame.height, frame.pixels.copy(), [], frame.mode,
                                        frame.sequence)
            return self._frame


class VncServer:
    """Listens on `address` (bound by the constructor, so a port in use fails at once) and serves clients once
    start() is called. close() disconnects everyone and removes a UNIX socket it created."""

    def __init__(self, address: VncAddress, source: FrameSource, input_sink: InputSink | None,
                 password: str = "", name: str = "Vireo") -> None:
        if password:
            auth.check_password(password)
        self.address = address
        self.hub = FrameHub(source)
        self.input = input_sink
        self.password = password
        self.name = name.encode("utf-8")[:255]
        self._closed = threading.Event()
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        try:
            self.listener = self._bind(address)
        except OSError as exc:
            hint = ": another VNC server (or VM) uses it; pick another display" if exc.errno == 98 else ""
            raise VncListenError(f"cannot listen on {address.uri()}: {exc.strerror or exc}{hint}") from None

    @staticmethod
    def _bind(address: VncAddress) -> socket.socket:
        if address.unix:
            try:
                if stat.S_ISSOCK(os.lstat(address.path).st_mode):
                    os.unlink(address.path)            # a socket left by a VM process that was killed
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)                      # 0600 from the start: the console is the VM's keyboard
            try:
                sock.bind(address.path)
            except OSError:
                sock.close()
                raise
            finally:
                os.umask(old)
            sock.listen(8)
            return sock
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        return socket.create_server((address.host, address.port), family=family, backlog=8, reuse_port=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="vireo-vnc", daemon=True)
        self._thread.start()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.shut()
        if self.address.unix:
            try:
                os.unlink(self.address.path)
            except FileNotFoundError:
                pass
        if self._thread is not None:
            self._thread.join(2)

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        while not self._closed.is_set():
            try:
                if not poller.poll(200):
                    continue
                conn, peer = self.listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            with self._lock:
                full = len(self._clients) >= MAX_CLIENTS
                client = None if full else _Client(self, conn, str(peer or "unix"))
                if client is not None:
                    self._clients.add(client)
            if client is None:
                log.warning("VNC: refused a connection: already %d clients", MAX_CLIENTS)
                conn.close()
                continue
            threading.Thread(target=client.run, name="vireo-vnc-client", daemon=True).start()

    def _forget(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)


class _Client:
    def __init__(self, server: VncServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.pf = SERVER_FORMAT            # what the pixels are converted to
        self.encodings: list[int] = [ENC_RAW]
        self.request: tuple[bool, Rect] | None = None
        self.compared = -1                 # the frame sequence last compared with the shadow
        self.shadow: np.ndarray | None = None
        self.size = (0, 0)                 # the client's framebuffer (width, height)
        self.keys = KeyTranslator()
        self.pointer: tuple[int, int] | None = None
        self.buttons = 0
        self.encoder = Encoder()
        self.sent_bytes = 0

    # -- life -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._handshake()
            self._loop()
        except RfbError as exc:
            log.info("VNC client %s disconnected: %s", self.peer, exc)
        except OSError as exc:
            log.info("VNC client %s disconnected: %s", self.peer, exc.strerror or exc)
        except Exception:
            log.exception("VNC client %s: internal error; the client is disconnected", self.peer)
        finally:
            self._input_keys(self.keys.release_all())
            self.shut()
            self.server._forget(self)

    def shut(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent_bytes += len(data)

    # -- handshake (RFC 6143 7.1, 7.2, 7.3) -----------------------------------------------------------------
    def _handshake(self) -> None:
        sock = self.sock
        sock.settimeout(HANDSHAKE_TIMEOUT)
        self._send(VERSION_38)
        version = parse_version(recv_exact(sock, 12))
        minor = 3 if version < (3, 7) else 7 if version == (3, 7) else 8
        security = SEC_VNC_AUTH if self.server.password else SEC_NONE
        if minor == 3:
            self._send(struct.pack(">I", security))       # 3.3: the server decides
        else:
            self._send(bytes((1, security)))
            chosen = recv_exact(sock, 1)[0]
            if chosen != security:
                if minor == 8:
                    self._fail_security(b"security type not offered")
                raise RfbError(f"chose security type {chosen}, which was not offered")
        if security == SEC_VNC_AUTH:
            challenge = auth.new_challenge()
            self._send(challenge)
            if not auth.check_response(self.server.password, challenge, recv_exact(sock, 16)):
                self._fail_security(b"wrong password" if minor == 8 else None)
                raise RfbError("wrong VNC password")
            self._send(struct.pack(">I", 0))
        elif minor == 8:
            self._send(struct.pack(">I", 0))          # 3.8 reports success for None too; 3.3 and 3.7 do not
        recv_exact(sock, 1)                           # ClientInit's shared flag: every client shares the screen
        frame = self.server.hub.latest(force=True)
        self.size = (frame.width, frame.height) if frame is not None else (640, 480)
        self._send(struct.pack(">HH", *self.size) + SERVER_FORMAT.pack() + struct.pack(">I", len(self.server.name))
                   + self.server.name)
        sock.settimeout(IO_TIMEOUT)
        log.info("VNC client %s connected (RFB 3.%d)", self.peer, minor)

    def _fail_security(self, reason: bytes | None) -> None:
        self._send(struct.pack(">I", 1) + (struct.pack(">I", len(reason)) + reason if reason else b""))

    # -- messages -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        buf = bytearray()
        last_data = time.monotonic()
        while not self.server._closed.is_set():
            wait = FRAME_INTERVAL if self.request is not None else 0.5
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                data = self.sock.recv(RECV_CHUNK)
                if not data:
                    raise RfbError("the client closed the connection")
                buf += data
                last_data = time.monotonic()
                while buf:
                    used = self._message(buf)
                    if not used:
                        break
                    del buf[:used]
            if buf and time.monotonic() - last_data > IO_TIMEOUT:
                raise RfbError(f"half a message and nothing more for {IO_TIMEOUT:.0f} s")
            if self.request is not None:
                self._update()

    def _message(self, buf: bytearray) -> int:
        """Handle the message at the start of `buf`; its length, or 0 when it is not all there yet."""
        kind = buf[0]
        if kind == MSG_SET_PIXEL_FORMAT:
            if len(buf) < 20:
                return 0
            self._set_pixel_format(PixelFormat.unpack(bytes(buf[4:20])))
            return 20
        if kind == MSG_SET_ENCODINGS:
            if len(buf) < 4:
                return 0
            count = struct.unpack_from(">H", buf, 2)[0]
            if count > MAX_ENCODINGS:
                raise RfbError(f"SetEncodings lists {count} encodings (at most {MAX_ENCODINGS} are read)")
            if len(buf) < 4 + 4 * count:
                return 0
            self._set_encodings(list(struct.unpack_from(f">{count}i", buf, 4)))
            return 4 + 4 * count
        if kind == MSG_FB_UPDATE_REQUEST:
            if len(buf) < 10:
                return 0
            incremental, x, y, w, h = struct.unpack_from(">BHHHH", buf, 1)
            self.request = (bool(incremental), (x, y, w, h))
            self.compared = -1
            return 10
        if kind == MSG_KEY_EVENT:
            if len(buf) < 8:
                return 0
            down, keysym = struct.unpack_from(">B2xI", buf, 1)
            self._input_keys(self.keys.keysym_event(keysym, bool(down)))
            return 8
        if kind == MSG_POINTER_EVENT:
            if len(buf) < 6:
                return 0
            self._pointer(*struct.unpack_from(">BHH", buf, 1))
            return 6
        if kind == MSG_CLIENT_CUT_TEXT:
            if len(buf) < 8:
                return 0
            length = struct.unpack_from(">I", buf, 4)[0]
            if length > MAX_CUT_TEXT:
                raise RfbError(f"ClientCutText of {length} bytes (at most {MAX_CUT_TEXT} are taken)")
            return 8 + length if len(buf) >= 8 + length else 0
        if kind == MSG_QEMU:
            if len(buf) < 2:
                return 0
            if buf[1] != QEMU_EXTENDED_KEY_EVENT:
                raise RfbError(f"QEMU client message subtype {buf[1]} is not served")
            if len(buf) < 12:
                return 0
            down, _keysym, code = struct.unpack_from(">HII", buf, 2)
            self._input_keys(self.keys.scancode_event(code, bool(down)))
            return 12
        raise RfbError(f"unknown client message type {kind}")

    def _set_pixel_format(self, pf: PixelFormat) -> None:
        pf.check()
        if pf.true_colour:
            self.pf = pf
            return
        self.pf = COLOUR_MAP_332
        entries = b"".join(struct.pack(">HHH", (i & 7) * 0xFFFF // 7, (i >> 3 & 7) * 0xFFFF // 7,
                                       (i >> 6) * 0xFFFF // 3) for i in range(256))
        self._send(struct.pack(">BxHH", MSG_SET_COLOUR_MAP, 0, 256) + entries)

    def _set_encodings(self, encodings: list[int]) -> None:
        self.encodings = encodings
        if ENC_QEMU_EXTENDED_KEY in encodings:
            # Acknowledged with a pseudo-rectangle at once, as QEMU does: then the client sends scan codes.
            self._send(struct.pack(">BxH", MSG_FB_UPDATE, 1) + rect_header(0, 0, 0, 0, ENC_QEMU_EXTENDED_KEY))

    def _input_keys(self, events: list[bytes]) -> None:
        if self.server.input is None:
            return
        for event in events:
            self.server.input.key_event(event)

    def _pointer(self, mask: int, x: int, y: int) -> None:
        if self.server.input is None:
            return
        px, py = self.pointer if self.pointer is not None else (x, y)
        self.pointer = (x, y)
        # RFB: bit 0 left, 1 middle, 2 right, 3/4 wheel up/down (a press and a release per notch).
        buttons = (mask & 1) | (mask >> 1 & 2) | (mask << 1 & 4)
        dz = (1 if mask & 8 and not self.buttons & 8 else 0) - (1 if mask & 16 and not self.buttons & 16 else 0)
        changed = buttons != self.buttons & 7 or dz
        self.buttons = mask
        dx, dy = x - px, y - py
        while dx or dy or changed:
            step_x = max(-MOUSE_STEP, min(MOUSE_STEP, dx))
            step_y = max(-MOUSE_STEP, min(MOUSE_STEP, dy))
            self.server.input.mouse_event(step_x, step_y, buttons, dz)
            dx, dy, dz, changed = dx - step_x, dy - step_y, 0, False

    # -- updates (RFC 6143 7.6.1) ---------------------------------------------------------------------------
    def _update(self) -> None:
        assert self.request is not None
        frame = self.server.hub.latest()
        if frame is None:
            return
        incremental, region = self.request
        rects_out: list[bytes] = []
        pixels = frame.pixels
        if (frame.width, frame.height) != self.size:
            if ENC_DESKTOP_SIZE in self.encodings:
                self.size = (frame.width, frame.height)
                self.shadow = None
                rects_out.append(rect_header(0, 0, frame.width, frame.height, ENC_DESKTOP_SIZE))
                incremental, region = False, (0, 0, frame.width, frame.height)
            else:
                pixels = _fit(pixels, self.size)
        if incremental and self.compared == frame.sequence:
            return
        self.compared = frame.sequence
        old = self.shadow
        if incremental and old is not None:
            rects = [r for r in (_clip(d, region) for d in dirty_rects(old, pixels)) if r is not None]
        else:
            whole = _clip(region, (0, 0, self.size[0], self.size[1]))
            rects = [whole] if whole is not None else []
        if not rects and not rects_out:
            return
        encoding = next((e for e in self.encodings if e in (ENC_RAW, ENC_ZRLE)), ENC_RAW)
        rects_out += self.server_encode(pixels, rects, encoding, old)
        self._send(struct.pack(">BxH", MSG_FB_UPDATE, len(rects_out)) + b"".join(rects_out))
        if old is None:
            self.shadow = np.zeros((self.size[1], self.size[0]), np.uint32)
        for x, y, w, h in rects:
            self.shadow[y:y + h, x:x + w] = pixels[y:y + h, x:x + w]
        self.request = None

    def server_encode(self, pixels: np.ndarray, rects: list[Rect], encoding: int,
                      old: np.ndarray | None) -> list[bytes]:
        return self.encoder.encode(pixels, rects, self.pf, encoding, old, ENC_COPYRECT in self.encodings)


def _clip(rect: Rect, bounds: Rect) -> Rect | None:
    x0, y0 = max(rect[0], bounds[0]), max(rect[1], bounds[1])
    x1 = min(rect[0] + rect[2], bounds[0] + bounds[2])
    y1 = min(rect[1] + rect[3], bounds[1] + bounds[3])
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _fit(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The picture cropped or padded (black) to a client's framebuffer that cannot change size."""
    width, height = size
    out = np.full((height, width), 0xFF000000, np.uint32)
    h, w = min(height, pixels.shape[0]), min(width, pixels.shape[1])
    out[:h, :w] = pixels[:h, :w]
    return out
