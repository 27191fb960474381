"""A service client's VM-snapshot calls (core/agent/snapshot_calls.py on the other end), mixed into
core/remote/service.py's ServiceClient. What the service answers is read as untrusted: each record is checked
field by field (core/host/snapshot_info.py), and the thumbnails' lengths must add up to the payload."""
from __future__ import annotations

from typing import Any

from core.host.api import HostError
from core.host.snapshot_info import SnapshotRecordError, VmSnapshot
from core.remote.net_client import NetClient

LONG_CALL = 600.0           # a snapshot writes the guest's RAM into the disk image; a revert reads it back


def unpack_snapshots(value: Any, payload: bytes) -> list[VmSnapshot]:
    if not isinstance(value, list):
        raise HostError("the service sent a malformed snapshot list")
    out, pos = [], 0
    try:
        for record in value:
            n = record.get("thumb_len", 0) if isinstance(record, dict) else -1
            if not isinstance(n, int) or n < 0 or pos + n > len(payload):
                raise SnapshotRecordError("a thumbnail's length does not fit the payload")
            snap = VmSnapshot.from_dict({k: v for k, v in record.items() if k != "thumb_len"})
            snap.thumbnail = payload[pos:pos + n]
            pos += n
            out.append(snap)
    except SnapshotRecordError as exc:
        raise HostError(f"the service sent a malformed snapshot: {exc}") from None
    return out


class SnapshotClient(NetClient):
    """Uses ServiceClient's _call. It carries NetClient along so that service.py names one mixin for both (that
    module is at its line limit)."""

    def snapshot_list(self, vm_uuid: str) -> list[VmSnapshot]:
        value, payload = self._call("snapshot_list", uuid=vm_uuid)
        return unpack_snapshots(value, payload)

    def snapshot_create(self, vm_uuid: str, name: str | None = None, description: str = "") -> VmSnapshot:
        args: dict[str, Any] = {"uuid": vm_uuid, "description": description, "timeout": LONG_CALL}
        if name is not None:
            args["name"] = name
        value, payload = self._call("snapshot_create", **args)
        snaps = unpack_snapshots(value, payload)
        if len(snaps) != 1:
            raise HostError("the service sent a malformed snapshot")
        return snaps[0]

    def snapshot_revert(self, vm_uuid: str, name: str) -> None:
        self._call("snapshot_revert", uuid=vm_uuid, name=name, timeout=LONG_CALL)

    def snapshot_delete(self, vm_uuid: str, name: str) -> None:
        self._call("snapshot_delete", uuid=vm_uuid, name=name, timeout=LONG_CALL)
