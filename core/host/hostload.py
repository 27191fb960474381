"""The whole host's load, for Host Details' graphs (issue 17, "Host details": CPU, memory, disk and network for
the whole host): cumulative counters read from Linux's /proc (proc(5): /proc/stat's cpu line, /proc/meminfo's
MemTotal and MemAvailable, /proc/diskstats' sectors of whole disks, /proc/net/dev's bytes of every interface but
lo). The host returns counters, not rates, so each client turns two of its own samples into rates over its own
interval and clients polling at different rates never disturb each other. HostLoad is mixed into LocalHost;
clients reach it through the service."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

SECTOR = 512        # /proc/diskstats counts 512-byte sectors whatever the device's own sector size


@dataclass(frozen=True)
class HostCounters:
    timestamp: float        # time.monotonic() on the host
    cpu_busy: float         # seconds of all CPUs not idle (user, nice, system, irq, softirq, steal), since boot
    cpu_total: float        # seconds of all CPUs, since boot
    memory_total_mib: int
    memory_used_mib: int    # MemTotal - MemAvailable: what the kernel could not give back at once
    disk_read_bytes: int    # whole disks (partitions, loop and RAM disks left out), since boot
    disk_written_bytes: int
    net_rx_bytes: int       # every interface but lo, since boot
    net_tx_bytes: int


def _whole_disks() -> set[str]:
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return set()
    return {n for n in names if not n.startswith(("loop", "ram", "zram", "sr"))}


def read_counters() -> HostCounters:
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user and nice)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            meminfo[key] = int(rest.split()[0]) if rest.split() else 0
    mem_total = meminfo.get("MemTotal", 0) // 1024
    mem_used = mem_total - meminfo.get("MemAvailable", meminfo.get("MemFree", 0)) // 1024
    disks, read, written = _whole_disks(), 0, 0
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 10 and parts[2] in disks:
                read += int(parts[5]) * SECTOR
                written += int(parts[9]) * SECTOR
    rx = tx = 0
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, data = line.partition(":")
            values = data.split()
            if name.strip() != "lo" and len(values) >= 9:
                rx += int(values[0])
                tx += int(values[8])
    return HostCounters(time.monotonic(), (total - idle) / hz, total / hz, mem_total, mem_used, read, written,
                        rx, tx)


def rates(before: HostCounters, after: HostCounters) -> tuple[float, float, float, float]:
    """(CPU %, memory used MiB, disk KiB/s read + written, network KiB/s received + sent) between two samples."""
    dt = max(after.timestamp - before.timestamp, 1e-6)
    dcpu = after.cpu_total - before.cpu_total
    cpu = 100.0 * (after.cpu_busy - before.cpu_busy) / dcpu if dcpu > 0 else 0.0
    disk = (after.disk_read_bytes - before.disk_read_bytes + after.disk_written_bytes - before.disk_written_bytes)
    net = after.net_rx_bytes - before.net_rx_bytes + after.net_tx_bytes - before.net_tx_bytes
    return max(0.0, min(cpu, 100.0)), float(after.memory_used_mib), max(disk, 0) / dt / 1024, max(net, 0) / dt / 1024


class HostLoad:
    """The host-load request of a host that runs on this machine's kernel."""

    def host_counters(self) -> HostCounters:
        return read_counters()
