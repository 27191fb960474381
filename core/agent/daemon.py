"""The Vireo service (the agent daemon): this user's VMs on this host, served over a UNIX socket to any number of
connections — the GUI and the CLI on this machine (core/remote/local.py), SSH clients through the bridge.

`python3 -m core.agent.daemon` (started on demand by the first client, or at login by the systemd user unit
resources/vireo.service) takes the lock file in the private runtime directory (paths.py) so only one daemon runs
per user, listens on agent.sock (mode 0600, and every accepted peer's SO_PEERCRED uid must be ours: unix(7)), and
supervises the user's VMs — a LocalHost over the user's XDG config directory, which runs each VM in a process of
its own — so VMs keep running when connections come and go. At start it adopts the VM processes a previous service
left running (they run on when a service stops or dies) and starts the VMs marked autostart. Started on demand it
exits by itself after IDLE_EXIT seconds with no connection and no VM running; `--no-idle-exit` (the unit's) keeps
it up.

What one connection speaks is connection.py's.
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time

from core.agent import paths
from core.agent.agenthost import AgentHost
from core.agent.connection import Connection
from core.agent.version import engine_version
from core.config import ConfigStore
from core.protocol import encode

log = logging.getLogger("vireo.agent")

IDLE_EXIT = 600.0               # seconds without connections or running VMs before the daemon exits
MAX_CONNECTIONS = 64            # per service, i.e. per user: a GUI, a few CLIs and SSH bridges need a handful
ACCEPT_BACKOFF = 0.1            # after a failed accept (EMFILE: out of descriptors), before trying again
FD_RESERVE = 128                # descriptors kept for the VMs (sockets, logs, disks) when capping connections


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

    def connection_limit(self) -> int:
        """MAX_CONNECTIONS, or fewer when the descriptor limit (ulimit -n) leaves less room beside the VMs'."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
        return max(1, min(MAX_CONNECTIONS, (soft - FD_RESERVE) // 2))

    def serve_forever(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            listener = self.listener
            if listener is None:
                break
            try:
                client, _ = listener.accept()
            except TimeoutError:
                self._maybe_exit_idle()
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                # EMFILE/ENFILE/ENOBUFS/ECONNABORTED: one client is not served, the service and its VMs run on.
                # The pending connection stays queued; wait a little rather than spin on it.
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.warning("accepting a connection failed (%s; %d times so far): retrying",
                                exc.strerror or exc, failures)
                self._stopping.wait(ACCEPT_BACKOFF)
                self._maybe_exit_idle()
                continue
            try:
                self._admit(client)
            except Exception:       # one connection's failure (no thread, no descriptor) never ends the service
                log.exception("setting up a connection failed")
                client.close()
        self._shutdown()

    def _admit(self, client: socket.socket) -> None:
        client.settimeout(None)
        if peer_uid(client) != os.getuid():
            self._refuse(client, "this agent belongs to another user")
            return
        limit = self.connection_limit()
        with self._lock:
            full = len(self._connections) >= limit
            if not full:
                conn = Connection(self, client)
                self._connections.add(conn)
        if full:
            log.warning("refused a connection: %d connections already (the limit)", limit)
            self._refuse(client, f"the Vireo service already serves {limit} connections, its limit; close "
                                 f"another client (a GUI, CLI or SSH session) and try again")
            return
        try:
            threading.Thread(target=conn.serve, name="agent-conn", daemon=True).start()
        except BaseException:
            self.forget(conn)
            raise

    @staticmethod
    def _refuse(client: socket.socket, why: str) -> None:
        try:
            client.settimeout(1.0)
            client.sendall(encode({"t": "fatal", "e": why}))
        except OSError:
            pass
        finally:
            client.close()

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
    parser = argparse.ArgumentParser(prog="python3 -m core.agent.daemon", description="the Vireo service")
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT, metavar="SECONDS",
                        help=f"exit after this long with no connection and no VM running (default {IDLE_EXIT:.0f})")
    parser.add_argument("--no-idle-exit", action="store_true",
                        help="never exit for being idle (the systemd user unit runs the service so)")
    args = parser.parse_args(argv)
    idle_exit = float("inf") if args.no_idle_exit else args.idle_exit
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
    host = AgentHost(ConfigStore(), name=socket.gethostname(), runtime_dir=runtime)
    # The VM processes an earlier service left running are this one's before any client can ask about them.
    adopted = host.adopt_running()
    if adopted:
        log.info("adopted the running VMs %s", ", ".join(adopted))
    agent = Agent(host, socket_file, idle_exit)
    agent.bind()
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("agent %s serving %s", engine_version(), agent.socket_path)
    # After bind, so a client that started this service is answered while the autostart VMs start.
    threading.Thread(target=host.autostart, name="autostart", daemon=True).start()
    try:
        agent.serve_forever()
    finally:
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
