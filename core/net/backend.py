"""Where a virtio-net card's frames go: a NetBackend moves whole Ethernet frames (no virtio header) between the
device and the host.

- StreamBackend: a connected stream socket carrying each frame after its length as a 4-byte big-endian number:
  passt's "qemu" socket protocol, the one QEMU 7.2 speaks through `-netdev stream` (QEMU's net/stream.c; passt's
  tap.c). A length above MAX_FRAME is a broken peer: the backend ends.
- TapBackend: a Linux TAP file descriptor (IFF_TAP | IFF_NO_PI): one read() is one frame, one write() sends one
  (Documentation/networking/tuntap.rst).

recv_frame() blocks (it is called on the card's receive thread, never on a vCPU) and returns None once the
backend has gone (passt exited, the socket or TAP closed); send_frame() returns False then. close() may be called
from any thread and wakes a blocked recv_frame().
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
from abc import ABC, abstractmethod

ETH_HEADER = 14
# The largest frame either way: an Ethernet header (with one VLAN tag) and the largest IPv4/IPv6 packet.
MAX_FRAME = ETH_HEADER + 4 + 65535
_READ_CHUNK = 256 * 1024


class NetBackend(ABC):
    """One card's connection to the host network."""

    description = ""

    @abstractmethod
    def recv_frame(self) -> bytes | None:
        """The next frame from the host; None when the backend has ended."""

    @abstractmethod
    def send_frame(self, frame: bytes) -> bool:
        """Send one frame to the host; False when the backend has ended."""

    @abstractmethod
    def close(self) -> None:
        """End the backend (idempotent, any thread)."""

    def why_ended(self) -> str:
        """One line saying why the backend ended (for the log and the GUI)."""
        return "the backend closed"


class _WakePipe:
    """The pipe whose write end close() shuts, so a recv blocked in select() wakes at once (EOF on the read end).
    The read end is closed by whichever comes last: close(), or the reader leaving recv; until then a reader may
    still be selecting on it, and a descriptor closed under a select() could be reused by another file."""

    def __init__(self) -> None:
        self.r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._readers = 0
        self._closing = False

    def enter(self) -> bool:
        """A reader starts waiting; False when the backend is closing (do not wait)."""
        with self._lock:
            if self._closing:
                return False
            self._readers += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._readers -= 1
            self._release()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            os.close(self._w)
            self._release()

    def _release(self) -> None:
        if self._closing and self._readers == 0 and self.r >= 0:
            os.close(self.r)
            self.r = -1


class StreamBackend(NetBackend):
    """Length-prefixed frames over a connected stream socket (passt's protocol)."""

    def __init__(self, sock: socket.socket, description: str = "stream") -> None:
        self.sock = sock
        self.description = description
        self._buf = bytearray()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._ended = ""
        self._wake = _WakePipe()

    def recv_frame(self) -> bytes | None:
        if not self._wake.enter():
            return None
        try:
            return self._recv_frame()
        finally:
            self._wake.leave()

    def _recv_frame(self) -> bytes | None:
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (length,) = struct.unpack_from(">I", buf)
                if length > MAX_FRAME or length < ETH_HEADER:
                    self._end(f"the peer sent a frame of {length} bytes (allowed {ETH_HEADER}..{MAX_FRAME})")
                    return None
                if len(buf) >= 4 + length:
                    frame = bytes(buf[4:4 + length])
                    del buf[:4 + length]
                    return frame
            if self._closed.is_set():
                return None
            try:
                ready = select.select([self.sock, self._wake.r], [], [])[0]
                if self._wake.r in ready:
                    return None
                data = self.sock.recv(_READ_CHUNK)
            except (OSError, ValueError) as exc:
                self._end(f"receive failed: {exc}")
                return None
            if not data:
                self._end("the peer closed the connection")
                return None
            buf += data

    def send_frame(self, frame: bytes) -> bool:
        if self._closed.is_set():
            return False
        try:
            with self._send_lock:
                self.sock.sendall(struct.pack(">I", len(frame)) + frame)
        except OSError as exc:
            self._end(f"send failed: {exc.strerror or exc}")
            return False
        return True

    def _end(self, why: str) -> None:
        if not self._ended:
            self._ended = why
        self.close()

    def why_ended(self) -> str:
        return self._ended or "closed"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class TapBackend(NetBackend):
    """A TAP interface's file descriptor (opened by core/net/tap.py); the backend owns it."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.description = f"tap {name}"
        self._closed = threading.Event()
        self._ended = ""
        self._wake = _WakePipe()

    def recv_frame(self) -> bytes | None:
        if not self._wake.enter():
            return None
        try:
            return self._recv_frame()
        finally:
            self._wake.leave()

    def _recv_frame(self) -> bytes | None:
        while not self._closed.is_set():
            try:
                ready = select.select([self.fd, self._wake.r], [], [])[0]
                if self._wake.r in ready:
                    return None
                frame = os.read(self.fd, MAX_FRAME)
            except BlockingIOError:
                continue
            except (OSError, ValueError) as exc:
                self._end(f"read from {self.name} failed: {exc}")
                return None
            if len(frame) >= ETH_HEADER:
                return frame
        return None

    def send_frame(self, frame: bytes) -> bool:
        if self._closed.is_set():
            return False
        try:
            os.write(self.fd, frame)
        except OSError as exc:
            # EIO: the interface is down (nobody receives); the frame is lost as on a cable with no link partner.
            if exc.errno in (errno.EIO, errno.EAGAIN, errno.ENOBUFS, errno.EINVAL, errno.EMSGSIZE):
                return True
            self._end(f"write to {self.name} failed: {exc.strerror}")
            return False
        return True

    def _end(self, why: str) -> None:
        if not self._ended:
            self._ended = why
        self.close()

    def why_ended(self) -> str:
        return self._ended or "closed"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.close()
        try:
            os.close(self.fd)
        except OSError:
            pass
