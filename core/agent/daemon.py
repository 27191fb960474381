"""The agent daemon: this user's VMs on this host, served over a UNIX socket to any number of connections.

`python3 -m core.agent.daemon` (started on demand by the bridge) takes the lock file in the private runtime
directory (paths.py) so only one daemon runs per user, listens on agent.sock (mode 0600, and every accepted peer's
SO_PEERCRED uid must be ours: unix(7)), and runs the engine — a LocalHost over the user's XDG config directory —
in this process, so VMs keep running when connections come and go. It exits by itself after IDLE_EXIT seconds
with no connection and no VM running.

Each connection speaks protocol.py: after the hellos, "call" messages name a Host API method and get a "ret" or
"err" with the same id (calls run on a small per-connection pool: a pause may take seconds, and other calls must
not wait behind it); the host's events go out as "event" messages carrying the VM's current info; serial output of
subscribed VMs as "serial"; console frames as console.py describes; "input" messages carry keys and mouse motion
to a VM's i8042. Everything sent goes through one queue and writer thread per connection, so a vCPU thread that
produces serial output never waits on the network. A protocol error closes that connection (after a "fatal"
message saying why); the daemon and the other connections carry on.
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.agent import paths, wire
from core.agent.console import MAX_IN_FLIGHT, encode_frame, merge_rects
from core.agent.protocol import (
    MAX_FRAME,
    ConnectionClosed,
    Message,
    ProtocolError,
    check_hello,
    encode,
    exact_reader,
    hello,
    read_message,
)
from core.agent.version import engine_version
from core.config import ConfigStore
from core.host.api import EventKind, HostError, HostEvent
from core.host.local import LocalHost
from core.hoststats import HostInfo

log = logging.getLogger("vireo.agent")

IDLE_EXIT = 600.0               # seconds without connections or running VMs before the daemon exits
CALL_WORKERS = 4
MAX_QUEUED_BYTES = 32 * 1024 * 1024   # per connection: past this, serial output for it is dropped
CONSOLE_INTERVAL = 1 / 60


def software_cpu_available() -> tuple[bool, str]:
    try:
        import unicorn
    except ImportError:
        return False, ("the software CPU needs the Python module unicorn 2.1.4, which this host's python3 lacks "
                       "(pip install unicorn==2.1.4): only KVM is available")
    version = getattr(unicorn, "__version__", "")
    if not str(version).startswith("2.1.4"):
        return False, f"the software CPU needs unicorn 2.1.4, this host has {version}: only KVM is available"
    return True, ""


def host_info_without_psutil() -> HostInfo:
    """The host facts from /proc alone (proc(5): cpuinfo, meminfo) when psutil is not installed."""
    import platform

    from core.hoststats import cpu_model, kvm_facts
    usable, hardware, reason = kvm_facts()
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                phys = value
            elif key == "core id":
                core = value
                cores.add((phys, core))
    memory_kib = 0
    with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    cpus = os.cpu_count() or 1
    return HostInfo(hostname=socket.gethostname(), cpu_model=cpu_model(), cpus=cpus, cores=len(cores) or cpus,
                    memory_mib=memory_kib // 1024, kvm_usable=usable, kvm_hardware=hardware, kvm_reason=reason,
                    system=f"{platform.system()} {platform.release()}")


class AgentHost(LocalHost):
    """LocalHost as the agent runs it: says plainly when the software CPU is missing here, and works without
    psutil."""

    def info(self) -> HostInfo:
        if self._info is None:
            try:
                return super().info()
            except ImportError:
                self._info = host_info_without_psutil()
        return self._info

    def accel_preview(self, requested: str) -> tuple[str, str]:
        accel, why = super().accel_preview(requested)
        if accel == "software":
            ok, reason = software_cpu_available()
            if not ok:
                raise HostError(reason)
        return accel, why


class _ConsoleStream:
    """One connection's view of one VM's screen (a VmConsole session): renders at up to 60 Hz, sends only what
    changed, and never has more than MAX_IN_FLIGHT frames unacknowledged. It ends with the session (the VM
    stopped: its last picture was sent) or when the client closes it."""

    CHECK_INTERVAL = 0.5      # how often to ask whether the VM still runs this session

    def __init__(self, conn: Connection, uuid: str, console) -> None:
        self.conn, self.uuid, self.console = conn, uuid, console
        self.cond = threading.Condition()
        self.in_flight = 0
        self.stopped = False
        self.seq = 0
        self.thread = threading.Thread(target=self._loop, name=f"console-{uuid[:8]}", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.stopped

    def ack(self, count: int) -> None:
        with self.cond:
            self.in_flight = max(0, self.in_flight - count)
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _session_over(self) -> bool:
        try:
            return self.conn.host.console(self.uuid).session != self.console.session
        except HostError:
            return True

    def _loop(self) -> None:
        pending: list = []
        force = True
        last_check = time.monotonic()
        try:
            while True:
                with self.cond:
                    while not self.stopped and self.in_flight >= MAX_IN_FLIGHT:
                        self.cond.wait(1.0)
                    if self.stopped:
                        return
                over = False
                now = time.monotonic()
                if now - last_check > self.CHECK_INTERVAL:
                    last_check = now
                    over = self._session_over()
                frame = self.console.frames.render(force=force)
                force = False
                if frame is not None:
                    pending = merge_rects(pending, frame.dirty)
                    if pending:
                        self.seq += 1
                        with self.cond:
                            self.in_flight += 1
                        messages = encode_frame(self.uuid, self.seq, frame.pixels, pending, frame.mode)
                        for header, _ in messages:
                            header["session"] = self.console.session
                        self.conn.send_many(messages)
                        pending = []
                if over:
                    return
                time.sleep(CONSOLE_INTERVAL)
        except Exception:
            log.exception("console stream for %s failed", self.uuid)


class Connection:
    """One client, from hello to close."""

    def __init__(self, agent: Agent, sock: socket.socket) -> None:
        self.agent = agent
        self.sock = sock
        self.out: queue.Queue[bytes | None] = queue.Queue()
        self.queued = 0
        self.queue_lock = threading.Lock()     # orders a subscribe reply before the data that follows it
        self.closed = threading.Event()
        self.pool = ThreadPoolExecutor(CALL_WORKERS, thread_name_prefix="agent-call")
        self.serial: dict[str, Any] = {}
        self.consoles: dict[str, _ConsoleStream] = {}
        self.listener = self._on_event
        self.writer = threading.Thread(target=self._write_loop, name="agent-writer", daemon=True)

    # -- sending ---------------------------------------------------------------------------------------------
    def send(self, header: dict[str, Any], payload: bytes = b"", droppable: bool = False) -> None:
        data = encode(header, payload)
        with self.queue_lock:
            if self.closed.is_set():
                return
            if droppable and self.queued > MAX_QUEUED_BYTES:
                return
            self.queued += len(data)
            self.out.put(data)

    def send_many(self, messages: list[Message]) -> None:
        for header, payload in messages:
            self.send(header, payload)

    def _write_loop(self) -> None:
        while (data := self.out.get()) is not None:
            with self.queue_lock:
                self.queued -= len(data)
            try:
                self.sock.sendall(data)
            except OSError:
                self.close()
                return

    # -- receiving -------------------------------------------------------------------------------------------
    def serve(self) -> None:
        self.writer.start()
        reader = exact_reader(self.sock.recv)
        try:
            self.send(hello("agent", version=engine_version(), pid=os.getpid(), max_frame=MAX_FRAME))
            header, _ = read_message(reader)
            check_hello(header)
            self.agent.host.add_listener(self.listener)
            while not self.closed.is_set():
                header, payload = read_message(reader)
                self._dispatch(header, payload)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            log.warning("closing a connection: %s", exc)
            self.send({"t": "fatal", "e": f"protocol error: {exc}"})
        except OSError:
            pass
        finally:
            self.close()

    def _dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        kind = header["t"]
        if kind == "call":
            call_id = header.get("id")
            method = header.get("m")
            if not isinstance(call_id, int) or not isinstance(method, str):
                raise ProtocolError("call without an integer id and a method name")
            args = header.get("a", {})
            if not isinstance(args, dict):
                raise ProtocolError("call arguments must be an object")
            self.pool.submit(self._call, call_id, method, args, payload)
        elif kind == "input":
            self._input(header, payload)
        elif kind == "fb_ack":
            stream = self.consoles.get(str(header.get("uuid")))
            count = header.get("n", 1)
            if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 1 << 20:
                raise ProtocolError("fb_ack count must be a small non-negative integer")
            if stream is not None:
                stream.ack(count)
        else:
            raise ProtocolError(f"unknown message type {kind[:40]!r}")

    def _call(self, call_id: int, method: str, args: dict[str, Any], payload: bytes) -> None:
        handler = getattr(self, f"m_{method}", None)
        try:
            if handler is None:
                raise HostError(f"the agent has no method {method[:40]!r} (agent {engine_version()})")
            result = handler(call_id=call_id, payload=payload, **args)
        except HostError as exc:
            self.send({"t": "err", "id": call_id, "e": str(exc)})
            return
        except (TypeError, wire.WireError, ValueError) as exc:
            self.send({"t": "err", "id": call_id, "e": f"bad request {method}: {str(exc)[:200]}"})
            return
        except Exception as exc:
            log.exception("%s failed", method)
            self.send({"t": "err", "id": call_id, "e": f"{type(exc).__name__}: {str(exc)[:200]}"})
            return
        if result is _ALREADY_SENT:
            return
        if isinstance(result, tuple):
            value, data = result
            self.send({"t": "ret", "id": call_id, "v": value}, data)
        else:
            self.send({"t": "ret", "id": call_id, "v": result})

    def _input(self, header: dict[str, Any], payload: bytes) -> None:
        uuid = header.get("uuid")
        if not isinstance(uuid, str):
            raise ProtocolError("input without a VM uuid")
        kind = header.get("kind")
        if kind == "key":
            if not 1 <= len(payload) <= 16:
                raise ProtocolError("a key event carries 1..16 scan code bytes")
            values: list[int] = []
        elif kind == "mouse":
            values = [header.get(k, 0) for k in ("dx", "dy", "buttons", "dz")]
            if any(isinstance(v, bool) or not isinstance(v, int) or abs(v) > 65535 for v in values):
                raise ProtocolError("a mouse event carries integer dx, dy, buttons, dz")
        else:
            raise ProtocolError("input kind must be key or mouse")
        stream = self.consoles.get(uuid)
        if stream is not None and stream.alive:
            sink = stream.console.input
        else:
            try:
                sink = self.host.console(uuid).input
            except HostError:
                return      # not running any more: the event has nowhere to go
        if kind == "key":
            sink.key_event(payload)
        else:
            sink.mouse_event(*values)

    # -- events ----------------------------------------------------------------------------------------------
    def _on_event(self, event: HostEvent) -> None:
        info = None
        if event.kind != EventKind.DELETED:
            try:
                info = self.agent.host.get(event.uuid)
            except HostError:
                info = None
        self.send(wire.event_to(event, info))

    # -- methods ---------------------------------------------------------------------------------------------
    @property
    def host(self) -> AgentHost:
        return self.agent.host

    def m_status(self, **_: Any) -> dict[str, Any]:
        ok, why = software_cpu_available()
        return {"version": engine_version(), "pid": os.getpid(), "python": sys.version.split()[0],
                "software_cpu": ok, "software_cpu_reason": why, "connections": self.agent.connection_count(),
                "active": [i.uuid for i in self.host.list_vms() if i.state.active]}

    def m_exit(self, **_: Any) -> bool:
        """Stop this daemon so a newer one can start; refused while VMs run (they live in this process)."""
        active = [i.name for i in self.host.list_vms() if i.state.active]
        if active:
            raise HostError(f"the agent runs {', '.join(active)}: stop them before the agent can be replaced")
        threading.Thread(target=self.agent.stop, name="agent-exit", daemon=True).start()
        return True

    def m_ping(self, **_: Any) -> bool:
        return True

    def m_info(self, **_: Any) -> dict[str, Any]:
        return wire.hostinfo_to(self.host.info())

    def m_list(self, **_: Any) -> list[dict[str, Any]]:
        return [wire.vminfo_to(i) for i in self.host.list_vms()]

    def m_get(self, uuid: str, **_: Any) -> dict[str, Any]:
        return wire.vminfo_to(self.host.get(uuid))

    def m_load_errors(self, **_: Any) -> list[dict[str, Any]]:
        return [wire.load_error_to(e) for e in self.host.load_errors()]

    def m_reload(self, **_: Any) -> None:
        self.host.reload()

    def m_define(self, config: dict[str, Any], **_: Any) -> dict[str, Any]:
        return wire.vminfo_to(self.host.define(wire.config_from(config)))

    def _lifecycle(self, action: str, uuid: str) -> None:
        getattr(self.host, action)(uuid)

    def m_start(self, uuid: str, **_: Any) -> None:
        self._lifecycle("start", uuid)

    def m_pause(self, uuid: str, **_: Any) -> None:
        self._lifecycle("pause", uuid)

    def m_resume(self, uuid: str, **_: Any) -> None:
        self._lifecycle("resume", uuid)

    def m_shutdown(self, uuid: str, **_: Any) -> None:
        self._lifecycle("shutdown", uuid)

    def m_reboot(self, uuid: str, **_: Any) -> None:
        self._lifecycle("reboot", uuid)

    def m_force_reset(self, uuid: str, **_: Any) -> None:
        self._lifecycle("force_reset", uuid)

    def m_force_off(self, uuid: str, **_: Any) -> None:
        self._lifecycle("force_off", uuid)

    def m_delete(self, uuid: str, delete_disks: bool = False, **_: Any) -> list[str]:
        return self.host.delete(uuid, bool(delete_disks))

    def m_stats(self, uuid: str, **_: Any) -> dict[str, Any] | None:
        return wire.stats_to(self.host.stats(uuid))

    def m_accel_preview(self, requested: str, **_: Any) -> list[str]:
        return list(self.host.accel_preview(requested))

    def m_capabilities(self, **_: Any) -> dict[str, Any]:
        return wire.caps_to(self.host.capabilities())

    def m_create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                      call_id: int = 0, **_: Any) -> None:
        def progress(done: int, total: int) -> None:
            self.send({"t": "progress", "id": call_id, "done": done, "total": total}, droppable=True)
        self.host.create_disk(path, int(size_bytes), fmt, bool(preallocate), progress)

    def m_serial_subscribe(self, uuid: str, call_id: int = 0, **_: Any) -> tuple[None, bytes] | None:
        if uuid in self.serial:
            return None, b""

        def forward(data: bytes, uuid: str = uuid) -> None:
            self.send({"t": "serial", "uuid": uuid}, data, droppable=True)

        # The reply (with the history) is queued before any output that follows it: forward() waits for
        # queue_lock, which is held from the subscription until the reply is queued.
        with self.queue_lock:
            history = self.host.subscribe_serial(uuid, forward)
            self.serial[uuid] = forward
            data = encode({"t": "ret", "id": call_id, "v": None}, history[-(MAX_FRAME // 2):])
            self.queued += len(data)
            self.out.put(data)
        return _ALREADY_SENT

    def m_serial_unsubscribe(self, uuid: str, **_: Any) -> None:
        forward = self.serial.pop(uuid, None)
        if forward is not None:
            self.host.unsubscribe_serial(uuid, forward)

    def m_serial_send(self, uuid: str, payload: bytes = b"", **_: Any) -> None:
        self.host.send_serial(uuid, payload)

    def m_console_open(self, uuid: str, shared: bool = False, **_: Any) -> dict[str, Any]:
        """A client on this machine may map the VM process's shared console itself (`shared`: the answer holds
        its path and nothing is streamed); to any other the screen is streamed."""
        if shared:
            found = self.host.shared_console(uuid)
            if found is not None:
                session, path = found
                return {"session": session, "path": path}
        console = self.host.console(uuid)
        stream = self.consoles.get(uuid)
        if stream is None or not stream.alive or stream.console.session != console.session:
            if stream is not None:
                stream.stop()
            self.consoles[uuid] = _ConsoleStream(self, uuid, console)
        return {"session": console.session}

    def m_console_close(self, uuid: str, **_: Any) -> None:
        stream = self.consoles.pop(uuid, None)
        if stream is not None:
            stream.stop()

    # -- teardown --------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self.queue_lock:
            if self.closed.is_set():
                return
            self.closed.set()
            self.out.put(None)
        self.agent.host.remove_listener(self.listener)
        for uuid, forward in list(self.serial.items()):
            self.host.unsubscribe_serial(uuid, forward)
        self.serial.clear()
        for stream in list(self.consoles.values()):
            stream.stop()
        self.consoles.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.writer.join(5)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.agent.forget(self)


class _AlreadySent:
    """A method's result when it queued its own reply."""


_ALREADY_SENT = _AlreadySent()


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (unix(7) SO_PEERCRED: struct ucred {pid, uid, gid})."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class Agent:
    """The listening socket, the connections and the engine."""

    def __init__(self, host: AgentHost, socket_path: str, idle_exit: float = IDLE_EXIT) -> None:
        self.host = host
        self.socket_path = socket_path
        self.idle_exit = idle_exit
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._last_busy = time.monotonic()
        self.listener: socket.socket | None = None

    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
            self._last_busy = time.monotonic()

    def bind(self) -> None:
        try:
            os.unlink(self.socket_path)     # stale: we hold the lock, so no live daemon owns it
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)               # the socket is born 0600: no window where others could connect
        try:
            sock.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        sock.listen(16)
        sock.settimeout(1.0)
        self.listener = sock

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            listener = self.listener
            if listener is None:
                break
            try:
                client, _ = listener.accept()
            except TimeoutError:
                self._maybe_exit_idle()
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            client.settimeout(None)
            if peer_uid(client) != os.getuid():
                try:
                    client.sendall(encode({"t": "fatal", "e": "this agent belongs to another user"}))
                finally:
                    client.close()
                continue
            conn = Connection(self, client)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=conn.serve, name="agent-conn", daemon=True).start()
        self._shutdown()

    def _maybe_exit_idle(self) -> None:
        with self._lock:
            busy = bool(self._connections)
        if busy or any(i.state.active for i in self.host.list_vms()):
            self._last_busy = time.monotonic()
        elif time.monotonic() - self._last_busy > self.idle_exit:
            log.info("idle for %.0f s: exiting", self.idle_exit)
            self._stopping.set()

    def stop(self) -> None:
        """Stop accepting at once (a replacement daemon may bind the path right away), then wind down."""
        self._stopping.set()
        listener, self.listener = self.listener, None
        if listener is not None:
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
            listener.close()

    def _shutdown(self) -> None:
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.close()
        self.stop()
        self.host.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m core.agent.daemon", description="Vireo agent daemon")
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT, metavar="SECONDS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s vireo-agent[%(process)d] %(levelname)s %(message)s")
    try:
        runtime = paths.runtime_dir()
    except paths.UnsafeDirectory as exc:
        log.error("%s", exc)
        return 1
    lock_fd = os.open(os.path.join(runtime, paths.LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    socket_file = os.path.join(runtime, paths.SOCKET_NAME)
    deadline = time.monotonic() + 15
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pass
        # Another daemon holds the lock: it serves (leave it), or it is exiting to make way for this one.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(socket_file)
            log.info("another agent serves %s: leaving it to serve", socket_file)
            return 0
        except OSError:
            pass
        finally:
            probe.close()
        if time.monotonic() > deadline:
            log.error("another agent holds %s but does not serve", paths.LOCK_NAME)
            return 1
        time.sleep(0.05)
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())     # who serves, for an administrator (or a test) to signal
    try:
        import numpy  # noqa: F401  (the display and devices need it; say so here rather than at the first VM)
    except ImportError:
        log.error("the engine needs numpy, which %s lacks", sys.executable)
        return 1
    host = AgentHost(ConfigStore(), name=socket.gethostname())
    agent = Agent(host, socket_file, args.idle_exit)
    agent.bind()
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("agent %s serving %s", engine_version(), agent.socket_path)
    try:
        agent.serve_forever()
    finally:
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
