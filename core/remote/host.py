"""RemoteHost: the Host API (core/host/api.py) for a machine reached over SSH, through the Vireo agent running there.

connect() does the slow part — SSH handshake and host-key check, authentication, probing and (first time, or
after an engine change) installing the agent, then one channel running the stdio bridge — and every later call,
event, serial stream and console of this host travels over that one channel (core/remote/client.py). The agent
keeps the VMs; this object keeps a mirror of what it last heard (VM list, host facts, load errors), updated by
the agent's events before listeners are told, so list_vms()/get()/info() answer at once from any thread and
never touch the network (the GUI calls them on its event loop).

When the connection drops the mirror stays (marked by `error`), connection listeners hear about it, and the
next request that needs the agent (start, define, ...) reconnects first — "on demand"; statistics polling does
not, so a host that is down is not hammered. Closing a RemoteHost only disconnects: its VMs run on.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.agent import wire
from core.agent.console import FrameAssembler
from core.agent.install import InstallReport, bridge_command, ensure_agent
from core.agent.protocol import ProtocolError
from core.agent.version import engine_version
from core.config import LoadError, VmConfig
from core.host.api import (
    TERMINAL_RESET,
    EventKind,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    Progress,
    SerialListener,
    VmConsole,
    VmInfo,
    VmStats,
)
from core.hoststats import HostInfo
from core.remote.client import AgentClient, AgentGone
from core.remote.ssh import Prompter, SshTarget, TerminalPrompter, open_transport

log = logging.getLogger(__name__)

SERIAL_HISTORY = 256 * 1024
ConnectionListener = Callable[[str, str], None]     # (state: connecting/connected/disconnected/failed, message)


@dataclass(frozen=True)
class ConnectTiming:
    ssh: float = 0.0          # TCP + handshake + host key + authentication
    install: float = 0.0      # probe (+ upload)
    agent: float = 0.0        # bridge channel up and hellos exchanged (+ daemon start)
    total: float = 0.0


class _SerialSub:
    def __init__(self) -> None:
        self.listeners: list[SerialListener] = []
        self.history = bytearray()
        self.subscribed = False


class RemoteInputSink:
    """core.keymap.InputSink for a remote VM: each event is one message, no reply awaited."""

    def __init__(self, host: RemoteHost, uuid: str) -> None:
        self.host, self.uuid = host, uuid

    def key_event(self, set2_bytes: bytes) -> None:
        self.host._notify({"t": "input", "uuid": self.uuid, "kind": "key"}, bytes(set2_bytes))

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        self.host._notify({"t": "input", "uuid": self.uuid, "kind": "mouse", "dx": int(dx), "dy": int(dy),
                           "buttons": int(buttons), "dz": int(dz)})


class RemoteHost(Host):
    remote = True          # its VMs run elsewhere: quitting the manager leaves them running

    def __init__(self, target: SshTarget, prompter: Prompter | None = None, copy_unicorn: bool = False,
                 name: str | None = None) -> None:
        self.target = target
        self.name = name or target.label
        self.prompter = prompter or TerminalPrompter()
        self.copy_unicorn = copy_unicorn
        self.error = "not connected"
        self.state = "disconnected"
        self.report: InstallReport | None = None
        self.timing = ConnectTiming()
        self.agent_version = ""
        self._transport = None
        self._client: AgentClient | None = None
        self._connect_lock = threading.Lock()
        self._lock = threading.RLock()
        self._vms: dict[str, VmInfo] = {}
        self._errors: list[LoadError] = []
        self._info: HostInfo | None = None
        self._caps = HostCapabilities()
        self._accel_cache: dict[str, tuple[str, str]] = {}
        self._serial: dict[str, _SerialSub] = {}
        self._consoles: dict[str, FrameAssembler] = {}
        self._conn_listeners: list[ConnectionListener] = []

    # -- connection ------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and not client.closed

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._conn_listeners.append(listener)

    def remove_connection_listener(self, listener: ConnectionListener) -> None:
        if listener in self._conn_listeners:
            self._conn_listeners.remove(listener)

    def _set_connection(self, state: str, message: str) -> None:
        self.state = state
        for listener in list(self._conn_listeners):
            try:
                listener(state, message)
            except Exception:
                log.exception("connection listener failed")

    def connect(self, progress: Callable[[str, int, int], None] | None = None) -> None:
        """Connect (or do nothing when connected). Blocks for the handshake, maybe prompts, maybe uploads."""
        with self._connect_lock:
            if self.connected:
                return
            self._set_connection("connecting", f"connecting to {self.target.label}…")
            try:
                self._connect(progress)
            except HostError as exc:
                self.error = str(exc)
                self._drop_transport()
                self._set_connection("failed", self.error)
                raise
            except Exception as exc:     # paramiko raises more kinds than it documents
                log.exception("connecting to %s failed", self.target.label)
                self.error = f"{type(exc).__name__}: {exc}"
                self._drop_transport()
                self._set_connection("failed", self.error)
                raise HostError(self.error) from None
            self.error = ""
            self._set_connection("connected", f"connected to {self.target.label}")
        self._after_connect()

    def _connect(self, progress) -> None:
        t0 = time.monotonic()
        self._client = None
        self._transport = open_transport(self.target, self.prompter)
        t1 = time.monotonic()
        self.report = ensure_agent(self._transport, self.target.python, self.copy_unicorn, progress)
        t2 = time.monotonic()
        client = self._open_agent()
        version = str(client.agent_hello.get("version", ""))
        if version != engine_version():
            # An agent of another engine version serves this user. Replace it unless it is running VMs.
            try:
                client.call("exit", timeout=15)
            except HostError as exc:
                self.report.notes.append(f"kept the running agent {version}: {exc}")
            else:
                deadline = time.monotonic() + 10
                while not client.closed and time.monotonic() < deadline:
                    time.sleep(0.02)
                client.close("replaced by a newer agent")
                client = self._open_agent()
        self.agent_version = str(client.agent_hello.get("version", ""))
        self._client = client
        self._fetch_state(client)
        t3 = time.monotonic()
        self.timing = ConnectTiming(t1 - t0, t2 - t1, t3 - t2, t3 - t0)

    def _open_agent(self) -> AgentClient:
        chan = self._transport.open_session(timeout=30)
        chan.exec_command(bridge_command(self.target.python, self.report))
        stderr = bytearray()

        def recv(n: int) -> bytes:
            return chan.recv(n)

        def close() -> None:
            chan.close()

        client = AgentClient(recv, chan.sendall, close, self._on_event, self._on_serial,
                             lambda reason: self._on_closed(client, reason))
        try:
            client.start()
        except AgentGone as exc:
            while chan.recv_stderr_ready():
                stderr += chan.recv_stderr(65536)
            detail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
            raise HostError(f"the agent on {self.target.label} did not start: {exc}"
                            + (f" ({detail[0]})" if detail else "")) from None
        return client

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
            client.close(f"the agent sent a malformed answer: {exc}")
            raise HostError(f"the agent on {self.target.label} sent a malformed answer: {exc}") from None

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
            # A console of the same session resumes; one of an older session keeps its last picture.
            try:
                value, _ = self._client.call("console_open", uuid=uuid)
            except HostError:
                continue
            if isinstance(value, dict) and value.get("session") == assembler.session:
                self._client.consoles[uuid] = assembler

    def _on_closed(self, client: AgentClient, reason: str) -> None:
        if client is not self._client:
            return
        self.error = reason
        self._drop_transport()
        self._set_connection("disconnected", reason)

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:
                log.debug("closing the transport failed", exc_info=True)

    def disconnect(self, reason: str = "disconnected") -> None:
        client = self._client
        if client is not None:
            client.close(reason)
        self._drop_transport()

    def close(self) -> None:
        """Disconnect; the VMs keep running on the host."""
        self.disconnect("closed")

    def _agent(self, reconnect: bool = True) -> AgentClient:
        client = self._client
        if client is None or client.closed:
            if not reconnect:
                raise HostError(f"{self.name} is not connected: {self.error}")
            self.connect()
            client = self._client
            assert client is not None
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

    # -- events from the agent -------------------------------------------------------------------------------
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

    # -- Host API: through the agent -------------------------------------------------------------------------
    def reload(self) -> None:
        client = self._agent()
        self._call("reload")
        self._fetch_state(client)

    def define(self, config: VmConfig) -> VmInfo:
        value, _ = self._call("define", config=wire.config_to(config))
        try:
            info = wire.vminfo_from(value)
        except wire.WireError as exc:
            raise HostError(f"the agent sent a malformed answer: {exc}") from None
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

    def delete(self, vm_uuid: str, delete_disks: bool = False) -> list[str]:
        value, _ = self._call("delete", uuid=vm_uuid, delete_disks=bool(delete_disks))
        with self._lock:
            self._vms.pop(vm_uuid, None)
        return [str(v) for v in value] if isinstance(value, list) else []

    def stats(self, vm_uuid: str) -> VmStats | None:
        value, _ = self._call("stats", reconnect=False, uuid=vm_uuid)
        try:
            return wire.stats_from(value)
        except wire.WireError as exc:
            raise HostError(f"the agent sent malformed statistics: {exc}") from None

    def create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                    progress: Progress | None = None) -> None:
        client = self._agent()
        try:
            client.call("create_disk", path=path, size_bytes=int(size_bytes), fmt=fmt,
                        preallocate=bool(preallocate), progress=progress, timeout=3600)
        except AgentGone as exc:
            raise HostError(f"{self.name}: {exc}") from None

    def accel_preview(self, requested: str) -> tuple[str, str]:
        cached = self._accel_cache.get(requested)
        if cached is not None:
            return cached
        value, _ = self._call("accel_preview", requested=requested)
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise HostError("the agent sent a malformed accelerator answer")
        result = self._accel_cache[requested] = (value[0], value[1])
        return result

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
            # After a reconnect the terminal starts over from the agent's history, not from a gap.
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
        """The VM's screen streamed by the agent (a FrameAssembler answers render(force) like a local Renderer)
        and an input sink sending its keys and mouse motion; a new session after each start of the VM."""
        value, _ = self._call("console_open", uuid=vm_uuid)
        session = value.get("session") if isinstance(value, dict) else None
        if not isinstance(session, int):
            raise HostError("the agent sent a malformed console answer")
        client = self._agent(reconnect=False)
        with self._lock:
            assembler = self._consoles.get(vm_uuid)
            if assembler is None or assembler.session != session:
                assembler = self._consoles[vm_uuid] = FrameAssembler(session, self._acker(vm_uuid))
            client.consoles[vm_uuid] = assembler
        return VmConsole(session=session, frames=assembler, input=RemoteInputSink(self, vm_uuid))

    def _acker(self, vm_uuid: str) -> Callable[[int], None]:
        return lambda count: self._notify({"t": "fb_ack", "uuid": vm_uuid, "n": count})

    def close_console(self, vm_uuid: str) -> None:
        """Stop streaming a VM's screen (the viewer is gone)."""
        with self._lock:
            self._consoles.pop(vm_uuid, None)
        client = self._client
        if client is not None:
            client.consoles.pop(vm_uuid, None)
        if self.connected:
            try:
                self._call("console_close", reconnect=False, uuid=vm_uuid)
            except HostError:
                pass
