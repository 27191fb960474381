"""Connect and Disconnect racing on a service client (core/remote/service.py): the GUI runs each as a job on its
thread pool, so a Connect can begin while a Disconnect's close() is still at work, and a Disconnect can land while
a Connect is still reading the service's state. Each test holds one side at a chosen point with an Event, runs the
other, then lets go: no sleeps, no retries.

Against a real service (a sandboxed local one, tests/helpers/service.py); the client is a LocalServiceHost that
also opens a stand-in transport per attempt, as RemoteHost opens an SSH transport, so the tests see which attempt's
transport a close() releases."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from core.connect import LocalServiceHost
from core.host import HostError
from tests.helpers.service import ServiceSandbox, local_service  # noqa: F401

WAIT = 10.0     # seconds; each wait ends as soon as its event is set


class _Transport:
    def __init__(self) -> None:
        self.closed = False


class _TransportedHost(LocalServiceHost):
    """The local service with a transport per attempt, released by _drop_transport as RemoteHost releases its SSH
    transport."""

    def __init__(self) -> None:
        super().__init__("race", daemon_args=("--idle-exit", "60"))
        self.transport: _Transport | None = None
        self.transports: list[_Transport] = []

    def _connect(self, progress: Any) -> None:
        self.transport = _Transport()
        self.transports.append(self.transport)
        super()._connect(progress)

    def _drop_transport(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.closed = True


class _Gate:
    """Wraps a callable: its first call waits at the gate until release()."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.reached, self._open = threading.Event(), threading.Event()
        self._used = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._used:
            self._used = True
            self.reached.set()
            self._open.wait(WAIT)
        return self.fn(*args, **kwargs)

    def release(self) -> None:
        self._open.set()


class _Job:
    """fn() on a thread of its own, as the GUI's pool runs Connect and Disconnect."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:
            self.error = exc

    def join(self) -> BaseException | None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the job did not finish"
        return self.error


@pytest.fixture
def host(local_service: ServiceSandbox):  # noqa: F811
    client = _TransportedHost()
    yield client
    client.close()


def assert_connected(host: _TransportedHost) -> None:
    assert host.connected, f"not connected: state {host.state!r}, error {host.error!r}"
    assert host.state == "connected" and host.error == ""
    assert host.agent_status()                          # a call goes through
    assert host.transport is host.transports[-1] and not host.transport.closed
    assert all(t.closed for t in host.transports[:-1]), "a transport of an earlier attempt was left open"


def test_a_connect_begun_while_close_runs_ends_connected(host: _TransportedHost) -> None:
    """Disconnect, then Connect while the Disconnect's close() has not yet closed the old stream: the Connect
    must not take the old connection for a live one (it is going), and close() must end only that one."""
    host.connect()
    old = host._client
    assert old is not None
    gate = old.close = _Gate(old.close)         # close() held before it closes the old stream
    disconnect = _Job(host.close)
    assert gate.reached.wait(WAIT)
    connect = _Job(host.connect)
    assert connect.join() is None
    gate.release()
    assert disconnect.join() is None
    assert old.closed
    assert_connected(host)


def test_a_disconnect_during_a_connect_cancels_it_and_the_next_connect_works(host: _TransportedHost) -> None:
    """The interleaving seen in CI: the first Connect had opened its stream but was still reading the service's
    state when Disconnect ran; the host already said `connected`, so the Disconnect was taken, its close() failed
    that Connect (state 'failed', error 'closed'), and the Connect clicked next was dropped as one under way."""
    gate = host._fetch_state = _Gate(host._fetch_state)     # the service answering slowly
    first = _Job(host.connect)
    assert gate.reached.wait(WAIT)
    # Not connected until connect() has finished: nothing may act on a connection half made.
    assert not host.connected and host.state == "connecting"
    host.close()                                        # a Disconnect anyway (quitting, Remove Connection)
    gate.release()
    assert isinstance(first.join(), HostError)
    # Cancelled on request, not failed, and nothing of that attempt is left.
    assert (host.state, host.error) == ("disconnected", "closed")
    assert not host.connected and host.transports[0].closed
    host.connect()
    assert_connected(host)


def test_a_close_before_the_stream_is_open_still_ends_the_attempt(host: _TransportedHost) -> None:
    """The other order: close() while connect() is still opening the stream (nothing to close yet) must not leave
    the host connected once that connect() gets through."""
    gate = host._open_agent = _Gate(host._open_agent)
    first = _Job(host.connect)
    assert gate.reached.wait(WAIT)
    host.close()
    gate.release()
    assert isinstance(first.join(), HostError)
    assert not host.connected and (host.state, host.error) == ("disconnected", "closed")
    assert host._client is None and host.transports[0].closed
    host.connect()
    assert_connected(host)
