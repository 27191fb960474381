"""A virtio-pci function's transport and virtqueue state (core/devices/virtio/pci.py, queue.py) as a record.

Saved only once the device is quiescent: the Machine has stopped the vCPUs (no new notifications) and
`VirtioPciDevice.quiesce()` has let the worker finish every request it had taken from the rings, completing each
into the used ring (and signalling it). So the record holds no request in flight: `last_avail` says which chains
the device has consumed, `used_idx` which it has returned. A chain the driver made available but the device had
not yet taken is still in the ring in guest RAM; after a restore the queues are looked at once
(`resume_queues`), so it is served then -- nothing is lost, nothing runs twice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.devices.virtio.queue import MAX_QUEUE_SIZE, VirtqueueError
from core.state import fields as f

if TYPE_CHECKING:
    from core.devices.virtio.pci import VirtioPciDevice

TRANSPORT = {"status": f.U8, "device_feature_select": f.U32, "driver_feature_select": f.U32,
             "driver_features": f.U64, "queue_select": f.U16, "config_generation": f.U8,
             "config_msix_vector": f.U16, "isr": f.u(2)}
QUEUE = {"size": f.Int(1, MAX_QUEUE_SIZE), "desc_addr": f.U64, "avail_addr": f.U64, "used_addr": f.U64,
         "ready": f.BOOL, "msix_vector": f.U16, "last_avail": f.U16, "used_idx": f.U16, "event_idx": f.BOOL}


def get_state(dev: VirtioPciDevice) -> dict[str, Any]:
    with dev.lock:
        if dev._inflight:
            raise RuntimeError(f"virtio {type(dev.device).__name__}: {dev._inflight} request(s) in flight; "
                               "quiesce() before saving")
        state = f.capture(dev, TRANSPORT, 0)
        state["msix_table"] = bytes(dev.msix_table)
        state["msix_pending"] = sum(1 << i for i, p in enumerate(dev.msix_pending) if p)
        state["queues"] = [f.capture(q, QUEUE, 0) for q in dev.queues]
        return state


def set_state(dev: VirtioPciDevice, state: Any, where: str) -> None:
    f.expect_record(state, where, (*TRANSPORT, "msix_table", "msix_pending", "queues"))
    top = f.validate({k: state[k] for k in TRANSPORT}, TRANSPORT, where, 0)
    table = f.check(state["msix_table"], f.Bytes(len(dev.msix_table)), f"{where}.msix_table")
    pending = f.check(state["msix_pending"], f.u(dev.msix_entries), f"{where}.msix_pending")
    queues = state["queues"]
    if not isinstance(queues, list) or len(queues) != len(dev.queues):
        raise f.StateError(f"{where}.queues: expected {len(dev.queues)} queue record(s)")
    checked = [f.validate(q, QUEUE, f"{where}.queues[{i}]", 0) for i, q in enumerate(queues)]
    for i, (q, c) in enumerate(zip(dev.queues, checked, strict=True)):
        if c["size"] > q.max_size or c["size"] & (c["size"] - 1):
            raise f.StateError(f"{where}.queues[{i}].size: {c['size']} is not a power of two up to {q.max_size}")
    with dev.lock:
        dev._quiesce()                 # nothing of this machine's own may still run on the old rings
        f.apply(dev, top, TRANSPORT, 0)
        dev.msix_table[:] = table
        dev.msix_pending = [bool(pending >> i & 1) for i in range(dev.msix_entries)]
        for i, (q, c) in enumerate(zip(dev.queues, checked, strict=True)):
            f.apply(q, c, QUEUE, 0)
            if q.ready:
                try:
                    q.validate()       # the rings must lie in this machine's RAM
                except VirtqueueError as exc:
                    q.ready = False
                    raise f.StateError(f"{where}.queues[{i}]: {exc}") from None


def resume_queues(dev: VirtioPciDevice) -> None:
    """Serve what the driver made available and the device had not taken yet (after a restore)."""
    for index, q in enumerate(dev.queues):
        if q.ready:
            dev.notify(index)
