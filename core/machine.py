"""A virtual machine: its board (core/board.py: RAM, buses, devices, interrupt controllers, the CPU backend and its
vCPUs), one thread per vCPU, and the lifecycle.

States: defined → running ⇄ paused → shutoff, or crashed (with the reason kept). Lifecycle changes are Requests
carried out by one supervisor thread, so they never race: those from the guest itself (ACPI S5 power-off, a reset
through port 0xCF9 or the i8042, a triple fault, a device-model exception) are posted there because a vCPU thread
cannot wait for itself to stop, and pause/resume/reset/power-off asked by the user go the same way.
"""
from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.board import Board
from core.boot.loader import load_kernel
from core.devices.vga_screen_info import screen_info_for_text_mode
from core.hypervisor.base import ExitReason, Vcpu, fault_line
from core.hypervisor.select import AccelChoice, choose_accelerator
from core.machine_state import (
    NotQuiescent,
    quiesce_board,
    release_board,
    restore_board,
    resume_board,
    save_board,
)
from core.net.nic import NetSpecError, NicSpec

if TYPE_CHECKING:
    from core.config import VmConfig
    from core.machine_record import SavedState

log = logging.getLogger(__name__)

MIN_MEMORY_MIB = 16
MAX_CPUS = 64
ENGINE_FEATURES = frozenset({"disks", "firmware_boot", "network"})
DISPLAYS = ("vga", "none")
DISK_BUSES = ("virtio", "ide")
BOOT_DEVICES = ("kernel", "cd", "disk")   # "kernel": the Linux/Multiboot kernel given, loaded directly
IDE_POSITIONS = 4                           # two channels, master and slave each: IDE disks and CD-ROMs share them


class MachineState(enum.Enum):
    DEFINED = "defined"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"


class ConfigError(ValueError):
    """A machine configuration that cannot run (message is one line naming the field and the fix)."""


@dataclass
class DiskSpec:
    """One disk: an image file, its format (None: detect from the header), how to use it, and the bus it sits on
    (virtio-blk, or an ATA disk on the PIIX IDE controller)."""

    path: str
    format: str | None = None
    readonly: bool = False
    cache: str = "writeback"
    bus: str = "virtio"


@dataclass
class MachineConfig:
    """What one machine is made of. It boots either a kernel directly (`kernel`, with `boot` empty or starting
    with "kernel" and no `firmware` asked for), or through PC firmware (SeaBIOS: `firmware`, None meaning
    Debian's), which tries the devices of `boot` in order ("cd", "disk"; empty means CD then disk). `cdroms`
    are ISO images on IDE ATAPI drives, read-only."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    memory_mib: int = 256
    cpus: int = 1
    accel: str = "auto"
    decompress_on_host: bool = True
    on_triple_fault: str = "crash"     # "crash" (keep the state for inspection) or "reset" (as a PC does)
    disks: list[DiskSpec] = field(default_factory=list)
    display: str = "vga"               # "vga": the standard VGA with Bochs VBE; "none": no display adapter
    cdroms: list[str] = field(default_factory=list)
    boot: list[str] = field(default_factory=list)
    firmware: str | None = None
    boot_menu_wait_ms: int = 2500      # firmware boot: how long SeaBIOS offers its Esc boot menu (0: no menu)
    # Firmware boot: QEMU's isa-debugcon at port 0x402, where SeaBIOS logs (off by default, as on QEMU: SeaBIOS
    # then finds no port and writes no log, thousands of port exits fewer before the boot loader).
    debugcon: bool = False
    # QEMU's -boot once=: the order of the first boot only; from the first reset on (an installer's reboot), `boot`.
    boot_once: list[str] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)   # virtio-net cards, in PCI order

    @property
    def direct_kernel_boot(self) -> bool:
        """Whether the kernel is loaded by Vireo itself (no firmware runs)."""
        first = self.boot_once or self.boot
        return bool(self.kernel) and self.firmware is None and (not first or first[0] == "kernel")

    @property
    def firmware_boot_order(self) -> list[str]:
        """The devices the firmware tries, in order, from the first reset on (`boot_once` before it)."""
        order = [b for b in self.boot if b != "kernel"]
        return order or ["cd", "disk"]

    @classmethod
    def from_vm(cls, cfg: VmConfig, accel: str) -> MachineConfig:
        """The machine a saved VM definition describes, run on `accel` (auto/kvm/software; usually the
        accelerator already chosen for this host). Every field of the definition the engine honours is carried
        over; one it cannot honour raises ConfigError (one line) instead of being dropped. Host-side settings
        (name, uuid, autostart, notes, the serial log file and whether the serial console is shown) are not
        the machine's business and are left to the caller.

        Boot: the definition's order as it is (an empty one means the same here: the kernel when given, else CD
        then disk); when boot.cd_once is set, the first boot tries the CD first and then that order (boot_once),
        and a reset by the guest (an installer's reboot) goes back to the order — the host clears the flag once
        it has started the VM. A CD-ROM drive with no disc is left out: nothing can be inserted into a
        running machine, so the guest would only ever see it empty."""
        from core.net.nic import derived_mac
        nics = []
        for i, nic in enumerate(cfg.nics):
            try:
                spec = nic.spec()
            except NetSpecError as exc:
                raise ConfigError(f"nics[{i}]: {exc}") from None
            spec.mac = spec.mac or derived_mac(cfg.uuid, i)
            nics.append(spec)
        if cfg.display.type not in DISPLAYS:
            raise ConfigError(f"display.type {cfg.display.type!r}: use one of {', '.join(DISPLAYS)}")
        disks = []
        for i, disk in enumerate(cfg.disks):
            if disk.bus not in DISK_BUSES:
                raise ConfigError(f"disks[{i}].bus {disk.bus!r}: use one of {', '.join(DISK_BUSES)}")
            disks.append(DiskSpec(disk.path, format=disk.format, readonly=disk.readonly, bus=disk.bus))
        once = cfg.boot_devices() if cfg.boot.cd_once else []
        return cls(kernel=cfg.boot.kernel or None, initrd=cfg.boot.initrd or None, cmdline=cfg.boot.cmdline,
                   memory_mib=cfg.memory_mib, cpus=cfg.vcpus, accel=accel, disks=disks,
                   display=cfg.display.type, cdroms=[cd.path for cd in cfg.cdroms if cd.path],
                   boot=list(cfg.boot.order), boot_once=once, firmware=cfg.boot.firmware or None, nics=nics)

    def validate(self) -> None:
        host_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
        if not MIN_MEMORY_MIB <= self.memory_mib <= host_mib:
            raise ConfigError(f"memory {self.memory_mib} MiB is out of range: give {MIN_MEMORY_MIB}..{host_mib} MiB "
                              f"(this host has {host_mib} MiB)")
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"cpus {self.cpus} is out of range: give 1..{MAX_CPUS}")
        if self.on_triple_fault not in ("crash", "reset"):
            raise ConfigError(f"on_triple_fault {self.on_triple_fault!r}: use crash or reset")
        if self.display not in DISPLAYS:
            raise ConfigError(f"display {self.display!r}: use one of {', '.join(DISPLAYS)}")
        for i, disk in enumerate(self.disks):
            if disk.bus not in DISK_BUSES:
                raise ConfigError(f"disk {i + 1} bus {disk.bus!r}: use one of {', '.join(DISK_BUSES)}")
        ide = sum(d.bus == "ide" for d in self.disks) + len(self.cdroms)
        if ide > IDE_POSITIONS:
            raise ConfigError(f"{ide} IDE drives (disks on bus=ide plus CD-ROMs): the IDE controller holds "
                              f"{IDE_POSITIONS}; put disks on bus=virtio")
        for i, nic in enumerate(self.nics):
            try:
                nic.validate(f"nic {i + 1}")
            except NetSpecError as exc:
                raise ConfigError(str(exc)) from None
        if not 0 <= self.boot_menu_wait_ms <= 0xFFFF:
            raise ConfigError(f"boot menu wait {self.boot_menu_wait_ms} ms is out of range: give 0..65535")
        for entry in self.boot + self.boot_once:
            if entry not in BOOT_DEVICES:
                raise ConfigError(f"boot device {entry!r}: use {', '.join(BOOT_DEVICES)}")
        if "kernel" in self.boot + self.boot_once and not self.kernel:
            raise ConfigError("boot from kernel asked, but no kernel is given: give a kernel file or boot cd/disk")


SAVE_ATTEMPTS = 200


StateListener = Callable[["Machine", MachineState, str], None]


class RequestKind(enum.Enum):
    PAUSE = "pause"
    RESUME = "resume"
    RESET = "reset"
    POWER_OFF = "poweroff"
    CRASH = "crash"


@dataclass(frozen=True)
class Request:
    """One lifecycle change for the supervisor: what, why (the reason a power-off or crash is recorded with), and
    `done`, set once it has been handled (or the machine has stopped), for a caller that waits."""

    kind: RequestKind
    reason: str = ""
    done: threading.Event | None = None


class Machine:
    """One VM built from a MachineConfig. Construct, then start(); wait() blocks until it stops."""

    def __init__(self, config: MachineConfig, serial_output: Callable[[bytes], None] | None = None,
                 accel_choice: AccelChoice | None = None, restore: SavedState | None = None) -> None:
        config.validate()
        self.config = config
        self.state = MachineState.DEFINED
        self.reason = ""
        self.accel_choice = accel_choice or choose_accelerator(config.accel)
        self._listeners: list[StateListener] = []
        self._state_cond = threading.Condition()
        self._requests: queue.Queue[Request] = queue.Queue()
        self._gate = threading.Condition()
        self._gate_open = False
        self._parked = 0
        self._exiting = False
        self._reset_pending = False
        self._release_generation = 0
        self._threads: list[threading.Thread] = []
        self._supervisor: threading.Thread | None = None
        self.reset_count = 0
        self.started_at = 0.0
        self.board = Board(config, self.accel_choice.name, serial_output=serial_output or (lambda data: None),
                           request_reset=self.request_reset, request_poweroff=self._guest_poweroff,
                           report_fault=self.post_crash)
        self.restored_from = restore.path if restore is not None else None
        try:
            if restore is None:
                self._load()
            else:
                # A saved machine: nothing is loaded; RAM, devices and vCPUs come from the state file.
                restore_board(self.board, restore.reader, restore.machine, restore.records)
                self.reset_count = restore.machine["reset_count"]
                if self.reset_count:
                    self.board.end_boot_once()
                self.boot_description = f"restored from {restore.path}"
        except BaseException:
            self.board.close()
            raise

    def _load(self) -> None:
        """Set every vCPU's power-on state: with firmware the BSP at the reset vector; otherwise load the kernel
        (and initrd) and put the BSP at its entry. The APs wait for INIT/SIPI."""
        cfg, board = self.config, self.board
        if board.firmware_boot:
            self.boot_description = f"firmware {board.firmware_path}"
            board.firmware_reset_state()
            return
        result = load_kernel(board.memory, cfg.kernel, cfg.initrd, cfg.cmdline, cfg.cpus,
                             decompress_on_host=cfg.decompress_on_host,
                             screen_info=None if board.vga is None else
                             screen_info_for_text_mode(board.vga).to_bytes())
        self.boot_description = result.description
        board.vcpus[0].set_state(result.cpu_state)
        for vcpu in board.vcpus[1:]:
            vcpu.reset_to_wait_for_sipi()

    # -- observers ----------------------------------------------------------------------------------------
    def add_state_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def _set_state(self, state: MachineState, reason: str = "") -> None:
        with self._state_cond:
            self.state = state
            self.reason = reason
            self._state_cond.notify_all()
        for listener in list(self._listeners):
            try:
                listener(self, state, reason)
            except Exception:  # an observer's bug must not stop the VM
                log.exception("state listener failed")

    def wait(self, timeout: float | None = None) -> MachineState:
        """Block until the machine is shut off or crashed (or the timeout passes); return the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_cond:
            while self.state not in (MachineState.SHUTOFF, MachineState.CRASHED):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._state_cond.wait(remaining)
            return self.state

    # -- user requests ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state != MachineState.DEFINED:
            raise RuntimeError(f"cannot start a machine that is {self.state.value}")
        self.started_at = time.monotonic()
        self.board.start_nics()
        for i, vcpu in enumerate(self.board.vcpus):
            t = threading.Thread(target=self._vcpu_loop, args=(vcpu,), name=f"vcpu{i}", daemon=True)
            self._threads.append(t)
        self._supervisor = threading.Thread(target=self._supervise, name="vireo-supervisor", daemon=True)
        self._supervisor.start()
        with self._gate:
            self._gate_open = True
        for t in self._threads:
            t.start()
        self._set_state(MachineState.RUNNING)
        if self.restored_from is not None:
            resume_board(self.board)

    def save(self, path: str, stop: bool = True, vm: dict[str, str] | None = None) -> int:
        """Save the machine's state to `path` (docs/machine-state.md); with `stop` the machine then shuts off
        (reason "saved to PATH"), otherwise it carries on as it was. Returns the bytes of RAM written. The vCPUs
        are paused and the disks' requests finished first; if a device is caught mid-transfer (an IDE PIO
        block) the guest runs a moment and the save is tried again. `vm` (uuid and name of the VM definition) is
        recorded for `vireo restore FILE`."""
        if self.state not in (MachineState.RUNNING, MachineState.PAUSED):
            raise RuntimeError(f"cannot save a machine that is {self.state.value}")
        was_running = self.state == MachineState.RUNNING
        for attempt in range(SAVE_ATTEMPTS):
            if self.state == MachineState.RUNNING:
                self.pause()
            if self.state != MachineState.PAUSED:
                raise RuntimeError(f"the machine stopped while saving ({self.state.value}: {self.reason})")
            try:
                quiesce_board(self.board)
                written = save_board(self.board, self.config, path, reset_count=self.reset_count, vm=vm)
                break
            except NotQuiescent:
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                release_board(self.board)
                self.resume()
                time.sleep(0.002)
            finally:
                release_board(self.board)
        if stop:
            self._call(RequestKind.POWER_OFF, f"saved to {path}")
        elif was_running:
            self.resume()
        return written

    def pause(self) -> None:
        self._call(RequestKind.PAUSE)

    def resume(self) -> None:
        self._call(RequestKind.RESUME)

    def reset(self) -> None:
        self._call(RequestKind.RESET)

    def power_off(self) -> None:
        """Forced power-off (pull the plug)."""
        self._call(RequestKind.POWER_OFF, "forced power-off")

    def shutdown(self) -> None:
        """Graceful shutdown request: press the ACPI power button; the guest decides what to do."""
        if self.state == MachineState.RUNNING:
            self.board.acpi_pm.press_power_button()

    def serial_input(self, data: bytes) -> None:
        self.board.serial.receive(data)

    # -- network cards ------------------------------------------------------------------------------------
    def nic_status(self) -> list[dict]:
        """Each card: MAC, MTU, backend, link up/down with the reason, and its counters."""
        out = []
        for spec, nic in zip(self.config.nics, self.board.nics, strict=True):
            out.append({"mac": ":".join(f"{b:02x}" for b in nic.mac), "model": spec.model, "backend": spec.backend,
                        "mtu": nic.mtu, "link_up": nic.link_up, "link_reason": nic.link_reason,
                        "switch_up": nic.switch_up,
                        "forwards": [str(f) for f in spec.forwards], **nic.counters()})
        return out

    def reconnect_nic(self, index: int | None = None) -> list[str]:
        """Restart the backend of card `index` (None: every card whose link is down); the problems, one line
        each, of those that did not come back."""
        if self.state in (MachineState.SHUTOFF, MachineState.CRASHED):
            return [f"the machine is {self.state.value}"]
        nics = list(enumerate(self.board.nics))
        if index is not None:
            if not 0 <= index < len(nics):
                return [f"the VM has no network card {index}"]
            nics = [nics[index]]
        else:
            nics = [(i, n) for i, n in nics if not n.link_up]
        return [f"{nic.name}: {nic.link_reason}" for _, nic in nics if not nic.reconnect()]

    # -- requests from the guest side (any thread) -------------------------------------------------------
    def request_reset(self) -> None:
        """A reset from the guest (port 0xCF9, the i8042) or a triple fault. As on hardware it takes effect at
        once: every vCPU is kicked so none runs past the instruction that asked, and repeated requests before
        the reset happens are one reset."""
        with self._gate:
            if self._reset_pending:
                return
            self._reset_pending = True
            self._gate_open = False      # a kicked vCPU parks instead of re-entering the guest
        self._requests.put(Request(RequestKind.RESET))
        for vcpu in self.board.vcpus:
            vcpu.kick()

    def _guest_poweroff(self) -> None:
        with self._gate:
            self._gate_open = False
        self._requests.put(Request(RequestKind.POWER_OFF, "guest powered off"))
        for vcpu in self.board.vcpus:
            vcpu.kick()

    def post_crash(self, reason: str) -> None:
        self._requests.put(Request(RequestKind.CRASH, reason))

    def _call(self, kind: RequestKind, reason: str = "") -> None:
        """Post a user's request and, unless called from the machine's own threads (which the supervisor may be
        waiting for), wait until it has been carried out."""
        done = threading.Event()
        self._requests.put(Request(kind, reason, done))
        if threading.current_thread() not in self._threads and threading.current_thread() is not self._supervisor:
            done.wait(10)

    # -- vCPU threads -------------------------------------------------------------------------------------
    def _vcpu_loop(self, vcpu: Vcpu) -> None:
        while True:
            with self._gate:
                while not self._gate_open and not self._exiting:
                    self._parked += 1
                    self._gate.notify_all()
                    self._gate.wait()
                    self._parked -= 1
                if self._exiting:
                    return
            try:
                ex = vcpu.run()
            except Exception as exc:  # a backend or device-model bug stops this VM only
                log.exception("vCPU %d failed", vcpu.index)
                self.post_crash(fault_line(f"vCPU {vcpu.index}", exc))
                self._park_until_released()
                continue
            if ex.reason == ExitReason.KICKED:
                continue
            if ex.reason == ExitReason.SHUTDOWN:
                with self._gate:
                    resetting = self._reset_pending
                if resetting:
                    # The guest asked for a reset (0xCF9, the i8042) and faulted before the kick stopped this
                    # vCPU: SeaBIOS's reboot writes 0xCF9 then runs int3 with no IDT, relying on the reset
                    # taking effect first, as on hardware. The reset under way wins; the fault is moot.
                    pass
                elif self.config.on_triple_fault == "reset":
                    self.request_reset()
                else:
                    detail = f": {ex.detail}" if ex.detail else ""
                    self.post_crash(f"vCPU {vcpu.index}: triple fault (CPU shutdown){detail}")
                self._park_until_released()
            elif ex.reason == ExitReason.HALTED:
                # HLT with interrupts off: a real CPU stays halted forever; so does this one, until the user acts.
                self._park_until_released()
            else:
                self.post_crash(f"vCPU {vcpu.index}: {ex.detail or ex.reason.value}")
                self._park_until_released()

    def _park_until_released(self) -> None:
        """Wait here until the supervisor has handled the request: it releases the vCPUs (a new release
        generation) or the machine exits. Waiting on the generation, not the gate, means a quick
        close-and-reopen by the supervisor cannot be missed."""
        with self._gate:
            self._parked += 1
            self._gate.notify_all()
            generation = self._release_generation
            while self._release_generation == generation and not self._exiting:
                self._gate.wait()
            self._parked -= 1

    def _stop_vcpus(self) -> None:
        with self._gate:
            self._gate_open = False
        deadline = time.monotonic() + 5
        while True:
            for vcpu in self.board.vcpus:
                vcpu.kick()
            with self._gate:
                if self._parked >= len(self._threads) or time.monotonic() > deadline:
                    return
                self._gate.wait(0.01)

    def _release_vcpus(self) -> None:
        with self._gate:
            self._gate_open = True
            self._release_generation += 1
            self._gate.notify_all()

    # -- supervisor ---------------------------------------------------------------------------------------
    def _supervise(self) -> None:
        while True:
            request = self._requests.get()
            try:
                finished = self._handle(request)
            except Exception as exc:
                log.exception("machine supervisor failed")
                self._finish(MachineState.CRASHED, f"{request.kind.value} failed: {exc}")
                finished = True
            if request.done is not None:
                request.done.set()
            if finished:
                self._drain_waiters()
                return

    def _drain_waiters(self) -> None:
        """The machine has stopped: release every caller still waiting on a request nobody will carry out."""
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if request.done is not None:
                request.done.set()

    def _handle(self, request: Request) -> bool:
        """Carry out one lifecycle request; True when the machine has stopped for good."""
        if self.state in (MachineState.SHUTOFF, MachineState.CRASHED):
            return True
        kind = request.kind
        if kind == RequestKind.PAUSE and self.state == MachineState.RUNNING:
            self._stop_vcpus()
            self.board.timers.pause()
            self._set_state(MachineState.PAUSED)
        elif kind == RequestKind.RESUME and self.state == MachineState.PAUSED:
            self.board.timers.resume()
            self._release_vcpus()
            self._set_state(MachineState.RUNNING)
        elif kind == RequestKind.RESET:
            self._stop_vcpus()
            with self._gate:
                self._reset_pending = False
            self._do_reset()
            if self.state == MachineState.PAUSED:
                return False
            self._release_vcpus()
        elif kind == RequestKind.POWER_OFF:
            self._finish(MachineState.SHUTOFF, request.reason)
            return True
        elif kind == RequestKind.CRASH:
            self._finish(MachineState.CRASHED, request.reason)
            return True
        return False

    def _do_reset(self) -> None:
        self.reset_count += 1
        self.board.reset()
        if self.reset_count == 1:
            self.board.end_boot_once()
        self._load()

    def _finish(self, state: MachineState, reason: str) -> None:
        self._stop_vcpus()
        with self._gate:
            self._exiting = True
            self._gate.notify_all()
        for vcpu in self.board.vcpus:
            vcpu.kick()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        self.board.close()
        self._set_state(state, reason)

    # -- inspection ---------------------------------------------------------------------------------------
    @property
    def vcpu_threads(self) -> list[threading.Thread]:
        """The vCPU threads (for per-VM CPU accounting); empty before start()."""
        return list(self._threads)
