"""The headless runner: `python main.py run --kernel PATH ...` (a kernel loaded directly) or `python main.py run
--cdrom ISO --disk PATH ...` (booted through the firmware, SeaBIOS, in the --boot order) boots one VM with its
serial console on this terminal and exits with the guest's fate (0 powered off, 1 crashed or timed out, 2 bad
input).

With `--display window` the same run is shown in a console window (app/ui/run_window.py): the window gets the
machine's screen and keyboard/mouse as the Host API's VmConsole (RunSession.console()) and the session controls
run() and quit(), so the GUI never reaches into the machine's devices."""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.boot.loader import BootError
from core.hypervisor.base import AcceleratorUnavailable
from core.hypervisor.select import ACCEL_NAMES, choose_accelerator
from core.machine import (
    BOOT_DEVICES,
    DISK_BUSES,
    ConfigError,
    DiskSpec,
    Machine,
    MachineConfig,
    MachineState,
)
from core.machine_record import SavedState
from core.net.nic import NetSpecError, NicSpec, parse_net_option
from core.state.fields import StateError
from core.storage import CACHE_MODES, ImageError

if TYPE_CHECKING:
    from core.host import VmConsole  # the Host API: only for --display window (RunSession.console)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
ESCAPE_PREFIX = 0x01  # Ctrl-A, then 'x' quits — QEMU's -serial stdio habit
MAX_TIMEOUT = 365 * 86400.0   # a year: far beyond any run, well inside what a lock's wait accepts
SIGNAL_LATENCY = 0.25          # s: the longest a SIGTERM or Ctrl-C waits for the main thread (see _wait_for_end)


class BadInput(Exception):
    """Input the user must fix; the message is one line."""


DEFAULT_BOOT_MENU_WAIT = 2500    # ms SeaBIOS offers its boot menu at power-on, as core.machine.MachineConfig


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", help="Linux bzImage or Multiboot v1 kernel, loaded directly (the default boot when "
                                    "given); without it the machine boots through its firmware")
    p.add_argument("--initrd", help="initial ramdisk")
    p.add_argument("--restore", metavar="FILE", help="resume the machine saved in FILE (`vireo save NAME FILE`; "
                                                     "docs/machine-state.md) instead of booting; --accel may pick "
                                                     "the other accelerator, the rest comes from the file")
    p.add_argument("--append", default="", help="kernel command line")
    p.add_argument("--memory", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256)")
    p.add_argument("--cpus", type=int, default=1, metavar="N", help="virtual CPUs (default 1)")
    p.add_argument("--accel", default="auto", choices=ACCEL_NAMES, help="CPU backend (default auto)")
    p.add_argument("--serial", default="stdio", metavar="stdio|none|file:PATH", help="where ttyS0 goes")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop the VM and exit 1 if it is still running after this long")
    p.add_argument("--no-host-decompress", action="store_true",
                   help="let the kernel decompress itself in the guest instead of unpacking it on the host")
    p.add_argument("--disk", action="append", default=[],
                   metavar="PATH[,format=raw|qcow2][,readonly=on][,cache=MODE][,bus=virtio|ide]",
                   help="attach a disk (repeatable); cache: writeback (default), writethrough, none (O_DIRECT) or "
                        "unsafe; bus: virtio (default) or ide")
    p.add_argument("--cdrom", action="append", default=[], metavar="ISO",
                   help="attach an ISO image as an IDE CD-ROM (repeatable, read-only)")
    p.add_argument("--boot", metavar="cd|disk|kernel[,...]",
                   help="boot order, e.g. cd,disk; kernel loads --kernel directly, cd and disk boot through the "
                        "firmware (default: kernel when --kernel is given, else cd,disk)")
    p.add_argument("--boot-menu-wait", type=int, default=DEFAULT_BOOT_MENU_WAIT, metavar="MS",
                   help="firmware boot: how long SeaBIOS offers its boot menu (Esc) at power-on; 0 = no menu, as "
                        "QEMU without -boot menu=on (default 2500)")
    p.add_argument("--firmware", metavar="PATH",
                   help="BIOS image for firmware boot (default: Debian's SeaBIOS, "
                        "/usr/share/seabios/bios-256k.bin)")
    p.add_argument("--debugcon", action="store_true",
                   help="firmware boot: add QEMU's debug console (port 0x402) and print the firmware's log (SeaBIOS "
                        "writes one there) on stderr")
    p.add_argument("--display", default="none", choices=("none", "window"),
                   help="window: show the VM's screen in a console window (default none)")
    p.add_argument("--net", action="append", default=[],
                   metavar="user[,hostfwd=tcp:127.0.0.1:2222-:22][,mac=M]|tap=NAME[,bridge=BR]|none",
                   help="a virtio-net card (repeatable): user-mode NAT through passt with host port forwards, a "
                        "TAP interface (optionally added to a bridge; needs CAP_NET_ADMIN), or none")
    p.add_argument("--vnc", metavar="HOST:DISPLAY|unix:PATH",
                   help="serve the screen, keyboard and mouse over VNC: TCP port 5900+DISPLAY on a loopback HOST "
                        "(e.g. 127.0.0.1:1), or a UNIX socket (docs/vnc.md)")
    p.add_argument("--vnc-password-file", metavar="FILE",
                   help="VNC clients must give the password in FILE's first line (1 to 8 characters)")
    p.add_argument("--screendump", metavar="FILE.png",
                   help="when the VM stops, save its last frame here (and in text mode the text as FILE.txt)")


def _serial_sink(spec: str) -> tuple[Callable[[bytes], None], Callable[[], None], bool]:
    """Return (write, close, interactive) for a --serial spec."""
    if spec == "stdio":
        out = sys.stdout.buffer

        def write(data: bytes) -> None:
            out.write(data)
            out.flush()
        return write, lambda: None, True
    if spec == "none":
        return (lambda data: None), (lambda: None), False
    if spec.startswith("file:") and len(spec) > 5:
        path = spec[5:]
        try:
            f = open(path, "ab", buffering=0)
        except OSError as exc:
            raise BadInput(f"--serial {spec}: cannot open {path}: {exc.strerror}") from exc
        failed: list[OSError] = []

        def write_file(data: bytes) -> None:
            # A full disk or a broken file loses the serial log, not the VM: say so once and drop what follows,
            # as QEMU's file chardev does.
            if failed:
                return
            try:
                f.write(data)
            except OSError as exc:
                failed.append(exc)
                print(f"\r\nvireo: --serial {spec}: writing failed ({exc.strerror or exc}); serial output from "
                      f"now on is discarded", file=sys.stderr)
        return write_file, f.close, False
    raise BadInput(f"--serial {spec!r}: use stdio, none or file:PATH")


def parse_disk(spec: str, local: bool = True) -> DiskSpec:
    """--disk PATH[,format=raw|qcow2][,readonly=on|off][,cache=writeback|writethrough|none|unsafe], as QEMU spells
    -drive options; a comma inside PATH is written twice (",,"), as QEMU does. `local` False: the path names a
    file on another host (run --connect), which that host checks."""
    parts = spec.replace(",,", "\0").split(",")
    path = parts[0].replace("\0", ",")
    if not path:
        raise BadInput(f"--disk {spec!r}: give the image path first")
    disk = DiskSpec(path)
    for opt in parts[1:]:
        key, _, value = opt.partition("=")
        if key == "format" and value in ("raw", "qcow2"):
            disk.format = value
        elif key == "readonly" and value in ("on", "off"):
            disk.readonly = value == "on"
        elif key == "cache" and value in CACHE_MODES:
            disk.cache = value
        elif key == "bus" and value in DISK_BUSES:
            disk.bus = value
        else:
            raise BadInput(f"--disk {spec}: bad option {opt!r}; use format=raw|qcow2, readonly=on|off, "
                           f"cache={'|'.join(CACHE_MODES)}, bus={'|'.join(DISK_BUSES)}")
    if local and not os.path.exists(disk.path):
        raise BadInput(f"--disk {disk.path}: no such file; create one with: vireo img create -f qcow2 "
                       f"{disk.path} 10G")
    return disk


def parse_boot(spec: str | None) -> list[str]:
    """--boot cd|disk|kernel[,...]: the boot order, first choice first."""
    if spec is None:
        return []
    order = [entry.strip() for entry in spec.split(",")]
    for entry in order:
        if entry not in BOOT_DEVICES:
            raise BadInput(f"--boot {spec}: {entry!r} is not a boot device; give a comma list of "
                           f"{', '.join(BOOT_DEVICES)} (e.g. --boot cd,disk)")
    if len(set(order)) != len(order):
        raise BadInput(f"--boot {spec}: a device is named twice; give each of {', '.join(BOOT_DEVICES)} once")
    return order


def parse_nets(specs: list[str]) -> list[NicSpec]:
    """The --net options, in order (each `none` adds no card)."""
    try:
        return [nic for nic in (parse_net_option(s) for s in specs) if nic is not None]
    except NetSpecError as exc:
        raise BadInput(str(exc)) from None


def _report_links(machine: Machine) -> None:
    """A card whose backend fails or dies: one line on stderr (the VM keeps running with that link down)."""
    for nic in machine.board.nics:
        nic.on_link_change = lambda up, reason, name=nic.name: None if up else \
            print(f"\r\nvireo: {name}: link down: {reason}", file=sys.stderr, flush=True)


def _log_firmware_to_stderr() -> None:
    """--debugcon: the debug console's lines (core/devices/debugcon.py logs them at debug level) on stderr."""
    import logging
    logger = logging.getLogger("vireo.firmware")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def _check_file(option: str, path: str | None) -> None:
    if path is None:
        return
    if not os.path.exists(path):
        raise BadInput(f"{option} {path}: no such file")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise BadInput(f"{option} {path}: not a readable file")


class _StdinPump:
    """Feeds the terminal's keystrokes to the guest's UART; raw mode when stdin is a TTY."""

    def __init__(self, machine: Machine, on_quit: Callable[[], None]) -> None:
        self.machine = machine
        self.on_quit = on_quit
        self.fd = sys.stdin.fileno()
        self.saved = None
        self._stop = threading.Event()
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        self.thread = threading.Thread(target=self._loop, name="stdin-pump", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        escape = False
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self.fd, 4096)
            except (OSError, ValueError):
                return
            if not data:
                return  # EOF on a pipe: the guest keeps running, as QEMU does
            if self.saved is not None:
                out = bytearray()
                for b in data:
                    if escape:
                        escape = False
                        if b in (ord("x"), ord("X")):
                            self.on_quit()
                            return
                        if b != ESCAPE_PREFIX:
                            out.append(ESCAPE_PREFIX)
                        out.append(b)
                    elif b == ESCAPE_PREFIX:
                        escape = True
                    else:
                        out.append(b)
                data = bytes(out)
            if data:
                self.machine.serial_input(data)

    def close(self) -> None:
        self._stop.set()
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


class RunSession:
    """One headless run: the machine built from the command line, its console plumbing and its fate."""

    def __init__(self, args: argparse.Namespace, machine: Machine, close_sink: Callable[[], None],
                 interactive: bool) -> None:
        self.args = args
        self.machine = machine
        self.close_sink = close_sink
        self.interactive = interactive
        self.quit_requested = threading.Event()
        self.vnc = None          # a core.vnc.server.VncServer, bound by prepare(), serving while the VM runs

    def console(self) -> VmConsole:
        """The machine's VGA screen (a Renderer polled for frames) and its i8042 keyboard and mouse, as the
        VmConsole a Host gives for a managed VM; one session, since a run builds one machine."""
        from core.display.renderer import Renderer
        from core.host import VmConsole
        from core.keymap import Ps2InputSink

        return VmConsole(session=1, frames=Renderer(self.machine.board.vga),
                         input=Ps2InputSink(self.machine.board.i8042))

    def quit(self) -> None:
        """Stop the VM at the user's request (console escape, closed window): exit status 1."""
        self.quit_requested.set()
        self.machine.power_off()

    def run(self) -> int:
        """Start the machine, wait for its end (or the timeout), report, and return the exit status."""
        err = sys.stderr
        machine = self.machine
        pump = _StdinPump(machine, self.quit) if self.interactive else None
        timed_out = False
        self._install_sigterm()
        try:
            machine.start()
            if self.vnc is not None:
                self.vnc.start()
                print(f"vireo: VNC console on {self.vnc.address.uri()}", file=err, flush=True)
            state = self._wait_for_end(self.args.timeout)
            if state not in (MachineState.SHUTOFF, MachineState.CRASHED):
                timed_out = True
                machine.power_off()
                machine.wait(10)
        except KeyboardInterrupt:
            self.quit_requested.set()
            machine.power_off()
            machine.wait(10)
            state = machine.state
        finally:
            if pump is not None:
                pump.close()
            if self.vnc is not None:
                self.vnc.close()
            self.close_sink()
            self._screendump()
        if timed_out:
            print(f"\r\nvireo: timeout: the guest was still running after {self.args.timeout:g} s", file=err)
            return EXIT_FAILED
        if state == MachineState.CRASHED:
            print(f"\r\nvireo: the guest crashed: {machine.reason}", file=err)
            return EXIT_FAILED
        if self.quit_requested.is_set():
            print("\r\nvireo: stopped by the user", file=err)
            return EXIT_FAILED
        if os.environ.get("VIREO_VERBOSE"):
            print(f"vireo: powered off after {time.monotonic() - machine.started_at:.2f} s", file=err)
        return EXIT_OK

    def _wait_for_end(self, timeout: float | None) -> MachineState:
        """Wait for the machine to end (or the timeout), in short slices. CPython runs a signal handler in the
        main thread only, and a SIGTERM or SIGINT that the kernel hands to another of the process's threads
        (a vCPU's, say) does not interrupt the main thread's lock wait: with one long wait the power button was
        pressed only when the run timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SIGNAL_LATENCY if deadline is None else min(SIGNAL_LATENCY, deadline - time.monotonic())
            state = self.machine.wait(max(left, 0.0))
            if state in (MachineState.SHUTOFF, MachineState.CRASHED):
                return state
            if deadline is not None and time.monotonic() >= deadline:
                return state

    def _install_sigterm(self) -> None:
        """SIGTERM asks the guest to shut down (the ACPI power button, as `virsh shutdown` does); a second
        SIGTERM forces the power off. Only the main thread may set signal handlers."""
        if threading.current_thread() is not threading.main_thread():
            return
        asked = threading.Event()

        def on_term(signum: int, frame: object) -> None:
            if asked.is_set():
                self.quit()
                return
            asked.set()
            print("\r\nvireo: SIGTERM: pressing the guest's power button; send SIGTERM again to force it off",
                  file=sys.stderr)
            self.machine.shutdown()

        signal.signal(signal.SIGTERM, on_term)

    def _screendump(self) -> None:
        if not self.args.screendump:
            return
        from core.display.screendump import write_screendump
        try:
            write_screendump(self.machine.board.vga, self.args.screendump)
        except OSError as exc:
            print(f"vireo: --screendump {self.args.screendump}: {exc.strerror or exc}", file=sys.stderr)


def _collect_from_now_on() -> None:
    """main.py turns the cyclic garbage collector off for `run`'s start-up: the objects made so far (modules,
    classes, the machine) live as long as the process, so they are frozen out of later collections, which then
    walk only what the running VM makes. Nothing to do when the collector is on (another caller, a test)."""
    import gc
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def prepare(args: argparse.Namespace) -> RunSession | int:
    """Validate the command line and build the machine; an int is the exit status of bad input."""
    try:
        return _prepare(args)
    finally:
        _collect_from_now_on()


def _prepare(args: argparse.Namespace) -> RunSession | int:
    err = sys.stderr
    try:
        _check_file("--kernel", args.kernel)
        _check_file("--initrd", args.initrd)
        _check_file("--firmware", args.firmware)
        for iso in args.cdrom:
            _check_file("--cdrom", iso)
        boot = parse_boot(args.boot)
        if args.initrd and not args.kernel:
            raise BadInput(f"--initrd {args.initrd}: an initrd needs --kernel")
        # NaN compares false with everything, so "not > 0" (not "<= 0") catches it; inf would overflow the wait.
        if args.timeout is not None and not 0 < args.timeout <= MAX_TIMEOUT:
            raise BadInput(f"--timeout {args.timeout:g}: give a number of seconds above 0 and at most "
                           f"{MAX_TIMEOUT:g}")
        if args.screendump:
            folder = os.path.dirname(os.path.abspath(args.screendump))
            if not os.path.isdir(folder):
                raise BadInput(f"--screendump {args.screendump}: folder {folder} does not exist")
        write, close_sink, interactive = _serial_sink(args.serial)
        disks = [parse_disk(d) for d in args.disk]
        nics = parse_nets(args.net)
        config = MachineConfig(kernel=args.kernel, initrd=args.initrd, cmdline=args.append,
                               memory_mib=args.memory, cpus=args.cpus, accel=args.accel,
                               decompress_on_host=not args.no_host_decompress, disks=disks,
                               cdroms=list(args.cdrom), boot=boot, firmware=args.firmware,
                               boot_menu_wait_ms=args.boot_menu_wait, nics=nics, debugcon=args.debugcon)
        if args.debugcon:
            _log_firmware_to_stderr()
        saved = None
        if args.restore:
            config, saved = SavedState.open(args.restore)
            config.accel = args.accel
        config.validate()
        choice = choose_accelerator(args.accel)
        if choice.warning:
            print(f"vireo: {choice.warning}", file=err)
        if args.accel == "auto":
            print(f"vireo: accelerator {choice.name} ({choice.reason})", file=err)
        if choice.name == "software" and args.cpus > 1 and os.environ.get("VIREO_PARALLEL_VCPUS", "").strip() != "0":
            print(f"vireo: software CPU: {args.cpus} vCPUs in parallel (VIREO_PARALLEL_VCPUS=0: time-shared)",
                  file=err)
        vnc_address, vnc_password = _vnc_options(args)
        try:
            machine = Machine(config, serial_output=write, accel_choice=choice, restore=saved)
        finally:
            if saved is not None:
                saved.close()
        _report_links(machine)
    except (BadInput, ConfigError, BootError, AcceleratorUnavailable, ImageError, StateError) as exc:
        print(f"vireo: {exc}", file=err)
        return EXIT_BAD_INPUT
    session = RunSession(args, machine, close_sink, interactive)
    if vnc_address is not None:
        from core.display.renderer import Renderer
        from core.keymap import Ps2InputSink
        from core.vnc.server import VncListenError, VncServer
        try:
            session.vnc = VncServer(vnc_address, Renderer(machine.board.vga), Ps2InputSink(machine.board.i8042),
                                    vnc_password, "Vireo")
        except VncListenError as exc:
            print(f"vireo: --vnc {args.vnc}: {exc}", file=err)
            return EXIT_BAD_INPUT
    return session


def _vnc_options(args: argparse.Namespace):
    """(VncAddress or None, password) from --vnc and --vnc-password-file; BadInput saying what to fix."""
    if args.vnc_password_file and not args.vnc:
        raise BadInput(f"--vnc-password-file {args.vnc_password_file}: give --vnc too")
    if not args.vnc:
        return None, ""
    from core.vnc.address import VncAddressError, parse_vnc
    from core.vnc.auth import check_password  # (hmac, hashlib, OpenSSL: only with --vnc)
    try:
        address = parse_vnc(args.vnc)
    except VncAddressError as exc:
        raise BadInput(str(exc)) from None
    password = ""
    if args.vnc_password_file:
        try:
            with open(args.vnc_password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
            check_password(password)
        except OSError as exc:
            raise BadInput(f"--vnc-password-file {args.vnc_password_file}: {exc.strerror or exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(f"--vnc-password-file {args.vnc_password_file}: {exc}") from None
    return address, password


def run(args: argparse.Namespace) -> int:
    """`main.py run` without a window: the serial console on this terminal."""
    session = prepare(args)
    if isinstance(session, int):
        return session
    return session.run()
