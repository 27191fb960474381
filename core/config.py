"""Saved virtual-machine definitions: the validated VmConfig and the store that keeps one JSON file per VM.

A VM boots either a kernel Vireo loads itself (boot.kernel: the Linux boot protocol or Multiboot) or through PC
firmware (SeaBIOS; boot.firmware names another image) from its CD-ROM drives (ISO images, IDE ATAPI) and disks, in
boot.order. boot.cd_once is QEMU's `-boot once=d` (virt-manager's install boot): the next start boots the CD first
and the host that starts the VM clears the flag, so the start after it follows boot.order.

Where things live follows the XDG Base Directory Specification 0.8: definitions in
`$XDG_CONFIG_HOME/vireo/vms/<uuid>.json` (default ~/.config), disk images in `$XDG_DATA_HOME/vireo/images/`
(default ~/.local/share). A definition is written atomically — a temporary file in the same directory, fsync,
rename over the old one, fsync of the directory — so a crash leaves either the old or the new file, never half of
one. A file that cannot be read or does not hold a valid definition is reported (which file, what is wrong) and
left alone: the store never writes over a file it could not load, so the user can repair it.

No Qt and no engine imports here: the GUI, the agent and the tests all use this module.
"""
from __future__ import annotations

import copy
import json
import os
import re
import stat
import tempfile
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.vnc.address import parse_vnc
from core.vnc.auth import check_password

SCHEMA_VERSION = 1
ACCELERATORS = ("auto", "kvm", "software")
DISK_FORMATS = ("raw", "qcow2")
DISK_BUSES = ("virtio", "ide")
BOOT_DEVICES = ("cd", "disk", "kernel")   # what boot.order lists: CD-ROM drives, disks, the kernel given directly
IDE_POSITIONS = 4            # PIIX IDE: two channels with a master and a slave each, shared by IDE disks and CD-ROMs
NETWORK_MODES = ("none", "user")
DISPLAY_TYPES = ("vga", "none")
SERIAL_MODES = ("console", "none")

MIN_MEMORY_MIB = 16          # below this no Linux kernel we boot gets to userspace (same floor as the Machine)
MAX_MEMORY_MIB = 1 << 20     # 1 TiB: a sanity bound; the host's own limit is checked when the VM is defined/run
MAX_VCPUS = 64               # the Machine's limit (core.machine.MAX_CPUS)
MAX_NAME = 64
MAX_CMDLINE = 2048           # Linux boot protocol 2.06+: cmdline_size is 2047 bytes + NUL on x86
MAX_NOTES = 16384
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]*$")


class ConfigError(ValueError):
    """A VM definition that is not valid; the message is one line naming the field and what to give instead."""


@dataclass
class BootConfig:
    """How the VM boots. Direct kernel boot (Linux boot protocol or Multiboot): kernel, optional initrd, command
    line. Firmware boot: `order` of BOOT_DEVICES (empty: the kernel when one is given, else CD then disk, as
    core.machine.MachineConfig reads an empty order), `firmware` (empty: Debian's SeaBIOS), and `cd_once`, which
    puts the CD first for the next start only."""

    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    order: list[str] = field(default_factory=list)
    firmware: str = ""
    cd_once: bool = False

    def effective_order(self) -> list[str]:
        """The order the devices are tried in, ignoring cd_once: `order`, or what an empty one means."""
        return list(self.order) or (["kernel"] if self.kernel else ["cd", "disk"])


@dataclass
class DiskConfig:
    path: str
    format: str = "raw"
    bus: str = "virtio"
    readonly: bool = False


@dataclass
class CdromConfig:
    """A CD-ROM drive (IDE ATAPI, read-only) and the ISO image in it; an empty path is a drive with no disc."""

    path: str = ""


@dataclass
class NicConfig:
    """A network card (core/net/nic.py, docs/network.md): virtio-net on user-mode NAT (passt, with host port
    forwards like "tcp:127.0.0.1:2222-:22") or on a TAP interface (optionally added to a bridge). An empty MAC
    is derived from the VM's uuid and the card's place; the store writes it into the file."""

    backend: str = "user"
    model: str = "virtio"
    mac: str = ""
    forwards: list[str] = field(default_factory=list)
    tap: str = ""
    bridge: str = ""
    link: bool = True          # the link switch (virsh domif-setlink): False is a card with its cable unplugged

    def spec(self):
        """The engine's NicSpec of this card (NetSpecError for a bad forward)."""
        from core.net.nic import NicSpec, parse_forward
        return NicSpec(backend=self.backend, model=self.model, mac=self.mac,
                       forwards=[parse_forward(f) for f in self.forwards], tap=self.tap, bridge=self.bridge,
                       link=self.link)


@dataclass
class DisplayConfig:
    """The screen. `vnc` serves it over VNC (RFB) from the VM process while the VM runs: "" (off), "HOST:DISPLAY"
    (a loopback address, TCP port 5900 + DISPLAY, as QEMU's -vnc) or "unix:PATH"; `vnc_password` (1..8
    characters) asks VNC clients for it (RFC 6143's VNC authentication), empty for none (core/vnc, docs/vnc.md)."""

    type: str = "vga"
    vnc: str = ""
    vnc_password: str = ""

    def vnc_uri(self) -> str:
        """Where a VNC viewer connects, as virsh domdisplay prints it (vnc://127.0.0.1:5901), or "" when off."""
        return parse_vnc(self.vnc, "display.vnc").uri() if self.vnc else ""


@dataclass
class SerialConfig:
    mode: str = "console"    # ttyS0 shown in the VM window's serial console
    log_file: str = ""       # also append everything the guest prints here when set


@dataclass
class VmConfig:
    name: str
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    memory_mib: int = 512
    vcpus: int = 1
    accel: str = "auto"
    boot: BootConfig = field(default_factory=BootConfig)
    disks: list[DiskConfig] = field(default_factory=list)
    cdroms: list[CdromConfig] = field(default_factory=list)
    nics: list[NicConfig] = field(default_factory=list)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    autostart: bool = False
    notes: str = ""

    def validate(self) -> None:
        """Raise ConfigError (one line) on the first field that is wrong. Host limits are checked elsewhere
        (validate_for_host) because a definition may be written on one machine and run on another."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("name is empty: give the VM a name")
        if len(self.name) > MAX_NAME:
            raise ConfigError(f"name is {len(self.name)} characters long: use at most {MAX_NAME}")
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"name {self.name!r}: use letters, digits, space and . _ + - "
                              "(starting with a letter or digit)")
        try:
            if str(uuidlib.UUID(self.uuid)) != self.uuid:
                raise ValueError
        except (ValueError, AttributeError, TypeError):
            raise ConfigError(f"uuid {self.uuid!r} is not a lower-case RFC 4122 UUID") from None
        _check_int("memory_mib", self.memory_mib, MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB")
        _check_int("vcpus", self.vcpus, 1, MAX_VCPUS)
        _check_choice("accel", self.accel, ACCELERATORS)
        self._validate_boot()
        seen: set[str] = set()
        for i, disk in enumerate(self.disks):
            if not disk.path or not os.path.isabs(disk.path):
                raise ConfigError(f"disks[{i}].path {disk.path!r}: give an absolute path")
            if disk.path in seen:
                raise ConfigError(f"disks[{i}].path {disk.path} is attached twice")
            seen.add(disk.path)
            _check_choice(f"disks[{i}].format", disk.format, DISK_FORMATS)
            _check_choice(f"disks[{i}].bus", disk.bus, DISK_BUSES)
        for i, cd in enumerate(self.cdroms):
            if cd.path and not os.path.isabs(cd.path):
                raise ConfigError(f"cdroms[{i}].path {cd.path!r} is a relative path: give an absolute path")
            if cd.path in seen:
                # A disk is written to; the same file as a read-only disc would change under the guest.
                raise ConfigError(f"cdroms[{i}].path {cd.path} is also attached as a disk: use it as one or the "
                                  "other")
        ide_disks = sum(d.bus == "ide" for d in self.disks)
        if ide_disks + len(self.cdroms) > IDE_POSITIONS:
            raise ConfigError(f"{ide_disks} IDE disks and {len(self.cdroms)} CD-ROM drives make "
                              f"{ide_disks + len(self.cdroms)} IDE drives: the IDE controller holds "
                              f"{IDE_POSITIONS}; put disks on virtio or remove a CD-ROM drive")
        from core.net.nic import NetSpecError
        for i, nic in enumerate(self.nics):
            try:
                spec = nic.spec()
            except NetSpecError as exc:
                raise ConfigError(f"nics[{i}]: {exc}") from None
            try:
                spec.validate(f"nics[{i}]")
            except NetSpecError as exc:
                raise ConfigError(str(exc)) from None
            if nic.mac and nic.mac in [n.mac for n in self.nics[:i]]:
                raise ConfigError(f"nics[{i}].mac {nic.mac} is also an earlier card's: give each card its own")
        _check_choice("display.type", self.display.type, DISPLAY_TYPES)
        if self.display.vnc:
            if self.display.type == "none":
                raise ConfigError("display.vnc is set but display.type is none: a VM without a screen has no "
                                  "console to serve; clear display.vnc or use display.type vga")
            try:
                parse_vnc(self.display.vnc, "display.vnc")
                if self.display.vnc_password:
                    check_password(self.display.vnc_password)
            except ValueError as exc:
                raise ConfigError(str(exc).replace("the VNC password", "display.vnc_password")) from None
        _check_choice("serial.mode", self.serial.mode, SERIAL_MODES)
        if self.serial.log_file and not os.path.isabs(self.serial.log_file):
            raise ConfigError(f"serial.log_file {self.serial.log_file!r}: give an absolute path")
        if not isinstance(self.autostart, bool):
            raise ConfigError("autostart: give true or false")
        if not isinstance(self.notes, str) or len(self.notes) > MAX_NOTES:
            raise ConfigError(f"notes: give text of at most {MAX_NOTES} characters")

    def _validate_boot(self) -> None:
        boot = self.boot
        for what, value in (("boot.kernel", boot.kernel), ("boot.initrd", boot.initrd),
                            ("boot.firmware", boot.firmware)):
            if value and not os.path.isabs(value):
                raise ConfigError(f"{what} {value!r} is a relative path: give an absolute path")
        if boot.initrd and not boot.kernel:
            raise ConfigError("boot.initrd is set but boot.kernel is empty: give the kernel it goes with, or "
                              "clear the initrd")
        if len(boot.cmdline.encode()) >= MAX_CMDLINE:
            raise ConfigError(f"boot.cmdline is {len(boot.cmdline.encode())} bytes: "
                              f"Linux takes at most {MAX_CMDLINE - 1}")
        for entry in boot.order:
            if entry not in BOOT_DEVICES:
                raise ConfigError(f"boot.order {entry!r} is not a boot device: use {', '.join(BOOT_DEVICES)}")
        if len(set(boot.order)) != len(boot.order):
            raise ConfigError(f"boot.order {boot.order} lists a device twice: give each once")
        if "kernel" in boot.order and not boot.kernel:
            raise ConfigError("boot.order lists kernel but boot.kernel is empty: give a kernel or remove kernel "
                              "from the order")

    def boot_devices(self) -> list[str]:
        """The devices the next start tries, in order: the effective order, with the CD first when cd_once."""
        order = self.boot.effective_order()
        return ["cd"] + [d for d in order if d != "cd"] if self.boot.cd_once else order

    def validate_for_host(self, host_memory_mib: int, host_cpus: int) -> None:
        """The limits of the host that will run this VM (shown and enforced by the wizard too)."""
        if self.memory_mib > host_memory_mib:
            raise ConfigError(f"memory {self.memory_mib} MiB is more than this host has ({host_memory_mib} MiB)")
        if self.vcpus > host_cpus:
            raise ConfigError(f"vcpus {self.vcpus} is more than this host's {host_cpus} CPUs")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> VmConfig:
        """Build and validate a VmConfig from parsed JSON; ConfigError says which key is wrong."""
        if not isinstance(data, dict):
            raise ConfigError(f"expected a JSON object, found {type(data).__name__}")
        data = dict(data)
        schema = data.pop("schema", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION:
            raise ConfigError(f"schema {schema!r} is not one this version of Vireo reads ({SCHEMA_VERSION})")
        try:
            boot = _sub(BootConfig, data.pop("boot", {}), "boot")
            disks_raw = data.pop("disks", [])
            if not isinstance(disks_raw, list):
                raise ConfigError("disks: expected a list")
            disks = [_sub(DiskConfig, d, f"disks[{i}]") for i, d in enumerate(disks_raw)]
            # Absent in definitions written before CD-ROM drives existed: none.
            cdroms_raw = data.pop("cdroms", [])
            if not isinstance(cdroms_raw, list):
                raise ConfigError("cdroms: expected a list")
            cdroms = [_sub(CdromConfig, c, f"cdroms[{i}]") for i, c in enumerate(cdroms_raw)]
            nics = _nics(data)
            display = _sub(DisplayConfig, data.pop("display", {}), "display")
            serial = _sub(SerialConfig, data.pop("serial", {}), "serial")
            unknown = set(data) - {f for f in cls.__dataclass_fields__}
            if unknown:
                raise ConfigError(f"unknown key {sorted(unknown)[0]!r}")
            if "name" not in data:
                raise ConfigError("missing key 'name'")
            cfg = cls(**data, boot=boot, disks=disks, cdroms=cdroms, nics=nics, display=display, serial=serial)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        _check_types(cfg)
        cfg.validate()
        return cfg

    def copy(self, **changes: Any) -> VmConfig:
        """A deep copy (nested parts too), with top-level fields changed."""
        return replace(copy.deepcopy(self), **changes)


def running_vm_takes(old: VmConfig, new: VmConfig) -> bool:
    """Whether `new` differs from a running VM's definition `old` only in what it can take while it runs: its name,
    notes and autostart at once, and, for its next start, the discs in its CD-ROM drives (not the drives) and the
    boot order (as `virsh change-media --config` and virt-manager's boot order change a running guest's
    persistent definition)."""
    if len(new.cdroms) != len(old.cdroms):
        return False
    light = replace(old, name=new.name, notes=new.notes, autostart=new.autostart,
                    cdroms=copy.deepcopy(new.cdroms),
                    boot=replace(old.boot, order=list(new.boot.order), cd_once=new.boot.cd_once))
    return light == new


def _sub(kind: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object")
    unknown = set(data) - set(kind.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    try:
        return kind(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _nics(data: dict[str, Any]) -> list[NicConfig]:
    """The cards of a definition; one written before cards existed has `network` {mode, mac} instead: mode
    "user" is one user-mode card with that MAC, "none" no card."""
    legacy = data.pop("network", None)
    if "nics" in data:
        raw = data.pop("nics")
        if not isinstance(raw, list):
            raise ConfigError("nics: expected a list")
        return [_sub(NicConfig, n, f"nics[{i}]") for i, n in enumerate(raw)]
    if legacy is None:
        return []
    if not isinstance(legacy, dict) or set(legacy) - {"mode", "mac"}:
        raise ConfigError("network: expected an object with mode and mac")
    mode, mac = legacy.get("mode", "none"), legacy.get("mac", "")
    _check_choice("network.mode", mode, NETWORK_MODES)
    if not isinstance(mac, str):
        raise ConfigError("network.mac: expected str")
    return [NicConfig(backend="user", mac=mac)] if mode == "user" else []


_EXPECTED_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "uuid": (str,), "memory_mib": (int,), "vcpus": (int,), "accel": (str,),
    "autostart": (bool,), "notes": (str,),
}


def _check_types(cfg: VmConfig) -> None:
    for key, types in _EXPECTED_TYPES.items():
        value = getattr(cfg, key)
        # bool is an int in Python; 'memory_mib: true' is still a mistake.
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {types[0].__name__}, found {type(value).__name__}")
    for part, obj in (("boot", cfg.boot), ("display", cfg.display),
                      ("serial", cfg.serial), *((f"disks[{i}]", d) for i, d in enumerate(cfg.disks)),
                      *((f"nics[{i}]", n) for i, n in enumerate(cfg.nics)),
                      *((f"cdroms[{i}]", c) for i, c in enumerate(cfg.cdroms))):
        for name, f in obj.__dataclass_fields__.items():
            value = getattr(obj, name)
            if f.type in ("list[str]", list[str]):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{part}.{name}: expected a list of words like [\"cd\", \"disk\"]")
                continue
            want = bool if f.type in ("bool", bool) else str
            if not isinstance(value, want):
                raise ConfigError(f"{part}.{name}: expected {want.__name__}, found {type(value).__name__}")


def _check_int(name: str, value: Any, lo: int, hi: int, unit: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected a whole number, found {value!r}")
    if not lo <= value <= hi:
        suffix = f" {unit}" if unit else ""
        raise ConfigError(f"{name} {value}{suffix} is out of range: give {lo}..{hi}{suffix}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} {value!r}: use one of {', '.join(choices)}")


# -- where things live ---------------------------------------------------------------------------------------

def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var, "")
    # The spec says a relative path in these variables is invalid and must be ignored.
    return Path(value) if value and os.path.isabs(value) else Path.home() / default


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/vireo (default ~/.config/vireo)."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "vireo"


def vms_dir() -> Path:
    return config_dir() / "vms"


def make_private_dirs(path: Path | str) -> None:
    """mkdir -p `path`, each folder it creates 0700 (as the runtime directory is): definitions name disk images
    and kernels, and images hold the guests' data, so they are the user's alone (issue 18, defect 11). Folders
    that exist are left as they are. os.makedirs applies its mode to the last folder only (Python 3.7+)."""
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue        # another process made it first
        os.chmod(folder, 0o700)     # mode is filtered by the umask; 0700 is what is meant whatever it is


def images_dir() -> Path:
    """Where new disk images go: $XDG_DATA_HOME/vireo/images (default ~/.local/share/vireo/images)."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "vireo" / "images"


# -- the store ----------------------------------------------------------------------------------------------

MAX_DEFINITION_BYTES = 1 << 20     # a definition is a few KiB; anything near this is not one


def read_definition_file(path: Path) -> bytes:
    """A definition file's bytes: a regular file of at most MAX_DEFINITION_BYTES, opened without blocking (a FIFO
    named *.json must not hang the loader, a symlink to /dev/zero must not be read without end); ConfigError
    otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError("cannot read: it is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("not a regular file (a device, FIFO or socket): remove it or replace it "
                              "with a definition")
        if st.st_size > MAX_DEFINITION_BYTES:
            raise ConfigError(f"{st.st_size} bytes, larger than a definition can be ({MAX_DEFINITION_BYTES})")
        data = os.read(fd, MAX_DEFINITION_BYTES + 1)
        if len(data) > MAX_DEFINITION_BYTES:
            raise ConfigError(f"larger than a definition can be ({MAX_DEFINITION_BYTES} bytes)")
        return data
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LoadError:
    """A definition file that could not be loaded: which file and what is wrong (one line)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content, never a mix
    (write a temp file in the same directory, fsync it, rename it over, fsync the directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ConfigStore:
    """One JSON file per VM under `directory` (default vms_dir()), named by the VM's uuid."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else vms_dir()
        self._broken: set[Path] = set()

    def path_for(self, vm_uuid: str) -> Path:
        return self.directory / f"{vm_uuid}.json"

    def load_all(self) -> tuple[list[VmConfig], list[LoadError]]:
        """Every valid definition (sorted by name) and one LoadError per file that is not."""
        configs: list[VmConfig] = []
        errors: list[LoadError] = []
        self._broken = set()
        try:
            entries = sorted(p for p in self.directory.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            return [], [LoadError(self.directory, f"cannot list the directory: {exc.strerror}")]
        names: dict[str, Path] = {}
        for path in entries:
            try:
                cfg = self._load(path)
            except ConfigError as exc:
                errors.append(LoadError(path, str(exc)))
                self._broken.add(path)
                continue
            except Exception as exc:    # whatever one file does, it is that file's error row, not every VM's
                errors.append(LoadError(path, f"cannot load: {type(exc).__name__}: {str(exc)[:200]}"))
                self._broken.add(path)
                continue
            other = names.get(cfg.name.casefold())
            if other is not None:
                errors.append(LoadError(path, f"name {cfg.name!r} is already used by {other.name}"))
                self._broken.add(path)
                continue
            names[cfg.name.casefold()] = path
            configs.append(cfg)
        configs.sort(key=lambda c: c.name.casefold())
        return configs, errors

    def _load(self, path: Path) -> VmConfig:
        raw = read_definition_file(path)
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text (byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:
            raise ConfigError("not a VM definition: its JSON is nested too deeply") from None
        except ValueError as exc:   # e.g. an integer of more digits than int() converts (sys.int_info)
            raise ConfigError(f"not a VM definition: {str(exc)[:120]}") from None
        cfg = VmConfig.from_dict(data)
        if path.stem != cfg.uuid:
            raise ConfigError(f"file name does not match its uuid {cfg.uuid} (rename it to {cfg.uuid}.json)")
        return cfg

    def save(self, cfg: VmConfig) -> Path:
        """Validate and write `cfg` atomically. Refuses to replace a file that failed to load."""
        cfg.validate()
        path = self.path_for(cfg.uuid)
        if path in self._broken:
            raise ConfigError(f"{path} could not be loaded earlier; fix or remove it by hand, Vireo will not "
                              "overwrite it")
        make_private_dirs(self.directory)
        from core.net.nic import derived_mac
        for i, nic in enumerate(cfg.nics):
            # The card keeps its address from now on, in the file and in the caller's copy (which the host keeps
            # and dumpconfig prints).
            nic.mac = nic.mac or derived_mac(cfg.uuid, i)
        data = cfg.to_dict()
        text = json.dumps(data, indent=2, sort_keys=False) + "\n"
        atomic_write(path, text.encode())
        return path

    def remove(self, vm_uuid: str) -> None:
        self._unlink(self.path_for(vm_uuid))

    def remove_broken(self, path: Path | str) -> None:
        """Delete a definition file the last load_all() could not load, at the user's request (it is never
        rewritten). `path` must be exactly one of those files, in this directory: anything else — a loaded
        definition, a file elsewhere, the same file spelled with '..' — is refused with ConfigError."""
        path = Path(path)
        if path not in self._broken or path.parent != self.directory:
            raise ConfigError(f"{path} is not a definition file that failed to load in {self.directory}: "
                              "nothing was deleted")
        try:
            self._unlink(path)
        except OSError as exc:
            raise ConfigError(f"cannot delete {path}: {exc.strerror or exc}") from None
        self._broken.discard(path)

    def _unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
