"""The GUI's side of a Host: every Host call runs on a worker thread, and results and host events come back to
the GUI thread as Qt signals (queued connections), so the event loop never waits on the engine, the service or
the network.

What the widgets read synchronously is a cache the workers fill: the host's facts (HostInfo, capabilities, what
each accelerator choice resolves to, the definition files that failed to load), the latest VmInfo of each VM, a
short CPU/memory history per VM for the sparklines and the Performance tab (sampled once a second), and the
serial output fan-out (bytes from an engine thread are batched, one queued signal per batch, not one per byte).

Reads finish in any order on the pool, so each read carries a sequence number taken when it was issued, and the
cache keeps, per VM, the number of the read its entry came from: a read issued earlier than the one already
applied (a slow list_vms() racing a state change's get()) is dropped instead of bringing old state back.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PyQt6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, pyqtSignal

from core.config import ACCELERATORS
from core.host import (
    EventKind,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    HostFiles,
    VmInfo,
    VmState,
    VmStats,
)

if TYPE_CHECKING:
    from core.host import HostInfo

log = logging.getLogger(__name__)

HISTORY = 120           # samples (seconds) of statistics kept per VM
STATS_INTERVAL_MS = 1000
SHUTDOWN_WAIT_MS = 15000
RECONNECT_DELAY_MS = 500   # after the service's connection drops: let a replacing service start listening


class _Job(QRunnable):
    def __init__(self, bridge: HostBridge, fn: Callable[[], Any], done: Callable[[Any], None] | None,
                 failed: Callable[[str], None] | None, what: str, uuid: str) -> None:
        super().__init__()
        self.bridge, self.fn, self.done, self.failed, self.what, self.uuid = bridge, fn, done, failed, what, uuid

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


@dataclass(frozen=True)
class HostFacts:
    """What the GUI knows about the host itself, read on a worker. `error` says why `info` is missing (e.g. a
    remote host that is not connected)."""

    info: HostInfo | None = None
    capabilities: HostCapabilities = field(default_factory=HostCapabilities)
    accel: dict[str, tuple[str, str] | str] = field(default_factory=dict)   # requested -> (name, why) | error
    error: str = ""
    files: HostFiles | None = None      # the host's files for browsing (read once: Host.files() is a host call)


class HostBridge(QObject):
    vmsChanged = pyqtSignal()                       # the set of VMs, their definitions or the load errors changed
    vmStateChanged = pyqtSignal(str, str, str)      # uuid, VmState value, reason
    factsChanged = pyqtSignal()                     # facts (host info, capabilities, accelerators) were read
    statsUpdated = pyqtSignal(str)                  # uuid: a new sample is in history(uuid)
    serialReady = pyqtSignal(str)                   # uuid: take_serial(uuid) has new bytes
    failed = pyqtSignal(str, str)                   # what was being done, one-line reason
    busyChanged = pyqtSignal(str, bool)             # uuid, a request for it is in flight

    _finished = pyqtSignal(object, object, object)
    _event = pyqtSignal(object)
    _dropped = pyqtSignal(str)

    def __init__(self, host: Host, parent: QObject | None = None,
                 connect: Callable[[], None] | None = None) -> None:
        """`connect`, for a host reached through a service (this computer's Vireo service), is called on the
        worker before every full read: the first read starts or reaches the service, and after the connection
        drops (the service was killed or replaced) the next read reconnects, and the service adopts the VMs."""
        super().__init__(parent)
        self.host = host
        self._connect = connect
        self._closing = False
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(4)
        self._jobs: set[_Job] = set()
        self._infos: dict[str, VmInfo] = {}
        self._load_errors: list[Exception] = []
        self.facts: HostFacts | None = None
        self._facts_waiters: list[Callable[[], None]] = []
        self._seq = itertools.count(1)
        self._applied: dict[str, int] = {}           # uuid -> sequence number of the read its cache entry is from
        self._list_applied = 0
        self._history: dict[str, deque[VmStats]] = {}
        self._busy: dict[str, int] = {}
        self._serial_lock = threading.Lock()
        self._serial_pending: dict[str, bytearray] = {}
        self._serial_subs: dict[str, Callable[[bytes], None]] = {}
        self._serial_open: set[str] = set()          # uuids whose history has arrived: new bytes may be shown
        self._stats_running = False
        self._finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)
        self._event.connect(self._on_event, Qt.ConnectionType.QueuedConnection)
        self._listener = lambda event: self._event.emit(event)   # engine threads → queued into the GUI thread
        self._dropped.connect(self._on_dropped, Qt.ConnectionType.QueuedConnection)
        self._typing: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._typist = threading.Thread(target=self._type_loop, name="vireo-serial-input", daemon=True)
        self._typist.start()
        self.refresh(facts=True, listen=True)
        self.stats_timer = QTimer(self)
        self.stats_timer.setInterval(STATS_INTERVAL_MS)
        self.stats_timer.timeout.connect(self._sample)
        self.stats_timer.start()

    # -- calls -----------------------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], Any], done: Callable[[Any], None] | None = None,
             failed: Callable[[str], None] | None = None, uuid: str = "") -> None:
        """Run fn() on a worker; done(result) or failed(message) (default: the failed signal) on the GUI thread."""
        job = _Job(self, fn, done, failed, what, uuid)
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
        """start/pause/resume/shutdown/reboot/force_reset/force_off/save (managed) one VM in the background."""
        name = self._infos[uuid].name if uuid in self._infos else uuid
        label = {"start": "Starting", "pause": "Pausing", "resume": "Resuming", "shutdown": "Shutting down",
                 "reboot": "Rebooting", "force_reset": "Resetting", "force_off": "Forcing off",
                 "save": "Saving"}[action]
        host = self.host
        self.call(f"{label} {name}", lambda: getattr(host, action)(uuid), done, uuid=uuid)

    def wait_idle(self, msecs: int = 30000) -> bool:
        return self.pool.waitForDone(msecs)

    # -- the host's facts ------------------------------------------------------------------------------------
    def _read_facts(self) -> HostFacts:
        """On a worker: everything the windows show about the host, in one go."""
        try:
            info = self.host.info()
        except HostError as exc:
            return HostFacts(error=str(exc))
        accel: dict[str, tuple[str, str] | str] = {}
        for requested in ACCELERATORS:
            try:
                accel[requested] = self.host.accel_preview(requested)
            except HostError as exc:
                accel[requested] = str(exc)
        try:
            files = self.host.files()
        except HostError:
            files = None
        return HostFacts(info, self.host.capabilities(), accel, files=files)

    def when_ready(self, fn: Callable[[], None]) -> None:
        """fn() once the host's facts and its VM list have been read (now, if they have)."""
        if self.facts is not None:
            fn()
        else:
            self._facts_waiters.append(fn)

    @property
    def host_info(self) -> HostInfo | None:
        return self.facts.info if self.facts else None

    @property
    def files(self) -> HostFiles | None:
        """The host's files (core/host/files.py), known once its facts are read; None if it offers none."""
        return self.facts.files if self.facts else None

    @property
    def capabilities(self) -> HostCapabilities:
        return self.facts.capabilities if self.facts else HostCapabilities()

    def accel_preview(self, requested: str) -> tuple[str, str]:
        """(accelerator, why) that `requested` resolves to on this host, from the facts; HostError if unknown."""
        answer = self.facts.accel.get(requested) if self.facts else None
        if answer is None:
            raise HostError(self.facts.error if self.facts and self.facts.error else "asking the host…")
        if isinstance(answer, str):
            raise HostError(answer)
        return answer

    # -- VM list ---------------------------------------------------------------------------------------------
    def refresh(self, facts: bool = False, then: Callable[[], None] | None = None, listen: bool = False) -> None:
        """Re-read the VM list and the load errors (and the host's facts) on a worker; then() after the cache
        holds them (or the read failed). `listen` first subscribes to the host's events, so none is missed between
        that and the list."""
        seq = next(self._seq)
        host = self.host

        def read() -> tuple[HostFacts | None, list[VmInfo], list[Exception]]:
            if listen:
                host.add_listener(self._listener)
                if self._connect is not None:
                    host.add_connection_listener(lambda state, message: self._dropped.emit(message)
                                                 if state == "disconnected" else None)
            if facts and self._connect is not None:
                self._connect()
            read_facts = self._read_facts() if facts else None
            try:
                errors: list[Exception] = list(host.load_errors())
            except HostError as exc:
                errors = [exc]
            return read_facts, host.list_vms(), errors

        def done(result: tuple[HostFacts | None, list[VmInfo], list[Exception]]) -> None:
            read_facts, infos, errors = result
            self._apply_list(seq, infos, errors)
            if read_facts is not None:
                self._set_facts(read_facts)
            if then is not None:
                then()

        def failed(message: str) -> None:
            if facts:
                self._set_facts(HostFacts(error=message))
            log.warning("reading %s: %s", host.name, message)
            if then is not None:
                then()

        self.call(f"Reading {host.name}", read, done, failed)

    def _on_dropped(self, message: str) -> None:
        """The service's connection dropped: say so on the host row, then reconnect with a full read."""
        if self._closing:
            return
        self._set_facts(HostFacts(error=f"{message}; reconnecting…"))
        QTimer.singleShot(RECONNECT_DELAY_MS, self._reconnect)

    def _reconnect(self) -> None:
        if not self._closing:
            self.refresh(facts=True)

    def reload(self, then: Callable[[], None] | None = None) -> None:
        """Have the host re-read its definition files (edited behind its back), then refresh the cache."""
        self.call(f"Reloading {self.host.name}", self.host.reload, lambda _: self.refresh(then=then))

    def _set_facts(self, facts: HostFacts) -> None:
        self.facts = facts
        waiters, self._facts_waiters = self._facts_waiters, []
        self.factsChanged.emit()
        for fn in waiters:
            fn()

    def _apply_list(self, seq: int, infos: list[VmInfo], errors: list[Exception]) -> None:
        listed = {i.uuid: i for i in infos}
        for uuid in list(self._infos):
            if uuid not in listed and self._applied.get(uuid, 0) < seq:
                self._forget(uuid, seq)
        for uuid, info in listed.items():
            if self._applied.get(uuid, 0) < seq:
                self._infos[uuid] = info
                self._applied[uuid] = seq
        if seq > self._list_applied:
            self._list_applied = seq
            self._load_errors = errors
        self.vmsChanged.emit()

    def _forget(self, uuid: str, seq: int) -> None:
        self._infos.pop(uuid, None)
        self._history.pop(uuid, None)
        self._applied[uuid] = seq            # a tombstone: an older read cannot bring it back

    def vms(self) -> list[VmInfo]:
        return sorted(self._infos.values(), key=lambda i: i.name.casefold())

    def info(self, uuid: str) -> VmInfo | None:
        return self._infos.get(uuid)

    def find(self, name: str) -> VmInfo | None:
        for info in self._infos.values():
            if info.name.casefold() == name.casefold():
                return info
        return None

    def load_errors(self) -> list[Exception]:
        """The definition files the host could not load, as of the last list read."""
        return list(self._load_errors)

    def running(self) -> list[VmInfo]:
        return [i for i in self._infos.values() if i.state.active]

    def _on_event(self, event: HostEvent) -> None:
        if event.kind == EventKind.DELETED:
            self._forget(event.uuid, next(self._seq))
            self.vmsChanged.emit()
            return
        if event.kind != EventKind.STATE:
            self.refresh()                   # a definition came or changed: the list and the load errors
            return
        seq = next(self._seq)
        host, uuid = self.host, event.uuid

        def done(info: VmInfo) -> None:
            if self._applied.get(uuid, 0) >= seq:
                return
            self._infos[uuid] = info
            self._applied[uuid] = seq
            if not info.state.active:
                self._history.pop(uuid, None)
            self.vmStateChanged.emit(uuid, info.state.value, info.reason)

        def failed(message: str) -> None:   # gone between the event and the read
            if self._applied.get(uuid, 0) < seq and uuid in self._infos:
                self._forget(uuid, seq)
                self.vmsChanged.emit()

        self.call("Reading a VM's state", lambda: host.get(uuid), done, failed)

    # -- statistics ------------------------------------------------------------------------------------------
    def history(self, uuid: str) -> list[VmStats]:
        return list(self._history.get(uuid, ()))

    def _sample(self) -> None:
        active = [i.uuid for i in self._infos.values() if i.state in (VmState.RUNNING, VmState.PAUSED)]
        if not active or self._stats_running:
            return
        self._stats_running = True
        host = self.host

        def sample() -> dict[str, VmStats | None]:
            out = {}
            for uuid in active:
                try:
                    out[uuid] = host.stats(uuid)
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
    def open_serial(self, uuid: str) -> None:
        """Start receiving uuid's serial output: serialReady(uuid) when take_serial(uuid) has bytes, the output
        so far first. Subscribing runs on a worker; bytes that arrive meanwhile wait behind the history."""
        if uuid in self._serial_subs:
            return

        def on_bytes(data: bytes, uuid: str = uuid) -> None:   # any thread
            with self._serial_lock:
                pending = self._serial_pending.setdefault(uuid, bytearray())
                first = not pending
                pending += data
                ready = uuid in self._serial_open
            if first and ready:
                self.serialReady.emit(uuid)

        def subscribed(history: bytes) -> None:
            if self._serial_subs.get(uuid) is not on_bytes:
                return                       # closed again before the subscription finished
            with self._serial_lock:
                self._serial_pending[uuid] = bytearray(history) + self._serial_pending.get(uuid, bytearray())
                self._serial_open.add(uuid)
            self.serialReady.emit(uuid)

        self._serial_subs[uuid] = on_bytes
        host = self.host
        self.call("Opening the serial console", lambda: host.subscribe_serial(uuid, on_bytes), subscribed)

    def close_serial(self, uuid: str) -> None:
        listener = self._serial_subs.pop(uuid, None)
        with self._serial_lock:
            self._serial_pending.pop(uuid, None)
            self._serial_open.discard(uuid)
        if listener is not None:
            host = self.host
            self.call("Closing the serial console", lambda: host.unsubscribe_serial(uuid, listener),
                      failed=lambda message: None)   # the VM or the connection is gone: nothing to stop

    def take_serial(self, uuid: str) -> bytes:
        with self._serial_lock:
            if uuid not in self._serial_open:
                return b""
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

    # -- graphical console -----------------------------------------------------------------------------------
    def close_console(self, uuid: str) -> None:
        """The viewer of uuid's screen is gone: a host that streams screens (a remote one) may stop."""
        close = getattr(self.host, "close_console", None)
        if close is not None:
            self.call("Closing the console", lambda: close(uuid), failed=lambda message: None)

    # -- the end ---------------------------------------------------------------------------------------------
    def shutdown(self, close_host: bool = False) -> None:
        """Stop sampling and listening (and close the host when asked), on the workers; waits for them."""
        self._closing = True
        self.stats_timer.stop()
        for uuid in list(self._serial_subs):
            self.close_serial(uuid)
        host, listener = self.host, self._listener

        def finish() -> None:
            host.remove_listener(listener)
            if close_host:
                host.close()

        self.call("Closing the connection", finish, failed=lambda message: None)
        self._typing.put(None)
        self.pool.waitForDone(SHUTDOWN_WAIT_MS)
