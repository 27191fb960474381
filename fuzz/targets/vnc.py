"""The RFB server (core/vnc/server.py, RFC 6143 with QEMU's extended key event): a hostile client's byte stream,
from the version handshake through security (None or VNC authentication) to every client message, may only end
that client's session with an RfbError or OSError (logged at info); an internal error (logged with a traceback) or
an exception out of the session is a finding. Keys and pointer events go to a real 8042 model."""
from __future__ import annotations

import os
import socket
import struct
import threading

import numpy as np

from core.devices.i8042 import I8042
from core.display.frame import Frame
from core.irq import IrqLine
from core.keymap import Ps2InputSink
from core.vnc.address import parse_vnc
from core.vnc.protocol import VERSION_33, VERSION_37, VERSION_38
from fuzz.harness import scratch_dir, target

_dir = scratch_dir("vnc")
_servers: dict[bool, object] = {}


class _Sink:
    def set_irq(self, gsi: int, level: bool) -> None:
        pass


class Screen:
    """A frame source whose picture changes on every render and whose size changes now and then (a guest
    switching video modes), so updates, ZRLE tiles and DesktopSize all happen."""

    def __init__(self) -> None:
        self.sequence = 0

    def render(self, force: bool = False) -> Frame:
        self.sequence += 1
        w, h = ((64, 48), (80, 25), (33, 17))[self.sequence // 7 % 3]
        pixels = np.full((h, w), 0xFF000000 | (self.sequence * 0x010203) & 0xFFFFFF, dtype=np.uint32)
        pixels[self.sequence % h, :] = 0xFFFFFFFF
        return Frame(w, h, pixels, [], "fuzz", self.sequence)


def _server(password: bool):  # noqa: ANN202
    from core.vnc.server import VncServer
    if password not in _servers:
        path = os.path.join(_dir, f"vnc{int(password)}.sock")
        kbd = I8042(lambda: None, IrqLine(_Sink(), 1), IrqLine(_Sink(), 12))
        _servers[password] = VncServer(parse_vnc(f"unix:{path}"), Screen(), Ps2InputSink(kbd),
                                       password="fuzz" if password else "")
    return _servers[password]


def _seeds() -> list[bytes]:
    fmt = struct.pack(">BBBBHHHBBB3x", 16, 16, 0, 1, 31, 63, 31, 11, 5, 0)
    body = (b"\x00\x00\x00\x00" + fmt                       # SetPixelFormat 16 bpp
            + struct.pack(">BxHiii", 2, 3, 16, -223, -258)   # SetEncodings ZRLE, DesktopSize, QEMU keys
            + struct.pack(">BBHHHH", 3, 0, 0, 0, 64, 48)     # FramebufferUpdateRequest
            + struct.pack(">BBxxI", 4, 1, 0x61) + struct.pack(">BBxxI", 4, 0, 0x61)
            + struct.pack(">BBHH", 5, 1, 10, 10) + struct.pack(">BBHH", 5, 0, 60, 40)
            + struct.pack(">BBHII", 255, 0, 1, 0x61, 0x1E) + struct.pack(">BxxxI", 6, 5) + b"hello"
            + struct.pack(">BBHHHH", 3, 1, 0, 0, 64, 48))
    return [b"\x00" + VERSION_38 + b"\x01\x01" + body, b"\x00" + VERSION_33 + b"\x01" + body,
            b"\x00" + VERSION_37 + b"\x01\x01" + body[:40], b"\x01" + VERSION_38 + b"\x02" + bytes(16) + b"\x01",
            b"\x00" + VERSION_38 + b"\x02"]


@target("vnc", allowed=(), seeds=_seeds, max_len=4096, hang_seconds=5.0)
def fuzz_vnc(data: bytes) -> None:
    """One client session fed a hostile byte stream (first byte: bit 0 asks for a password-protected server)."""
    from core.vnc import server as srv
    server = _server(bool(data[:1] and data[0] & 1))
    ours, theirs = socket.socketpair()
    drained = threading.Thread(target=_drain, args=(theirs, data[1:]), daemon=True)
    drained.start()
    client = srv._Client(server, ours, "fuzz")
    with server._lock:
        server._clients.add(client)
    old = srv.IO_TIMEOUT
    srv.IO_TIMEOUT = 1.0        # a client that stops sending mid-message is dropped after this (30 s in service)
    try:
        client.run()            # returns when the stream ends; logs and swallows the designed errors
    finally:
        srv.IO_TIMEOUT = old
        drained.join(5)
        theirs.close()


def _drain(sock: socket.socket, data: bytes) -> None:
    """The client's side: send the input, close for writing, read whatever the server sends until it closes."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
