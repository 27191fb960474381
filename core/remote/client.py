"""The client end of the agent protocol (core/protocol.py) over any byte stream — an SSH channel running
the bridge in practice, a socket in tests.

One reader thread takes every message off the stream: replies complete the call waiting for them (matched by
id), events and serial output go to callbacks, console strips to the VM's FrameAssembler (which acknowledges
frames as its viewer takes them: the agent's flow control). Writes are serialised by a lock. Whatever ends the
stream — the peer closing, a network error, a malformed or oversized message from the agent — fails the calls
in flight with the reason and calls on_closed(reason) once; nothing is retried here (RemoteHost decides).
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from core.agent.console import FrameAssembler
from core.host.api import HostError
from core.protocol import (
    ConnectionClosed,
    ProtocolError,
    check_hello,
    encode,
    exact_reader,
    hello,
    read_message,
)

log = logging.getLogger(__name__)

CALL_TIMEOUT = 120.0


class AgentGone(HostError):
    """The connection to the agent ended."""


class _Pending:
    __slots__ = ("event", "value", "payload", "error", "progress")

    def __init__(self, progress: Callable[[int, int], None] | None) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.payload = b""
        self.error: str | None = None
        self.progress = progress


class AgentClient:
    def __init__(self, recv: Callable[[int], bytes], sendall: Callable[[bytes], None], close: Callable[[], None],
                 on_event: Callable[[dict[str, Any]], None], on_serial: Callable[[str, bytes], None],
                 on_closed: Callable[[str], None]) -> None:
        self._recv = exact_reader(recv)
        self._sendall = sendall
        self._close_stream = close
        self.on_event, self.on_serial, self.on_closed = on_event, on_serial, on_closed
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._closed_reason: str | None = None
        self.consoles: dict[str, FrameAssembler] = {}
        self.agent_hello: dict[str, Any] = {}
        self._reader: threading.Thread | None = None

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Exchange hellos (on the caller's thread) and start reading; returns the agent's hello."""
        try:
            header, _ = read_message(self._recv)
            check_hello(header)
        except ConnectionClosed:
            self._close_stream()
            raise AgentGone("the agent closed the connection before greeting") from None
        except ProtocolError as exc:
            self._close_stream()
            raise AgentGone(str(exc)) from None
        except OSError as exc:
            self._close_stream()
            raise AgentGone(f"reading from the agent failed: {exc}") from None
        self.agent_hello = header
        self._write(encode(hello("client")))
        self._reader = threading.Thread(target=self._read_loop, name="vireo-remote-reader", daemon=True)
        self._reader.start()
        return header

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    def close(self, reason: str = "disconnected") -> None:
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        with self._lock:
            if self._closed_reason is not None:
                return
            self._closed_reason = reason
            pending = list(self._pending.values())
            self._pending.clear()
        try:
            self._close_stream()
        except Exception:
            log.debug("closing the stream failed", exc_info=True)
        # Listeners hear of the loss before any waiting caller wakes with AgentGone, so whoever handles that
        # error already sees the connection as closed, with its reason.
        try:
            self.on_closed(reason)
        except Exception:
            log.exception("on_closed failed")
        for p in pending:
            p.error = reason
            p.event.set()

    # -- sending ---------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._write_lock:
            if self._closed_reason is not None:
                raise AgentGone(self._closed_reason)
            try:
                self._sendall(data)
            except (OSError, EOFError) as exc:
                reason = f"connection lost: {exc or type(exc).__name__}"
                threading.Thread(target=self._finish, args=(reason,), daemon=True).start()
                raise AgentGone(reason) from None

    def call(self, method: str, payload: bytes = b"", timeout: float = CALL_TIMEOUT,
             progress: Callable[[int, int], None] | None = None, **args: Any) -> tuple[Any, bytes]:
        """Call a Host API method on the agent; (value, binary payload). Raises HostError."""
        call_id = next(self._ids)
        pending = _Pending(progress)
        with self._lock:
            if self._closed_reason is not None:
                raise AgentGone(self._closed_reason)
            self._pending[call_id] = pending
        try:
            self._write(encode({"t": "call", "id": call_id, "m": method, "a": args}, payload))
            if not pending.event.wait(timeout):
                raise HostError(f"the agent did not answer {method} within {timeout:.0f} s")
        finally:
            with self._lock:
                self._pending.pop(call_id, None)
        if pending.error is not None:
            raise (AgentGone if self.closed and pending.error == self._closed_reason else HostError)(pending.error)
        return pending.value, pending.payload

    def notify(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """A message without a reply (input events, acknowledgements)."""
        self._write(encode(header, payload))

    # -- receiving -------------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        reason = "the agent closed the connection"
        try:
            while True:
                header, payload = read_message(self._recv)
                self._dispatch(header, payload)
        except ConnectionClosed as exc:
            reason = "the connection dropped in the middle of a message" if exc.partial else reason
        except ProtocolError as exc:
            reason = f"the agent sent a malformed message ({exc}): disconnected"
            log.warning("%s", reason)
        except _Fatal as exc:
            reason = f"the agent ended the connection: {exc}"
        except (OSError, EOFError) as exc:
            reason = f"connection lost: {exc or type(exc).__name__}"
        except Exception as exc:   # a bug here must end this connection, not leave callers hanging
            log.exception("agent reader failed")
            reason = f"client error: {type(exc).__name__}: {exc}"
        self._finish(reason)

    def _dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        kind = header["t"]
        if kind in ("ret", "err", "progress"):
            call_id = header.get("id")
            with self._lock:
                pending = self._pending.get(call_id) if isinstance(call_id, int) else None
            if pending is None:
                return      # the caller gave up waiting: drop the late answer
            if kind == "progress":
                done, total = header.get("done"), header.get("total")
                if pending.progress and isinstance(done, int) and isinstance(total, int):
                    pending.progress(done, total)
                return
            if kind == "err":
                pending.error = str(header.get("e", "the agent reported an error"))[:1000]
            else:
                pending.value, pending.payload = header.get("v"), payload
            pending.event.set()
        elif kind == "event":
            self.on_event(header)
        elif kind == "serial":
            uuid = header.get("uuid")
            if not isinstance(uuid, str):
                raise ProtocolError("serial data without a VM uuid")
            self.on_serial(uuid, payload)
        elif kind in ("fb", "fb_end"):
            uuid = header.get("uuid")
            assembler = self.consoles.get(uuid) if isinstance(uuid, str) else None
            if assembler is None or header.get("session") != assembler.session:
                return      # a strip still in flight for a console closed or replaced since
            assembler.apply(header, payload)
        elif kind == "fatal":
            raise _Fatal(str(header.get("e", "no reason given"))[:500])
        else:
            raise ProtocolError(f"unknown message type {kind[:40]!r}")


class _Fatal(Exception):
    pass
