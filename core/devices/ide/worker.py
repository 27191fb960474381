"""A channel's worker thread: runs the I/O that may wait on the host's disk off the vCPU thread.

As with virtio-blk (core/devices/virtio/pci.py), quick I/O -- a read or write served by the host's page cache --
is done right in the port write that starts it, because handing it to a thread costs more than the copy. What may
block is handed here instead: FLUSH CACHE (an fsync) and DMA on an image opened with cache=none or writethrough.
The device shows BSY meanwhile and raises its interrupt when the job's completion runs; the vCPU runs on.

Jobs run one at a time in submission order, so a flush issued after a write covers it. A job's completion takes
the channel lock itself and checks the channel's generation, so a reset that happened meanwhile drops it.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class Worker:
    """One thread, started on the first job, serving jobs in order until stop()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.failures = 0           # jobs that raised (a model bug; logged)

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            if self._stopping:
                return              # the machine is going away: nothing more runs
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                job()
            except Exception:       # a model bug must not kill the thread: later jobs (and resets) still run
                self.failures += 1
                log.exception("IDE worker %s: a job failed", self.name)

    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._jobs

    def wait_idle(self, timeout: float = 30) -> bool:
        """Wait until every job submitted so far has finished; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy and not self._jobs, timeout)

    def stop(self, timeout: float = 30) -> None:
        """Finish the queued jobs, then end the thread (before the images it uses are closed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("IDE worker %s still busy after %s s", self.name, timeout)
