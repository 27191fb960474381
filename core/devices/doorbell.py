"""A device thread's doorbell: an eventfd (eventfd(2)) the thread waits on, rung by the driver's queue
notification without the device model where the accelerator can, and by Python for everything else.

A virtio driver notifies a queue by writing its index to the queue's notification address (virtio 1.2, 4.1.4.4).
When the device's work for that queue runs on a thread of its own (virtio-net's transmit and receive threads),
the write only has to wake that thread; taking it as an MMIO exit into Python costs the vCPU ~30 us of
interpreter (and the interpreter lock, which the device threads hold). So a transport offers each queue's
doorbell for its notification address, and the accelerator rings it itself: KVM in the kernel (KVM API doc,
4.59 KVM_IOEVENTFD; QEMU's ioeventfd), the software CPU in its native MMIO write stub (uc_doorbells). A write the
accelerator does not take (no binding, another width) reaches the transport's MMIO handler, which rings the same
doorbell from Python.

wait() consumes every ring so far, so a thread that waits, then looks at its ring, then waits again cannot lose a
notification made while it looked: the counter is already non-zero and the next wait returns at once.
"""
from __future__ import annotations

import os
import threading


class Doorbell:
    """One eventfd. ring() from any thread (or natively, by its fd); wait() from one thread."""

    def __init__(self) -> None:
        # Blocking: the waiter sleeps in read(2) without the interpreter lock. A write blocks only when the
        # counter would pass 2^64 - 2, which a waiter that keeps reading never lets happen.
        self.fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._closed = False
        self._lock = threading.Lock()   # a ring never writes to the number after close() gave it up
        self.rung = 0                   # rings the waiter has taken, from anywhere
        self.rung_here = 0              # rings made through ring(), i.e. not by the accelerator

    def ring(self) -> None:
        with self._lock:
            if not self._closed:
                self.rung_here += 1
                os.eventfd_write(self.fd, 1)

    def wait(self) -> int:
        """Sleep until rung; the number of rings since the last wait (at least 1)."""
        count = os.eventfd_read(self.fd)
        self.rung += count
        return count

    @property
    def rung_natively(self) -> int:
        """Rings taken so far that the accelerator made (KVM's ioeventfd, the software CPU's stub)."""
        return max(0, self.rung - self.rung_here)

    def close(self) -> None:
        """Close the eventfd (its waiter must have stopped: close does not wake a read). An accelerator that
        bound it keeps its own reference (KVM's, or uc_doorbells' duplicate), so a native ring after this goes
        to that eventfd, never to whatever file takes the number next."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)
