"""Queue doorbells rung natively on the software CPU: the software counterpart of KVM's ioeventfd (KVM API doc,
4.59 KVM_IOEVENTFD).

A virtio driver's notification is a 2-byte write of the queue index to the queue's notification address (virtio
1.2, 4.1.4.4). For a queue served by a device thread (core/devices/doorbell.py) it only has to wake that thread,
but through unicorn it is an MMIO callback into Python: the interpreter lock, which the device threads hold
while they move frames, the device lock, the bus lookup -- ~30 us of the vCPU per notification
(docs/net-performance.md). Guest MMIO writes to the holes already go through a native stub first, for the local
APIC's EOI (uc_fast_eoi.WRITE_STUB); a write that is not an armed EOI now looks in this table before it falls back
to Python. A 2-byte write to an address in the table is answered with write(2) of 1 to that entry's eventfd and
nothing else, on the vCPU's thread, without the interpreter lock.

The table, one per unicorn instance: {count, 1, then count entries of {guest-physical address, fd}}; the 1 is the
8-byte value the stub writes. An entry is added by writing its fd, then its address, then the count (the stub
reads them in the other order; x86 keeps stores in order), and taken back by overwriting its address with one no
write can have. Each entry's fd is a duplicate the table owns and closes only with the instance, when no vCPU can
be inside the stub: a stub that read an address just before it was taken back still writes to that doorbell's
eventfd, never to a file that reused the number. A doorbell bound again (its BAR moved, the machine reset) reuses
its entry, so the table does not grow with reboots.
"""
from __future__ import annotations

import ctypes
import os
import threading
from ctypes import c_uint64

NO_ADDRESS = 0xFFFF_FFFF_FFFF_FFFF     # no 2-byte write has it
SLOTS = 32                              # 2 per virtio-net card; more are refused (the write then exits to Python)
_HEADER = 2                             # count, the value written


class DoorbellTable:
    """One instance's doorbells, read by uc_fast_eoi.WRITE_STUB through its block's fourth word."""

    def __init__(self) -> None:
        self.words = (c_uint64 * (_HEADER + 2 * SLOTS))()
        self.words[1] = 1
        self.address = ctypes.addressof(self.words)
        self._slot_of: dict[int, int] = {}      # the device's fd number -> entry (the number names one eventfd
        self._dups: list[int] = []              # for the machine's life: its doorbells close only after it)
        self._lock = threading.Lock()

    def add(self, gpa: int, fd: int) -> None:
        """Ring eventfd `fd` for a 2-byte guest write to `gpa`. ValueError when the table is full or `gpa` has a
        doorbell already."""
        with self._lock:
            if self.slot_at(gpa) is not None:
                raise ValueError(f"a doorbell is already bound at {gpa:#x}")
            slot = self._slot_of.get(fd)
            if slot is None:
                if len(self._dups) == SLOTS:
                    raise ValueError(f"all {SLOTS} doorbells of the software CPU are in use")
                slot = len(self._dups)
                dup = os.dup(fd)
                os.set_inheritable(dup, False)
                self._dups.append(dup)
                self._slot_of[fd] = slot
                self.words[_HEADER + 2 * slot + 1] = dup
                self.words[_HEADER + 2 * slot] = gpa
                self.words[0] = slot + 1
            else:
                self.words[_HEADER + 2 * slot] = gpa

    def remove(self, gpa: int) -> None:
        """Writes to `gpa` exit to Python again. ValueError if no doorbell is bound there."""
        with self._lock:
            slot = self.slot_at(gpa)
            if slot is None:
                raise ValueError(f"no doorbell is bound at {gpa:#x}")
            self.words[_HEADER + 2 * slot] = NO_ADDRESS

    def slot_at(self, gpa: int) -> int | None:
        for slot in range(self.words[0]):
            if self.words[_HEADER + 2 * slot] == gpa:
                return slot
        return None

    def bound(self) -> dict[int, int]:
        """Guest-physical address -> the table's fd, of every doorbell bound now."""
        return {self.words[_HEADER + 2 * s]: self.words[_HEADER + 2 * s + 1] for s in range(self.words[0])
                if self.words[_HEADER + 2 * s] != NO_ADDRESS}

    def close(self) -> None:
        """Close the duplicates: only once no vCPU can run the instance's stub again."""
        with self._lock:
            self.words[0] = 0
            dups, self._dups, self._slot_of = self._dups, [], {}
        for dup in dups:
            os.close(dup)
