"""What a VM snapshot is to a Host's user (docs/vm-snapshots.md): its name, when it was taken, its description,
whether the VM ran (machine state included) or was shut off (disks only), and a small PNG of the screen. The same
record goes over the service wire (to_dict / from_dict), read there as untrusted."""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

SNAPSHOT_STATES = ("running", "paused", "shutoff")
MAX_NAME = 255                  # bytes; virsh takes any name, qcow2 up to 65535, a file name up to 255
MAX_DESCRIPTION = 4096
MAX_THUMBNAIL = 256 * 1024


class SnapshotRecordError(ValueError):
    """A snapshot record that is not one (from the wire or the metadata file)."""


@dataclass
class VmSnapshot:
    name: str
    created: float                  # seconds since the epoch
    description: str = ""
    state: str = "shutoff"          # the VM's state when it was taken: running / paused (with machine state)
    vm_state_size: int = 0
    thumbnail: bytes = b""          # PNG, empty when the VM had no screen (or was shut off)

    @property
    def has_state(self) -> bool:
        return self.state != "shutoff"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created, "description": self.description, "state": self.state,
                "vm_state_size": self.vm_state_size, "thumbnail": base64.b64encode(self.thumbnail).decode()}

    @classmethod
    def from_dict(cls, value: Any) -> VmSnapshot:
        """The record `value` (checked field by field); SnapshotRecordError with the field at fault."""
        if not isinstance(value, dict):
            raise SnapshotRecordError("a snapshot is not a record")
        name, created, desc = value.get("name"), value.get("created"), value.get("description", "")
        state, size, thumb = value.get("state"), value.get("vm_state_size", 0), value.get("thumbnail", "")
        if not isinstance(name, str) or not check_name(name):
            raise SnapshotRecordError("a snapshot's name is missing or malformed")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise SnapshotRecordError(f"snapshot {name}: created is not a time")
        if not isinstance(desc, str) or len(desc) > MAX_DESCRIPTION:
            raise SnapshotRecordError(f"snapshot {name}: the description is malformed")
        if state not in SNAPSHOT_STATES:
            raise SnapshotRecordError(f"snapshot {name}: state {state!r} is none of {', '.join(SNAPSHOT_STATES)}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SnapshotRecordError(f"snapshot {name}: vm_state_size is malformed")
        if not isinstance(thumb, str) or len(thumb) > MAX_THUMBNAIL * 2:
            raise SnapshotRecordError(f"snapshot {name}: the thumbnail is malformed")
        try:
            png = base64.b64decode(thumb, validate=True)
        except binascii.Error:
            raise SnapshotRecordError(f"snapshot {name}: the thumbnail is not base64") from None
        return cls(name, float(created), desc, state, size, png)


def check_name(name: str) -> bool:
    """A name a VM snapshot may have: 1 to 255 bytes, printable, no slash (it names the thumbnail's record)."""
    return 0 < len(name.encode()) <= MAX_NAME and name.isprintable() and "/" not in name
