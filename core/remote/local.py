"""The client of this user's local Vireo service: the Host the GUI and the CLI use for "this computer".

connect_local() reaches the service's UNIX socket ($XDG_RUNTIME_DIR/vireo/agent.sock, core/agent/paths.py)
directly — no SSH, no bridge process — and starts the service on demand when none listens, exactly once even when
several clients race (core/agent/bridge.py's reach_agent holds a start lock). The service started so runs this
checkout's engine: the same interpreter as the client, with PYTHONPATH at the directory holding `core`.

Everything past the socket is ServiceClient's (core/remote/service.py), as for an SSH host: the mirror, reconnect
on demand, serial subscriptions. Two things differ from SSH: the console is mapped from the VM process's shared
memory (the service answers its path; the client and the VM process share this machine and this user), and the
service is started here rather than by a bridge. Closing the client leaves the VMs running in the service.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from core.agent import bridge, paths
from core.host.api import HostError
from core.host.files import LocalFiles
from core.remote.client import AgentClient, AgentGone
from core.remote.service import ServiceClient

log = logging.getLogger(__name__)

HANDSHAKE_ATTEMPTS = 3
LocalProgress = Callable[[str, int, int], None]     # (what, done, total), as RemoteHost.connect reports


class LocalServiceHost(ServiceClient):
    """This user's service on this computer, over its UNIX socket."""

    shared_console = True

    def __init__(self, name: str = "Local", daemon_args: tuple[str, ...] = (), reread: bool = False) -> None:
        """`reread`: on every (re)connection, have the service re-read the definition files first, so files
        added or edited by hand since it read them show (the manager's choice: it opens on what is on disk)."""
        super().__init__(name)
        self.daemon_args = daemon_args      # for a service this client starts (tests pass --idle-exit)
        self.reread = reread
        self.socket_path = ""

    def files(self) -> LocalFiles:
        # The service runs as this user on this machine: its files are ours.
        return LocalFiles()

    def _connect(self, progress: LocalProgress | None) -> None:
        if progress is not None:
            progress("the Vireo service", 0, 1)
        self._attach()
        client = self._client
        if self.reread and client is not None:
            # Before connect() returns and announces the VMs, so no reader sees the mirror from before.
            client.call("reload")
            self._fetch_state(client)
        if progress is not None:
            progress("the Vireo service", 1, 1)

    def _open_agent(self) -> AgentClient:
        # A service that is exiting (idle, replaced, killed) may take the connection into its backlog and close
        # it unanswered; the next attempt reaches the next service, started on demand.
        for attempt in range(HANDSHAKE_ATTEMPTS):
            try:
                return self._handshake()
            except AgentGone as exc:
                if attempt == HANDSHAKE_ATTEMPTS - 1:
                    raise HostError(f"the Vireo service did not answer: {exc}") from None
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def _handshake(self) -> AgentClient:
        try:
            self.socket_path = paths.socket_path()
            sock = bridge.reach_agent(self.daemon_args)
        except (RuntimeError, paths.UnsafeDirectory) as exc:
            raise HostError(f"the Vireo service is not available: {exc}") from None
        except OSError as exc:
            raise HostError(f"cannot reach the Vireo service: {exc.strerror or exc}") from None

        def close() -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

        client = self._new_client(sock.recv, sock.sendall, close)
        client.start()
        return client


def connect_local(progress: LocalProgress | None = None, name: str = "Local",
                  daemon_args: tuple[str, ...] = ()) -> LocalServiceHost:
    """A connected client of this user's local service, starting the service when none runs. HostError (one
    line) when it cannot be reached or started. May take seconds (a new service imports the engine): call it off
    a GUI's event loop."""
    host = LocalServiceHost(name, daemon_args)
    host.connect(progress)
    return host
