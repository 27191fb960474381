"""The VM process: one Machine in a process of its own, serving its controller over the VM's UNIX socket.

Started by VmProcess.spawn (core/vmproc/handle.py) as `python -m core.vmproc --listen-fd N --uuid U --runtime-dir D`
in a new session (setsid), so a terminal hangup or the death of the GUI or the service does not reach it, with
stdout and stderr appended to `<runtime_dir>/vms/<uuid>.log`. The spawner binds the listening socket
`<uuid>.sock` and hands it over as fd N, then connects: the connection is waiting before this process even runs.
The first controller sends the VM definition (a core.config.VmConfig as JSON); this process chooses the
accelerator, builds `Machine(MachineConfig.from_vm(...))`, starts it and answers `started` (or `error` with one
line, and exits 2). A later controller (a restarted service, VmProcess.adopt) may connect at any time and replaces
the previous one; the VM runs on with no controller at all.

The guest's serial output goes to the controller through an Outbox (core/vmproc/outbox.py): never does a vCPU
thread wait on the socket. The screen goes into a shared mapping (core/vmproc/shared_console.py) while someone
watches. When the guest powers off the process reports `shutoff` and exits 0; when the machine crashes it reports
`crashed` with the reason and exits 1. SIGTERM powers the machine off. The message set is in core/vmproc/wire.py.

When the definition names a serial log file (serial.log_file), this process opens it before building the machine
(an unopenable path fails the start: "serial log PATH: reason") and appends every byte the guest prints to it
(core/vmproc/serial_log.py), whether or not a controller is connected.
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

from core.protocol import PROTOCOL_VERSION, ConnectionClosed, ProtocolError, check_hello
from core.vmproc import sandbox
from core.vmproc.outbox import Outbox
from core.vmproc.serial_log import SerialLog, SerialLogError
from core.vmproc.wire import (
    CALLS,
    FINAL_STATES,
    MAX_NICS,
    MAX_PATH,
    ROLE_CONTROLLER,
    ROLE_VM,
    VmPaths,
    integer,
    one_line,
    receive,
    vm_paths,
)

log = logging.getLogger("vireo.vmproc")

EXIT_SHUTOFF, EXIT_CRASHED, EXIT_START_FAILED, EXIT_NO_CONTROLLER = 0, 1, 2, 3
START_TIMEOUT = 120.0            # seconds to wait for the definition before giving up (the spawner died)
HELLO_TIMEOUT = 10.0
SERIAL_HISTORY = 64 * 1024       # what a controller that connects later (adopt) gets to see of the past
FINAL_FLUSH = 5.0
MOUSE_RANGE = 4096


class VmServer:
    def __init__(self, listener: socket.socket, paths: VmPaths, vm_uuid: str) -> None:
        self.listener = listener
        self.paths = paths
        self.uuid = vm_uuid
        self.name = ""
        self.outbox = Outbox()
        self.serial_log: SerialLog | None = None
        self.machine = None
        self.console = None
        self.input = None
        self.vnc = None
        self.state, self.reason = "starting", ""
        self.accel = self.accel_reason = ""
        self.console_path: str | None = None
        self.vcpu_tids: list[int] = []
        self.sandbox = ""
        self.launcher = None
        self.history = bytearray()
        # _emit orders what the controller sees: a state change, serial bytes, and the snapshot (hello plus
        # history) a new controller starts from; it is held only briefly and never while calling the machine.
        self._emit = threading.Lock()
        self._ops = threading.Lock()           # one start or lifecycle call at a time, from any connection
        self._done = threading.Event()
        self.exit_code = EXIT_NO_CONTROLLER
        self._terminate = threading.Event()
        # Written by _finish() and the SIGTERM handler: the main loop's poll wakes at once instead of at its next
        # 200 ms timeout (a snapshot revert waits for this process to exit before it starts the next one).
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    # -- the process's life ----------------------------------------------------------------------------------
    def run(self) -> int:
        started = time.monotonic()
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._done.is_set():
            ready = {fd for fd, _ in poller.poll(200)}
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 64)
                except BlockingIOError:
                    pass
            if self.listener.fileno() in ready:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                threading.Thread(target=self._serve, args=(conn,), name="vireo-control", daemon=True).start()
            if self._terminate.is_set():
                self._terminate.clear()
                self._power_off_on_signal()
            if self.machine is None and time.monotonic() - started > START_TIMEOUT and not self._ops.locked():
                log.error("no VM definition arrived within %.0f s; exiting", START_TIMEOUT)
                self._finish()
        # A lifecycle call that ended the machine (power_off) still owes its reply: let it finish first.
        if self._ops.acquire(timeout=15):
            self._ops.release()
        self.outbox.flush(FINAL_FLUSH)
        self._cleanup()
        return self.exit_code

    def _finish(self) -> None:
        """The process's work is over (any thread): the main loop ends now."""
        self._done.set()
        self.wake()

    def wake(self) -> None:
        """Wake the main loop (any thread, or a signal handler)."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass                     # the pipe is full: the loop is awake already

    def _power_off_on_signal(self) -> None:
        log.info("SIGTERM: powering the machine off")
        if self.machine is None:
            self._finish()
        else:
            threading.Thread(target=self.machine.power_off, name="vireo-sigterm", daemon=True).start()

    def _cleanup(self) -> None:
        self._close_serial_log()
        if self.launcher is not None:
            self.launcher.close()
        if self.console is not None:
            self.console.close()
        if self.vnc is not None:
            self.vnc.close()
        for path in (self.paths.socket,):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.listener.close()
        self.outbox.close()

    # -- one controller connection ---------------------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(HELLO_TIMEOUT)
            header, _ = receive(conn)
            check_hello(header)
            if header.get("role") != ROLE_CONTROLLER:
                raise ProtocolError(f"a {str(header.get('role'))[:40]!r} is not a VM process controller")
            conn.settimeout(None)
        except (OSError, ProtocolError, ConnectionClosed) as exc:
            log.warning("refused a connection: %s", exc)
            conn.close()
            return
        with self._emit:
            first: list[tuple[dict[str, Any], bytes]] = [(self._hello(), b"")]
            if header.get("adopt") and self.history:
                first.append(({"t": "serial"}, bytes(self.history)))
            if self.outbox.attach(conn, first):
                log.info("a new controller connected; the previous one is dropped")
        try:
            while True:            # until the controller leaves, or this process exits
                header, payload = receive(conn)
                if self.outbox.is_current(conn):      # a replaced controller's late requests are not obeyed
                    self._handle(header, payload)
        except ConnectionClosed:
            pass
        except (ProtocolError, OSError) as exc:
            log.warning("controller connection ended: %s", exc)
        finally:
            self.outbox.detach(conn)
            conn.close()

    def _hello(self) -> dict[str, Any]:
        return {"t": "hello", "proto": PROTOCOL_VERSION, "role": ROLE_VM, "pid": os.getpid(), "uuid": self.uuid,
                "state": self.state, "reason": self.reason, "accel": self.accel, "accel_reason": self.accel_reason,
                "console": self.console_path, "vcpu_tids": self.vcpu_tids}

    def _handle(self, header: dict[str, Any], payload: bytes) -> None:
        kind = header["t"]
        if kind == "start":
            with self._ops:
                self._start(header.get("config"), _path(header.get("restore"), optional=True))
        elif kind == "call":
            call_id = integer(header, "id", 0, 2**53)
            op = header.get("op")
            if op not in CALLS:
                raise ProtocolError(f"unknown call {str(op)[:40]!r}")
            result = None
            path = _path(header.get("path")) if op == "save" else None
            with self._ops:
                if op.startswith("net_"):
                    error, result = self._net_call(op, header)
                elif op.startswith("snapshot_"):
                    error, result = self._snapshot_call(op, header)
                else:
                    error = self._call(op, path)
            self.outbox.put({"t": "reply", "id": call_id, **({"e": error} if error else {}),
                             **({"r": result} if result is not None else {})})
        elif kind == "serial":
            # Paused too: the UART holds the bytes and the guest reads them once it runs again.
            if self.machine is not None and self.state not in FINAL_STATES:
                self.machine.serial_input(payload)
        elif kind == "key":
            if not 1 <= len(payload) <= 16:
                raise ProtocolError(f"a key event of {len(payload)} bytes")
            if self.input is not None:
                self.input.key_event(payload)
        elif kind == "mouse":
            dx, dy = integer(header, "dx", -MOUSE_RANGE, MOUSE_RANGE), integer(header, "dy", -MOUSE_RANGE, MOUSE_RANGE)
            buttons, dz = integer(header, "buttons", 0, 7), integer(header, "dz", -16, 16)
            if self.input is not None:
                self.input.mouse_event(dx, dy, buttons, dz)
        else:
            raise ProtocolError(f"unknown message {kind[:40]!r}")

    def _call(self, op: str, path: str | None = None) -> str:
        machine = self.machine
        if machine is None:
            return "the machine has not started"
        if self.state in FINAL_STATES:
            return f"the machine is {self.state}"
        if op == "pause":
            machine.pause()
        elif op == "resume":
            machine.resume()
        elif op == "shutdown":
            machine.shutdown()
        elif op == "reset":
            machine.reset()
        elif op == "power_off":
            machine.power_off()
            machine.wait(10)
        elif op == "sandbox_probe":
            return sandbox.probe()
        elif op == "save":
            assert path is not None
            try:
                machine.save(path, vm={"uuid": self.uuid, "name": self.name})
            except Exception as exc:
                return f"saving to {path} failed: {one_line(exc)}"
            machine.wait(10)
        return ""

    def _net_call(self, op: str, header: dict[str, Any]) -> tuple[str, Any]:
        """The network cards: their status, or a restart of a card's backend (passt) by index, or of every card
        whose link is down."""
        machine = self.machine
        if machine is None or self.state in FINAL_STATES:
            return "the machine is not running", None
        if op == "net_status":
            return "", machine.nic_status()
        if op == "net_set":
            from core.vmproc.net_control import net_set
            return net_set(machine, header), None
        from core.vmproc.net_control import net_reconnect
        nic = integer(header, "nic", 0, MAX_NICS - 1) if "nic" in header else None
        problems = net_reconnect(machine, nic)
        return "; ".join(problems), None

    def _snapshot_call(self, op: str, header: dict[str, Any]) -> tuple[str, Any]:
        """A VM snapshot of the running machine (core/vmproc/snapshot_call.py), taken or deleted by name."""
        from core.vmproc import snapshot_call
        machine = self.machine
        if machine is None or self.state in FINAL_STATES:
            return "the machine is not running", None
        name = header.get("name")
        if not isinstance(name, str) or not 0 < len(name.encode()) <= 255:
            raise ProtocolError("a snapshot name must be a string of 1 to 255 bytes")
        try:
            if op == "snapshot_create":
                return "", snapshot_call.create(machine, name, self.paths.directory,
                                                {"uuid": self.uuid, "name": self.name})
            snapshot_call.delete(machine, name)
            return "", None
        except Exception as exc:
            if not isinstance(exc, snapshot_call.SnapshotRefused):
                log.exception("%s %s", op, name)
            return f"{op.replace('_', ' ')} {name}: {one_line(exc)}", None

    # -- building and starting the machine -------------------------------------------------------------------
    def _start(self, config: Any, restore: str | None = None) -> None:
        if self.machine is not None or self._done.is_set():
            raise ProtocolError("the machine was already started")
        try:
            cfg = _definition(config)
            if cfg.serial.log_file:
                self.serial_log = SerialLog.open(cfg.serial.log_file)
            self.name = cfg.name
            machine, choice = _build(cfg, self._on_serial, restore)
        except Exception as exc:
            self._fail(one_line(exc) if isinstance(exc, _EXPECTED) else f"{type(exc).__name__}: {one_line(exc)}",
                       exc)
            return
        from core.display.renderer import Renderer
        from core.keymap import Ps2InputSink
        from core.vmproc.shared_console import SharedConsoleWriter, capacity_for
        self.machine = machine
        self.accel, self.accel_reason = choice.name, choice.warning or choice.reason
        self.input = Ps2InputSink(machine.board.i8042)
        if machine.board.vga is not None:
            self.console = SharedConsoleWriter(self.paths.console, Renderer(machine.board.vga),
                                               capacity_for(machine.board.vga.vbe.vram_size))
            self.console_path = self.paths.console
        try:
            self.vnc = _vnc_server(cfg, machine, self.input)
        except Exception as exc:             # VncListenError, or a definition the config check let through
            self._fail(f"display.vnc {cfg.display.vnc}: {one_line(exc)}", exc)
            return
        machine.add_state_listener(self._on_machine_state)
        try:
            machine.start()
        except Exception as exc:
            self._fail(f"the machine did not start: {one_line(exc)}", exc)
            return
        if self.console is not None:
            self.console.start()
        if self.vnc is not None:
            self.vnc.start()
            log.info("VNC console on %s", self.vnc.address.uri())
        self.vcpu_tids = [t.native_id for t in machine.vcpu_threads if t.native_id is not None]
        try:
            if not sandbox.disabled() and any(nic.backend == "user" for nic in cfg.nics):
                self.launcher = _passt_launcher()   # restarts of passt go through it once fork and exec are gone
            self.sandbox = sandbox.apply()      # everything is open and started: from here on, only ALLOWED calls
        except (sandbox.SandboxError, OSError) as exc:
            machine.power_off()
            self._fail(str(exc), exc)
            return
        log.info("running on %s (%s), vCPU threads %s", self.accel, self.accel_reason, self.vcpu_tids)
        self.outbox.put({"t": "started", "accel": self.accel, "accel_reason": self.accel_reason,
                         "console": self.console_path, "vcpu_tids": self.vcpu_tids})

    def _fail(self, message: str, exc: BaseException) -> None:
        self._close_serial_log()
        if isinstance(exc, _EXPECTED):
            log.error("cannot start: %s", message)
        else:
            log.exception("cannot start: %s", message)
        self.exit_code = EXIT_START_FAILED
        self.outbox.put({"t": "error", "e": message})
        self._finish()

    def _close_serial_log(self) -> None:
        serial_log, self.serial_log = self.serial_log, None
        if serial_log is not None and not serial_log.close(FINAL_FLUSH):
            log.warning("serial log %s: the last output may be missing (the file did not take it in time)",
                        serial_log.path)

    # -- engine callbacks ------------------------------------------------------------------------------------
    def _on_serial(self, data: bytes) -> None:
        # On a vCPU thread: only append and queue.
        with self._emit:
            serial_log = self.serial_log        # read once: the final cleanup may take it away meanwhile
            if serial_log is not None:
                serial_log.write(data)
            history = self.history
            history += data
            if len(history) > SERIAL_HISTORY:
                del history[:len(history) - SERIAL_HISTORY]
            self.outbox.serial(data)

    def _on_machine_state(self, machine, state, reason: str) -> None:
        with self._emit:
            self.state, self.reason = state.value, reason
            self.outbox.put({"t": "state", "state": state.value, "reason": reason})
        log.info("state %s%s", state.value, f": {reason}" if reason else "")
        if state.value in FINAL_STATES:
            self.exit_code = EXIT_SHUTOFF if state.value == "shutoff" else EXIT_CRASHED
            self._finish()


def _expected_errors() -> tuple[type[BaseException], ...]:
    from core.boot.loader import BootError
    from core.config import ConfigError as DefinitionError
    from core.hypervisor.base import AcceleratorUnavailable
    from core.machine import ConfigError
    from core.state.fields import StateError
    from core.storage import ImageError
    return (BootError, DefinitionError, AcceleratorUnavailable, ConfigError, ImageError, SerialLogError, OSError,
            ValueError, StateError)


_EXPECTED = _expected_errors()


def _definition(config: Any):
    """The VM definition a controller sent (a core.config.VmConfig as a dict); ConfigError when it is not one."""
    from core.config import VmConfig
    return VmConfig.from_dict(config)


def _path(value: Any, optional: bool = False) -> str | None:
    """A file path from the controller: an absolute path of bounded length (None if optional and absent)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_PATH or "\0" in value:
        raise ProtocolError("a path that is not an absolute path")
    return value


def _build(cfg, serial_output, restore: str | None = None):
    """The Machine a VM definition describes, on the accelerator this host offers for it (not yet started);
    with `restore`, resumed from that state file (docs/machine-state.md) instead of booted."""
    from core.config import ConfigError
    from core.hypervisor.select import choose_accelerator
    from core.machine import Machine, MachineConfig

    for what, path in (("kernel", cfg.boot.kernel), ("initrd", cfg.boot.initrd)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{what} {path}: no such file")
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{what} {path}: not readable")
    choice = choose_accelerator(cfg.accel)
    config = MachineConfig.from_vm(cfg, choice.name)
    if restore is None:
        return Machine(config, serial_output=serial_output, accel_choice=choice), choice
    from core.machine_record import SavedState
    _, saved = SavedState.open(restore)
    try:
        return Machine(config, serial_output=serial_output, accel_choice=choice, restore=saved), choice
    finally:
        saved.close()


def _passt_launcher():
    from core.net import passt
    from core.vmproc.launcher import PasstLauncher
    launcher = PasstLauncher()
    launcher.start()
    passt.launcher = launcher
    return launcher


def _vnc_server(cfg, machine, input_sink):
    """The definition's VNC server (display.vnc), bound but not yet serving; None when it asks for none."""
    if not cfg.display.vnc or machine.board.vga is None:
        return None
    from core.display.renderer import Renderer
    from core.vnc.address import parse_vnc
    from core.vnc.server import VncServer
    return VncServer(parse_vnc(cfg.display.vnc, "display.vnc"), Renderer(machine.board.vga), input_sink,
                     cfg.display.vnc_password, cfg.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.vmproc", description="Run one VM (started by Vireo's "
                                     "service; see core/vmproc/child.py).")
    parser.add_argument("--listen-fd", type=int, required=True, help="the listening socket, already bound")
    parser.add_argument("--uuid", required=True)
    parser.add_argument("--runtime-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s vmproc[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        paths = vm_paths(args.runtime_dir, args.uuid)
        listener = socket.socket(fileno=args.listen_fd)
        # listen() again so the socket's credentials are this process's: what a later controller reads with
        # SO_PEERCRED to know the pid it watches (unix(7); Linux sets them on every listen()).
        listener.listen(8)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_START_FAILED
    server = VmServer(listener, paths, args.uuid)
    signal.signal(signal.SIGTERM, lambda *_: (server._terminate.set(), server.wake()))
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # a stray Ctrl-C of a terminal it came from: not ours
    log.info("VM process for %s", args.uuid)
    code = server.run()
    log.info("exiting with %d", code)
    logging.shutdown()
    sys.stderr.flush()
    # Not a normal interpreter exit: parked vCPU threads of a native backend must not be torn down under it.
    os._exit(code)
