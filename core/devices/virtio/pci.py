"""Virtio over PCI, the modern (1.x) interface (virtio 1.2, section 4.1).

One 64-bit memory BAR carries the four structures the vendor capabilities point at (4.1.4): common configuration
(4.1.4.3), notifications (4.1.4.4), the ISR status byte (4.1.4.5) and the device-specific configuration (4.1.4.6).
Interrupts are MSI-X (4.1.5.1.2, table and PBA in a second BAR) when the accelerator can deliver MSIs, and INTx
through the ISR byte otherwise or when the driver does not enable MSI-X. A driver that breaks the ring protocol
gets DEVICE_NEEDS_RESET (2.1.2), never a host error.

A device that declares `threaded` (virtio-blk) has a worker thread for requests that may block: the device
serves quick requests right in the notification (a thread hand-off costs more than a read from the host's page
cache), and hands the first slow one (a flush: fsync) and everything after it to the worker, so the vCPU runs on
while the host waits for its disk; the worker completes each request with the used ring and an interrupt.
While the worker has work, notifications go to it, so requests are still taken in ring order. The ring itself
is only touched under the device lock (pop_request/complete); the worker's I/O runs outside it. A reset (by
the driver or the machine) first stops new requests, then waits for the one in flight to finish, so nothing
touches the rings or the image after the reset has returned.
"""
from __future__ import annotations

import logging
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from core.devices.doorbell import Doorbell
from core.devices.pci import Bar, PciDevice
from core.devices.virtio import state as virtio_state
from core.devices.virtio.queue import DescriptorChain, Virtqueue, VirtqueueError
from core.memory import GuestMemory, GuestMemoryError
from core.state.fields import StateError

log = logging.getLogger(__name__)

VIRTIO_VENDOR_ID = 0x1AF4
VIRTIO_F_INDIRECT_DESC = 1 << 28
VIRTIO_F_EVENT_IDX = 1 << 29
VIRTIO_F_VERSION_1 = 1 << 32

STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK = 1, 2, 4
STATUS_FEATURES_OK, STATUS_NEEDS_RESET, STATUS_FAILED = 8, 64, 128

CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE = 1, 2, 3, 4
PCI_CAP_VENDOR, PCI_CAP_MSIX = 0x09, 0x11

# Layout of the virtio BAR (BAR 4).
COMMON_OFF, COMMON_LEN = 0x0000, 0x40
ISR_OFF, ISR_LEN = 0x1000, 0x4
DEVICE_OFF, DEVICE_LEN = 0x2000, 0x1000
NOTIFY_OFF, NOTIFY_MULTIPLIER = 0x3000, 4
VIRTIO_BAR, VIRTIO_BAR_SIZE = 4, 0x4000
MSIX_BAR, MSIX_BAR_SIZE, MSIX_PBA_OFF = 1, 0x1000, 0x800
NO_VECTOR = 0xFFFF

MsiSink = Callable[[int, int], None]
Handoff = Callable[["Virtqueue", "DescriptorChain", int, int], None]


class VirtioDevice(ABC):
    """A virtio device type (block, net, ...). The transport calls these; the device calls transport.used()."""

    device_id: int = 0
    pci_class: int = 0xFF0000
    num_queues: int = 1
    queue_size: int = 256
    threaded: bool = False        # True: requests are served on a worker thread, not in the notify MMIO exit

    def __init__(self) -> None:
        self.transport: VirtioPciDevice | None = None

    @abstractmethod
    def features(self) -> int:
        """Device feature bits (the transport adds VERSION_1, INDIRECT_DESC and EVENT_IDX)."""

    @abstractmethod
    def config(self) -> bytes:
        """The device-specific configuration structure, as the driver reads it."""

    def config_write(self, offset: int, data: bytes) -> None:
        """Most device configuration fields are read-only; override for writable ones."""

    @abstractmethod
    def process(self, queue: Virtqueue, memory: GuestMemory, handoff: Handoff | None = None) -> None:
        """The driver notified `queue`: consume its available chains. With `handoff` (a threaded device served
        in the notification), a request that may block is passed to it, and processing stops there."""

    def serve(self, queue: Virtqueue, memory: GuestMemory, chain: DescriptorChain, generation: int,
              used_before: int) -> None:
        """Serve one chain handed to the worker, complete and signal it (threaded devices)."""
        raise NotImplementedError

    def activate(self, driver_features: int) -> None:
        """The driver set DRIVER_OK with these features."""

    def reset(self) -> None:
        """The driver (or a machine reset) reset the device."""

    def doorbell(self, index: int) -> Doorbell | None:
        """The doorbell of queue `index` when its work runs on a thread of the device's own (core/devices/doorbell.py):
        the transport offers it for the queue's notification address, and the accelerator rings it without a
        Python exit. None: notifications reach process() on the vCPU thread."""
        return None


class VirtioPciDevice(PciDevice):
    """A modern virtio-pci function wrapping one VirtioDevice."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, msi_sink: MsiSink | None = None) -> None:
        super().__init__(VIRTIO_VENDOR_ID, 0x1040 + device.device_id, device.pci_class, revision=1,
                         subsystem_vendor_id=VIRTIO_VENDOR_ID, subsystem_id=0x40, interrupt_pin=1)
        self.device = device
        device.transport = self
        self.memory = memory
        self.msi_sink = msi_sink
        self.lock = threading.RLock()
        self._idle = threading.Condition(self.lock)
        self._inflight = 0            # requests popped and not yet completed (served outside the lock)
        self._generation = 0          # bumped at every reset: a completion from before it is dropped
        self._worker: _QueueWorker | None = None
        self.queues = [Virtqueue(memory, i, device.queue_size) for i in range(device.num_queues)]
        self.add_bar(VIRTIO_BAR, Bar(VIRTIO_BAR_SIZE, False, _BarWindow(self, self._bar_read, self._bar_write,
                                                                        self._notify_doorbells), is_64bit=True))
        self._add_virtio_cap(CAP_COMMON, COMMON_OFF, COMMON_LEN)
        self._add_virtio_cap(CAP_NOTIFY, NOTIFY_OFF, NOTIFY_MULTIPLIER * len(self.queues),
                             struct.pack("<I", NOTIFY_MULTIPLIER))
        self._add_virtio_cap(CAP_ISR, ISR_OFF, ISR_LEN)
        self._add_virtio_cap(CAP_DEVICE, DEVICE_OFF, DEVICE_LEN)
        self.msix_entries = len(self.queues) + 1
        self.msix_table = bytearray(16 * self.msix_entries)
        self.msix_pending = [False] * self.msix_entries
        self.msix_cap = 0
        if msi_sink is not None:
            self.add_bar(MSIX_BAR, Bar(MSIX_BAR_SIZE, False, _BarWindow(self, self._msix_read, self._msix_write)))
            body = struct.pack("<HII", self.msix_entries - 1, 0 | MSIX_BAR, MSIX_PBA_OFF | MSIX_BAR)
            self.msix_cap = self.add_capability(PCI_CAP_MSIX, body, writable=b"\x00\xc0")
        self._reset_state()

    def _add_virtio_cap(self, cfg_type: int, offset: int, length: int, extra: bytes = b"") -> None:
        cap_len = 16 + len(extra)
        body = struct.pack("<BBBB2xII", cap_len, cfg_type, VIRTIO_BAR, 0, offset, length) + extra
        self.add_capability(PCI_CAP_VENDOR, body)

    def _reset_state(self) -> None:
        self._quiesce()
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.queue_select = 0
        self.config_generation = 0
        self.config_msix_vector = NO_VECTOR
        self.isr = 0
        for q in self.queues:
            q.reset()
        self.set_intx(False)

    def reset(self) -> None:
        """Machine reset: the function and the device go back to power-on state."""
        with self.lock:
            super().reset()
            self.msix_table[:] = bytes(len(self.msix_table))
            self.msix_pending = [False] * self.msix_entries
            self._reset_state()
            self.device.reset()

    @property
    def offered_features(self) -> int:
        return self.device.features() | VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX

    # -- interrupts ---------------------------------------------------------------------------------------
    def _msix_enabled(self) -> bool:
        if not self.msix_cap:
            return False
        ctrl = struct.unpack_from("<H", self.config, self.msix_cap + 2)[0]
        return bool(ctrl & 0x8000)

    def _msix_function_masked(self) -> bool:
        return bool(struct.unpack_from("<H", self.config, self.msix_cap + 2)[0] & 0x4000)

    def _send_msix(self, vector: int) -> None:
        if vector >= self.msix_entries:
            return  # NO_VECTOR or out of range: the driver asked for no interrupt
        addr_lo, addr_hi, data, ctrl = struct.unpack_from("<IIII", self.msix_table, 16 * vector)
        if ctrl & 1 or self._msix_function_masked():
            self.msix_pending[vector] = True
            return
        self.msix_pending[vector] = False
        assert self.msi_sink is not None
        self.msi_sink(addr_hi << 32 | addr_lo, data)

    def interrupt(self, vector: int, isr_bit: int) -> None:
        with self.lock:
            if self._msix_enabled():
                self._send_msix(vector)
            else:
                self.isr |= isr_bit
                self.set_intx(True)

    @property
    def generation(self) -> int:
        """The reset generation now (for used(): a completion signalled after a reset is dropped)."""
        return self._generation

    def used(self, queue: Virtqueue, old_used: int, generation: int | None = None) -> None:
        """The device published used entries on `queue` since `old_used`: interrupt the driver if it wants.
        With `generation`, nothing happens if the device was reset since."""
        with self.lock:
            if generation is not None and generation != self._generation:
                return
            if queue.ready and queue.needs_interrupt(old_used):
                self.interrupt(queue.msix_vector, 1)

    # -- request flow (any thread) ------------------------------------------------------------------------
    def pop_request(self, queue: Virtqueue) -> tuple[DescriptorChain, int, int] | None:
        """The next available chain of `queue`, the reset generation it belongs to and the used index before
        it; None when there is none or the device may not run. A broken ring raises VirtqueueError or
        GuestMemoryError."""
        with self.lock:
            if not self.status & STATUS_DRIVER_OK or self.status & STATUS_NEEDS_RESET or not queue.ready:
                return None
            chain = queue.pop()
            if chain is None:
                return None
            self._inflight += 1
            return chain, self._generation, queue.used_idx

    def complete(self, queue: Virtqueue, chain: DescriptorChain, written: int, generation: int) -> int | None:
        """Publish a served request in the used ring; return the new used index, or None if a reset came in
        between (the request is dropped). The caller signals the driver with used() once a batch is done."""
        with self.lock:
            self._inflight -= 1
            published = generation == self._generation and queue.ready
            if published:
                queue.push(chain, written)
            if not self._inflight:
                self._idle.notify_all()
            return queue.used_idx if published else None

    def abandon(self) -> None:
        """A popped request will not be completed (the ring broke while serving it)."""
        with self.lock:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def _quiesce(self) -> None:
        """Stop taking requests and wait for the one in flight (lock held; the wait releases it)."""
        for q in self.queues:
            q.ready = False
        while self._inflight:
            if not self._idle.wait(30):
                log.error("virtio %s: a request is still in flight after 30 s; resetting anyway",
                          type(self.device).__name__)
                break
        self._generation += 1

    def wait_idle(self, timeout: float = 30) -> bool:
        """Wait until every notification so far has been served (tests, and before closing the image)."""
        worker = self._worker
        return worker.wait_idle(timeout) if worker is not None else True

    # -- machine state (docs/machine-state.md; the transport record is core/state/virtio_state.py's) -------
    def quiesce(self, timeout: float = 30) -> None:
        """Let the worker finish every request taken from the rings (call with the vCPUs stopped)."""
        if not self.wait_idle(timeout):
            raise RuntimeError(f"virtio {type(self.device).__name__}: requests still in flight after {timeout} s")

    def get_state(self) -> dict:
        return {"pci": super().get_state(), "virtio": virtio_state.get_state(self)}

    def set_state(self, state: dict) -> None:
        where = f"virtio {self.slot:02x}.{self.function}"
        if not isinstance(state, dict) or set(state) != {"pci", "virtio"}:
            raise StateError(f"{where}: expected a record with pci and virtio")
        virtio_state.set_state(self, state["virtio"], where)
        super().set_state(state["pci"])

    def close(self) -> None:
        """Stop the worker thread (after the request in flight); call before closing the device's backend."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def device_error(self, why: str) -> None:
        """A device thread found the driver broke the protocol: DEVICE_NEEDS_RESET for this device only."""
        with self.lock:
            if not self.status & STATUS_NEEDS_RESET:
                self._device_error(why)

    def config_changed(self) -> None:
        """The device configuration changed (virtio-net's link status): a new generation and a configuration
        change notification (4.1.4.5), once the driver is running."""
        with self.lock:
            self.config_generation = (self.config_generation + 1) & 0xFF
            if self.status & STATUS_DRIVER_OK:
                self.interrupt(self.config_msix_vector, 2)

    def may_run(self) -> bool:
        """Whether the driver is running the device (DRIVER_OK, no reset needed): call with the lock held."""
        return bool(self.status & STATUS_DRIVER_OK) and not self.status & STATUS_NEEDS_RESET

    def _device_error(self, why: str) -> None:
        log.warning("virtio %s: %s; device needs reset", type(self.device).__name__, why)
        self.status |= STATUS_NEEDS_RESET
        self.config_generation = (self.config_generation + 1) & 0xFF
        self.interrupt(self.config_msix_vector, 2)

    # -- BAR 4 --------------------------------------------------------------------------------------------
    def _bar_read(self, off: int, size: int) -> int:
        if COMMON_OFF <= off < COMMON_OFF + COMMON_LEN:
            return self._common_read(off - COMMON_OFF, size)
        if ISR_OFF <= off < ISR_OFF + ISR_LEN:
            value, self.isr = self.isr, 0
            self.set_intx(False)
            return value
        if DEVICE_OFF <= off < DEVICE_OFF + DEVICE_LEN:
            cfg = self.device.config()
            o = off - DEVICE_OFF
            return int.from_bytes(cfg[o:o + size].ljust(size, b"\0"), "little")
        return 0

    def _bar_write(self, off: int, size: int, value: int) -> None:
        if COMMON_OFF <= off < COMMON_OFF + COMMON_LEN:
            self._common_write(off - COMMON_OFF, size, value)
        elif DEVICE_OFF <= off < DEVICE_OFF + DEVICE_LEN:
            self.device.config_write(off - DEVICE_OFF, value.to_bytes(size, "little"))
        elif NOTIFY_OFF <= off < NOTIFY_OFF + NOTIFY_MULTIPLIER * len(self.queues):
            self.notify((off - NOTIFY_OFF) // NOTIFY_MULTIPLIER)

    def _notify_doorbells(self) -> list[tuple[int, int]]:
        """(offset in BAR 4, eventfd) of each queue's notification address that has a doorbell."""
        bells = []
        for index in range(len(self.queues)):
            bell = self.device.doorbell(index)
            if bell is not None:
                bells.append((NOTIFY_OFF + NOTIFY_MULTIPLIER * index, bell.fd))
        return bells

    def notify(self, index: int) -> None:
        """The driver kicked queue `index`."""
        if not self.status & STATUS_DRIVER_OK or self.status & STATUS_NEEDS_RESET or index >= len(self.queues):
            return
        queue = self.queues[index]
        if not queue.ready:
            return
        if not self.device.threaded:
            self.run_queue(queue)
            return
        if self._worker is None:
            self._worker = _QueueWorker(self)
        if self._worker.idle():
            self.run_queue(queue, self._worker.handoff)
        else:
            self._worker.kick(index)

    def run_queue(self, queue: Virtqueue, handoff: Handoff | None = None, first: tuple | None = None) -> None:
        """Let the device consume `queue` (after serving `first`, a chain handed off with its generation and used
        index); a broken ring or a device-model failure marks the device as needing reset (the VM's disk stops,
        the host process does not)."""
        try:
            if first is not None:
                self.device.serve(queue, self.memory, *first)
            self.device.process(queue, self.memory, handoff)
        except (VirtqueueError, GuestMemoryError) as exc:
            with self.lock:
                self._device_error(str(exc))
        except Exception as exc:
            log.exception("virtio %s: device model failed", type(self.device).__name__)
            with self.lock:
                self._device_error(f"device model failed: {type(exc).__name__}: {exc}")

    def _queue(self) -> Virtqueue | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _common_read(self, off: int, size: int) -> int:
        q = self._queue()
        fields = {
            0x00: self.device_feature_select,
            0x04: (self.offered_features >> (32 * self.device_feature_select)) & 0xFFFF_FFFF
            if self.device_feature_select < 2 else 0,
            0x08: self.driver_feature_select,
            0x0C: (self.driver_features >> (32 * self.driver_feature_select)) & 0xFFFF_FFFF
            if self.driver_feature_select < 2 else 0,
            0x10: self.config_msix_vector,
            0x12: len(self.queues),
            0x14: self.status,
            0x15: self.config_generation,
            0x16: self.queue_select,
            0x18: q.size if q else 0,
            0x1A: q.msix_vector if q else NO_VECTOR,
            0x1C: int(q.ready) if q else 0,
            0x1E: self.queue_select if q else 0,
            0x20: q.desc_addr if q else 0,
            0x28: q.avail_addr if q else 0,
            0x30: q.used_addr if q else 0,
            0x38: self.queue_select if q else 0,
        }
        # Fields are naturally aligned; a driver may read a 64-bit field as two 32-bit halves.
        for base, value in fields.items():
            width = 8 if base in (0x20, 0x28, 0x30) else 4 if base in (0x00, 0x04, 0x08, 0x0C) else \
                1 if base in (0x14, 0x15) else 2
            if base <= off < base + width:
                shift = (off - base) * 8
                return (value >> shift) & ((1 << (8 * size)) - 1)
        return 0

    def _common_write(self, off: int, size: int, value: int) -> None:
        q = self._queue()
        if off == 0x00:
            self.device_feature_select = value
        elif off == 0x08:
            self.driver_feature_select = value
        elif off == 0x0C and self.driver_feature_select < 2 and not self.status & STATUS_FEATURES_OK:
            shift = 32 * self.driver_feature_select
            self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)
        elif off == 0x10:
            self.config_msix_vector = value
        elif off == 0x14:
            self._write_status(value & 0xFF)
        elif off == 0x16:
            self.queue_select = value
        elif q is not None and not q.ready:
            if off == 0x18:
                q.size = value
            elif off in (0x20, 0x24, 0x28, 0x2C, 0x30, 0x34):
                attr = {0x20: "desc_addr", 0x28: "avail_addr", 0x30: "used_addr"}[off & ~7]
                cur = getattr(q, attr)
                shift = 32 if off & 4 else 0
                width_mask = ((1 << (8 * size)) - 1) << shift
                setattr(q, attr, (cur & ~width_mask) | ((value << shift) & width_mask))
            elif off == 0x1A:
                q.msix_vector = value
            elif off == 0x1C and value == 1:
                try:
                    q.validate()
                except VirtqueueError as exc:
                    self._device_error(str(exc))
                    return
                q.event_idx = bool(self.driver_features & VIRTIO_F_EVENT_IDX)
                q.ready = True
        elif q is not None and off == 0x1A:
            q.msix_vector = value

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset_state()
            self.device.reset()
            return
        if value & STATUS_FEATURES_OK and not self.status & STATUS_FEATURES_OK:
            if self.driver_features & ~self.offered_features or not self.driver_features & VIRTIO_F_VERSION_1:
                value &= ~STATUS_FEATURES_OK   # the driver reads it back and sees the features were refused
        newly_ok = value & STATUS_DRIVER_OK and not self.status & STATUS_DRIVER_OK
        self.status = value | (self.status & STATUS_NEEDS_RESET)
        if newly_ok:
            self.device.activate(self.driver_features)

    # -- MSI-X table (BAR 1) ------------------------------------------------------------------------------
    def _msix_read(self, off: int, size: int) -> int:
        if off < len(self.msix_table):
            return int.from_bytes(self.msix_table[off:off + size], "little")
        if MSIX_PBA_OFF <= off < MSIX_PBA_OFF + 8:
            bits = sum(1 << i for i, p in enumerate(self.msix_pending) if p)
            return (bits >> (8 * (off - MSIX_PBA_OFF))) & ((1 << (8 * size)) - 1)
        return 0

    def _msix_write(self, off: int, size: int, value: int) -> None:
        if off + size <= len(self.msix_table):
            self.msix_table[off:off + size] = value.to_bytes(size, "little")
            entry = off // 16
            if off % 16 == 12 and not value & 1 and self.msix_pending[entry]:
                self._send_msix(entry)   # unmasking delivers what was held back (PCI 3.0, 6.8.2.9)

    def config_written(self, offset: int, size: int) -> None:
        if self.msix_cap and offset <= self.msix_cap + 3 and offset + size > self.msix_cap + 2:
            if self._msix_enabled() and not self._msix_function_masked():
                for i, pending in enumerate(self.msix_pending):
                    if pending:
                        self._send_msix(i)


class _QueueWorker:
    """The thread that serves a threaded device's queues after notifications."""

    def __init__(self, dev: VirtioPciDevice) -> None:
        self.dev = dev
        self._cond = threading.Condition()
        self._kicked: set[int] = set()
        self._handed: list[tuple[Virtqueue, tuple]] = []
        self._busy = False
        self._stopping = False
        self.thread = threading.Thread(target=self._loop, name=f"virtio-{type(dev.device).__name__.lower()}",
                                       daemon=True)
        self.thread.start()

    def kick(self, index: int) -> None:
        with self._cond:
            self._kicked.add(index)
            self._cond.notify_all()

    def handoff(self, queue: Virtqueue, chain: DescriptorChain, generation: int, used_before: int) -> None:
        """Serve this popped chain, then the rest of its queue, on the worker."""
        with self._cond:
            self._handed.append((queue, (chain, generation, used_before)))
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._kicked and not self._handed

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while not self._kicked and not self._handed and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                # Taking the work before serving it: a kick that arrives while serving is another round.
                kicked, self._kicked = sorted(self._kicked), set()
                handed, self._handed = self._handed, []
                self._busy = True
            for queue, first in handed:
                self.dev.run_queue(queue, first=first)
            for index in kicked:
                self.dev.run_queue(self.dev.queues[index])

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy and not self._kicked and not self._handed
                                       or self._stopping, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join(30)


class _BarWindow:
    """Adapts a BAR's absolute MMIO addresses to offsets, under the device lock."""

    def __init__(self, dev: VirtioPciDevice, read, write, doorbells=None) -> None:
        self.dev = dev
        self._read = read
        self._write = write
        if doorbells is not None:
            self.doorbells = doorbells      # PciBus binds them to the accelerator where the BAR is mapped

    def _bar_base(self, addr: int) -> int:
        for bar in self.dev.bars.values():
            if bar.handler is self and bar.mapped_at is not None and bar.mapped_at <= addr < bar.mapped_at + bar.size:
                return bar.mapped_at
        return addr

    def mmio_read(self, addr: int, size: int) -> int:
        with self.dev.lock:
            return self._read(addr - self._bar_base(addr), size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        with self.dev.lock:
            self._write(addr - self._bar_base(addr), size, value)
