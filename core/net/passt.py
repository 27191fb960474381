"""User-mode networking through Debian's passt (passt(1), "Plug A Simple Socket Transport"): one passt process per
card, started with the VM and stopped with it, with the card's port forwards.

Vireo makes a connected UNIX socket pair, keeps one end and hands passt the other with `--fd` (so no socket file
exists anywhere: passt started as root drops to user nobody, and nobody could not create or reach a socket in a
root-only directory; with an inherited descriptor nothing is bound at all) and `--foreground` (the process Vireo
started is passt itself, to stop and to watch). passt ends by itself when Vireo's end closes (`--fd` implies
`--one-off`). The frames on the socket are StreamBackend's length-prefixed ones.

passt gives the guest, over DHCP, the host's own address and default gateway, and its MTU (65520 by default); a
guest connection to the gateway address reaches the host's loopback (passt's default without --no-map-gw).
A forward passt cannot bind makes it exit at once with "Failed to bind any port for '-t ADDR/PORT:GUEST'": that is
turned into one line naming the port.
"""
from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import threading
import time

from core.net.backend import StreamBackend
from core.net.nic import Forward

log = logging.getLogger(__name__)

PASST = "passt"
PASST_MTU = 65520                 # passt's default (its --mtu): the largest IPv4 packet rounded down to 32 bits
START_GRACE = 0.3                 # seconds passt gets to fail on a port it cannot bind before it counts as up
_BIND_RE = re.compile(r"Failed to bind any port for '-([tu]) ([^']*)'")
_NOISE = ("Failed to send", "Don't run as root")
# Set by a sandboxed VM process (core/vmproc/launcher.py): something with popen(forwards, fd) that starts passt for
# it, since the sandbox allows no fork or exec of its own.
launcher = None


class PasstError(OSError):
    """passt could not be started or ended at once; the message is one line."""


def passt_binary() -> str | None:
    return shutil.which(PASST)


def passt_args(fd: int, forwards: list[Forward]) -> list[str]:
    args = ["--foreground", "--quiet", "--fd", str(fd)]
    for proto, flag in (("tcp", "-t"), ("udp", "-u")):
        specs = [f.passt_spec() for f in forwards if f.proto == proto]
        # One option per forward: an address prefix applies to a whole comma-separated list, which passt refuses
        # ("Invalid port specifier") when the list carries one per port. passt forwards UDP on the TCP ports too
        # unless -u is given: "none" keeps each protocol to what was asked.
        for spec in specs or ["none"]:
            args += [flag, spec]
    return args


SOCKET_BUFFER = 8 << 20           # bytes of frames either side may have in flight on the socket pair


def _widen(sock: socket.socket, option: int) -> None:
    """Let `sock` queue SOCKET_BUFFER bytes. On a UNIX stream socket the sender's SO_SNDBUF bounds what waits
    unread; passt sends a burst of frames without waiting (MSG_DONTWAIT) and drops what does not fit, and the
    guest's TCP connection then stalls until passt's retransmission timer (seconds). Root may go past
    net.core.wmem_max (SO_SNDBUFFORCE); others get up to that."""
    force = {socket.SO_SNDBUF: 32, socket.SO_RCVBUF: 33}[option]     # SO_SNDBUFFORCE, SO_RCVBUFFORCE
    for opt in (force, option):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            return
        except OSError:
            continue


class PasstBackend(StreamBackend):
    """A running passt and the socket to it. `start()` raises PasstError with one line when passt is missing or
    exits at once (a forward it cannot bind)."""

    def __init__(self, sock: socket.socket, process) -> None:     # a subprocess.Popen or a LaunchedProcess
        super().__init__(sock, f"passt (pid {process.pid})")
        self.process = process
        self._output: list[str] = []
        self._reader = threading.Thread(target=self._read_output, name="passt-log", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, forwards: list[Forward]) -> PasstBackend:
        binary = passt_binary()
        if binary is None:
            raise PasstError("passt is not installed: install Debian's passt package (apt-get install passt) for "
                             "user-mode networking, or use --net none")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _widen(theirs, socket.SO_SNDBUF)
        _widen(ours, socket.SO_SNDBUF)
        try:
            if launcher is not None:           # a sandboxed VM process: its launcher runs passt (core/vmproc)
                process = launcher.popen([str(f) for f in forwards], theirs.fileno())
            else:
                process = subprocess.Popen([binary, *passt_args(theirs.fileno(), forwards)], pass_fds=[theirs.fileno()],
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            ours.close()
            raise PasstError(f"cannot run {binary}: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        backend = cls(ours, process)
        deadline = time.monotonic() + START_GRACE
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        if process.poll() is not None:
            backend._reader.join(2)
            backend.close()
            raise PasstError(backend.failure())
        return backend

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line and not line.startswith(_NOISE):
                self._output.append(line)
                del self._output[:-20]
                log.info("passt[%d]: %s", self.process.pid, line)

    def failure(self) -> str:
        """Why passt ended, as one line."""
        for line in self._output:
            m = _BIND_RE.search(line)
            if m:
                proto = "tcp" if m.group(1) == "t" else "udp"
                spec = m.group(2)
                addr, _, ports = spec.rpartition("/")
                host_port = ports.split(":")[0]
                return (f"passt cannot listen on host {proto} port {addr or '*'}:{host_port} (is it in use?): "
                        f"choose another host port for that forward")
        code = self.process.poll()
        detail = self._output[-1] if self._output else ""
        status = f"exited with status {code}" if code is not None and code >= 0 else \
            f"was killed by signal {-code}" if code is not None else "stopped answering"
        return f"passt {status}" + (f": {detail}" if detail else "")

    def why_ended(self) -> str:
        if self.process.poll() is not None:
            return self.failure()
        return super().why_ended()

    def close(self) -> None:
        super().close()
        # passt ends when its socket closes (--fd implies --one-off); make sure, without waiting long.
        try:
            self.process.wait(1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()


