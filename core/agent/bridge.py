"""The stdio bridge an SSH channel runs: `python3 -m core.agent.bridge` relays bytes between its stdin/stdout
(the SSH channel) and this user's agent socket, starting the daemon first when none is listening.

reach_agent() is also how a local client (core/remote/local.py) reaches the service. Starting is serialised by a
lock file beside the socket (flock(2)): the first client to find no service starts one and waits until it listens;
a client racing it waits for the lock and then finds the service listening, so one daemon is started, not two.

The bridge holds no state, so when the connection drops only the bridge exits; the daemon and its VMs go on and
the next connection reaches them again. It never interprets the stream, except that when it cannot reach a
daemon it writes one protocol "fatal" message (protocol.py) saying why — the tail of the daemon's log when the
daemon failed to start — so the client shows the reason instead of a bare end of stream. Standard library only:
it starts in a few tens of milliseconds whatever the engine costs to import.
"""
from __future__ import annotations

import fcntl
import os
import select
import socket
import subprocess
import sys
import time

from core.agent import paths
from core.agent.version import engine_root
from core.protocol import encode

START_TIMEOUT = 30.0      # seconds for a new daemon to listen (it imports numpy and, maybe, unicorn first)
CHUNK = 256 * 1024


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def start_daemon(log_file: str, args: tuple[str, ...] = ()) -> subprocess.Popen:
    """Launch the daemon in its own session (so the SSH session's hangup does not reach it), detached from this
    channel's stdio, with the same interpreter and the same engine as this process (PYTHONPATH starts with the
    directory holding the `core` package imported here)."""
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    # The engine first; whatever else the path held stays after it (a remote host's copied numpy, say).
    search = [os.path.dirname(engine_root())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(search)))
    try:
        return subprocess.Popen([sys.executable, "-m", "core.agent.daemon", *args], stdin=subprocess.DEVNULL,
                                stdout=log_fd, stderr=log_fd, cwd="/", env=env, start_new_session=True,
                                close_fds=True)
    finally:
        os.close(log_fd)


def reach_agent(args: tuple[str, ...] = ()) -> socket.socket:
    """A connected socket to this user's daemon, starting one (with `args`) if needed. Raises RuntimeError with
    the reason."""
    try:
        path = paths.socket_path()
        start_lock = paths.start_lock_path()
    except paths.UnsafeDirectory as exc:
        raise RuntimeError(str(exc)) from None
    sock = _connect(path)
    if sock is not None:
        return sock
    deadline = time.monotonic() + START_TIMEOUT
    lock_fd = os.open(start_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Another client is starting the daemon: use it as soon as it listens.
                sock = _connect(path)
                if sock is not None:
                    return sock
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another client has been starting the agent for {START_TIMEOUT:.0f} s: "
                                       f"{_log_tail(paths.log_path())}") from None
                time.sleep(0.02)
        sock = _connect(path)       # started while this client waited for the lock
        if sock is not None:
            return sock
        log_file = paths.log_path()
        proc = start_daemon(log_file, args)
        while time.monotonic() < deadline:
            sock = _connect(path)
            if sock is not None:
                return sock
            code = proc.poll()
            if code is not None and code != 0:
                raise RuntimeError(f"the agent failed to start (exit status {code}): {_log_tail(log_file)}")
            time.sleep(0.02)
        raise RuntimeError(f"the agent did not listen within {START_TIMEOUT:.0f} s: {_log_tail(log_file)}")
    finally:
        os.close(lock_fd)       # releases the start lock


def relay(sock: socket.socket, fd_in: int, fd_out: int) -> None:
    """Copy both ways until either side ends; a half-close is passed on so in-flight replies still arrive."""
    inputs = [fd_in, sock]
    while inputs:
        ready, _, _ = select.select(inputs, [], [])
        if fd_in in ready:
            data = os.read(fd_in, CHUNK)
            if not data:
                return      # the client went away: drop the connection (the daemon cleans up after it)
            sock.sendall(data)
        if sock in ready:
            data = sock.recv(CHUNK)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(fd_out, view):]


def main() -> int:
    try:
        sock = reach_agent()
    except RuntimeError as exc:
        os.write(1, encode({"t": "fatal", "e": str(exc)}))
        return 1
    try:
        relay(sock, 0, 1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
