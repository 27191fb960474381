"""A running VM's sample as the Host API reports it (VmStats): CPU percent and disk and network rates are
differences between two samples of the VM process's counters, so each sample is kept for the next. The network
counters are the virtio-net cards' own rx/tx byte counts (net_status, summed over the cards: nic_totals)."""
from __future__ import annotations

import time
from typing import Any

from core.host.api import VmStats

Sample = tuple[float, float, tuple[Any, Any]]


def stats_from_sample(sample: dict[str, Any], previous: Sample | None, vcpus: int,
                      memory_mib: int) -> tuple[VmStats, Sample]:
    """The VmStats of `sample` (the VM process's counters) against the `previous` one, and the sample to keep."""
    now = time.monotonic()
    cpu = float(sample.get("cpu_seconds") or 0.0)
    counters = (sample.get("disk_read_bytes"), sample.get("disk_write_bytes"), sample.get("net_rx_bytes"),
                sample.get("net_tx_bytes"))
    percent, rates = 0.0, (None, None, None, None)
    if previous is not None and now > previous[0]:
        elapsed = now - previous[0]
        percent = max(0.0, min(100.0, (cpu - previous[1]) / elapsed / vcpus * 100))
        rates = tuple(None if c is None or p is None else max(0.0, (c - p) / elapsed)
                      for c, p in zip(counters, previous[2], strict=True))
    resident = sample.get("resident_bytes")
    stats = VmStats(timestamp=now, cpu_percent=percent, cpu_seconds=cpu, memory_mib=memory_mib,
                    memory_resident_mib=None if resident is None else resident / (1024 * 1024),
                    disk_read_bps=rates[0], disk_write_bps=rates[1], net_rx_bps=rates[2], net_tx_bps=rates[3])
    return stats, (now, cpu, counters)


def nic_totals(cards: list[dict[str, Any]]) -> dict[str, int]:
    """The bytes every card received and sent (net_status's counters), as a sample's net_rx_bytes/net_tx_bytes."""
    return {"net_rx_bytes": sum(c.get("rx_bytes", 0) for c in cards),
            "net_tx_bytes": sum(c.get("tx_bytes", 0) for c in cards)}
