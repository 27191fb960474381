"""`vireo domdisplay NAME --forward --connect ssh://…`: a remote VM's VNC console reached through the SSH
connection the command already has, as `ssh -L` would: a listener on this machine's 127.0.0.1, and for each viewer
that connects a "direct-tcpip" channel (RFC 4254 7.2) to the VNC server on the remote host's loopback, bytes
copied both ways until either side closes. It runs until Ctrl-C (or SIGTERM)."""
from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable

from core.host.api import HostError
from core.vnc.address import BASE_PORT, VncAddress

CHUNK = 64 * 1024


def _pump(viewer: socket.socket, channel) -> None:
    """Copy between a viewer's socket and its SSH channel until one of them closes."""
    try:
        while True:
            ready, _, _ = select.select([viewer, channel], [], [], 1.0)
            if viewer in ready:
                data = viewer.recv(CHUNK)
                if not data:
                    return
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(CHUNK)
                if not data:
                    return
                viewer.sendall(data)
    except OSError:
        return
    finally:
        viewer.close()
        channel.close()


def serve(open_channel: Callable[[str, int], object], remote: VncAddress, stop: threading.Event,
          ready: Callable[[str], None], on_error: Callable[[str], None]) -> None:
    """Listen on 127.0.0.1 (a free port above 5900), call ready(vnc://…), and forward each connection to `remote`
    through open_channel(host, port) until `stop` is set."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        ready(f"vnc://127.0.0.1:{port}" + (f" (display {port - BASE_PORT})" if port > BASE_PORT else ""))
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                viewer, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                channel = open_channel(remote.host, remote.port)
            except HostError as exc:
                on_error(str(exc))
                viewer.close()
                continue
            threading.Thread(target=_pump, args=(viewer, channel), name="vireo-vnc-forward", daemon=True).start()
    finally:
        listener.close()
