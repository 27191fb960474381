"""The VM process's answer to net_status (core/vmproc/wire.py), read as untrusted input: each network card's
MAC, model, backend, link state and counters, bounded field by field."""
from __future__ import annotations

from typing import Any

from core.vmproc.wire import MAX_NICS, MAX_REASON

_NIC_TEXT = ("mac", "model", "backend", "link_reason")
_NIC_COUNTS = ("mtu", "rx_bytes", "rx_packets", "tx_bytes", "tx_packets", "rx_dropped", "tx_dropped",
               "notifies_native", "notify_exits")


def checked_nics(value: Any) -> list[dict[str, Any]]:
    """A net_status result from the VM process, field by field; anything odd is refused with ValueError (one
    line), which the handle reports as the VM process's error."""
    if not isinstance(value, list) or len(value) > MAX_NICS:
        raise ValueError("the VM process answered net_status with something that is not a list of cards")
    out = []
    for card in value:
        if not isinstance(card, dict):
            raise ValueError("the VM process answered net_status with a malformed card")
        # link_up: the backend lives; switch_up: the user's link switch (the guest's carrier needs both).
        entry: dict[str, Any] = {"link_up": card.get("link_up") is True,
                                 "switch_up": card.get("switch_up") is not False}
        for key in _NIC_TEXT:
            v = card.get(key, "")
            entry[key] = v[:MAX_REASON] if isinstance(v, str) else ""
        for key in _NIC_COUNTS:
            v = card.get(key, 0)
            entry[key] = v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 else 0
        forwards = card.get("forwards", [])
        entry["forwards"] = [f[:100] for f in forwards if isinstance(f, str)][:64] if isinstance(forwards, list) \
            else []
        out.append(entry)
    return out
