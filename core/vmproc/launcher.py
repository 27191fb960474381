"""The passt launcher: the one helper a sandboxed VM process keeps for starting programs (core/vmproc/sandbox.py).

A sandboxed VM process may not fork or exec, yet a running VM's card restarts its passt (net_set with new
forwards, net_reconnect after passt died: core/net/passt.py). So before the sandbox closes, the VM process starts
this small process (`python -m core.vmproc.launcher --fd N`, unsandboxed, with nothing but the socket) and asks
it over a UNIX socket pair. It runs only Debian's passt, with arguments it builds itself from the forward
specifications it is sent (parsed by core.net.nic.Forward, so no other passt option, such as --pcap FILE, can be
smuggled in), on the socket descriptor the VM process passes with SCM_RIGHTS (unix(7)); it answers with passt's
pid and the read end of its output pipe, and later with its exit status or a kill. It exits when the VM process
closes its end (the VM ended).

Messages: one JSON object per sendmsg, descriptors alongside; requests {"op": "start", "forwards": [spec...]}
(+1 fd), {"op": "poll", "pid": n}, {"op": "kill", "pid": n}; answers {"pid": n} (+1 fd), {"code": n|null},
{"error": "one line"}.
"""
from __future__ import annotations

import argparse
import array
import json
import socket
import subprocess
import sys
import threading
from typing import Any

MAX_MESSAGE = 64 * 1024


def _send(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendmsg([data])


def _receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


class PasstLauncher:
    """The VM process's end: start() the helper before the sandbox, then popen() passt through it."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen([sys.executable, "-m", "core.vmproc.launcher", "--fd",
                                             str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        self._sock = ours

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.process is not None:
            try:
                self.process.wait(2)
            except (subprocess.TimeoutExpired, OSError):
                pass

    def _ask(self, request: dict[str, Any], fds: list[int] | None = None) -> tuple[dict[str, Any], list[int]]:
        if self._sock is None:
            raise OSError("the passt launcher is not running")
        with self._lock:
            _send(self._sock, request, fds)
            answer, got = _receive(self._sock)
        if answer is None:
            raise OSError("the passt launcher has ended")
        if "error" in answer:
            raise OSError(str(answer["error"]))
        return answer, got

    def popen(self, forwards: list[str], sock_fd: int) -> LaunchedProcess:
        answer, fds = self._ask({"op": "start", "forwards": forwards}, [sock_fd])
        if len(fds) != 1:
            raise OSError("the passt launcher sent no output pipe")
        return LaunchedProcess(self, int(answer["pid"]), open(fds[0], "rb", buffering=0))


class LaunchedProcess:
    """The part of subprocess.Popen's interface that PasstBackend uses, for a passt the launcher started."""

    def __init__(self, launcher: PasstLauncher, pid: int, stdout) -> None:
        self._launcher = launcher
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self._launcher._ask({"op": "poll", "pid": self.pid})[0].get("code")
            except OSError:
                self.returncode = -9              # the launcher is gone, and with it its children's status
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["passt"], timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        try:
            self._launcher._ask({"op": "kill", "pid": self.pid})
        except OSError:
            pass


def serve(sock: socket.socket) -> None:
    from core.net.nic import parse_forward
    from core.net.passt import passt_args, passt_binary
    children: dict[int, subprocess.Popen] = {}
    while True:
        try:
            request, fds = _receive(sock)
        except (OSError, ValueError):
            return
        if request is None:
            return
        try:
            op = request.get("op")
            if op == "start":
                if len(fds) != 1:
                    raise ValueError("start needs exactly one socket descriptor")
                forwards = [parse_forward(str(spec)) for spec in request.get("forwards", [])]
                binary = passt_binary()
                if binary is None:
                    raise ValueError("passt is not installed")
                child = subprocess.Popen([binary, *passt_args(fds[0], forwards)], pass_fds=[fds[0]],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
                children[child.pid] = child
                assert child.stdout is not None
                _send(sock, {"pid": child.pid}, [child.stdout.fileno()])
                child.stdout.close()
            elif op in ("poll", "kill"):
                child = children.get(int(request.get("pid", -1)))
                if child is None:
                    raise ValueError("no such passt")
                if op == "kill" and child.poll() is None:
                    child.kill()
                code = child.poll()
                if code is not None:
                    children.pop(child.pid, None)
                _send(sock, {"code": code})
            else:
                raise ValueError(f"unknown request {str(op)[:40]!r}")
        except Exception as exc:               # one bad request is answered, never ends the launcher
            _send(sock, {"error": f"{type(exc).__name__}: {exc}"[:500]})
        finally:
            for fd in fds:
                try:
                    import os
                    os.close(fd)
                except OSError:
                    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.vmproc.launcher")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    serve(socket.socket(fileno=args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
