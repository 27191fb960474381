"""The VM process's outgoing messages: queued by any thread, sent by one writer thread, so no engine thread (a vCPU
printing to its serial port, the supervisor reporting a state) ever waits for the controller to read.

Serial bytes are coalesced into batches of up to SERIAL_BATCH bytes, and at most SERIAL_LIMIT of them wait: beyond
that the oldest are dropped (and counted), as a terminal that cannot keep up loses output rather than stalling the
machine. Other messages (states, replies) are never dropped. A controller that reads nothing for SEND_TIMEOUT
seconds is disconnected; a new one (VmProcess.adopt) can connect at any time and replaces it: the previous one is
told so ({"t": "replaced"}) by the writer thread, the only thread that ever sends, so frames never interleave.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any

from core.protocol import encode
from core.vmproc.wire import SERIAL_BATCH, send_all

log = logging.getLogger(__name__)

SERIAL_LIMIT = 1024 * 1024
SEND_TIMEOUT = 15.0
FAREWELL_TIMEOUT = 1.0
BATCH_DELAY = 0.002              # let a burst of serial output gather into one message


class Outbox:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: deque[tuple[dict[str, Any], bytearray]] = deque()
        self._serial_bytes = 0
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._retired: list[socket.socket] = []
        self._sending = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="vireo-outbox", daemon=True)
        self._thread.start()

    # -- producers (any thread) ------------------------------------------------------------------------------
    def put(self, header: dict[str, Any], payload: bytes = b"") -> None:
        with self._cond:
            if self._sock is None:
                return
            self._items.append((header, bytearray(payload)))
            self._cond.notify()

    def serial(self, data: bytes) -> None:
        with self._cond:
            if self._sock is None or not data:
                return
            last = self._items[-1] if self._items else None
            if last is not None and last[0]["t"] == "serial" and len(last[1]) + len(data) <= SERIAL_BATCH:
                last[1].extend(data)
            else:
                for start in range(0, len(data), SERIAL_BATCH):
                    self._items.append(({"t": "serial"}, bytearray(data[start:start + SERIAL_BATCH])))
            self._serial_bytes += len(data)
            if self._serial_bytes > SERIAL_LIMIT:
                self._drop_oldest_serial()
            self._cond.notify()

    def _drop_oldest_serial(self) -> None:
        for header, payload in self._items:
            if self._serial_bytes <= SERIAL_LIMIT:
                break
            if header["t"] == "serial" and payload:
                cut = min(len(payload), self._serial_bytes - SERIAL_LIMIT)
                del payload[:cut]
                self._serial_bytes -= cut
                if not self.dropped:
                    log.warning("the controller does not keep up with the serial output: dropping the oldest")
                self.dropped += cut

    # -- the connection --------------------------------------------------------------------------------------
    def attach(self, sock: socket.socket, first: list[tuple[dict[str, Any], bytes]]) -> bool:
        """Send to `sock` from now on, starting with `first`; the connection it replaces is told and shut down."""
        with self._cond:
            old, self._sock = self._sock, sock
            if old is not None:
                self._retired.append(old)
            self._items.clear()
            self._serial_bytes = 0
            self._items.extend((header, bytearray(payload)) for header, payload in first)
            self._cond.notify()
            return old is not None

    def detach(self, sock: socket.socket) -> None:
        with self._cond:
            if self._sock is sock:
                self._sock = None
                self._items.clear()
                self._serial_bytes = 0
                self._cond.notify_all()

    def is_current(self, sock: socket.socket) -> bool:
        with self._cond:
            return self._sock is sock

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been sent (or there is no controller); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._sock is not None and (self._items or self._sending):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the writer thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._retired and (self._sock is None or not self._items):
                    self._cond.wait()
                if self._closed:
                    return
                retired, self._retired = self._retired, []
                serial_first = bool(self._items) and self._items[0][0]["t"] == "serial"
            for old in retired:
                try:
                    send_all(old, encode({"t": "replaced"}), FAREWELL_TIMEOUT)
                except (OSError, TimeoutError):
                    pass
                _shutdown(old)
            if serial_first:
                time.sleep(BATCH_DELAY)
            with self._cond:
                sock = self._sock
                if sock is None or not self._items:
                    continue
                batch = []
                while self._items and len(batch) < 64:
                    header, payload = self._items.popleft()
                    if header["t"] == "serial":
                        self._serial_bytes -= len(payload)
                        if not payload:
                            continue
                    try:
                        batch.append(encode(header, bytes(payload)))
                    except ValueError:      # over the frame limits: a bug on this side, not worth the VM
                        log.exception("dropping a message that cannot be sent")
                self._sending = True
            try:
                send_all(sock, b"".join(batch), SEND_TIMEOUT)
            except Exception as exc:        # OSError (also: its reader thread closed it), TimeoutError
                log.warning("the controller's connection failed (%s); waiting for another", exc)
                self.detach(sock)
                _shutdown(sock)             # its reader thread sees the end and closes it
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
