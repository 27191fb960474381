"""One client connection of the Vireo service (core/agent/daemon.py), from hello to close, in protocol.py's
messages.

After the hellos, "call" messages name a Host API method and get a "ret" or "err" with the same id (calls run on a
small per-connection pool: a pause may take seconds, and other calls must not wait behind it); the host's events go
out as "event" messages carrying the VM's current info; serial output of subscribed VMs as "serial"; console
frames as console.py describes (or, to a client on this machine that asks, the path of the VM process's shared
console, which it maps itself); "input" messages carry keys and mouse motion to a VM. Everything sent goes through
one queue and writer thread per connection, so whatever produces serial output never waits on the network. A
protocol error closes that connection (after a "fatal" message saying why); the service and the other connections
carry on.

Bounds (issue 18, defect 9): at most MAX_PENDING_CALLS calls wait or run per connection; past that the
connection's reader stops reading, so a client that floods calls is held back by its own socket. Its outgoing
queue holds at most MAX_BACKLOG_BYTES: a client that sends calls but never reads the replies is dropped (serial
output is dropped earlier, past MAX_QUEUED_BYTES), so it cannot grow the service's memory.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from core.agent import wire
from core.agent.agenthost import AgentHost, software_cpu_available
from core.agent.console import MAX_IN_FLIGHT, encode_frame, merge_rects
from core.agent.net_calls import NetCalls
from core.agent.snapshot_calls import SnapshotCalls
from core.agent.version import engine_version
from core.host.api import EventKind, HostError, HostEvent
from core.protocol import (
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

if TYPE_CHECKING:
    from core.agent.daemon import Agent

log = logging.getLogger("vireo.agent")

CALL_WORKERS = 4
MAX_QUEUED_BYTES = 32 * 1024 * 1024   # per connection: past this, serial output for it is dropped
MAX_BACKLOG_BYTES = 64 * 1024 * 1024  # past this even replies and events are not queued: the client is dropped
MAX_PENDING_CALLS = 64                # calls queued or running per connection; then the reader stops reading
CONSOLE_INTERVAL = 1 / 60


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
            session, _ = self.conn.host.shared_console(self.uuid)
        except HostError:
            return True
        return session != self.console.session

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
        finally:
            self.console.frames.close()     # the stream's own shared-console reader


class Connection(NetCalls, SnapshotCalls):
    """One client, from hello to close."""

    def __init__(self, agent: Agent, sock: socket.socket) -> None:
        self.agent = agent
        self.sock = sock
        self.out: queue.Queue[bytes | None] = queue.Queue()
        self.queued = 0
        self.queue_lock = threading.Lock()     # orders a subscribe reply before the data that follows it
        self.closed = threading.Event()
        self.pool = ThreadPoolExecutor(CALL_WORKERS, thread_name_prefix="agent-call")
        self.pending = threading.Semaphore(MAX_PENDING_CALLS)
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
            overflow = self.queued + len(data) > MAX_BACKLOG_BYTES
            if not overflow:
                self.queued += len(data)
                self.out.put(data)
        if overflow:
            log.warning("dropping a client that does not read: %d bytes are waiting for it", self.queued)
            threading.Thread(target=self._drop, name="agent-drop", daemon=True).start()

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
                self.close()        # (close() knows not to join this thread)
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
            if not isinstance(call_id, int) or isinstance(call_id, bool) or not isinstance(method, str):
                raise ProtocolError("call without an integer id and a method name")
            args = header.get("a", {})
            if not isinstance(args, dict):
                raise ProtocolError("call arguments must be an object")
            # Back-pressure: with MAX_PENDING_CALLS outstanding, stop reading until one finishes.
            while not self.pending.acquire(timeout=1.0):
                if self.closed.is_set():
                    return
            try:
                self.pool.submit(self._call, call_id, method, args, payload)
            except RuntimeError:        # the pool was shut down: the connection is closing
                self.pending.release()
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
        try:
            self._run_call(call_id, method, args, payload)
        finally:
            self.pending.release()

    def _run_call(self, call_id: int, method: str, args: dict[str, Any], payload: bytes) -> None:
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
                sink = self.host.input_sink(uuid)
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
        """Stop this daemon so a newer one can start; its VM processes run on and the newer one adopts them."""
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

    def m_delete_broken_definition(self, path: str, **_: Any) -> None:
        # LocalHost checks the path against its load errors: a client cannot name any other file.
        self.host.delete_broken_definition(str(path))

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

    def m_save(self, uuid: str, path: str | None = None, **_: Any) -> str:
        return self.host.save(uuid, None if path is None else str(path))

    def m_restore(self, path: str, **_: Any) -> dict[str, Any]:
        return wire.vminfo_to(self.host.restore(str(path)))

    def m_delete(self, uuid: str, delete_disks: bool = False, disks: list[str] | None = None, report: bool = False,
                 **_: Any) -> list[str] | dict[str, Any]:
        # `disks` (a list of paths) and `report` came after `delete_disks`: a client that sends neither gets the
        # plain list it always got. A chosen list travels as `disks`, never as `delete_disks`, so an older service
        # ignores it and removes no disk rather than all of them.
        choice = [str(p) for p in disks] if isinstance(disks, list) else bool(delete_disks)
        result = self.host.delete(uuid, choice)
        if not report:
            return list(result)
        return {"removed": list(result), "kept": [{"path": k.path, "reason": k.reason} for k in result.kept]}

    def m_stats(self, uuid: str, **_: Any) -> dict[str, Any] | None:
        return wire.stats_to(self.host.stats(uuid))

    def m_accel_preview(self, requested: str, **_: Any) -> list[str]:
        return list(self.host.accel_preview(requested))

    def m_probe_file(self, path: str, role: str, **_: Any) -> dict[str, Any]:
        return wire.probe_to(self.host.probe_file(str(path), str(role)))

    def m_list_images(self, **_: Any) -> list[dict[str, Any]]:
        return [wire.image_to(entry) for entry in self.host.list_images()]

    def m_delete_image(self, path: str, **_: Any) -> None:
        self.host.delete_image(str(path))

    def m_resize_image(self, path: str, new_size: int, **_: Any) -> None:
        self.host.resize_image(str(path), int(new_size))

    def m_host_counters(self, **_: Any) -> dict[str, Any]:
        return dataclasses.asdict(self.host.host_counters())

    def m_run_img(self, fields: dict[str, Any], **_: Any) -> list[Any]:
        if not isinstance(fields, dict):
            raise HostError("run_img: give the command's options as an object")
        return list(self.host.run_img(fields))

    def m_capabilities(self, **_: Any) -> dict[str, Any]:
        return wire.caps_to(self.host.capabilities())

    def m_create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                      call_id: int = 0, **_: Any) -> None:
        if not isinstance(path, str) or not isinstance(fmt, str):
            raise wire.WireError("create_disk: path and fmt must be strings")
        if not isinstance(size_bytes, int) or isinstance(size_bytes, bool):
            raise wire.WireError("create_disk: size_bytes must be an integer")
        if not isinstance(preallocate, bool):
            raise wire.WireError("create_disk: preallocate must be true or false")

        def progress(done: int, total: int) -> None:
            self.send({"t": "progress", "id": call_id, "done": done, "total": total}, droppable=True)
        self.host.create_disk(path, size_bytes, fmt, preallocate, progress)

    def m_clone(self, uuid: str, new_name: str, linked: bool = False, call_id: int = 0, **_: Any) -> dict[str, Any]:
        if not isinstance(new_name, str) or not isinstance(linked, bool):
            raise wire.WireError("clone: new_name must be a string and linked true or false")

        def progress(done: int, total: int) -> None:
            self.send({"t": "progress", "id": call_id, "done": done, "total": total}, droppable=True)
        return wire.vminfo_to(self.host.clone(uuid, new_name, linked, progress))

    def m_migrate(self, step: str, fields: dict[str, Any], **_: Any) -> dict[str, Any]:
        if not isinstance(step, str) or not isinstance(fields, dict):
            raise wire.WireError("migrate: step must be a string and fields an object")
        return self.host.migrate(step, fields)

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
            session, path = self.host.shared_console(uuid)
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
    def _drop(self) -> None:
        """Close without flushing: the writer is stuck on a peer that does not read, so cut the socket first."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()

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
        # The writer closes the connection itself when the peer resets it; a thread cannot join itself.
        if threading.current_thread() is not self.writer and self.writer.is_alive():
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
