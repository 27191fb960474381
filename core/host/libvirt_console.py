"""A libvirt domain's VNC graphics as a Vireo console (VmConsole): Vireo's RFB client (core/vnc/client.py, RFC
6143) connected to the address the domain's live XML gives (<graphics type='vnc' port=… listen=…> or a UNIX
socket), read by a thread so the console widget polls render() as it polls a local VM's renderer.

The client's socket is shared by the reader (FramebufferUpdateRequest after each update) and the console's input
(key and pointer events from the GUI thread): sends go through one lock so messages never interleave, and the
reader holds the pixels' lock only while an update it has seen arriving is decoded, so render() never waits on
the network.
"""
from __future__ import annotations

import select
import threading

from core.display.frame import Frame
from core.host.api import HostError, VmConsole
from core.vnc.address import BASE_PORT
from core.vnc.client import VncClient
from core.vnc.protocol import RfbError

CONNECT_TIMEOUT = 10.0
IDLE_POLL = 0.5       # seconds the reader waits for data before checking whether it was closed


class _LockedClient(VncClient):
    """VncClient whose sends are serialised (reader's update requests vs the GUI's input)."""

    def __init__(self, *args, **kwargs) -> None:
        self._send_lock = threading.Lock()      # before the handshake, which sends too
        super().__init__(*args, **kwargs)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            super()._send(data)


class VncFeed:
    """The frames and input of one VNC connection; `closed` once the server went away (the domain stopped)."""

    def __init__(self, client: VncClient) -> None:
        self.client = client
        self.closed = False
        self.error = ""
        self._pixels_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="vireo-libvirt-vnc", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        sock = self.client.sock
        try:
            sock.settimeout(None)
            self.client.request(incremental=False)
            while not self.closed:
                ready, _, _ = select.select([sock], [], [], IDLE_POLL)
                if not ready:
                    continue
                with self._pixels_lock:
                    self.client.read_update()
                self.client.request(incremental=True)
        except (OSError, ValueError, EOFError) as exc:
            self.error = str(exc) or type(exc).__name__
        except Exception as exc:      # a malformed update (RfbError) ends this connection only
            self.error = str(exc)
        finally:
            self.closed = True
            self.client.close()

    # core.display.frame.FrameSource
    def render(self, force: bool = False) -> Frame | None:
        with self._pixels_lock:
            frame = self.client.render(force)
            if frame is None:
                return None
            return Frame(frame.width, frame.height, frame.pixels.copy(), frame.dirty, frame.mode, frame.sequence)

    # core.keymap.InputSink
    def key_event(self, set2_bytes: bytes) -> None:
        if not self.closed:
            try:
                self.client.key_event(set2_bytes)
            except OSError:
                pass       # the domain stopped: the reader notices and closes

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        if not self.closed:
            try:
                self.client.mouse_event(dx, dy, buttons, dz)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True


def vnc_target(spec: str) -> str | tuple[str, int]:
    """display.vnc's spelling (HOST:DISPLAY or unix:PATH, as LibvirtHost fills it) -> VncClient.connect's address.
    HOST is wherever the domain listens, not only loopback (a libvirt host's graphics may listen on its LAN)."""
    if spec.startswith("unix:"):
        return spec[5:]
    host, _, display = spec.rpartition(":")
    return host.strip("[]"), BASE_PORT + int(display)


def open_feed(spec: str, password: str = "") -> VncFeed:
    target = vnc_target(spec)
    try:
        client = _LockedClient.connect(target, timeout=CONNECT_TIMEOUT, password=password)
    except (OSError, ValueError, RfbError) as exc:
        where = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
        raise HostError(f"cannot reach the domain's VNC console at {where}: {exc}") from None
    return VncFeed(client)


def console_of(feed: VncFeed, session: int) -> VmConsole:
    return VmConsole(session=session, frames=feed, input=feed)
