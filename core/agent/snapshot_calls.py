"""The service's calls for VM snapshots (core/host/snapshots.py through the wire): snapshot_list,
snapshot_create, snapshot_revert and snapshot_delete, mixed into core/agent/connection.py's Connection. The
arguments come from a client and are checked here. Thumbnails travel in the binary payload, one after the other
(each record says its length), so a long list never meets the JSON header's size limit."""
from __future__ import annotations

from typing import Any

from core.agent import wire
from core.host.snapshot_info import MAX_DESCRIPTION, VmSnapshot, check_name


def _name(value: Any) -> str:
    if not isinstance(value, str) or not check_name(value):
        raise wire.WireError("a snapshot name must be 1 to 255 printable bytes without '/'")
    return value


def pack_snapshots(snapshots: list[VmSnapshot]) -> tuple[list[dict[str, Any]], bytes]:
    """Records without their thumbnails, plus the thumbnails as one payload."""
    records = []
    for s in snapshots:
        record = s.to_dict()
        record["thumbnail"] = ""
        record["thumb_len"] = len(s.thumbnail)
        records.append(record)
    return records, b"".join(s.thumbnail for s in snapshots)


class SnapshotCalls:
    """m_snapshot_* handlers; `self.host` is the service's Host."""

    def m_snapshot_list(self, uuid: str, **_: Any) -> tuple[list[dict[str, Any]], bytes]:
        return pack_snapshots(self.host.snapshot_list(str(uuid)))

    def m_snapshot_create(self, uuid: str, name: str | None = None, description: str = "",
                          **_: Any) -> tuple[list[dict[str, Any]], bytes]:
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise wire.WireError(f"a description must be a string of at most {MAX_DESCRIPTION} characters")
        snap = self.host.snapshot_create(str(uuid), None if name is None else _name(name), description)
        return pack_snapshots([snap])

    def m_snapshot_revert(self, uuid: str, name: str, **_: Any) -> None:
        self.host.snapshot_revert(str(uuid), _name(name))

    def m_snapshot_delete(self, uuid: str, name: str, **_: Any) -> None:
        self.host.snapshot_delete(str(uuid), _name(name))
