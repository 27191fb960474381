"""A state file opened for restoring (SavedState), and the machine definition read back from it
(docs/machine-state.md, the "machine" record): the asdict of a MachineConfig, trusted no more than any other field
of the file, so every field is checked before a Machine is built from it."""
from __future__ import annotations

from dataclasses import dataclass

from core.machine import DiskSpec, MachineConfig
from core.machine_state import read_header
from core.net.nic import Forward, NetSpecError, NicSpec
from core.state.container import StateReader
from core.state.fields import StateError


def config_from_record(rec: object, where: str = "machine.config") -> MachineConfig:
    """The definition a state file carries (asdict of one), checked field by field; StateError if not."""
    if not isinstance(rec, dict):
        raise StateError(f"{where}: the machine definition is not a record")
    unknown = set(rec) - set(MachineConfig.__dataclass_fields__)
    if unknown:
        raise StateError(f"{where}: unknown definition field {sorted(unknown)[0]!r}")
    if "debugcon" not in rec:
        rec = {**rec, "debugcon": True}       # saved before the field existed: every firmware machine had the port
    try:
        disks = [DiskSpec(**d) for d in rec.get("disks", [])]
        nics = [NicSpec(**{**n, "forwards": [Forward(**f) for f in n.get("forwards", [])]})
                for n in rec.get("nics", [])]
        config = MachineConfig(**{**rec, "disks": disks, "nics": nics})
        for i, nic in enumerate(config.nics):
            nic.validate(f"{where}.nics[{i}]")
    except NetSpecError as exc:
        raise StateError(str(exc)) from None
    except (TypeError, AttributeError) as exc:
        raise StateError(f"{where}: the machine definition is malformed ({exc})") from None
    for name, kind in (("memory_mib", int), ("cpus", int), ("boot_menu_wait_ms", int), ("cmdline", str),
                       ("accel", str), ("display", str), ("on_triple_fault", str), ("decompress_on_host", bool),
                       ("debugcon", bool)):
        if type(getattr(config, name)) is not kind:
            raise StateError(f"{where}: definition field {name} has the wrong type")
    strings = [*config.cdroms, *config.boot, *config.boot_once, *(d.path for d in config.disks)]
    optional = [config.kernel, config.initrd, config.firmware, *(d.format for d in config.disks)]
    if not all(isinstance(x, str) for x in strings) or not all(x is None or isinstance(x, str) for x in optional):
        raise StateError(f"{where}: a definition field that holds a path or a word has the wrong type")
    return config


@dataclass
class SavedState:
    """A state file opened for restoring: its reader (positioned at the RAM), the machine record and the other
    records (core/state/machine_state.read_header)."""

    path: str
    reader: StateReader
    machine: dict
    records: dict

    @classmethod
    def open(cls, path: str) -> tuple[MachineConfig, SavedState]:
        """The definition saved in the file and the rest of it, ready for Machine(config, restore=...)."""
        reader = StateReader(path)
        try:
            machine, records = read_header(reader)
            config = config_from_record(machine["config"])
        except BaseException:
            reader.close()
            raise
        return config, cls(path, reader, machine, records)

    def close(self) -> None:
        self.reader.close()
