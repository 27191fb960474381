"""The agent protocol as a client reads it (core/protocol.py framing, core/agent/wire.py values): a hostile or
broken service may only give ProtocolError (bad framing) or WireError (a value of the wrong shape), one line each."""
from __future__ import annotations

import struct

from core.agent import wire
from core.config import VmConfig
from core.host.api import EventKind, FileProbe, HostCapabilities, HostEvent, VmInfo, VmState, VmStats
from core.host.images import ImageEntry
from core.hoststats import HostInfo
from core.protocol import FrameDecoder, ProtocolError, encode, hello
from fuzz.harness import Allow, target


def _seeds() -> list[bytes]:
    cfg = VmConfig.from_dict({"name": "vm", "uuid": "0d6f4ad2-5c3b-4a43-9a4e-1f2b3c4d5e6f",
                              "disks": [{"path": "/a.img"}], "nics": [{"forwards": ["tcp::2222-:22"]}]})
    info = VmInfo(cfg, VmState.RUNNING, "", "kvm", "")
    host = HostInfo(hostname="h", cpu_model="c", cpus=2, cores=2, memory_mib=4096, kvm_usable=True,
                    kvm_hardware=True, kvm_reason="", system="Linux")
    stats = VmStats(1.0, 50.0, 2.0, 512, 100.0, 1.0, 2.0, None, None)
    msgs = [
        encode(hello("agent", version="1", pid=1, max_frame=1 << 20)),
        encode({"t": "ret", "id": 1, "v": wire.vminfo_to(info)}),
        encode({"t": "ret", "id": 2, "v": wire.hostinfo_to(host)}) + encode({"t": "ret", "id": 3,
                                                                             "v": wire.stats_to(stats)}),
        encode({"t": "ret", "id": 4, "v": wire.probe_to(FileProbe(True, "kernel", "", "X"))}),
        encode({"t": "ret", "id": 5, "v": wire.caps_to(HostCapabilities(True, True, True))}),
        encode({"t": "ret", "id": 6, "v": wire.image_to(ImageEntry("/i.qcow2", "qcow2", 1 << 30, 4096, "vm", ""))}),
        encode(wire.event_to(HostEvent(EventKind.STATE, cfg.uuid, VmState.RUNNING, ""), info)),
        encode({"t": "ret", "id": 7, "v": {"path": "/x.json", "message": "bad"}}, b"payload"),
        encode({"t": "err", "id": 8, "e": "no"}),
    ]
    lines = b"\n".join(m[8:] for m in msgs)   # the JSON headers alone: framed by the target (see below)
    return [*msgs, b"".join(msgs), lines]


TOKENS = tuple(f'"{k}"'.encode() for k in (
    "t", "v", "id", "e", "config", "state", "reason", "accel", "hostname", "cpus", "cores", "memory_mib",
    "timestamp", "cpu_percent", "ok", "kind", "path", "virtual_size", "allocated", "uuid", "vm", "disks", "nics",
    "forwards", "display", "vnc", "boot", "running", "stopped", "crashed", "event", "ret", "hello", "proto")) + (
    b"null", b"true", b"false", b"[]", b"{}", b"1e309", b"-1", b"9223372036854775808", b"0.5", b'"\\u0000"', b",")


DECODERS = (wire.vminfo_from, wire.hostinfo_from, wire.stats_from, wire.probe_from, wire.caps_from,
            wire.image_from, wire.load_error_from, wire.config_from, wire.state_from)


@target("agent_wire", allowed=(ProtocolError,), seeds=_seeds, max_len=16384, dictionary=TOKENS)
def fuzz_agent_wire(data: bytes) -> None:
    """Split a hostile byte stream into frames and decode every value in it as each reply type."""
    if data[:1] == b"{":
        # JSON headers, one a line, framed here: mutations then reach the decoders instead of the framing.
        data = b"".join(encode_raw(line) for line in data.split(b"\n"))
    for header, _payload in FrameDecoder().feed(data):
        value = header.get("v", header)
        for decode in DECODERS:
            with Allow(wire.WireError):
                decode(value)
        with Allow(wire.WireError):
            wire.event_from(header)


def encode_raw(header: bytes, payload: bytes = b"") -> bytes:
    """A frame around header bytes as they are (encode() would re-serialise them)."""
    return struct.pack(">II", 4 + len(header) + len(payload), len(header)) + header + payload
