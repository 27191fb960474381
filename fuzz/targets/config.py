"""VM definition files (core/config.py: ConfigStore._load, VmConfig.from_dict and validate, the NIC and VNC specs
they name): a hostile definition file may only give a one-line ConfigError, and a definition that loads must
survive its own round trip (to_dict, from_dict) unchanged."""
from __future__ import annotations

import json
from pathlib import Path

from core.config import ConfigError, ConfigStore, VmConfig
from fuzz.harness import scratch_dir, target

_dir = Path(scratch_dir("config"))
_store = ConfigStore(_dir)
_UUID = "0d6f4ad2-5c3b-4a43-9a4e-1f2b3c4d5e6f"


def _seeds() -> list[bytes]:
    full = {"schema": 1, "name": "deb 12", "uuid": _UUID, "memory_mib": 1024, "vcpus": 2, "accel": "auto",
            "boot": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img", "cmdline": "console=ttyS0",
                     "order": ["kernel", "cd", "disk"], "firmware": "", "cd_once": False},
            "disks": [{"path": "/var/a.qcow2", "format": "qcow2", "bus": "virtio", "readonly": False},
                      {"path": "/var/b.img", "format": "raw", "bus": "ide", "readonly": True}],
            "cdroms": [{"path": "/var/d.iso"}, {"path": ""}],
            "nics": [{"backend": "user", "model": "virtio", "mac": "52:54:00:12:34:56",
                      "forwards": ["tcp:127.0.0.1:2222-:22", "udp::5353-:53"], "link": True},
                     {"backend": "tap", "tap": "tap0", "bridge": "br0", "mac": ""}],
            "display": {"type": "vga", "vnc": "127.0.0.1:1", "vnc_password": "secret"},
            "serial": {"mode": "console", "log_file": "/tmp/serial.log"}, "autostart": True, "notes": "n"}
    small = {"name": "a", "uuid": _UUID, "display": {"vnc": "unix:/run/v.sock"}}
    out = [json.dumps(full).encode(), json.dumps(small).encode(), json.dumps(full, indent=1).encode()]
    try:
        out.append(json.dumps(VmConfig.from_dict(full).to_dict()).encode())
    except ConfigError:
        pass
    return out


TOKENS = tuple(f'"{k}"'.encode() for k in (
    "schema", "name", "uuid", "memory_mib", "vcpus", "accel", "boot", "kernel", "initrd", "cmdline", "order",
    "firmware", "cd_once", "disks", "path", "format", "bus", "readonly", "cdroms", "nics", "backend", "model",
    "mac", "forwards", "tap", "bridge", "link", "display", "type", "vnc", "vnc_password", "serial", "mode",
    "log_file", "autostart", "notes", "kvm", "software", "qcow2", "raw", "ide", "virtio", "user", "cd", "disk",
    "tcp:", "udp:", "unix:", "[::1]:", "localhost:", "127.0.0.1:", "-:", ":")) + (
    b"null", b"true", b"false", b"[]", b"{}", b"1e309", b"-1", b"NaN", b"99999999999999999999", b"0.5", b",",
    b'"\\u0000"', b'"\\ud800"', b"[[[[[[[[", b"\xff")


@target("config", allowed=(ConfigError,), seeds=_seeds, max_len=8192, dictionary=TOKENS)
def fuzz_config(data: bytes) -> None:
    """Load a hostile VM definition file; a valid one must round-trip and give its NIC and VNC specs."""
    path = _dir / f"{_UUID}.json"
    path.write_bytes(data)
    cfg = _store._load(path)
    again = VmConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    if again != cfg:
        raise AssertionError("a loaded definition changes on its round trip through to_dict/from_dict")
    for nic in cfg.nics:
        nic.spec()
    cfg.display.vnc_uri()
    cfg.boot.effective_order()
