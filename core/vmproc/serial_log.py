"""A VM's serial log: every byte the guest writes to its first serial port (ttyS0), appended to the file its
definition names (core.config.SerialConfig.log_file, "also append everything the guest prints here").

The VM process writes it (core/vmproc/child.py), not the service: the log is then complete whether or not a
service is connected — while a service restarts, after a new one adopts the process (VmProcess.adopt) — and is
written by the process whose guest printed it. The file is opened when the machine is built, for appending
(O_APPEND, so each write lands at the end even when something else appends too), created with mode 0600 since
a console can show passwords; a path that cannot be opened fails the start with "serial log PATH: reason".

The UART calls write() on a vCPU thread with its lock held, once per byte: write() only appends to a buffer.
A writer thread of the log's own writes the buffer out as soon as bytes arrive (a user may `tail -f` the file),
so a slow or stalled file system never stalls the guest; if the file falls PENDING_LIMIT bytes behind, the oldest
unwritten bytes are dropped and counted, as Outbox (core/vmproc/outbox.py) does for a slow controller. A write
that fails (a full disk, EIO) ends the logging, with one warning in the VM process's own log: the VM runs on.
"""
from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)

PENDING_LIMIT = 1024 * 1024      # bytes waiting for the file before the oldest are dropped
BATCH_DELAY = 0.005              # seconds to let a burst of output (one byte per call) gather into one write
CLOSE_TIMEOUT = 5.0


class SerialLogError(Exception):
    """The serial log file cannot be opened; the message is the one line the start fails with."""


class SerialLog:
    """An open serial log file and its writer thread. Create it with open()."""

    def __init__(self, fd: int, path: str) -> None:
        self.path = path
        self.dropped = 0                 # bytes lost because the file did not keep up
        self._fd = fd
        self._cond = threading.Condition()
        self._pending = bytearray()
        self._writing = False
        self._closing = False
        self._failed = False
        self._thread = threading.Thread(target=self._loop, name="vireo-serial-log", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str) -> SerialLog:
        """Open `path` for appending (created 0600 when missing); SerialLogError, one line, when it cannot be."""
        try:
            # O_NONBLOCK only for the open itself: a FIFO nobody reads fails at once (ENXIO) rather than hanging
            # the start. The writer thread may block on the file; nobody waits for it.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK,
                         0o600)
        except OSError as exc:
            raise SerialLogError(f"serial log {path}: {exc.strerror or exc}") from None
        os.set_blocking(fd, True)
        return cls(fd, path)

    def write(self, data: bytes) -> None:
        """Queue `data` for the file; never waits for it (called on a vCPU thread)."""
        with self._cond:
            if self._closing or self._failed or not data:
                return
            self._pending += data
            excess = len(self._pending) - PENDING_LIMIT
            if excess > 0:
                del self._pending[:excess]
                if not self.dropped:
                    log.warning("serial log %s does not keep up with the guest: dropping the oldest output",
                                self.path)
                self.dropped += excess
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is in the file (or logging has failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending or self._writing) and not self._failed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Write out what is queued (waiting up to `timeout`), then close the file; later writes are ignored.
        False when the file did not take everything in time (its writer thread is then left behind)."""
        written = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout) if written else 0)
        if self.dropped:
            log.warning("serial log %s: %d bytes of output were dropped", self.path, self.dropped)
        return written

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:            # closing, and nothing left to write
                    break
            time.sleep(BATCH_DELAY)
            with self._cond:
                chunk = bytes(self._pending)
                self._pending.clear()
                self._writing = True
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                log.warning("serial log %s: %s; not logging any more", self.path, exc.strerror or exc)
                with self._cond:
                    self._failed = True
                    self._pending.clear()
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
            if self._failed:
                break
        os.close(self._fd)
