"""The service's handle on one VM process (core/vmproc/child.py): spawn or adopt it, control it, hear its states
and serial output, notice its death.

The VM process is untrusted input: a guest that broke out of the device models could make it send anything. So
every message is bounded (core/vmproc/wire.py: MAX_MESSAGE, checked before it is read) and checked field by field,
and the first malformed one gets the process killed and reported as crashed with "protocol error: …".

Callbacks `on_state(state, reason)` and `on_serial(bytes)` run on the handle's reader thread, in the order the VM
process sent them, after spawn()/adopt() has returned. States: running, paused, shutoff, crashed. A final state
(shutoff, crashed) is reported once the process has exited, so its disk locks are gone when a caller restarts the
VM. A process that ends without reporting one is reported as crashed, with how it ended (the signal or exit status
when this handle is its parent) and the last lines of its log.
"""
from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import VmConfig
from core.hoststats import thread_cpu_seconds
from core.protocol import ConnectionClosed, ProtocolError, check_hello, encode, hello
from core.vmproc.net_status import checked_nics
from core.vmproc.wire import (
    FINAL_STATES,
    MAX_REASON,
    ROLE_CONTROLLER,
    ROLE_VM,
    SERIAL_BATCH,
    STATES,
    VmPaths,
    connect,
    ensure_private_dir,
    integer,
    log_tail,
    one_line,
    peer_pid,
    receive,
    send_all,
    text,
    unix_address,
    vm_paths,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0            # building a machine unpacks the kernel once (cached after) and opens the disks
CALL_TIMEOUT = 30.0
SAVE_TIMEOUT = 300.0             # writing RAM to the state file: a few seconds per GiB on a slow disk
SEND_TIMEOUT = 10.0
EXIT_GRACE = 10.0                # after the socket closes, how long the process may take to exit before a SIGKILL
LOG_ROTATE_BYTES = 4 * 1024 * 1024
MAX_VCPU_TIDS = 64
MAX_EARLY = 256                  # messages a VM process may send between its start and `started` (a state, serial)
REPO_ROOT = str(Path(__file__).resolve().parents[2])
_PAGE = os.sysconf("SC_PAGE_SIZE")

StateCallback = Callable[[str, str], None]
SerialCallback = Callable[[bytes], None]


class VmProcessError(Exception):
    """A VM process could not be started, reached or controlled; the message is one line."""


class VmProcess:
    """One running VM process. Create it with spawn() or adopt(), never directly.

    Attributes: pid; accel and accel_reason (the accelerator the process chose and why); console_path (its shared
    console, None without a display); vcpu_tids; state and reason (the last reported; "running" or "paused" right
    after adopt()); paths (its files)."""

    def __init__(self, paths: VmPaths, sock: socket.socket, pid: int, popen: subprocess.Popen | None,
                 pidfd: int | None, info: dict[str, Any], on_state: StateCallback, on_serial: SerialCallback,
                 early: list[tuple[dict[str, Any], bytes]]) -> None:
        self.paths = paths
        self.pid = pid
        self.accel = text(info, "accel")
        self.accel_reason = text(info, "accel_reason")
        console = info.get("console")
        if console is not None and console != paths.console:
            raise ProtocolError(f"the console {str(console)[:80]!r} is not the VM's own {paths.console}")
        self.console_path: str | None = console
        tids = info.get("vcpu_tids")
        if (not isinstance(tids, list) or len(tids) > MAX_VCPU_TIDS
                or not all(isinstance(t, int) and not isinstance(t, bool) and 0 < t < 2**31 for t in tids)):
            raise ProtocolError("vcpu_tids is not a list of thread ids")
        self.vcpu_tids: list[int] = tids
        self.state = "running"
        self.reason = ""
        self._sock = sock
        self._popen = popen
        self._pidfd = pidfd
        self._on_state = on_state
        self._on_serial = on_serial
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._waiters_lock = threading.Lock()
        self._final: tuple[str, str] | None = None
        self._replaced = False
        self._killed = False
        self._exited = threading.Event()        # the process is gone (reaped when it is our child)
        self._reported = threading.Event()      # ... and on_state has heard the final state
        self._reader = threading.Thread(target=self._read_loop, args=(early,), name=f"vmproc-{pid}", daemon=True)
        self._reader.start()

    # -- creating ---------------------------------------------------------------------------------------------
    @classmethod
    def spawn(cls, config: VmConfig, runtime_dir: str, on_state: StateCallback, on_serial: SerialCallback,
              timeout: float = START_TIMEOUT, restore: str | None = None) -> VmProcess:
        """Start a VM process for `config` and return once its machine runs; VmProcessError (one line: the VM
        process's own reason, e.g. a missing kernel or a disk in use) when it does not. With `restore` (an
        absolute path) the machine resumes from that state file instead of booting."""
        try:
            paths = vm_paths(runtime_dir, config.uuid)
            ensure_private_dir(paths.directory)
        except (ValueError, OSError) as exc:
            raise VmProcessError(f"cannot prepare {runtime_dir}/vms: {one_line(exc)}") from None
        _claim_socket_path(paths, config.name)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            with unix_address(paths.socket) as address:
                listener.bind(address)          # EADDRINUSE when another spawn of this VM got there first
            bound = True
            os.chmod(paths.socket, 0o600)
            listener.listen(8)
            popen = _launch(paths, config.uuid, runtime_dir, listener)
        except OSError as exc:
            listener.close()
            if bound:
                _unlink(paths.socket)
            raise VmProcessError(f"cannot start a VM process for {config.name}: {one_line(exc)}") from None
        listener.close()                      # the VM process owns it now
        deadline = time.monotonic() + timeout
        sock = None
        try:
            sock = connect(paths.socket)
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            send_all(sock, encode(hello(ROLE_CONTROLLER)) + encode({"t": "start", "config": config.to_dict(),
                                                                **({"restore": restore} if restore else {})}),
                     SEND_TIMEOUT)
            info = _read_hello(sock, popen.pid, config.uuid)
            early: list[tuple[dict[str, Any], bytes]] = []
            while True:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                header, payload = receive(sock)
                if header["t"] == "started":
                    info.update(header)
                    break
                if header["t"] == "error":
                    raise VmProcessError(text(header, "e") or "the VM process gave no reason")
                if header["t"] == "state" and header.get("state") == "running" and not early:
                    continue                  # the start itself: spawn returning says that
                if len(early) >= MAX_EARLY:
                    raise ProtocolError(f"more than {MAX_EARLY} messages before the machine started")
                early.append((header, payload))
            sock.settimeout(None)
            return cls(paths, sock, popen.pid, popen, None, info, on_state, on_serial, early)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            reason = _spawn_failure(exc, popen, paths)
            if isinstance(exc, Exception):
                raise VmProcessError(reason) from None
            raise

    @classmethod
    def adopt(cls, vm_uuid: str, runtime_dir: str, on_state: StateCallback,
              on_serial: SerialCallback) -> VmProcess:
        """Reconnect to the VM process of `vm_uuid` that an earlier service started (it becomes this handle's,
        and the earlier controller, if still connected, is dropped). on_serial first gets the serial output the
        process kept (up to 64 KiB). VmProcessError when no VM process runs for it."""
        try:
            paths = vm_paths(runtime_dir, vm_uuid)
            sock = connect(paths.socket)
        except ValueError as exc:
            raise VmProcessError(one_line(exc)) from None
        except OSError as exc:
            raise VmProcessError(f"no VM process runs for {vm_uuid} ({one_line(exc)})") from None
        pidfd = None
        try:
            pid = peer_pid(sock)
            pidfd = os.pidfd_open(pid)
            sock.settimeout(10)
            send_all(sock, encode(hello(ROLE_CONTROLLER, adopt=True)), SEND_TIMEOUT)
            info = _read_hello(sock, pid, vm_uuid)
            state = info.get("state")
            if state not in ("running", "paused"):
                raise VmProcessError(f"the VM process of {vm_uuid} is {str(state)[:20]}, not running")
            sock.settimeout(None)
            process = cls(paths, sock, pid, None, pidfd, info, on_state, on_serial, [])
            process.state, process.reason = state, text(info, "reason")
            return process
        except (OSError, ProtocolError, ConnectionClosed) as exc:
            sock.close()
            if pidfd is not None:
                os.close(pidfd)
            raise VmProcessError(f"cannot adopt the VM process of {vm_uuid}: {one_line(exc)}") from None
        except VmProcessError:
            sock.close()
            if pidfd is not None:
                os.close(pidfd)
            raise

    # -- control ----------------------------------------------------------------------------------------------
    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def shutdown(self) -> None:
        """Press the ACPI power button; the guest decides (a shutoff state follows when it powers off)."""
        self._call("shutdown")

    def reset(self) -> None:
        self._call("reset")

    def save(self, path: str) -> None:
        """Save the machine to the state file `path` (absolute) and end it: returns once the process has exited
        (shut off, "saved to PATH"); VmProcessError with the VM process's line when the save failed (the machine
        then carries on)."""
        try:
            self._call("save", SAVE_TIMEOUT, path=path)
        except VmProcessError:
            # The process may end (shut off, "saved to PATH") before its reply is out: that is a save that worked.
            if not self._exited.is_set() or not self._reported.wait(EXIT_GRACE + 5) or \
                    self.reason != f"saved to {path}":
                raise
        if threading.current_thread() is not self._reader and not self._reported.wait(EXIT_GRACE + 5):
            raise VmProcessError(f"the VM process {self.pid} did not exit after saving")

    def power_off(self) -> None:
        """Pull the plug; returns once the process has exited and on_state has heard "shutoff"."""
        try:
            self._call("power_off")
        except VmProcessError:
            if not self._exited.is_set():
                raise
        if threading.current_thread() is not self._reader and not self._reported.wait(EXIT_GRACE + 5):
            raise VmProcessError(f"the VM process {self.pid} did not exit after powering off")

    def serial_input(self, data: bytes) -> None:
        for start in range(0, len(data), SERIAL_BATCH):
            self._send({"t": "serial"}, bytes(data[start:start + SERIAL_BATCH]))

    def key_event(self, set2_bytes: bytes) -> None:
        self._send({"t": "key"}, bytes(set2_bytes))

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        def clamp(value: int, bound: int) -> int:
            return max(-bound, min(bound, int(value)))
        self._send({"t": "mouse", "dx": clamp(dx, 4096), "dy": clamp(dy, 4096), "buttons": int(buttons) & 7,
                    "dz": clamp(dz, 16)})

    def stats(self) -> dict[str, Any]:
        """{"cpu_seconds": CPU time of the vCPU threads, "resident_bytes": the process's resident memory (None
        once it is gone), "pid", "vcpu_threads"}, read from /proc/<pid>."""
        cpu = 0.0
        for tid in self.vcpu_tids:
            seconds = thread_cpu_seconds(tid, self.pid)
            if seconds is not None:
                cpu += seconds
        resident = None
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                resident = int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
        return {"cpu_seconds": cpu, "resident_bytes": resident, "pid": self.pid, "vcpu_threads": len(self.vcpu_tids)}

    def wait(self, timeout: float | None = None) -> bool:
        """True once the process has exited (and, when it was this handle's child, been reaped)."""
        return self._exited.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process (reported as "shutoff", "the VM process was killed on request")."""
        if self._exited.is_set():
            return
        self._killed = True
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            elif self._popen is not None:
                self._popen.send_signal(signum)
        except (ProcessLookupError, OSError):
            pass

    def net_status(self) -> list[dict[str, Any]]:
        """Each network card: mac, model, backend, mtu, link_up, link_reason, forwards and its counters
        (rx/tx bytes, packets, dropped), checked as untrusted input."""
        try:
            return checked_nics(self._call("net_status"))
        except ValueError as exc:
            raise VmProcessError(str(exc)) from None

    def net_reconnect(self, nic: int | None = None) -> None:
        """Restart the backend (passt) of card `nic`, or of every card whose link is down; VmProcessError with
        one line naming the cards that stayed down."""
        self._call("net_reconnect", extra={} if nic is None else {"nic": int(nic)})

    def net_set(self, nic: int, link: bool | None = None, forwards: list[str] | None = None) -> None:
        """Change card `nic` of the running VM: its link switch, and/or its port forwards (its passt restarts);
        VmProcessError with one line (e.g. the host port passt cannot bind)."""
        extra: dict[str, Any] = {"nic": int(nic)}
        if link is not None:
            extra["link"] = bool(link)
        if forwards is not None:
            extra["forwards"] = [str(f) for f in forwards]
        self._call("net_set", extra=extra)

    def snapshot_create(self, name: str) -> dict[str, Any]:          # core/vmproc/snapshot_call.py
        r = self._call("snapshot_create", SAVE_TIMEOUT, extra={"name": name})
        if not (isinstance(r, dict) and isinstance(r.get("vm_state_size"), int) and isinstance(r.get("thumbnail"), str)
                and r.get("state") in ("running", "paused")):
            raise VmProcessError("the VM process sent a malformed snapshot answer")
        return r

    def snapshot_delete(self, name: str) -> None:
        self._call("snapshot_delete", SAVE_TIMEOUT, extra={"name": name})

    def _call(self, op: str, timeout: float = CALL_TIMEOUT, extra: dict[str, Any] | None = None,
              **fields: Any) -> Any:
        waiter = _Waiter()
        call_id = next(self._ids)
        with self._waiters_lock:
            self._waiters[call_id] = waiter
        try:
            self._send({"t": "call", "id": call_id, "op": op, **(extra or {}), **fields})
            if not waiter.event.wait(timeout):
                raise VmProcessError(f"the VM process {self.pid} did not answer {op} within {timeout:.0f} s")
        finally:
            with self._waiters_lock:
                self._waiters.pop(call_id, None)
        if waiter.error:
            raise VmProcessError(waiter.error)
        return waiter.result

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        if self._exited.is_set() or self._replaced:
            raise VmProcessError(self._gone_reason())
        try:
            with self._send_lock:
                send_all(self._sock, encode(header, payload), SEND_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise VmProcessError(f"the VM process {self.pid} is not reachable: {one_line(exc)}") from None

    def _gone_reason(self) -> str:
        if self._replaced:
            return f"another controller took over the VM process {self.pid}"
        return f"the VM process {self.pid} has ended"

    # -- the reader thread ------------------------------------------------------------------------------------
    def _read_loop(self, early: list[tuple[dict[str, Any], bytes]]) -> None:
        problem = ""
        try:
            for header, payload in early:
                self._dispatch(header, payload)
            while not self._replaced:
                header, payload = receive(self._sock)
                self._dispatch(header, payload)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            problem = f"protocol error: {one_line(exc)}"
            log.warning("VM process %d: %s; killing it", self.pid, problem)
            self._signal(signal.SIGKILL)
        except OSError as exc:
            log.warning("VM process %d: control socket failed: %s", self.pid, exc)
        self._sock.close()
        if self._replaced:
            self._fail_waiters()
            self._let_go()
            return
        self._finish(problem)

    def _dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        kind = header["t"]
        if kind == "serial":
            _safe(self._on_serial, payload)
        elif kind == "state":
            state, reason = header.get("state"), text(header, "reason")
            if state not in STATES:
                raise ProtocolError(f"unknown state {str(state)[:40]!r}")
            if self._final is not None:
                raise ProtocolError(f"a state after the final {self._final[0]}")
            if state in FINAL_STATES:
                self._final = (state, reason)       # reported once the process has exited
            else:
                self.state, self.reason = state, reason
                _safe(self._on_state, state, reason)
        elif kind == "reply":
            call_id = integer(header, "id", 1, 2**53)
            with self._waiters_lock:
                waiter = self._waiters.get(call_id)
            if waiter is not None:
                waiter.error = text(header, "e")
                waiter.result = header.get("r")
                waiter.event.set()
        elif kind == "replaced":
            self._replaced = True
        else:
            raise ProtocolError(f"unexpected message {kind[:40]!r}")

    def _fail_waiters(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters.values())
        for waiter in waiters:
            waiter.error = self._gone_reason()
            waiter.event.set()

    def _let_go(self) -> None:
        """Another controller has the process now: report nothing more, but still notice (and, when it is our
        child, reap) its end, so wait() keeps its meaning."""
        def watch() -> None:
            self._wait_for_exit(None)
            self._exited.set()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        threading.Thread(target=watch, name=f"vmproc-reap-{self.pid}", daemon=True).start()

    def _finish(self, problem: str) -> None:
        ended = self._wait_for_exit(EXIT_GRACE)
        if not ended:
            log.warning("VM process %d closed its socket but did not exit; killing it", self.pid)
            self._signal(signal.SIGKILL)
            ended = self._wait_for_exit(5)
        how = self._how_it_ended()
        if ended:
            # A process that died without cleaning up leaves its socket and console file behind.
            for path in (self.paths.socket, self.paths.console):
                _unlink(path)
        self._exited.set()
        self._fail_waiters()
        if problem:
            state, reason = "crashed", problem
        elif self._killed:
            state, reason = "shutoff", "the VM process was killed on request"
        elif self._final is not None:
            state, reason = self._final
        else:
            tail = log_tail(self.paths.log)
            reason = f"the VM process {how}" + (f"; last log lines: {tail}" if tail else "")
            state = "crashed"
        self.state, self.reason = state, reason[:MAX_REASON]
        _safe(self._on_state, state, self.reason)
        self._reported.set()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _wait_for_exit(self, timeout: float | None) -> bool:
        if self._popen is not None:
            try:
                self._popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        if self._pidfd is not None:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)     # readable once the process has exited (pidfd_open(2))
            return bool(poller.poll(None if timeout is None else timeout * 1000))
        return True

    def _how_it_ended(self) -> str:
        if self._popen is None:
            return f"(pid {self.pid}) ended without reporting its state"
        return describe_exit(self._popen.returncode)




class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.error = ""
        self.result: Any = None


def describe_exit(returncode: int | None) -> str:
    """How a process ended, for a reason line: "was killed by signal 9 (SIGKILL)", "exited with status 3"."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


def _safe(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:          # an observer's bug must not end the watch over a VM
        log.exception("VM process callback failed")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


def _claim_socket_path(paths: VmPaths, name: str) -> None:
    """Refuse when a VM process already answers on the VM's socket; remove a stale one left by a dead process."""
    if not os.path.lexists(paths.socket):
        return
    try:
        probe = connect(paths.socket, timeout=2)
    except (ConnectionRefusedError, FileNotFoundError):
        _unlink(paths.socket)
        _unlink(paths.console)
        return
    except OSError as exc:
        raise VmProcessError(f"cannot check {paths.socket}: {one_line(exc)}") from None
    try:
        pid = peer_pid(probe)
    finally:
        probe.close()
    raise VmProcessError(f"{name} already has a VM process (pid {pid})")


def _launch(paths: VmPaths, vm_uuid: str, runtime_dir: str, listener: socket.socket) -> subprocess.Popen:
    try:
        if os.path.getsize(paths.log) > LOG_ROTATE_BYTES:
            os.replace(paths.log, paths.log + ".1")
    except FileNotFoundError:
        pass
    log_fd = os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(log_fd, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting the VM process\n".encode())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        # A new session (setsid): no controlling terminal, so its hangup or Ctrl-C never reach the VM.
        return subprocess.Popen(
            [sys.executable, "-m", "core.vmproc", "--listen-fd", str(listener.fileno()), "--uuid", vm_uuid,
             "--runtime-dir", os.path.abspath(runtime_dir)],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(listener.fileno(),),
            start_new_session=True, cwd="/", env=env)
    finally:
        os.close(log_fd)


def _read_hello(sock: socket.socket, pid: int, vm_uuid: str) -> dict[str, Any]:
    header, _ = receive(sock)
    if header["t"] == "error":
        raise VmProcessError(text(header, "e") or "the VM process refused")
    check_hello(header)
    if header.get("role") != ROLE_VM:
        raise ProtocolError(f"the peer is a {str(header.get('role'))[:40]!r}, not a VM process")
    if header.get("pid") != pid:
        raise ProtocolError(f"the VM process says it is pid {str(header.get('pid'))[:20]}, not {pid}")
    if header.get("uuid") != vm_uuid:
        raise ProtocolError(f"the VM process runs VM {str(header.get('uuid'))[:40]}, not {vm_uuid}")
    return dict(header)


def _spawn_failure(exc: BaseException, popen: subprocess.Popen, paths: VmPaths) -> str:
    """Make sure a VM process that failed to start is gone (reaped), and say why in one line."""
    try:
        # One that reported why exits by itself; any other is not worth waiting for.
        popen.wait(5 if isinstance(exc, (VmProcessError, ConnectionClosed)) else 0)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
    _unlink(paths.socket)
    _unlink(paths.console)
    if isinstance(exc, VmProcessError):
        return str(exc)
    tail = log_tail(paths.log, lines=3)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        what = "did not start in time"
    elif isinstance(exc, ConnectionClosed):
        what = describe_exit(popen.returncode) + " before its machine ran"
    elif isinstance(exc, ProtocolError):
        return f"protocol error: {one_line(exc)}"
    else:
        what = f"failed: {one_line(exc)}"
    return f"the VM process {what}" + (f"; last log lines: {tail}" if tail else "")
