"""ServiceClient: the Host API (core/host/api.py) for a Vireo service reached through a byte stream — the base of
RemoteHost (an SSH channel running the bridge, core/remote/host.py) and LocalServiceHost (this user's UNIX socket,
core/remote/local.py). A subclass only opens the stream (`_open_agent`); everything else is here.

Every call, event, serial stream and console of the host travels over that one stream (core/remote/client.py).
The service keeps the VMs; this object keeps a mirror of what it last heard (VM list, host facts, load errors),
updated by the service's events before listeners are told, so list_vms()/get()/info() answer at once from any
thread and never touch the stream (the GUI calls them on its event loop).

When the connection drops the mirror stays (marked by `error`), connection listeners hear about it, and the next
request that needs the service (start, define, ...) reconnects first — "on demand"; statistics polling does not, so
a service that is down is not hammered. Closing the object only disconnects: the VMs run on (`remote` is True).
connect() and close() may run at once (the GUI's Connect and Disconnect are pool jobs): close() ends the attempt
current when called (a connect() under way raises) and never a later one; `connected` waits for connect() to end.

The console: the service either streams a VM's screen as dirty rectangles (core/agent/console.py: what crosses a
network) or, when the client shares the machine and asks for it, answers the path of the VM process's shared
console, which the client maps itself (core.vmproc.shared_console.SharedConsoleReader) — no copy per frame.
Input goes as messages either way.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from core.agent import wire
from core.agent.console import FrameAssembler
from core.agent.version import engine_version
from core.config import LoadError, VmConfig
from core.host.api import (
    SERIAL_HISTORY,
    TERMINAL_RESET,
    DeleteResult,
    DiskChoice,
    EventKind,
    FileProbe,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    KeptDisk,
    SerialListener,
    VmConsole,
    VmInfo,
    VmStats,
)
from core.host.hostload import HostCounters
from core.hoststats import HostInfo
from core.protocol import ProtocolError
from core.remote.client import AgentClient, AgentGone
from core.remote.copies import ServiceCopies
from core.remote.image_client import ImageClient
from core.remote.snapshot_client import SnapshotClient

log = logging.getLogger(__name__)

ConnectionListener = Callable[[str, str], None]     # (state: connecting/connected/disconnected/failed, message)
REPLACE_WAIT = 10.0       # seconds for a service of another engine version to exit when asked to make way


class _SerialSub:
    def __init__(self) -> None:
        self.listeners: list[SerialListener] = []
        self.history = bytearray()
        self.subscribed = False


class ServiceInputSink:
    """core.keymap.InputSink for a VM of a service: each event is one message, no reply awaited."""

    def __init__(self, host: ServiceClient, uuid: str) -> None:
        self.host, self.uuid = host, uuid

    def key_event(self, set2_bytes: bytes) -> None:
        self.host._notify({"t": "input", "uuid": self.uuid, "kind": "key"}, bytes(set2_bytes))

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        self.host._notify({"t": "input", "uuid": self.uuid, "kind": "mouse", "dx": int(dx), "dy": int(dy),
                           "buttons": int(buttons), "dz": int(dz)})


class ServiceClient(SnapshotClient, ServiceCopies, ImageClient, Host):  # SnapshotClient brings NetClient
    remote = True          # the VMs run in the service: closing this client leaves them running
    shared_console = False  # ask the service for the VM process's shared console instead of a stream

    def __init__(self, name: str) -> None:
        self.name = name
        self.error = "not connected"
        self.state = "disconnected"
        self.agent_version = ""
        self._client: AgentClient | None = None     # the current attempt's stream, from _attach on
        self._ready: AgentClient | None = None      # the same once connect() has finished with it
        self._connect_lock = threading.Lock()
        self._attempt, self._attempt_lock = 0, threading.RLock()    # connect() counts attempts
        self._ended = (0, "")               # the attempt disconnect() last ended, and why
        self._closed_on_request = False     # close() was called: only connect() reconnects
        self._lock = threading.RLock()
        self._vms: dict[str, VmInfo] = {}
        self._errors: list[LoadError] = []
        self._info: HostInfo | None = None
        self._caps = HostCapabilities()
        self._accel_cache: dict[str, tuple[str, str]] = {}
        self._serial: dict[str, _SerialSub] = {}
        self._consoles: dict[str, FrameAssembler] = {}
        self._shared: dict[str, list] = {}     # uuid -> [(SharedConsoleReader, session)] handed out (fds)
        self._conn_listeners: list[ConnectionListener] = []

    # -- what a subclass provides ----------------------------------------------------------------------------
    @abstractmethod
    def _connect(self, progress: Callable[[str, int, int], None] | None) -> None:
        """Reach the service and call self._attach() (which opens the stream with _open_agent)."""

    @abstractmethod
    def _open_agent(self) -> AgentClient:
        """A new stream to the service with the hellos exchanged (AgentClient.start); HostError saying why not."""

    def _drop_transport(self) -> None:
        """Release what carries the stream beyond the stream itself (an SSH transport)."""

    def _new_client(self, recv: Callable[[int], bytes], sendall: Callable[[bytes], None],
                    close: Callable[[], None]) -> AgentClient:
        """An AgentClient wired to this host's mirror (for _open_agent to start)."""
        attempt = self._attempt
        client = AgentClient(recv, sendall, close, self._on_event, self._on_serial,
                             lambda reason: self._on_closed(client, attempt, reason))
        return client

    # -- connection ------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        # Not while connect() still reads the service's state: a Disconnect taken then failed that Connect, and the
        # GUI dropped the Connect clicked next as one under way.
        client = self._ready
        return client is not None and not client.closed

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._conn_listeners.append(listener)

    def _tell(self, state: str, message: str) -> None:
        # Called with no lock held: a listener may call back into this object.
        for listener in list(self._conn_listeners):
            try:
                listener(state, message)
            except Exception:
                log.exception("connection listener failed")

    def connect(self, progress: Callable[[str, int, int], None] | None = None) -> None:
        """Connect (or do nothing when connected). Blocks until the service answers; may prompt or upload.
        HostError when it cannot, or when disconnect() or close() was called meanwhile."""
        with self._connect_lock:
            if self.connected:
                return
            with self._attempt_lock:
                self._attempt += 1
                attempt = self._attempt
                self._closed_on_request = False
                self._client = self._ready = None
                # A disconnect() still closing the previous stream leaves its transport to an attempt begun since.
                self._drop_transport()
                self.state = "connecting"
            self._tell("connecting", f"connecting to {self.name}…")
            try:
                self._connect(progress)
                self._finish_attempt(attempt)
            except HostError as exc:
                self._fail_attempt(attempt, str(exc))
                raise
            except Exception as exc:     # paramiko and sockets raise more kinds than they document
                log.exception("connecting to %s failed", self.name)
                message = f"{type(exc).__name__}: {exc}"
                self._fail_attempt(attempt, message)
                raise HostError(message) from None
            self._tell("connected", f"connected to {self.name}")
        self._after_connect()

    def _finish_attempt(self, attempt: int) -> None:
        with self._attempt_lock:
            if self._ended[0] == attempt:
                raise HostError(self._ended[1])     # disconnect() was called meanwhile
            client = self._client
            if client is None or client.closed:
                raise HostError(self.error or "the connection closed")
            self._ready, self.error, self.state = client, "", "connected"

    def _fail_attempt(self, attempt: int, message: str) -> None:
        """Nothing of a failed attempt stays; one that disconnect() ended is disconnected, for its reason."""
        with self._attempt_lock:
            ended, reason = self._ended
            state, error = ("disconnected", reason) if ended == attempt else ("failed", message)
            self.state, self.error = state, error
            client, self._client = self._client, None     # its close callback then finds it superseded
            self._drop_transport()
        if client is not None:
            client.close(error)
        self._tell(state, error)

    def _attach(self) -> None:
        """Open the stream; a service of another engine version is asked to make way for this one (it refuses
        while it runs VMs, and then serves as it is); then fill the mirror."""
        client = self._open_agent()
        version = str(client.agent_hello.get("version", ""))
        if version != engine_version():
            try:
                client.call("exit", timeout=15)
            except HostError as exc:
                self._note(f"kept the running service {version}: {exc}")
            else:
                deadline = time.monotonic() + REPLACE_WAIT
                while not client.closed and time.monotonic() < deadline:
                    time.sleep(0.02)
                client.close("replaced by a newer service")
                client = self._open_agent()
        self.agent_version = str(client.agent_hello.get("version", ""))
        self._client = client
        self._fetch_state(client)

    def _note(self, text: str) -> None:
        log.info("%s: %s", self.name, text)

    def _fetch_state(self, client: AgentClient) -> None:
        info, _ = client.call("info")
        vms, _ = client.call("list")
        errors, _ = client.call("load_errors")
        caps, _ = client.call("capabilities")
        try:
            with self._lock:
                self._info = wire.hostinfo_from(info)
                self._vms = {i.uuid: i for i in (wire.vminfo_from(v) for v in vms)}
                self._errors = [wire.load_error_from(e) for e in errors]
                self._caps = wire.caps_from(caps)
                self._accel_cache = {}
        except wire.WireError as exc:
            client.close(f"the service sent a malformed answer: {exc}")
            raise HostError(f"the service on {self.name} sent a malformed answer: {exc}") from None

    def _after_connect(self) -> None:
        # Listeners re-read every VM; serial subscriptions and consoles open before the drop are resumed.
        for uuid in list(self._vms):
            self._emit(HostEvent(EventKind.UPDATED, uuid, self._vms[uuid].state))
        for uuid, sub in list(self._serial.items()):
            if sub.listeners:
                sub.subscribed = False
                try:
                    self._serial_subscribe(uuid, sub, reset=True)
                except HostError as exc:
                    log.warning("resubscribing to %s: %s", uuid, exc)
        for uuid, assembler in list(self._consoles.items()):
            # A streamed console of the same session resumes; one of an older session keeps its last picture.
            try:
                value, _ = self._call("console_open", uuid=uuid)
            except HostError:
                continue
            client = self._client
            if client is not None and isinstance(value, dict) and value.get("session") == assembler.session:
                client.consoles[uuid] = assembler

    def _on_closed(self, client: AgentClient, attempt: int, reason: str) -> None:
        with self._attempt_lock:
            if client is not self._client or attempt != self._attempt:
                return
            self._drop_transport()
            self.error, self.state = reason, "disconnected"
        self._tell("disconnected", reason)

    def disconnect(self, reason: str = "disconnected") -> None:
        """Close the connection, or cancel the attempt under way (its connect() raises HostError); a connect()
        begun after this was called is left alone."""
        self._end_attempt(reason, on_request=False)

    def _end_attempt(self, reason: str, on_request: bool) -> None:
        # Which attempt this ends is settled in one step under the lock: a connect() is either wholly before it
        # (and ended) or wholly after it (and left alone, even while this still closes the old stream).
        with self._attempt_lock:
            self._closed_on_request = self._closed_on_request or on_request
            attempt, client = self._attempt, self._client
            self._ended, self._ready = (attempt, reason), None
        if client is not None:
            client.close(reason)
        with self._attempt_lock:
            if self._attempt == attempt:
                self._drop_transport()

    def close(self) -> None:
        """Disconnect; the VMs keep running in the service. Calls made after this (a refresh or a statistics
        sample already queued when the user clicked Disconnect) fail instead of connecting again: only connect()
        reconnects a host that was closed on request."""
        self._end_attempt("closed", on_request=True)
        with self._lock:
            shared, self._shared = self._shared, {}
        for readers in shared.values():
            for reader, _ in readers:
                reader.close()

    def _agent(self, reconnect: bool = True) -> AgentClient:
        client = self._client
        if client is None or client.closed:
            if not reconnect or self._closed_on_request:
                raise HostError(f"{self.name} is not connected: {self.error}")
            self.connect()
            client = self._client
            if client is None:      # a failed attempt since, on another thread
                raise HostError(f"{self.name} is not connected: {self.error}")
        return client

    def _call(self, method: str, payload: bytes = b"", reconnect: bool = True, **args: Any) -> tuple[Any, bytes]:
        client = self._agent(reconnect)
        try:
            return client.call(method, payload, **args)
        except AgentGone as exc:
            raise HostError(f"{self.name}: {exc}") from None

    def _notify(self, header: dict[str, Any], payload: bytes = b"") -> None:
        client = self._client
        if client is None or client.closed:
            return      # input while disconnected has nowhere to go
        try:
            client.notify(header, payload)
        except HostError:
            pass

    # -- events from the service -----------------------------------------------------------------------------
    def _on_event(self, header: dict[str, Any]) -> None:
        try:
            event, info = wire.event_from(header)
        except wire.WireError as exc:
            raise ProtocolError(f"bad event: {exc}") from None
        with self._lock:
            if event.kind == EventKind.DELETED:
                self._vms.pop(event.uuid, None)
            elif info is not None:
                self._vms[event.uuid] = info
            if event.kind == EventKind.UPDATED:
                # A broken definition file deleted (delete_broken_definition), perhaps by another client: its
                # load error goes from the mirror before listeners re-read it. A file that failed to load is
                # never rewritten, so an UPDATED for its name means it is gone.
                self._errors = [e for e in self._errors if e.path.stem != event.uuid]
        self._emit(event)

    def _on_serial(self, uuid: str, data: bytes) -> None:
        with self._lock:
            sub = self._serial.get(uuid)
            if sub is None:
                return
            sub.history += data
            if len(sub.history) > SERIAL_HISTORY:
                del sub.history[:len(sub.history) - SERIAL_HISTORY]
            listeners = list(sub.listeners)
        for listener in listeners:
            try:
                listener(data)
            except Exception:
                log.exception("serial listener failed")

    # -- Host API: from the mirror ---------------------------------------------------------------------------
    def info(self) -> HostInfo:
        with self._lock:
            info = self._info
        if info is None:
            raise HostError(self.error or "not connected")
        return info

    def list_vms(self) -> list[VmInfo]:
        with self._lock:
            return sorted(self._vms.values(), key=lambda i: i.name.casefold())

    def get(self, vm_uuid: str) -> VmInfo:
        with self._lock:
            info = self._vms.get(vm_uuid)
        if info is None:
            raise HostError(f"no VM with uuid {vm_uuid} on {self.name}")
        return info

    def load_errors(self) -> list[LoadError]:
        with self._lock:
            return list(self._errors)

    def capabilities(self) -> HostCapabilities:
        return self._caps

    # -- Host API: through the service -----------------------------------------------------------------------
    def reload(self) -> None:
        client = self._agent()
        self._call("reload")
        self._fetch_state(client)

    def delete_broken_definition(self, path: str) -> None:
        self._call("delete_broken_definition", path=str(path))
        errors, _ = self._call("load_errors")
        try:
            fresh = [wire.load_error_from(e) for e in errors]
        except wire.WireError as exc:
            raise HostError(f"the service on {self.name} sent a malformed answer: {exc}") from None
        with self._lock:
            self._errors = fresh

    def define(self, config: VmConfig) -> VmInfo:
        value, _ = self._call("define", config=wire.config_to(config))
        try:
            info = wire.vminfo_from(value)
        except wire.WireError as exc:
            raise HostError(f"the service sent a malformed answer: {exc}") from None
        with self._lock:
            self._vms[info.uuid] = info
        return info

    def start(self, vm_uuid: str) -> None:
        self._call("start", uuid=vm_uuid)

    def pause(self, vm_uuid: str) -> None:
        self._call("pause", uuid=vm_uuid)

    def resume(self, vm_uuid: str) -> None:
        self._call("resume", uuid=vm_uuid)

    def shutdown(self, vm_uuid: str) -> None:
        self._call("shutdown", uuid=vm_uuid)

    def reboot(self, vm_uuid: str) -> None:
        self._call("reboot", uuid=vm_uuid)

    def force_reset(self, vm_uuid: str) -> None:
        self._call("force_reset", uuid=vm_uuid)

    def force_off(self, vm_uuid: str) -> None:
        self._call("force_off", uuid=vm_uuid)

    def save(self, vm_uuid: str, path: str | None = None) -> str:
        value, _ = self._call("save", uuid=vm_uuid, **({"path": path} if path is not None else {}))
        if not isinstance(value, str):
            raise HostError("the service sent a malformed answer to save")
        return value

    def restore(self, path: str) -> VmInfo:
        value, _ = self._call("restore", path=path)
        try:
            return wire.vminfo_from(value)
        except wire.WireError as exc:
            raise HostError(f"the service sent a malformed answer: {exc}") from None

    def delete(self, vm_uuid: str, delete_disks: DiskChoice = False) -> DeleteResult:
        # See core/agent/connection.py m_delete: a list of paths goes as `disks`, and `report` asks for the kept
        # disks too; a service from before both answers with the list of removed files alone.
        if isinstance(delete_disks, bool):
            value, _ = self._call("delete", uuid=vm_uuid, delete_disks=delete_disks, report=True)
        else:
            value, _ = self._call("delete", uuid=vm_uuid, disks=[str(p) for p in delete_disks], report=True)
        with self._lock:
            self._vms.pop(vm_uuid, None)
        if isinstance(value, list):
            return DeleteResult(str(v) for v in value)
        if not isinstance(value, dict):
            return DeleteResult()
        kept = [KeptDisk(str(k.get("path", "")), str(k.get("reason", ""))) for k in value.get("kept") or []
                if isinstance(k, dict)]
        return DeleteResult((str(v) for v in value.get("removed") or []), kept)

    def stats(self, vm_uuid: str) -> VmStats | None:
        value, _ = self._call("stats", reconnect=False, uuid=vm_uuid)
        try:
            return wire.stats_from(value)
        except wire.WireError as exc:
            raise HostError(f"the service sent malformed statistics: {exc}") from None

    def accel_preview(self, requested: str) -> tuple[str, str]:
        cached = self._accel_cache.get(requested)
        if cached is not None:
            return cached
        value, _ = self._call("accel_preview", requested=requested)
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise HostError("the service sent a malformed accelerator answer")
        result = self._accel_cache[requested] = (value[0], value[1])
        return result

    def probe_file(self, path: str, role: str) -> FileProbe:
        value, _ = self._call("probe_file", path=path, role=role)
        try:
            return wire.probe_from(value)
        except wire.WireError as exc:
            raise HostError(f"the service sent a malformed file probe: {exc}") from None

    def host_counters(self) -> HostCounters:
        value, _ = self._call("host_counters", reconnect=False)
        try:
            return HostCounters(**{k: value[k] for k in HostCounters.__dataclass_fields__})
        except (TypeError, KeyError) as exc:
            raise HostError(f"the service sent malformed host counters: {exc}") from None

    def ping(self) -> float:
        """One control-call round trip in seconds."""
        t0 = time.perf_counter()
        self._call("ping", reconnect=False)
        return time.perf_counter() - t0

    def agent_status(self) -> dict[str, Any]:
        value, _ = self._call("status")
        return value if isinstance(value, dict) else {}

    # -- serial ----------------------------------------------------------------------------------------------
    def _serial_subscribe(self, uuid: str, sub: _SerialSub, reset: bool = False) -> bytes:
        _, history = self._call("serial_subscribe", uuid=uuid)
        with self._lock:
            sub.subscribed = True
            sub.history = bytearray(history)
            listeners = list(sub.listeners) if reset else []
        for listener in listeners:
            # After a reconnect the terminal starts over from the service's history, not from a gap.
            listener(TERMINAL_RESET + history)
        return history

    def subscribe_serial(self, vm_uuid: str, listener: SerialListener) -> bytes:
        with self._lock:
            sub = self._serial.setdefault(vm_uuid, _SerialSub())
            if sub.subscribed:
                sub.listeners.append(listener)
                return bytes(sub.history)
        history = self._serial_subscribe(vm_uuid, sub)
        with self._lock:
            sub.listeners.append(listener)
            # Output that arrived between the reply and now is in sub.history after `history`.
            return bytes(sub.history) if sub.history.startswith(history) else history

    def unsubscribe_serial(self, vm_uuid: str, listener: SerialListener) -> None:
        with self._lock:
            sub = self._serial.get(vm_uuid)
            if sub is None or listener not in sub.listeners:
                return
            sub.listeners.remove(listener)
            if sub.listeners:
                return
            del self._serial[vm_uuid]
        if self.connected:
            try:
                self._call("serial_unsubscribe", reconnect=False, uuid=vm_uuid)
            except HostError:
                pass

    def send_serial(self, vm_uuid: str, data: bytes) -> None:
        self._call("serial_send", bytes(data), uuid=vm_uuid)

    # -- console ---------------------------------------------------------------------------------------------
    def console(self, vm_uuid: str) -> VmConsole:
        """The VM's screen, a new session after each start of the VM: mapped from the VM process's shared
        console when this client shares the machine (`shared_console`) and the service answers its path, else
        streamed by the service (a FrameAssembler answers render(force) like a local renderer); input goes as
        messages either way."""
        if self.shared_console:
            value, _ = self._call("console_open", uuid=vm_uuid, shared=True)
        else:
            value, _ = self._call("console_open", uuid=vm_uuid)
        session = value.get("session") if isinstance(value, dict) else None
        if not isinstance(session, int) or isinstance(session, bool):
            raise HostError("the service sent a malformed console answer")
        path = value.get("path")
        if path is not None:
            # The service answers a path only to a client that asked for it: it streams to the others.
            if not isinstance(path, str) or not path:
                raise HostError("the service sent a malformed console path")
            from core.vmproc.shared_console import SharedConsoleReader
            try:
                frames = SharedConsoleReader(path)
            except (OSError, ValueError) as exc:
                raise HostError(f"cannot map the console of {self.get(vm_uuid).name}: {exc}") from None
            with self._lock:
                readers = self._shared.setdefault(vm_uuid, [])
                # Readers of an earlier session of this VM read nothing more (their last picture stays).
                for old, old_session in readers:
                    if old_session != session:
                        old.close()
                readers[:] = [(r, n) for r, n in readers if n == session] + [(frames, session)]
            return VmConsole(session=session, frames=frames, input=ServiceInputSink(self, vm_uuid))
        client = self._agent(reconnect=False)
        with self._lock:
            assembler = self._consoles.get(vm_uuid)
            if assembler is None or assembler.session != session:
                assembler = self._consoles[vm_uuid] = FrameAssembler(session, self._acker(vm_uuid))
            client.consoles[vm_uuid] = assembler
        return VmConsole(session=session, frames=assembler, input=ServiceInputSink(self, vm_uuid))

    def _acker(self, vm_uuid: str) -> Callable[[int], None]:
        return lambda count: self._notify({"t": "fb_ack", "uuid": vm_uuid, "n": count})

    def close_console(self, vm_uuid: str) -> None:
        """The viewers of a VM's screen are gone: stop its stream, or close the shared console's readers."""
        with self._lock:
            assembler = self._consoles.pop(vm_uuid, None)
            readers = self._shared.pop(vm_uuid, [])
        for reader, _ in readers:
            reader.close()
        client = self._client
        if client is not None:
            client.consoles.pop(vm_uuid, None)
        if assembler is not None and self.connected:
            try:
                self._call("console_close", reconnect=False, uuid=vm_uuid)
            except HostError:
                pass
