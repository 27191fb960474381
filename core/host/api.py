"""The Host API: what a client (the GUI, the CLI) asks of a machine that runs VMs, declared once for every
implementation — LocalHost (core/host/local.py, the engine side the service runs), RemoteHost (core/remote/host.py,
a service reached over SSH) and the local service's client (core/remote/local.py) — and the values it answers with.

The contract:
  * list_vms()/get() return VmInfo snapshots (definition, state, reason, accelerator and why); load_errors()
    the definition files that could not be loaded; delete_broken_definition(path) removes one of those files and
    nothing else (any other path is refused with HostError), then tells listeners with an UPDATED event whose uuid
    is the file's name without ".json".
  * define/start/pause/resume/shutdown/reboot/force_reset/force_off/delete carry out one request and return
    when it is done; they may block for seconds (a pause waits for every vCPU to park), so a GUI calls them off
    its event loop. A request that cannot be carried out raises HostError with a one-line message.
  * delete(uuid, delete_disks) removes the definition and the chosen disk images (all, none, or the listed
    paths), except one that another VM on the host lists or reads as a backing file (a qcow2 overlay's base):
    that one is kept and named in the DeleteResult with why, so sharing a disk never loses it.
  * add_listener(cb) delivers HostEvents (state changes, definitions added/changed/removed) on whatever thread
    the change happened; listeners must be quick and thread-safe (the GUI re-emits them as queued Qt signals).
  * subscribe_serial(uuid, cb) returns what ttyS0 printed so far this boot and then calls cb(bytes) with each
    new piece; send_serial types into it.
  * console(uuid) gives a started VM's graphical console: a frame source polled for pictures of its display and
    an input sink for its keyboard and mouse (VmConsole; Qt-free).
  * stats(uuid) samples CPU usage (vCPU time over wall time since the previous sample), memory, and disk/network
    I/O where the VM has such devices (None where it has not).
  * list_images() lists the disk images in the host's images folder (format, sizes, the VM that needs each);
    delete_image(path) removes one, refusing (HostError) an image a VM on the host lists or reads as a backing
    file; resize_image(path, size) grows one no running VM has open (core/host/images.py); run_img(options)
    runs a `vireo img` command there (`img … --connect`).
  * host_counters() reads the whole host's CPU, memory, disk and network counters, for graphs of its load.
  * files() gives the host's file system for browsing (core/host/files.py: this machine's, or an SSH host's over
    SFTP), so a client chooses a kernel, ISO or disk image where the VM will read it.
  * probe_file(path, role) reads a few KiB of a file on the host and says what it is (FileProbe), so a kernel,
    initrd, disk image or ISO is checked when it is chosen, not when the VM starts; a missing or unreadable file
    raises HostError naming it.
  * clone(uuid, new_name, linked, progress) copies a shut-off VM under a new name, uuid and MACs, its disks
    copied or linked (core/host/clone.py); migrate(step, fields) is one step of moving a VM to another host
    (core/host/move.py).
  * `remote` is True when the VMs live outside this process (a service): close() then only disconnects, and the
    VMs keep running.

Lifecycle as libvirt presents it: shut off -> (start) -> running <-> paused -> shut off or crashed. Each start
builds a new machine from the saved definition. "Reboot" is the ACPI power button followed by a fresh start when
the guest has powered off, as libvirt does for guests without an agent.

Engine-free (core.config and core.hoststats only), so every process — GUI, CLI, service, remote agent — imports it.
"""
from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.config import LoadError, VmConfig
from core.hoststats import HostInfo

if TYPE_CHECKING:
    from core.display.frame import FrameSource
    from core.host.files import HostFiles
    from core.host.hostload import HostCounters
    from core.host.images import ImageEntry
    from core.host.snapshot_info import VmSnapshot
    from core.keymap import InputSink

log = logging.getLogger("core.host")

SERIAL_HISTORY = 256 * 1024     # bytes of console output kept for a console window opened later
TERMINAL_RESET = b"\x1bc"       # ECMA-48 RIS: tells a subscribed terminal a new boot starts on a clean screen


class HostError(Exception):
    """A request the host cannot carry out; the message is one line for an error dialog."""


class VmState(enum.Enum):
    SHUTOFF = "shutoff"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    CRASHED = "crashed"

    @property
    def label(self) -> str:
        return {"shutoff": "Shut off", "starting": "Starting", "running": "Running", "paused": "Paused",
                "crashed": "Crashed"}[self.value]

    @property
    def active(self) -> bool:
        """The VM holds resources: it must be stopped before it is edited or deleted."""
        return self in (VmState.STARTING, VmState.RUNNING, VmState.PAUSED)


@dataclass(frozen=True)
class VmInfo:
    config: VmConfig
    state: VmState
    reason: str = ""          # why it stopped or crashed, or why start failed
    accel: str = ""           # "kvm" / "software" once chosen (running, or as auto would choose now)
    accel_reason: str = ""

    @property
    def uuid(self) -> str:
        return self.config.uuid

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class VmStats:
    timestamp: float                  # time.monotonic() of the sample
    cpu_percent: float                # 0..100 of the VM's vCPUs together (100 = every vCPU busy)
    cpu_seconds: float                # total vCPU time since start
    memory_mib: int                   # configured guest RAM
    memory_resident_mib: float | None  # guest RAM actually backed by host pages
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None


@dataclass(frozen=True)
class HostCapabilities:
    """What the host's engine can do with a definition today (the GUI greys out the rest and says why)."""

    disks: bool = False           # attaches the definition's disk images
    network: bool = False         # gives the VM a network card
    firmware_boot: bool = False   # boots an ISO or disk through BIOS/UEFI instead of a kernel given directly


@dataclass(frozen=True)
class VmConsole:
    """A started VM's graphical console. `frames.render(force=False)` returns a Frame when the picture changed
    (else None) and is cheap enough to poll at 60 Hz on a GUI thread; `input` takes PS/2 set-2 key events and
    relative mouse motion (core.keymap.InputSink). `session` differs for every start of the VM: a viewer holding
    an older session is showing a machine that has gone (whose last picture stays readable)."""

    session: int
    frames: FrameSource
    input: InputSink


@dataclass(frozen=True)
class KeptDisk:
    """A disk image delete() was asked to remove but left in place: `reason` is one line, e.g. "used by VM 'web'"."""

    path: str
    reason: str


class DeleteResult(list[str]):
    """What delete() did. As a list, the files it removed, the definition first (what delete() returned before
    disks could be kept, so older callers read it unchanged); `kept`, the disk images asked for but left in place
    because another VM on the host still lists them or reads them as a backing file."""

    def __init__(self, removed: Iterable[str] = (), kept: Iterable[KeptDisk] = ()) -> None:
        super().__init__(removed)
        self.kept: list[KeptDisk] = list(kept)


@dataclass(frozen=True)
class FileProbe:
    """What probe_file() found in a file chosen for a role (PROBE_ROLES): `kind` says what
    the file is in words ("Linux kernel bzImage 6.1.0 (boot protocol 2.15)", "text file (not a kernel)"); when
    it cannot serve the role, `ok` is False and `message` is one line saying what it is and what is expected."""

    ok: bool
    kind: str
    message: str = ""
    volume_id: str = ""     # an ISO's volume identifier (ECMA-119), which names the OS an installer disc holds


# "iso": any ISO 9660 image (a CD-ROM drive takes data discs too); "boot-iso": one the firmware can boot (El Torito).
PROBE_ROLES = ("kernel", "initrd", "disk", "iso", "boot-iso")


# delete()'s choice of disks: False none, True all the definition lists, or the paths of those to remove.
DiskChoice = bool | Sequence[str]


class EventKind(enum.Enum):
    STATE = "state"
    DEFINED = "defined"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True)
class HostEvent:
    kind: EventKind
    uuid: str
    state: VmState | None = None
    reason: str = ""


HostListener = Callable[[HostEvent], None]
SerialListener = Callable[[bytes], None]
Progress = Callable[[int, int], None]


class Host(ABC):
    """One machine that runs VMs. Every method is thread-safe."""

    name: str
    remote: bool = False      # the VMs live outside this process: closing the Host leaves them running

    @abstractmethod
    def info(self) -> HostInfo: ...
    @abstractmethod
    def list_vms(self) -> list[VmInfo]: ...
    @abstractmethod
    def get(self, vm_uuid: str) -> VmInfo: ...
    @abstractmethod
    def load_errors(self) -> list[LoadError]: ...
    @abstractmethod
    def reload(self) -> None: ...
    @abstractmethod
    def delete_broken_definition(self, path: str) -> None: ...
    @abstractmethod
    def define(self, config: VmConfig) -> VmInfo: ...
    @abstractmethod
    def start(self, vm_uuid: str) -> None: ...
    @abstractmethod
    def pause(self, vm_uuid: str) -> None: ...
    @abstractmethod
    def resume(self, vm_uuid: str) -> None: ...
    @abstractmethod
    def shutdown(self, vm_uuid: str) -> None: ...
    @abstractmethod
    def reboot(self, vm_uuid: str) -> None: ...
    @abstractmethod
    def force_reset(self, vm_uuid: str) -> None: ...
    @abstractmethod
    def force_off(self, vm_uuid: str) -> None: ...
    @abstractmethod
    def delete(self, vm_uuid: str, delete_disks: DiskChoice = False) -> DeleteResult: ...
    @abstractmethod
    def stats(self, vm_uuid: str) -> VmStats | None: ...
    @abstractmethod
    def subscribe_serial(self, vm_uuid: str, listener: SerialListener) -> bytes: ...
    @abstractmethod
    def unsubscribe_serial(self, vm_uuid: str, listener: SerialListener) -> None: ...
    @abstractmethod
    def send_serial(self, vm_uuid: str, data: bytes) -> None: ...
    @abstractmethod
    def create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                    progress: Progress | None = None) -> None: ...
    @abstractmethod
    def accel_preview(self, requested: str) -> tuple[str, str]: ...
    @abstractmethod
    def probe_file(self, path: str, role: str) -> FileProbe: ...
    @abstractmethod
    def capabilities(self) -> HostCapabilities: ...
    @abstractmethod
    def close(self) -> None: ...

    def save(self, vm_uuid: str, path: str | None = None) -> str:
        """Stop a running or paused VM into a state file (docs/machine-state.md): `path` on the host, or None for
        its managed save, which the next start() resumes. Returns the file's path on the host."""
        raise HostError(f"{self.name}: this host cannot save VMs")

    def restore(self, path: str) -> VmInfo:
        """Start the VM a state file (a path on the host) was saved from, resumed from it."""
        raise HostError(f"{self.name}: this host cannot restore VMs")

    def clone(self, vm_uuid: str, new_name: str, linked: bool = False, progress: Progress | None = None) -> VmInfo:
        """Clone a shut-off VM as `new_name` with a new uuid and MACs: full copies of its disks, or (`linked`)
        qcow2 overlays on its disks' content (core/host/clone.py, docs/clone-and-move.md)."""
        raise HostError(f"{self.name}: this host cannot clone VMs")

    def migrate(self, step: str, fields: dict[str, Any]) -> dict[str, Any]:
        """One step of moving a shut-off or saved VM between hosts (core/host/move.py names the steps; the client
        core/remote/move.py drives them and carries the files)."""
        raise HostError(f"{self.name}: this host cannot move VMs")

    def console(self, vm_uuid: str) -> VmConsole:
        """The graphical console of a running or paused VM; HostError when it has none (shut off, display none,
        or a host that cannot serve consoles)."""
        raise HostError(f"{self.name} cannot show virtual machine consoles")

    def list_images(self) -> list[ImageEntry]:
        """The disk images in the host's images folder (core/host/images.py)."""
        raise HostError(f"{self.name} cannot list its disk images")

    def delete_image(self, path: str) -> None:
        """Remove a disk image no VM on the host needs; HostError naming the VM otherwise."""
        raise HostError(f"{self.name} cannot delete disk images")

    def resize_image(self, path: str, new_size: int) -> None:
        """Grow a disk image to `new_size` bytes; HostError for a smaller size or an image a running VM uses."""
        raise HostError(f"{self.name} cannot resize disk images")

    def run_img(self, fields: dict[str, object]) -> tuple[int, str, str]:
        """Run a `vireo img` command (its parsed options) on the host: its exit status, stdout and stderr."""
        raise HostError(f"{self.name} cannot run disk image commands")

    def host_counters(self) -> HostCounters:
        """The whole host's CPU, memory, disk and network counters (core/host/hostload.py)."""
        raise HostError(f"{self.name} cannot report its load")

    def net_status(self, vm_uuid: str) -> list[dict]:
        """Each network card of a started VM as its VM process reports it (core/vmproc/net_status.py); [] when
        the VM is not started (core/host/net_ops.py)."""
        raise HostError(f"{self.name} cannot report network cards")

    def net_reconnect(self, vm_uuid: str, nic: int | None = None) -> None:
        """Restart card `nic`'s backend (passt) of a started VM (None: every card whose link is down)."""
        raise HostError(f"{self.name} cannot reconnect network cards")

    def net_set(self, vm_uuid: str, nic: int, link: bool | None = None,
                forwards: list[str] | None = None) -> VmInfo:
        """Save card `nic`'s link switch and/or port forwards in the definition, and apply them to a started VM
        at once (its passt restarts for new forwards); HostError with one line, e.g. the port passt cannot bind."""
        raise HostError(f"{self.name} cannot change network cards")

    def snapshot_list(self, vm_uuid: str) -> list[VmSnapshot]:
        """The VM's snapshots in the order they were taken (docs/vm-snapshots.md, core/host/snapshots.py)."""
        raise HostError(f"{self.name} cannot list VM snapshots")

    def snapshot_create(self, vm_uuid: str, name: str | None = None, description: str = "") -> VmSnapshot:
        """Take a VM snapshot: every qcow2 disk, plus the machine state of a running or paused VM, atomically;
        HostError with one line for a VM with a raw disk."""
        raise HostError(f"{self.name} cannot take VM snapshots")

    def snapshot_revert(self, vm_uuid: str, name: str) -> None:
        """Go back to a snapshot: a started VM is powered off, its disks reverted, and a snapshot with machine
        state resumes running."""
        raise HostError(f"{self.name} cannot revert VM snapshots")

    def snapshot_delete(self, vm_uuid: str, name: str) -> None:
        raise HostError(f"{self.name} cannot delete VM snapshots")

    def files(self) -> HostFiles:
        """The host's file system, for browsing (core/host/files.py); HostError when this host offers none."""
        raise HostError(f"{self.name} cannot browse its files")

    def add_listener(self, listener: HostListener) -> None:
        self._host_listeners().append(listener)

    def remove_listener(self, listener: HostListener) -> None:
        listeners = self._host_listeners()
        if listener in listeners:
            listeners.remove(listener)

    def _host_listeners(self) -> list[HostListener]:
        if not hasattr(self, "_listeners"):
            self._listeners: list[HostListener] = []
        return self._listeners

    def _emit(self, event: HostEvent) -> None:
        for listener in list(self._host_listeners()):
            try:
                listener(event)
            except Exception:  # a broken observer must not break the VM or the request
                log.exception("host listener failed")
