"""A net backend gives back every descriptor it holds when it closes (core/net/backend.py).

Found by the virtio_net fuzz target (bench/fuzz.py's leak check): each StreamBackend and TapBackend kept the pipe
that wakes a blocked recv_frame() open after close(), two descriptors per backend, so every reconnect of a card
(`vireo net reconnect`, the link switch, passt restarted) left two behind in the VM process."""
from __future__ import annotations

import os
import socket
import threading
import time

from core.net.backend import StreamBackend, TapBackend


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closed_stream_backends_leave_no_descriptors() -> None:
    before = _fds()
    for _ in range(20):
        ours, theirs = socket.socketpair()
        backend = StreamBackend(ours, "test")
        backend.close()
        theirs.close()
    assert _fds() == before


def test_close_wakes_a_blocked_reader_and_then_releases_the_pipe() -> None:
    before = _fds()
    ours, theirs = socket.socketpair()
    backend = StreamBackend(ours, "test")
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(backend.recv_frame()))
    reader.start()
    time.sleep(0.05)                  # the reader is in select()
    backend.close()
    reader.join(5)
    assert not reader.is_alive() and got == [None]
    assert backend.recv_frame() is None     # a read after close returns at once, touching no closed descriptor
    theirs.close()
    assert _fds() == before


def test_a_peer_that_ends_the_stream_releases_everything() -> None:
    before = _fds()
    ours, theirs = socket.socketpair()
    backend = StreamBackend(ours, "test")
    theirs.sendall(b"\x00\x00\x00\x02xx")       # a frame shorter than an Ethernet header: the backend ends
    assert backend.recv_frame() is None
    assert "frame of 2 bytes" in backend.why_ended()
    theirs.close()
    assert _fds() == before


def test_closed_tap_backends_leave_no_descriptors() -> None:
    before = _fds()
    for _ in range(10):
        r, w = os.pipe()              # any descriptor stands in for the TAP one: the backend owns and closes it
        os.close(w)
        TapBackend(r, "tap-test").close()
    assert _fds() == before
