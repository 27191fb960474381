"""`vireo console NAME` and `vireo screendump NAME FILE.png`: a VM's two consoles from the shell.

console attaches this terminal to the VM's serial port ttyS0, as `virsh console` does: what the guest prints goes
to stdout, the keys typed (the terminal in raw mode, so Ctrl-C and the arrows reach the guest) go to it, and Ctrl-]
detaches, leaving the VM running. It replays the last lines the guest printed so the prompt is on screen (all of
this boot's output after `start --console`), stays attached through a reboot, and ends by itself when the VM
stops or the host goes away.

screendump saves the VM's graphical console (the VGA display, through the Host API's console(): the VM process's
shared console locally, a stream of dirty rectangles over SSH) as a PNG via Pillow, written atomically.
"""
from __future__ import annotations

import argparse
import io
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from pathlib import Path

from core.cli.connect import CommandFailed, find_vm
from core.cli.options import add_vm_argument
from core.config import atomic_write
from core.host.api import TERMINAL_RESET, EventKind, HostError, HostEvent, VmInfo, VmState
from core.remote.service import ServiceClient
from core.runner import EXIT_FAILED, EXIT_OK, BadInput

ESCAPE = 0x1D             # Ctrl-]: virsh console's escape character
REPLAY_LINES = 24         # a screenful of what the guest printed before the console was attached
FRAME_WAIT = 15.0         # seconds to wait for a first picture of the screen
REBOOT_GRACE = 2.0        # seconds a VM that powered off may take to start again (a reboot) before detaching


class _Terminal:
    """stdin in raw mode while attached (when it is a terminal); restored however the console ends."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.saved = None
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)

    def restore(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None


class _Attachment:
    """One attached console: the guest's output and the end of the session arrive on `out` (None: look at
    `ended`), the keys are pumped from stdin on a thread of their own."""

    def __init__(self, host: ServiceClient, info: VmInfo) -> None:
        self.host, self.info = host, info
        self.out: queue.Queue[bytes | None] = queue.Queue()
        self.ended: tuple[str, str] | None = None       # ("detached"|"shutoff"|"crashed"|"lost", reason)
        self.lock = threading.Lock()

    def end(self, how: str, reason: str = "") -> None:
        with self.lock:
            if self.ended is None:
                self.ended = (how, reason)
        self.out.put(None)

    def on_serial(self, data: bytes) -> None:
        if data.startswith(TERMINAL_RESET):
            data = data[len(TERMINAL_RESET):]     # a new boot (or a reconnect): this terminal is not cleared
        if data:
            self.out.put(data)

    def on_event(self, event: HostEvent) -> None:
        if event.uuid != self.info.uuid:
            return
        if event.kind == EventKind.DELETED:
            self.end("lost", f"{self.info.name} was undefined")
        elif event.kind == EventKind.STATE and event.state == VmState.SHUTOFF:
            # A reboot passes through shut off to a fresh start within moments; the console stays attached
            # through it, as virsh's does, and ends only when the VM stays off.
            timer = threading.Timer(REBOOT_GRACE, self._ended_if_off, args=(event.reason,))
            timer.daemon = True
            timer.start()
        elif event.kind == EventKind.STATE and event.state == VmState.CRASHED:
            self.end("crashed", event.reason)

    def _ended_if_off(self, reason: str) -> None:
        try:
            if not self.host.get(self.info.uuid).state.active:
                self.end("shutoff", reason)
        except HostError:
            self.end("lost", f"{self.info.name} was undefined")

    def on_connection(self, state: str, message: str) -> None:
        if state in ("disconnected", "failed"):
            self.end("lost", message)

    def pump_keys(self, fd: int, raw: bool) -> None:
        """stdin to the guest until Ctrl-] (on a terminal) or end of input."""
        while self.ended is None:
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(fd, 4096)
            except (OSError, ValueError):
                return
            if not data:
                self.end("detached")
                return
            if raw and ESCAPE in data:
                data, detach = data[:data.index(ESCAPE)], True
            else:
                detach = False
            if data:
                try:
                    self.host.send_serial(self.info.uuid, data)
                except HostError:
                    pass        # a paused guest takes no keys; its state says why
            if detach:
                self.end("detached")
                return


def _replayed(history: bytes, replay: str) -> bytes:
    if replay == "boot":
        return history
    lines = history.split(b"\n")
    return b"\n".join(lines[-REPLAY_LINES:])


def attach(host: ServiceClient, info: VmInfo, replay: str = "screen") -> int:
    """Attach this terminal to the VM's serial console until Ctrl-], the VM's end or the host's; 0 when detached
    or the guest powered off, 1 when it crashed or the connection was lost. `replay`: "screen" shows the last
    lines printed so far, "boot" everything this boot printed."""
    if not info.state.active:
        raise CommandFailed(f"{info.name} is {'shut off' if info.state == VmState.SHUTOFF else info.state.value}: "
                            f"start it with `vireo start {info.name} --console`")
    if info.config.serial.mode == "none":
        raise CommandFailed(f"{info.name} has no serial console (serial.mode is none): use `vireo screendump` or "
                            "the manager's window")
    session = _Attachment(host, info)
    host.add_listener(session.on_event)
    host.add_connection_listener(session.on_connection)
    write = sys.stdout.buffer
    terminal = None
    try:
        history = host.subscribe_serial(info.uuid, session.on_serial)
        terminal = _Terminal()
        write.write(f"Connected to domain '{info.name}'\r\nEscape character is ^] (Ctrl + ])\r\n".encode())
        write.write(_replayed(history.replace(TERMINAL_RESET, b""), replay))
        write.flush()
        pump = threading.Thread(target=session.pump_keys, args=(terminal.fd, terminal.saved is not None),
                                name="console-keys", daemon=True)
        pump.start()
        if not host.get(info.uuid).state.active:
            session.end("shutoff", host.get(info.uuid).reason)
        while True:
            data = session.out.get()
            if data is None:
                break
            write.write(data)
            write.flush()
        while True:     # what the guest printed before it stopped
            try:
                data = session.out.get_nowait()
            except queue.Empty:
                break
            if data:
                write.write(data)
        write.write(b"\r\n")
        write.flush()
    except KeyboardInterrupt:
        session.end("detached")
    finally:
        if terminal is not None:
            terminal.restore()
        host.remove_listener(session.on_event)
        host.unsubscribe_serial(info.uuid, session.on_serial)
    how, reason = session.ended or ("detached", "")
    if how == "crashed":
        print(f"vireo: {info.name} crashed{': ' + reason if reason else ''}; see `vireo list --all`, then "
              f"`vireo start {info.name}`", file=sys.stderr)
        return EXIT_FAILED
    if how == "lost":
        print(f"vireo: console of {info.name} closed: {reason or host.error}; the VM may still run (see "
              "`vireo list`)", file=sys.stderr)
        return EXIT_FAILED
    if how == "shutoff":
        print(f"Domain '{info.name}' shut off", flush=True)
    return EXIT_OK


def cmd_console(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo console NAME`: the serial console on this terminal; Ctrl-] detaches."""
    return attach(host, find_vm(host, args.name))


# -- screendump ----------------------------------------------------------------------------------------------

def add_screendump_arguments(p: argparse.ArgumentParser) -> None:
    add_vm_argument(p)
    p.add_argument("file", metavar="FILE.png", help="where to save the picture of the VM's screen (PNG)")


def cmd_screendump(host: ServiceClient, args: argparse.Namespace) -> int:
    """`vireo screendump NAME FILE.png`: the VM's VGA screen as it is now, as a PNG."""
    target = Path(args.file)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise BadInput(f"{args.file}: the folder {folder} does not exist: give a path in an existing folder")
    if not os.access(folder, os.W_OK):
        raise BadInput(f"{args.file}: cannot write in {folder}: give a path in a folder you can write to")
    info = find_vm(host, args.name)
    if not info.state.active:
        raise CommandFailed(f"{info.name} is shut off and has no screen: start it with `vireo start {info.name}`")
    console = host.console(info.uuid)
    try:
        frame = None
        deadline = time.monotonic() + FRAME_WAIT
        while frame is None:
            frame = console.frames.render(force=True)
            if frame is None:
                if time.monotonic() > deadline:
                    raise CommandFailed(f"{info.name}'s screen sent no picture within {FRAME_WAIT:g} s: try again")
                time.sleep(0.05)
        png = io.BytesIO()
        frame.to_image().save(png, "PNG")
    finally:
        host.close_console(info.uuid)
    try:
        atomic_write(target, png.getvalue(), mode=0o644)
    except OSError as exc:
        raise BadInput(f"{args.file}: cannot write it: {exc.strerror or exc}") from None
    print(f"Screenshot saved to {args.file} ({frame.width}x{frame.height})", flush=True)
    return EXIT_OK
