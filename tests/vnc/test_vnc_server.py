"""The RFB server (core/vnc) on the VGA model, driven through its ports and memory as a guest drives it and read by
the RFB client of core/vnc/client.py and raw sockets: versions, security, pixel formats, encodings, DesktopSize,
CopyRect on a scroll, input, and hostile clients that must lose their connection and nothing else."""
from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from core.display.renderer import Renderer
from core.keymap import break_code, make_code
from core.vnc.address import VncAddressError, parse_vnc
from core.vnc.auth import encrypt_challenge
from core.vnc.client import VncClient
from core.vnc.keys import KeyTranslator
from core.vnc.protocol import (
    ENC_COPYRECT,
    ENC_DESKTOP_SIZE,
    ENC_QEMU_EXTENDED_KEY,
    ENC_RAW,
    ENC_ZRLE,
    PixelFormat,
    RfbError,
)
from core.vnc.server import VncListenError, VncServer
from tests.display.test_vga import Machine, dispi_write, map_bars


class Keyboard:
    """The console's InputSink side as the i8042 sees it: records what the server hands over."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.mouse: list[tuple[int, int, int, int]] = []

    def key_event(self, set2: bytes) -> None:
        self.keys.append(set2)

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        self.mouse.append((dx, dy, buttons, dz))


def _free_display() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1] - 5900 if s.getsockname()[1] > 5900 else 0


@pytest.fixture
def vga_server():
    m = Machine()
    m.outb(0x3D4, 0x0A)            # cursor off (CRTC cursor start bit 5): a blinking cursor would make the
    m.outb(0x3D5, 0x20)            # picture depend on when it is taken
    for i, ch in enumerate(b"Hello from the VGA text screen"):
        m.mmio.write(0xB8000 + 2 * i, 2, 0x1F00 | ch)
    sink = Keyboard()
    for _ in range(20):
        try:
            server = VncServer(parse_vnc(f"127.0.0.1:{_free_display()}"), Renderer(m.vga), sink)
            break
        except VncListenError:
            continue
    server.start()
    yield m, server, sink
    server.close()


def _addr(server: VncServer) -> tuple[str, int]:
    return server.address.host, server.address.port


def _truth(m: Machine) -> np.ndarray:
    return Renderer(m.vga).render(force=True).pixels


@pytest.mark.parametrize("encoding", [ENC_RAW, ENC_ZRLE])
def test_screen_arrives_exactly_raw_and_zrle(vga_server, encoding) -> None:
    m, server, _ = vga_server
    client = VncClient.connect(_addr(server), encodings=(encoding,))
    try:
        assert (client.width, client.height) == (720, 400)
        assert (client.screen() == _truth(m)).all()
        assert client.rects_by_encoding.get(encoding)
        for i, ch in enumerate(b"changed"):
            m.mmio.write(0xB8000 + 160 * 10 + 2 * i, 2, 0x4E00 | ch)
        client.request(incremental=True)
        rects = client.read_update()
        assert all(enc == encoding for _, enc in rects)
        assert sum(w * h for (_, _, w, h), _ in rects) < 720 * 400 // 4       # only what changed
        assert (client.pixels == _truth(m)).all()
    finally:
        client.close()


def test_zrle_is_smaller_than_raw_and_one_stream_across_updates(vga_server) -> None:
    m, server, _ = vga_server
    raw = VncClient.connect(_addr(server), encodings=(ENC_RAW,))
    zrle = VncClient.connect(_addr(server), encodings=(ENC_ZRLE,))
    try:
        raw.screen()
        zrle.screen()
        assert zrle.bytes_received * 20 < raw.bytes_received
        for n in range(3):                  # the zlib stream carries on across updates
            m.mmio.write(0xB8000 + 160 * (12 + n), 2, 0x2F00 | ord("x"))
            zrle.request()
            zrle.read_update()
            assert (zrle.pixels == _truth(m)).all()
    finally:
        raw.close()
        zrle.close()


def _expected(pixels: np.ndarray, pf: PixelFormat) -> np.ndarray:
    """The client-format values, computed channel by channel from the 0xFFRRGGBB pixels."""
    out = np.zeros(pixels.shape, np.uint64)
    for shift_in, top, shift_out in ((16, pf.red_max, pf.red_shift), (8, pf.green_max, pf.green_shift),
                                     (0, pf.blue_max, pf.blue_shift)):
        channel = (pixels.astype(np.uint64) >> shift_in) & 0xFF
        out |= (channel * (top + 1) // 256) << shift_out
    return out


@pytest.mark.parametrize("pf", [
    PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0),      # RGB565 big-endian
    PixelFormat(16, 15, False, True, 31, 31, 31, 10, 5, 0),     # RGB555 little-endian
    PixelFormat(32, 24, True, True, 255, 255, 255, 0, 8, 16),   # BGR, big-endian
    PixelFormat(8, 8, False, True, 7, 7, 3, 5, 2, 0),           # RGB332 true colour
], ids=["565be", "555le", "bgr32be", "332"])
def test_set_pixel_format_either_byte_order(vga_server, pf) -> None:
    m, server, _ = vga_server
    sock = _handshake(server)
    try:
        sock.sendall(struct.pack(">B3x", 0) + pf.pack() + struct.pack(">BxHi", 2, 1, ENC_RAW))
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, 720, 400))
        head = _recv(sock, 4 + 12)
        assert head[:4] == struct.pack(">BxH", 0, 1)
        size = pf.bits_per_pixel // 8
        data = _recv(sock, 720 * 400 * size)
        got = np.frombuffer(data, f"{'>' if pf.big_endian else '<'}u{size}").reshape(400, 720)
        assert (got == _expected(_truth(m), pf)).all()
    finally:
        sock.close()


def test_colour_map_at_8_bpp(vga_server) -> None:
    m, server, _ = vga_server
    sock = _handshake(server)
    try:
        pf = PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0)
        sock.sendall(struct.pack(">B3x", 0) + pf.pack())
        kind, first, count = struct.unpack(">BxHH", _recv(sock, 6))
        assert (kind, first, count) == (1, 0, 256)
        colours = np.frombuffer(_recv(sock, 6 * 256), ">u2").reshape(256, 3) >> 8
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, 720, 400))
        _recv(sock, 16)
        index = np.frombuffer(_recv(sock, 720 * 400), np.uint8).reshape(400, 720)
        truth = _truth(m)
        r, g, b = (truth >> 16) & 0xFF, (truth >> 8) & 0xFF, truth & 0xFF
        # Each pixel's map entry is the nearest the 3-3-2 map has to its colour.
        assert (np.abs(colours[index, 0].astype(int) - r) <= 36).all()
        assert (np.abs(colours[index, 1].astype(int) - g) <= 36).all()
        assert (np.abs(colours[index, 2].astype(int) - b) <= 85).all()
    finally:
        sock.close()


def test_desktop_size_on_vbe_switch_and_copyrect_on_scroll(vga_server) -> None:
    m, server, _ = vga_server
    client = VncClient.connect(_addr(server), encodings=(ENC_ZRLE, ENC_COPYRECT, ENC_DESKTOP_SIZE))
    try:
        client.screen()
        map_bars(m)
        for index, value in ((4, 0), (3, 32), (1, 1024), (2, 768), (4, 0x41)):   # bochs-drm's mode set
            dispi_write(m, index, value)
        rng = np.random.default_rng(7)
        rows = (rng.integers(0, 6, (768, 1024)) * 0x2A2A2A).astype(np.uint32)
        m.vga.vbe.vram[:768 * 4096] = rows.tobytes()
        m.vga.regs.generation += 1           # what an MMIO write would count; the test wrote the memory directly
        client.request()
        rects = client.read_update()
        assert rects[0] == ((0, 0, 1024, 768), ENC_DESKTOP_SIZE)
        assert (client.width, client.height) == (1024, 768)
        assert (client.pixels == _truth(m)).all()
        before = client.bytes_received
        m.vga.vbe.vram[:768 * 4096] = np.roll(rows, -16, axis=0).tobytes()      # scroll up one text line
        m.vga.regs.generation += 1
        client.request()
        rects = client.read_update()
        assert ((0, 0, 1024, 752), ENC_COPYRECT) in rects
        assert client.bytes_received - before < 100_000
        assert (client.pixels == _truth(m)).all()
        dispi_write(m, 4, 0)                 # back to text mode
        client.request()
        assert client.read_update()[0] == ((0, 0, 720, 400), ENC_DESKTOP_SIZE)
        assert (client.pixels == _truth(m)).all()
    finally:
        client.close()


def test_client_without_desktop_size_keeps_its_size(vga_server) -> None:
    m, server, _ = vga_server
    client = VncClient.connect(_addr(server), encodings=(ENC_RAW,))
    try:
        client.screen()
        map_bars(m)
        for index, value in ((3, 32), (1, 800), (2, 600), (4, 0x41)):
            dispi_write(m, index, value)
        client.request()
        client.read_update()
        assert (client.width, client.height) == (720, 400)
        assert (client.pixels == _truth(m)[:400, :720]).all()
    finally:
        client.close()


@pytest.mark.parametrize("version", [(3, 3), (3, 7), (3, 8)])
def test_versions_and_vnc_password(vga_server, version) -> None:
    m, _, _ = vga_server
    server = VncServer(parse_vnc(f"127.0.0.1:{_free_display()}"), Renderer(m.vga), None, password="s3cret")
    server.start()
    try:
        client = VncClient.connect(_addr(server), password="s3cret", version=version)
        assert client.version == version
        assert (client.screen() == _truth(m)).all()
        client.close()
        with pytest.raises(RfbError):
            VncClient.connect(_addr(server), password="wrong", version=version)
        with pytest.raises(RfbError, match="password"):
            VncClient.connect(_addr(server), version=version)
        assert (VncClient.connect(_addr(server), password="s3cret").screen() == _truth(m)).all()
    finally:
        server.close()


def test_vnc_auth_des_known_answer() -> None:
    # The response a VNC viewer (e.g. TigerVNC's vncauth) computes for "password" and the challenge 0..15.
    challenge = bytes(range(16))
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in b"password")
    reference = Cipher(TripleDES(key * 3), modes.ECB()).encryptor().update(challenge)
    assert encrypt_challenge("password", challenge) == reference
    assert encrypt_challenge("password-too-long", challenge) == reference        # VNC uses 8 characters


def test_unix_socket_is_private_and_removed(tmp_path) -> None:
    m = Machine()
    m.outb(0x3D4, 0x0A)
    m.outb(0x3D5, 0x20)
    path = tmp_path / "vm.vnc"
    server = VncServer(parse_vnc(f"unix:{path}"), Renderer(m.vga), None)
    server.start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        client = VncClient.connect(str(path))
        assert (client.screen() == _truth(m)).all()
        client.close()
    finally:
        server.close()
    assert not path.exists()


def test_addresses() -> None:
    assert parse_vnc("127.0.0.1:1").uri() == "vnc://127.0.0.1:5901"
    assert parse_vnc("localhost:0").port == 5900
    assert parse_vnc("[::1]:2").uri() == "vnc://[::1]:5902"
    assert parse_vnc("unix:/run/x.sock").uri() == "vnc+unix:///run/x.sock"
    for bad, words in (("0.0.0.0:1", "loopback"), ("127.0.0.1", "HOST:DISPLAY"), ("unix:rel", "absolute"),
                       ("127.0.0.1:99999", "DISPLAY 0..")):
        with pytest.raises(VncAddressError, match=words):
            parse_vnc(bad)


def test_port_in_use_is_one_line(vga_server) -> None:
    m, server, _ = vga_server
    with pytest.raises(VncListenError, match=f"cannot listen on vnc://127.0.0.1:{server.address.port}: .*in use"):
        VncServer(server.address, Renderer(m.vga), None)


# -- input ---------------------------------------------------------------------------------------------------

def test_keysyms_shift_and_release() -> None:
    keys = KeyTranslator()
    assert keys.keysym_event(ord("a"), True) == [make_code("a")]
    assert keys.keysym_event(ord("a"), False) == [break_code("a")]
    # 'A' without the client holding Shift: wrapped in Shift; with Shift held: the key alone.
    assert keys.keysym_event(ord("A"), True) == [make_code("shift_l"), make_code("a"), break_code("shift_l")]
    keys.keysym_event(ord("A"), False)
    keys.keysym_event(0xFFE1, True)
    assert keys.keysym_event(ord("!"), True) == [make_code("1")]
    assert keys.keysym_event(0xFF0D, True) == [make_code("enter")]
    assert sorted(keys.release_all()) == sorted([break_code("shift_l"), break_code("1"), break_code("enter")])
    assert keys.scancode_event(0x1E, True) == [make_code("a")]           # XT 1E = A
    assert keys.scancode_event(0xC8, True) == [make_code("up")]          # E0 48
    assert keys.scancode_event(0x9D, False) == []                        # never pressed
    assert keys.keysym_event(0x20AC, True) == []                         # the euro sign: no US key


def test_keys_and_pointer_reach_the_input_sink(vga_server) -> None:
    _, server, sink = vga_server
    client = VncClient.connect(_addr(server), encodings=(ENC_RAW, ENC_QEMU_EXTENDED_KEY))
    try:
        client.screen()                      # the acknowledgement comes first, as soon as the encodings are set
        assert client.extended_keys
        client.key(ord("q"), True)
        client.key(ord("q"), False)
        client.scancode(0x2C, True)          # XT 2C = Z
        client.pointer(100, 100)
        client.pointer(110, 95, 1)           # left button down, moved
        client.pointer(110, 95, 8)           # left released, wheel up pressed: one notch
        client.pointer(110, 95, 0)           # wheel released: nothing for PS/2
        client.close()                       # Z is still down: the server lets go of it
        deadline = time.monotonic() + 5
        while server.clients and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.keys == [make_code("q"), break_code("q"), make_code("z"), break_code("z")]
        assert sink.mouse == [(10, -5, 1, 0), (0, 0, 0, 1)]
    finally:
        client.close()


# -- hostile clients ------------------------------------------------------------------------------------------

def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _handshake(server: VncServer) -> socket.socket:
    sock = socket.create_connection(_addr(server), timeout=10)
    assert _recv(sock, 12) == b"RFB 003.008\n"
    sock.sendall(b"RFB 003.008\n")
    assert _recv(sock, 2) == b"\x01\x01"
    sock.sendall(b"\x01")
    assert _recv(sock, 4) == b"\0\0\0\0"
    sock.sendall(b"\x01")
    _recv(sock, 20)                   # size and pixel format, then the name
    _recv(sock, struct.unpack(">I", _recv(sock, 4))[0])
    return sock


def _closed(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("attack", [
    struct.pack(">BxH", 2, 60000) + b"\0" * 64,                            # a huge SetEncodings count
    struct.pack(">B3xI", 6, 0xFFFFFFF0) + b"A" * 1024,                     # cut text of 4 GiB
    struct.pack(">B3xI", 6, 0x80000000),                                   # "negative" extended-clipboard length
    struct.pack(">B3x", 0) + PixelFormat(24, 24).pack(),                  # 24 bpp
    struct.pack(">B3x", 0) + PixelFormat(16, 16, red_max=255).pack(),      # channels that do not fit 16 bits
    bytes((7,)) + b"\0" * 32,                                              # no such message
    bytes((255, 5)) + b"\0" * 16,                                          # a QEMU submessage not served
], ids=["encodings", "cut-text", "negative-cut-text", "24bpp", "overflowing-max", "unknown", "qemu-sub"])
def test_hostile_messages_disconnect_that_client_only(vga_server, attack) -> None:
    m, server, _ = vga_server
    bystander = VncClient.connect(_addr(server), encodings=(ENC_RAW,))
    bystander.screen()
    hostile = _handshake(server)
    hostile.sendall(attack)
    assert _closed(hostile)
    m.mmio.write(0xB8000, 2, 0x1F00 | ord("Z"))
    bystander.request()
    bystander.read_update()
    assert (bystander.pixels == _truth(m)).all()
    bystander.close()


def test_hostile_handshakes(vga_server) -> None:
    m, server, _ = vga_server
    for greeting in (b"GET / HTTP/1.1\r\n\r\n", b"RFB 003.008\n\x09"):
        sock = socket.create_connection(_addr(server), timeout=10)
        _recv(sock, 12)
        sock.sendall(greeting)
        assert _closed(sock)
    # A client that stops after the version (and a big update request before init) is dropped, bounded in time.
    sock = socket.create_connection(_addr(server), timeout=10)
    _recv(sock, 12)
    sock.sendall(b"RFB 003.003\n")
    assert _recv(sock, 4) == b"\0\0\0\x01"
    sock.close()
    assert (VncClient.connect(_addr(server)).screen() == _truth(m)).all()


def test_encodings_list_within_bounds_is_taken(vga_server) -> None:
    _, server, _ = vga_server
    sock = _handshake(server)
    try:
        encodings = [ENC_ZRLE] + list(range(100, 300))
        sock.sendall(struct.pack(">BxH", 2, len(encodings)) + struct.pack(f">{len(encodings)}i", *encodings))
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, 720, 400))
        assert struct.unpack(">BxHHHHHi", _recv(sock, 16))[-1] == ENC_ZRLE
    finally:
        sock.close()


@pytest.mark.parametrize("extended", [True, False], ids=["scancodes", "keysyms"])
def test_client_is_an_input_sink_round_trip(vga_server, extended) -> None:
    """Vireo's RFB client as a console's InputSink: set-2 events in, the same set-2 events out of the server."""
    _, server, sink = vga_server
    encodings = (ENC_RAW, ENC_QEMU_EXTENDED_KEY) if extended else (ENC_RAW,)
    client = VncClient.connect(_addr(server), encodings=encodings)
    try:
        client.screen()
        assert client.extended_keys == extended
        names = ["ctrl_l", "a", "up", "kp_enter", "f12", "slash", "alt_r"]
        events = [make_code(n) for n in names] + [break_code(n) for n in reversed(names)]
        for event in events:
            client.key_event(event)
        client.mouse_event(0, 0, 0)          # the server's first position is where motion counts from
        client.mouse_event(30, 20, 1)
        client.mouse_event(-5, 0, 0, dz=1)
        client.screen()                      # a round trip: everything sent before it has been handled
        assert sink.keys == events
        assert sink.mouse == [(30, 20, 1, 0), (-5, 0, 0, 0), (0, 0, 0, 1)]
    finally:
        client.close()
