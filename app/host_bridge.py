"""The GUI's side of a Host: runs every Host call on a worker thread and brings results and host events back to
the GUI thread as Qt signals (queued connections), so the event loop never waits on the engine.

It also keeps what several widgets share: the latest VmInfo of each VM, a short CPU/memory history per VM for
the sparklines and the Performance tab (sampled once a second off the GUI thread), and the serial output
fan-out (bytes from a vCPU thread are batched, one queued signal per batch, not one per byte).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from PyQt6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, pyqtSignal

from core.host import EventKind, Host, HostError, HostEvent, VmInfo, VmState, VmStats

log = logging.getLogger(__name__)

HISTORY = 120           # samples (seconds) of statistics kept per VM
STATS_INTERVAL_MS = 1000


class _Job(QRunnable):
    def __init__(self, bridge: HostBridge, fn: Callable[[], Any], done: Callable[[Any], None] | None,
                 failed: Callable[[str], None] | None, what: str) -> None:
        super().__init__()
        self.bridge, self.fn, self.done, self.failed, self.what = bridge, fn, done, failed, what

    def run(self) -> None:
        try:
            result = self.fn()
        except HostError as exc:
            self.bridge._finished.emit(self, None, str(exc))
        except Exception as exc:  # an engine bug: one line for the dialog, the traceback in the log
            log.exception("%s failed", self.what)
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.bridge._finished.emit(self, None, f"{type(exc).__name__}: {first}")
        else:
            self.bridge._finished.emit(self, result, None)


class HostBridge(QObject):
    vmsChanged = pyqtSignal()                       # the set of VMs or their definitions changed
    vmStateChanged = pyqtSignal(str, str, str)      # uuid, VmState value, reason
    statsUpdated = pyqtSignal(str)                  # uuid: a new sample is in history(uuid)
    serialReady = pyqtSignal(str)                   # uuid: take_serial(uuid) has new bytes
    failed = pyqtSignal(str, str)                   # what was being done, one-line reason
    busyChanged = pyqtSignal(str, bool)             # uuid, a request for it is in flight

    _finished = pyqtSignal(object, object, object)
    _event = pyqtSignal(object)

    def __init__(self, host: Host, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.host = host
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(4)
        self._jobs: set[_Job] = set()
        self._infos: dict[str, VmInfo] = {}
        self._history: dict[str, deque[VmStats]] = {}
        self._busy: dict[str, int] = {}
        self._serial_lock = threading.Lock()
        self._serial_pending: dict[str, bytearray] = {}
        self._serial_subs: dict[str, Callable[[bytes], None]] = {}
        self._stats_running = False
        self._finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)
        self._event.connect(self._on_event, Qt.ConnectionType.QueuedConnection)
        self._listener = lambda event: self._event.emit(event)   # engine threads → queued into the GUI thread
        host.add_listener(self._listener)
        self._typing: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._typist = threading.Thread(target=self._type_loop, name="vireo-serial-input", daemon=True)
        self._typist.start()
        self.refresh_now()
        self.stats_timer = QTimer(self)
        self.stats_timer.setInterval(STATS_INTERVAL_MS)
        self.stats_timer.timeout.connect(self._sample)
        self.stats_timer.start()

    # -- calls -----------------------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], Any], done: Callable[[Any], None] | None = None,
             failed: Callable[[str], None] | None = None, uuid: str = "") -> None:
        """Run fn() on a worker; done(result) or failed(message) (default: the failed signal) on the GUI thread."""
        job = _Job(self, fn, done, failed, what)
        job.uuid = uuid
        job.setAutoDelete(False)
        self._jobs.add(job)
        if uuid:
            self._busy[uuid] = self._busy.get(uuid, 0) + 1
            self.busyChanged.emit(uuid, True)
        self.pool.start(job)

    def _on_finished(self, job: _Job, result: Any, error: str | None) -> None:
        self._jobs.discard(job)
        if job.uuid:
            self._busy[job.uuid] -= 1
            if not self._busy[job.uuid]:
                del self._busy[job.uuid]
                self.busyChanged.emit(job.uuid, False)
        if error is not None:
            if job.failed:
                job.failed(error)
            else:
                self.failed.emit(job.what, error)
        elif job.done:
            job.done(result)

    def busy(self, uuid: str) -> bool:
        return uuid in self._busy

    def lifecycle(self, action: str, uuid: str, done: Callable[[Any], None] | None = None) -> None:
        """start/pause/resume/shutdown/reboot/force_reset/force_off one VM in the background."""
        name = self._infos[uuid].name if uuid in self._infos else uuid
        label = {"start": "Starting", "pause": "Pausing", "resume": "Resuming", "shutdown": "Shutting down",
                 "reboot": "Rebooting", "force_reset": "Resetting", "force_off": "Forcing off"}[action]
        fn = getattr(self.host, action)
        self.call(f"{label} {name}", lambda: fn(uuid), done, uuid=uuid)

    def wait_idle(self, msecs: int = 30000) -> bool:
        return self.pool.waitForDone(msecs)

    # -- VM list ---------------------------------------------------------------------------------------------
    def refresh_now(self) -> None:
        """Re-read the host's VM list (cheap for LocalHost: in memory)."""
        self._infos = {i.uuid: i for i in self.host.list_vms()}

    def vms(self) -> list[VmInfo]:
        return sorted(self._infos.values(), key=lambda i: i.name.casefold())

    def info(self, uuid: str) -> VmInfo | None:
        return self._infos.get(uuid)

    def find(self, name: str) -> VmInfo | None:
        for info in self._infos.values():
            if info.name.casefold() == name.casefold():
                return info
        return None

    def _on_event(self, event: HostEvent) -> None:
        if event.kind == EventKind.DELETED:
            self._infos.pop(event.uuid, None)
            self._history.pop(event.uuid, None)
            self.vmsChanged.emit()
            return
        try:
            info = self.host.get(event.uuid)
        except HostError:
            self._infos.pop(event.uuid, None)
            self.vmsChanged.emit()
            return
        self._infos[event.uuid] = info
        if event.kind == EventKind.STATE:
            if not info.state.active:
                self._history.pop(event.uuid, None)
            self.vmStateChanged.emit(event.uuid, info.state.value, info.reason)
        else:
            self.vmsChanged.emit()

    def running(self) -> list[VmInfo]:
        return [i for i in self._infos.values() if i.state.active]

    # -- statistics ------------------------------------------------------------------------------------------
    def history(self, uuid: str) -> list[VmStats]:
        return list(self._history.get(uuid, ()))

    def _sample(self) -> None:
        active = [i.uuid for i in self._infos.values() if i.state in (VmState.RUNNING, VmState.PAUSED)]
        if not active or self._stats_running:
            return
        self._stats_running = True

        def sample() -> dict[str, VmStats | None]:
            out = {}
            for uuid in active:
                try:
                    out[uuid] = self.host.stats(uuid)
                except HostError:
                    out[uuid] = None
            return out

        def done(samples: dict[str, VmStats | None]) -> None:
            self._stats_running = False
            for uuid, stats in samples.items():
                if stats is None or uuid not in self._infos:
                    continue
                self._history.setdefault(uuid, deque(maxlen=HISTORY)).append(stats)
                self.statsUpdated.emit(uuid)

        def failed(message: str) -> None:
            self._stats_running = False
            log.warning("statistics: %s", message)

        self.call("Reading statistics", sample, done, failed)

    # -- serial console --------------------------------------------------------------------------------------
    def open_serial(self, uuid: str) -> bytes:
        """Start receiving uuid's serial output (serialReady signals); returns the output so far."""
        if uuid in self._serial_subs:
            return b""

        def on_bytes(data: bytes, uuid: str = uuid) -> None:
            with self._serial_lock:
                pending = self._serial_pending.setdefault(uuid, bytearray())
                first = not pending
                pending += data
            if first:
                self.serialReady.emit(uuid)

        self._serial_subs[uuid] = on_bytes
        return self.host.subscribe_serial(uuid, on_bytes)

    def close_serial(self, uuid: str) -> None:
        listener = self._serial_subs.pop(uuid, None)
        if listener is not None:
            self.host.unsubscribe_serial(uuid, listener)
        with self._serial_lock:
            self._serial_pending.pop(uuid, None)

    def take_serial(self, uuid: str) -> bytes:
        with self._serial_lock:
            pending = self._serial_pending.pop(uuid, None)
        return bytes(pending) if pending else b""

    def send_serial(self, uuid: str, data: bytes) -> None:
        """Type into uuid's ttyS0. One thread delivers every keystroke, so they arrive in order."""
        self._typing.put((uuid, data))

    def _type_loop(self) -> None:
        while (item := self._typing.get()) is not None:
            uuid, data = item
            try:
                self.host.send_serial(uuid, data)
            except HostError:
                pass   # the VM stopped between the key press and now: nothing reads the port any more
            except Exception:
                log.exception("serial input failed")

    def shutdown(self) -> None:
        self.stats_timer.stop()
        for uuid in list(self._serial_subs):
            self.close_serial(uuid)
        self.host.remove_listener(self._listener)
        self._typing.put(None)
        self.pool.waitForDone(15000)
