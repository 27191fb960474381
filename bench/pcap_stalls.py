"""Host -> guest transfers in a passt capture (`passt --pcap`), and the stalls in them (bench/net.py --pcap).

passt writes every frame it exchanges with the guest to a classic pcap file (libpcap's format: a 24-byte file
header, then a 16-byte record header before each frame: seconds, microseconds, captured and original length).
A host -> guest download through passt is a TCP connection whose data comes from the host's server port. Its
data frames come in bursts (passt sends what the host socket holds, then waits for the guest's ACK); a *stall* is
a gap between data frames longer than STALL_S. Session 11 found one of ~170 ms in every slow transfer, on QEMU's
side as on Vireo's, with the guest having acknowledged everything before it: passt had nothing to send, the host
sender was waiting (docs/net-performance.md).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STALL_S = 0.05
_ETH_IPV4, _TCP = b"\x08\x00", 6


@dataclass
class Transfer:
    start: float            # the first data frame's capture time
    seconds: float          # first to last data frame
    data_bytes: int
    longest_gap: float      # seconds

    @property
    def stalled(self) -> bool:
        return self.longest_gap > STALL_S


def _frames(path: Path) -> Iterator[tuple[float, bytes]]:
    with path.open("rb") as f:
        if len(f.read(24)) < 24:
            return
        while len(header := f.read(16)) == 16:
            sec, usec, captured, _ = struct.unpack("<IIII", header)
            yield sec + usec / 1e6, f.read(captured)


def downloads(path: Path, server_port: int, min_bytes: int = 1 << 20) -> list[Transfer]:
    """The capture's TCP connections carrying at least min_bytes from server_port to the guest, in time order."""
    flows: dict[int, list[tuple[float, int]]] = {}
    for t, frame in _frames(path):
        if len(frame) < 54 or frame[12:14] != _ETH_IPV4 or frame[23] != _TCP:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        sport, dport = struct.unpack(">HH", tcp[:4])
        payload = total - ihl - (tcp[12] >> 4) * 4
        if sport == server_port and payload > 0:
            flows.setdefault(dport, []).append((t, payload))
    out = []
    for frames in flows.values():
        size = sum(n for _, n in frames)
        if size < min_bytes:
            continue
        times = [t for t, _ in frames]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        out.append(Transfer(times[0], times[-1] - times[0], size, max(gaps, default=0.0)))
    return sorted(out, key=lambda tr: tr.start)
