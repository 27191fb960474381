"""Host API values (core/host/api.py) as JSON objects and back, for the agent protocol.

Decoding never trusts the peer: a VM definition goes through VmConfig.from_dict (which validates every field),
numbers are checked for type, and any mismatch raises WireError — which the receiver treats as a malformed
message. Only the engine-free modules (core.config, core.host's dataclasses, core.hoststats) are imported.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from core.config import ConfigError, LoadError, VmConfig
from core.host.api import EventKind, FileProbe, HostCapabilities, HostEvent, VmInfo, VmState, VmStats
from core.host.images import ImageEntry
from core.hoststats import HostInfo


class WireError(ValueError):
    """A value from the peer that does not have the expected shape."""


def _str(d: dict, key: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise WireError(f"{key}: expected a string")
    return value


def _num(d: dict, key: str, optional: bool = False) -> float | None:
    value = d.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{key}: expected a number")
    return float(value)


def _int(d: dict, key: str) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{key}: expected an integer")
    return value


def _obj(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise WireError(f"{what}: expected an object")
    return value


def state_from(value: Any) -> VmState:
    try:
        return VmState(value)
    except ValueError:
        raise WireError(f"unknown VM state {str(value)[:20]!r}") from None


def config_to(cfg: VmConfig) -> dict[str, Any]:
    return cfg.to_dict()


def config_from(value: Any) -> VmConfig:
    try:
        return VmConfig.from_dict(_obj(value, "config"))
    except ConfigError as exc:
        raise WireError(f"VM definition: {exc}") from None


def vminfo_to(info: VmInfo) -> dict[str, Any]:
    return {"config": config_to(info.config), "state": info.state.value, "reason": info.reason,
            "accel": info.accel, "accel_reason": info.accel_reason}


def vminfo_from(value: Any) -> VmInfo:
    d = _obj(value, "vm")
    return VmInfo(config=config_from(d.get("config")), state=state_from(d.get("state")),
                  reason=_str(d, "reason", ""), accel=_str(d, "accel", ""), accel_reason=_str(d, "accel_reason", ""))


def hostinfo_to(info: HostInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def hostinfo_from(value: Any) -> HostInfo:
    d = _obj(value, "host info")
    try:
        return HostInfo(hostname=_str(d, "hostname"), cpu_model=_str(d, "cpu_model"), cpus=_int(d, "cpus"),
                        cores=_int(d, "cores"), memory_mib=_int(d, "memory_mib"),
                        kvm_usable=bool(d.get("kvm_usable")), kvm_hardware=bool(d.get("kvm_hardware")),
                        kvm_reason=_str(d, "kvm_reason", ""), system=_str(d, "system", ""),
                        images_dir=_str(d, "images_dir", ""))
    except TypeError as exc:
        raise WireError(str(exc)) from None


def stats_to(stats: VmStats | None) -> dict[str, Any] | None:
    return None if stats is None else dataclasses.asdict(stats)


def stats_from(value: Any) -> VmStats | None:
    if value is None:
        return None
    d = _obj(value, "stats")
    return VmStats(timestamp=_num(d, "timestamp"), cpu_percent=_num(d, "cpu_percent"),
                   cpu_seconds=_num(d, "cpu_seconds"), memory_mib=_int(d, "memory_mib"),
                   memory_resident_mib=_num(d, "memory_resident_mib", True),
                   disk_read_bps=_num(d, "disk_read_bps", True), disk_write_bps=_num(d, "disk_write_bps", True),
                   net_rx_bps=_num(d, "net_rx_bps", True), net_tx_bps=_num(d, "net_tx_bps", True))


def load_error_to(err: LoadError) -> dict[str, Any]:
    return {"path": str(err.path), "message": err.message}


def load_error_from(value: Any) -> LoadError:
    d = _obj(value, "load error")
    return LoadError(Path(_str(d, "path")), _str(d, "message"))


def caps_to(caps: HostCapabilities) -> dict[str, Any]:
    return dataclasses.asdict(caps)


def caps_from(value: Any) -> HostCapabilities:
    d = _obj(value, "capabilities")
    return HostCapabilities(disks=bool(d.get("disks")), network=bool(d.get("network")),
                            firmware_boot=bool(d.get("firmware_boot")))


def probe_to(probe: FileProbe) -> dict[str, Any]:
    return dataclasses.asdict(probe)


def probe_from(value: Any) -> FileProbe:
    d = _obj(value, "file probe")
    ok = d.get("ok")
    if not isinstance(ok, bool):
        raise WireError("file probe: 'ok' is not true or false")
    return FileProbe(ok=ok, kind=_str(d, "kind"), message=_str(d, "message", ""),
                     volume_id=_str(d, "volume_id", ""))


def event_to(event: HostEvent, info: VmInfo | None) -> dict[str, Any]:
    """An event with the VM's current info, so the client's mirror is up to date before its listeners run."""
    return {"t": "event", "kind": event.kind.value, "uuid": event.uuid,
            "state": event.state.value if event.state else None, "reason": event.reason,
            "vm": vminfo_to(info) if info is not None else None}


def event_from(d: dict[str, Any]) -> tuple[HostEvent, VmInfo | None]:
    try:
        kind = EventKind(d.get("kind"))
    except ValueError:
        raise WireError(f"unknown event kind {str(d.get('kind'))[:20]!r}") from None
    state = None if d.get("state") is None else state_from(d.get("state"))
    vm = None if d.get("vm") is None else vminfo_from(d.get("vm"))
    return HostEvent(kind, _str(d, "uuid"), state, _str(d, "reason", "")), vm


def image_to(entry: ImageEntry) -> dict[str, Any]:
    return dataclasses.asdict(entry)


def image_from(value: Any) -> ImageEntry:
    d = _obj(value, "disk image entry")
    try:
        return ImageEntry(path=_str(d, "path"), format=_str(d, "format", ""), virtual_size=_int(d, "virtual_size"),
                          allocated=_int(d, "allocated"), used_by=_str(d, "used_by", ""), error=_str(d, "error", ""))
    except TypeError as exc:
        raise WireError(str(exc)) from None
