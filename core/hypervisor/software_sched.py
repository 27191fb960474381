"""The software CPU's vCPU scheduler: one unicorn instance per VM, time-shared by the VM's vCPU threads.

SMP (`--cpus N`): one unicorn instance per VM, time-shared by the vCPU threads (one runs at a time; a waiting
vCPU preempts the running one after a 4 ms quantum), as QEMU's single-threaded TCG does (accel/tcg/
tcg-accel-ops-rr.c, round-robin over the vCPUs). Not one instance per vCPU: unicorn 2.1.4 never sets
CF_PARALLEL, so LOCK-prefixed instructions are translated into plain load/modify/store sequences -- two instances
on two host threads would break the guest's atomics (spinlocks, reference counts; Intel SDM vol. 3, 8.1.2.2
"Software Controlled Bus Locking") -- and each instance would keep its own translation cache, stale after another
vCPU modifies code (Linux patches its text at run time). Time-sharing one instance keeps atomicity and one
coherent code cache; a switch saves and restores the per-CPU part of CPUX86State (everything before
`end_reset_fields`, target/i386/cpu.h: what QEMU's reset and unicorn's uc_context_save cover) and flushes the
soft TLB.

Time slices: emu_start runs without unicorn's own timeout (that spawns a polling thread per call). A slice ends
when something needs the vCPU thread: an interrupt from another thread (timer, device, IPI) stops the slice with
uc_emu_stop; an interrupt raised on the vCPU thread itself (an EOI revealing the next one, a device answering a
port write) only sets the VIRQ request and QEMU takes it at the next block boundary. A stop request can be lost if
it races with the start of emu_start (unicorn clears it there), so each kick re-checks after 2 ms until the slice
it aimed at has ended. The slice itself is run by the vCPU (software_vcpu); this module hands out the emulator.

At interpreter exit every live accelerator is quiesced (see _live) before unicorn's own finalizers close it.

VcpuScheduler is a part of SoftwareAccelerator (a mixin): the annotations below name what it uses of the rest.
"""
from __future__ import annotations

import atexit
import ctypes
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.hypervisor import uc_internals as ui

if TYPE_CHECKING:
    from core.hypervisor.software_vcpu import SoftwareVcpu

QUANTUM_NS = 2_000_000
REKICK_NS = 2_000_000

QUIESCE_TIMEOUT_S = 2.0

# Every live accelerator: at interpreter exit their vCPU threads (daemons, possibly inside emulation) are stopped
# before Python frees what translated code and hooks use -- above all before unicorn's own weakref.finalize
# calls uc_close at exit (that crashed the process when a VM was still running). atexit runs handlers last-in
# first-out and weakref registers its exit hook with the first finalizer, so ours is registered after the
# first Uc exists.
_live: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _quiesce_all() -> None:
    for acc in list(_live):
        acc.quiesce()


class _FairLock:
    """A ticket lock: vCPU threads get the one emulator in the order they asked for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def acquire(self, on_contention: Callable[[], None] | None = None) -> None:
        """Wait for the lock; `on_contention` runs once (outside the lock) if someone else holds it."""
        with self._cond:
            ticket = self._next
            self._next += 1
            if ticket == self._serving:
                return
        if on_contention is not None:
            on_contention()
        with self._cond:
            while ticket != self._serving:
                self._cond.wait()

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def waiting(self) -> int:
        return self._next - self._serving - 1


def _register_live(acc: VcpuScheduler) -> None:
    """Quiesce `acc` at interpreter exit (see _live)."""
    _live.add(acc)
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_quiesce_all)
        _exit_hook_registered = True


class VcpuScheduler:
    """Who holds the one emulator of SoftwareAccelerator, and whose CPU state is loaded in it."""

    q: ui._Qemu
    uch: int
    view: ui.CpuView
    _initial_context: ctypes.Array
    _drain_invalidations: Callable[[], None]
    _pending_map_ops: list
    _apply_map_ops: Callable[[], None]

    def _init_scheduler(self) -> None:
        self.lock = _FairLock()
        self.owner: threading.Thread | None = None    # the thread holding the emulator (inside or between slices)
        self.current: SoftwareVcpu | None = None      # whose state is loaded in the emulator
        self.running: SoftwareVcpu | None = None      # inside emu_start right now
        self._frozen = False

    def acquire(self, vcpu: SoftwareVcpu) -> None:
        """Take the emulator for `vcpu` (its state loaded)."""
        self.lock.acquire(self._contended)
        self.owner = threading.current_thread()
        if self.current is not vcpu:
            self._switch_to(vcpu)
        self._drain_invalidations()
        if self._pending_map_ops:
            self._apply_map_ops()

    def release(self) -> None:
        self.owner = None
        self.lock.release()

    def _contended(self) -> None:
        """Another vCPU thread now waits for the emulator: the running slice gets a quantum, not forever (a
        guest spinning with its timer masked would otherwise starve a CPU it just woke with an IPI). The
        waiter is counted before `running` is read here, and a slice sets `running` before it counts the
        waiters, so one of the two arms the quantum."""
        running = self.running
        if running is not None:
            running._quantum.arm_after(QUANTUM_NS)

    def _switch_to(self, vcpu: SoftwareVcpu) -> None:
        v = self.view
        if self.current is not None:
            ctypes.memmove(self.current.context, v.env, ui.ENV_END_RESET_FIELDS)
        if vcpu.context_valid:
            ctypes.memmove(v.env, vcpu.context, ui.ENV_END_RESET_FIELDS)
        else:                                          # first time: the power-on state of a fresh CPU
            ctypes.memmove(v.env, self._initial_context, ui.ENV_END_RESET_FIELDS)
            vcpu.context_valid = True
        self.current = vcpu
        v.tlb_flush()

    def quiesce(self, timeout: float = QUIESCE_TIMEOUT_S) -> bool:
        """Stop emulation for good: no slice runs after this returns True (vCPU threads that try park forever).
        False if a slice did not end within `timeout` (a device call blocked inside it)."""
        self._frozen = True
        deadline = time.monotonic() + timeout
        while True:
            # A slice sets `running` before it looks at `_frozen`; we set `_frozen` before looking at `running`.
            running = self.running
            if running is None:
                return True
            if time.monotonic() > deadline:
                return False
            self.q.uc_emu_stop(self.uch)
            time.sleep(0.001)


def _park_forever() -> None:
    """A vCPU thread of an accelerator stopped for good (process exit): never touch the emulator again."""
    threading.Event().wait()
