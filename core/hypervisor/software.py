"""The software CPU: x86-64 emulated by unicorn 2.1.4 (QEMU's TCG), behind the same interface as KVM.

What unicorn leaves out is supplied here and in its helpers, per the Intel SDM:

* Exceptions and INT n (vol. 3, ch. 6) are delivered by QEMU's own `x86_cpu_do_interrupt` from native hooks
  (uc_internals): real-mode IVT, protected- and long-mode IDT, privilege changes with TSS stacks, IST, error codes,
  CR2, double and triple faults.
* External interrupts are delivered inside QEMU's CPU loop at an instruction boundary where EFLAGS.IF = 1 and no
  STI/MOV SS shadow is active, through CPUState.interrupt_request's VIRQ request: QEMU then reads the vector from
  `env->vm_vmcb + 100`, which we point into a one-page MMIO region whose read is the interrupt-acknowledge cycle
  of this vCPU's local APIC (or, in ExtINT mode, the 8259A's). So the APIC state changes exactly when the CPU
  takes the interrupt, and a fault during delivery is handled by QEMU's loop (never from outside it).
* NMI through CPU_INTERRUPT_NMI (QEMU blocks further NMIs until IRET).
* RDMSR/WRMSR (IA32_APIC_BASE, x2APIC, IA32_TSC_DEADLINE, IA32_TSC; #GP for MSRs nobody implements), CPUID
  (software_cpuid), SYSCALL/SYSENTER with their architectural effect (vol. 2B), by interposing on QEMU's helpers.
* The TSC is the host's invariant TSC plus a per-VM offset (QEMU's RDTSC reads the host TSC natively), at the
  frequency measured at start-up and reported in CPUID leaf 0x15/0x16.
* HLT: emulation returns; the vCPU thread sleeps until an interrupt is deliverable, or an NMI/INIT/SIPI or a kick.
  With IF = 0 and nothing able to wake it, it sleeps until the Machine ends it -- as hardware hangs.

Time slices: emu_start runs without unicorn's own timeout (that spawns a polling thread per call). A slice ends
when something needs the vCPU thread: an interrupt from another thread (timer, device, IPI) stops the slice with
uc_emu_stop; an interrupt raised on the vCPU thread itself (an EOI revealing the next one, a device answering a
port write) only sets the VIRQ request and QEMU takes it at the next block boundary. A stop request can be lost if
it races with the start of emu_start (unicorn clears it there), so each kick re-checks after 2 ms until the slice
it aimed at has ended.

SMP (`--cpus N`): one unicorn instance per VM, time-shared by the vCPU threads (one runs at a time; a waiting
vCPU preempts the running one after a 4 ms quantum), as QEMU's single-threaded TCG does. Not one instance per vCPU:
unicorn 2.1.4 never sets CF_PARALLEL, so LOCK-prefixed instructions are translated into plain load/modify/store
sequences -- two instances on two host threads would break the guest's atomics (spinlocks, reference counts)
-- and each instance would keep its own translation cache, stale after another vCPU modifies code (Linux patches
its text at run time). Time-sharing one instance keeps atomicity and one coherent code cache; a switch saves and
restores the per-CPU part of CPUX86State (everything before `end_reset_fields`) and flushes the soft TLB.

Host writes into guest RAM (loader, device DMA) drop translated code for the range (GuestMemory write listener),
at once on the thread that owns the CPU, otherwise queued and applied before the next slice.

Device memory as RAM (map_ram: the VGA framebuffer BAR): unicorn 2.1.4 has no guard against changing the memory
map from a hook -- uc_mem_map_ptr/uc_mem_unmap only wrap QEMU's memory API (`nested_level` counts nested
emu_start calls, nothing more) -- but doing it there is unsafe: uc_mem_unmap frees the MemoryRegion (and, for
MMIO, its callback block) that a hook may be running from, and memory_unmap's uc_invalidate_tb translates the
*guest-physical* range through the current MMU as if it were virtual (get_page_addr_code), so with paging on it
invalidates the wrong code or takes a page fault that leaves CR2 and exception_index set. Mapping requests are
therefore queued and the running slice stopped; the owner applies them before its next emu_start, with the
power-on (real-mode, paging off) context loaded so that translation is the identity, then restores the vCPU's
context and flushes the TLB. Until then the PCI bus's MMIO handler for the BAR serves the same memory. The MMIO
holes below 4 GiB are mapped in aligned 16 MiB pieces: unmapping a region costs a TLB-flush call per page, so a
BAR replaces one small piece rather than splitting the hole (unicorn's own split would also hand the right part
the left part's user data, which is our base address). Ranges above 4 GiB are refused (the caller keeps MMIO).

Every Python exception in a hook stops emulation and run() returns VcpuExit(ERROR, detail): a device-model bug
stops that VM, never the host process.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from ctypes import c_int, c_uint32, c_uint64, c_void_p

import unicorn
from unicorn import x86_const as X

from core import platform
from core.bus import MmioBus, PortIoBus
from core.devices.ioapic import IoApic
from core.devices.lapic import ApicBus, ApicCpu, LocalApic, decode_msi
from core.devices.pic import Pic8259Pair
from core.devices.pit import Pit8254
from core.hypervisor import uc_internals as ui
from core.hypervisor.base import (
    GPR_NAMES,
    Accelerator,
    AcceleratorUnavailable,
    CpuState,
    DescriptorTable,
    ExitReason,
    Segment,
    Vcpu,
    VcpuExit,
)
from core.hypervisor.software_cpuid import CRYSTAL_HZ, CpuidPolicy
from core.irq import IrqLine
from core.memory import GuestMemory
from core.timers import TimerQueue

log = logging.getLogger(__name__)

PHYS_ADDR_LIMIT = 1 << 40                 # QEMU's TCG_PHYS_ADDR_BITS for x86-64
INTA_PAGE = PHYS_ADDR_LIMIT - 0x1000      # the interrupt-acknowledge cell (see the module docstring)
QUANTUM_NS = 2_000_000
MMIO_PIECE = 16 << 20                     # MMIO holes below 4 GiB are mapped in aligned pieces of this size
MAX_SPLIT = 256 << 20                     # map_ram refuses a range whose MMIO pieces exceed this (flush cost)
LOW_4G = 1 << 32
REKICK_NS = 2_000_000
CR4_OSXSAVE = 1 << 18

MSR_IA32_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_FEATURE_CONTROL = 0x3A
MSR_BIOS_SIGN_ID = 0x8B
MSR_ARCH_CAPABILITIES = 0x10A
# A translated CPU does not speculate: not affected by Meltdown (RDCL_NO), SSB, MDS, page-size-change MCE, TAA.
# Telling the guest so spares it KPTI's page-table switch (a full soft-TLB flush) on every kernel entry and exit.
ARCH_CAPABILITIES = 1 << 0 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 8
# IA32_MISC_ENABLE as firmware leaves it, except fast strings (bit 0) off: the bit tells the OS that REP MOVS/STOS
# are the fast way to copy (Linux then picks `rep movsq` for memcpy/clear_page/copy_user); translated, every
# iteration is a pass through a block, so the unrolled loops Linux uses without it are about twice as fast.
MISC_ENABLE_DEFAULT = 0
MSR_TSC_DEADLINE = 0x6E0
MSR_EFER = 0xC000_0080
# MSRs QEMU's own rdmsr/wrmsr helpers implement (target/i386/misc_helper.c); everything else not handled here #GPs.
_QEMU_MSRS = frozenset(
    [0x174, 0x175, 0x176, 0x277, 0x198, 0x34, 0x2FF, 0xFE, 0x179, 0x17A, 0x17B, 0x1A0, 0x8B, 0xD90,
     0x250, 0x258, 0x259, *range(0x268, 0x270), *range(0x200, 0x210), *range(0x400, 0x480),
     MSR_EFER, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0100, 0xC000_0101, 0xC000_0102,
     0xC000_0103])
_READ_ONLY_MSRS = frozenset([0x198, 0xFE, 0x179, 0x8B])

_IN_CFUNC = ctypes.CFUNCTYPE(c_uint32, c_void_p, c_uint32, c_int, c_void_p)
_OUT_CFUNC = ctypes.CFUNCTYPE(None, c_void_p, c_uint32, c_int, c_uint32, c_void_p)
_MMIO_READ_CFUNC = ctypes.CFUNCTYPE(c_uint64, c_void_p, c_uint64, c_uint32, c_void_p)
_MMIO_WRITE_CFUNC = ctypes.CFUNCTYPE(None, c_void_p, c_uint64, c_uint32, c_uint64, c_void_p)

_tsc_hz: int | None = None


def host_tsc_hz() -> int:
    """The host TSC frequency, measured once against CLOCK_MONOTONIC (the TSC is invariant on the hosts we run on;
    the kernel says so with constant_tsc/nonstop_tsc)."""
    global _tsc_hz
    if _tsc_hz is None:
        rdtsc = ui.natives().rdtsc

        def sample() -> tuple[int, int]:
            best = None
            for _ in range(5):               # the tightest bracket of the clock read around one rdtsc
                a = time.perf_counter_ns()
                t = rdtsc()
                b = time.perf_counter_ns()
                if best is None or b - a < best[0]:
                    best = (b - a, (a + b) // 2, t)
            return best[1], best[2]

        n0, t0 = sample()
        time.sleep(0.02)
        n1, t1 = sample()
        hz = (t1 - t0) * 1_000_000_000 // (n1 - n0)
        _tsc_hz = (hz + 500_000) // 1_000_000 * 1_000_000 if hz > 100_000_000 else hz
    return _tsc_hz


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


def _seg_to_qemu(s: Segment) -> tuple[int, int, int, int]:
    flags = (s.type & 0xF) << ui.DESC_TYPE_SHIFT | (s.dpl & 3) << ui.DESC_DPL_SHIFT
    flags |= ui.DESC_S_MASK if s.s else 0
    flags |= ui.DESC_P_MASK if s.present and not s.unusable else 0
    flags |= ui.DESC_AVL_MASK if s.avl else 0
    flags |= ui.DESC_L_MASK if s.l else 0
    flags |= ui.DESC_B_MASK if s.db else 0
    flags |= ui.DESC_G_MASK if s.g else 0
    return s.selector, s.base, s.limit, flags


def _seg_from_qemu(selector: int, base: int, limit: int, flags: int) -> Segment:
    present = bool(flags & ui.DESC_P_MASK)
    return Segment(selector=selector, base=base, limit=limit, type=(flags >> 8) & 0xF, present=present,
                   dpl=(flags >> ui.DESC_DPL_SHIFT) & 3, db=bool(flags & ui.DESC_B_MASK),
                   s=bool(flags & ui.DESC_S_MASK), l=bool(flags & ui.DESC_L_MASK), g=bool(flags & ui.DESC_G_MASK),
                   avl=bool(flags & ui.DESC_AVL_MASK), unusable=not present)


# QEMU's regs[] order (target/i386/cpu.h R_EAX..R_EDI, then r8-r15)
_QEMU_REG_INDEX = {"rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsp": 4, "rbp": 5, "rsi": 6, "rdi": 7,
                   **{f"r{i}": i for i in range(8, 16)}}

_SEG_ORDER = (("es", ui.R_ES), ("cs", ui.R_CS), ("ss", ui.R_SS), ("ds", ui.R_DS), ("fs", ui.R_FS), ("gs", ui.R_GS))


class SoftwareAccelerator(Accelerator):
    name = "software"

    def __init__(self, memory: GuestMemory, pio: PortIoBus, mmio: MmioBus, num_cpus: int,
                 timers: TimerQueue) -> None:
        super().__init__(memory, pio, mmio, num_cpus, timers)
        try:
            self.natives = ui.natives()
        except ui.UnicornInternalsError as exc:
            raise AcceleratorUnavailable(f"the software CPU cannot start: {exc}") from exc
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64, cpu=X.UC_CPU_X86_HASWELL)
        self.uc.reg_read(X.UC_X86_REG_RAX)            # forces the engine's lazy initialisation
        self.uc.ctl_exits_enabled(True)               # no exit addresses: emu_start's `until` is ignored
        self.view = v = ui.CpuView(self.uc)
        try:
            ui.verify(v)
        except ui.UnicornInternalsError as exc:
            raise AcceleratorUnavailable(str(exc)) from exc
        ui.disable_mid_instruction_exits(v)
        v.set_u64(ui.ENV_MSR_IA32_MISC_ENABLE, MISC_ENABLE_DEFAULT)
        self.q = ui.qemu()
        self.uch = v.uch
        self.tsc_hz = host_tsc_hz()
        self.rdtsc = self.natives.rdtsc
        self.cpuid_policy = CpuidPolicy(v.cpuid, num_cpus, self.tsc_hz)
        self.lock = _FairLock()
        self.owner: threading.Thread | None = None    # the thread holding the emulator (inside or between slices)
        self.current: SoftwareVcpu | None = None      # whose state is loaded in the emulator
        self.running: SoftwareVcpu | None = None      # inside emu_start right now
        self._pending_invalidations: list[tuple[int, int]] = []
        self._inval_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._mmio_pieces: dict[int, int] = {}          # start -> size of the MMIO regions over the holes
        self._device_ram: dict[int, tuple[int, int]] = {}  # gpa -> (host address, size) of map_ram mappings
        self._pending_map_ops: list[tuple] = []
        self._flat_context = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()
        self._callbacks: list = []
        self.vcpus: dict[int, SoftwareVcpu] = {}
        self._tsc_offset = (-self.rdtsc()) & 0xFFFF_FFFF_FFFF_FFFF
        self._map_memory()
        self._install_hooks()
        self._track_code_pages()
        # Interrupt controllers of the platform (the software CPU's own; KVM uses in-kernel ones).
        self.apic_bus = ApicBus()
        self.dropped_msis = 0
        self.pic = Pic8259Pair(self._pic_changed)
        self.pic.attach(pio)
        self.ioapic = IoApic(self.apic_bus.deliver)
        self.ioapic.attach(mmio)
        self.apic_bus.on_eoi = self.ioapic.eoi
        self.pit = Pit8254(timers, IrqLine(self, platform.PIT_GSI))
        self.pit.attach(pio)
        memory.add_write_listener(self._ram_written)
        self._closed = False
        self._frozen = False
        _live.add(self)
        global _exit_hook_registered
        if not _exit_hook_registered:
            atexit.register(_quiesce_all)
            _exit_hook_registered = True

    # -- memory ---------------------------------------------------------------------------------------------
    def _map_memory(self) -> None:
        uc, mem = self.uc, self.memory
        # RAM minus the legacy VGA window (cpu_mappings): guest accesses to 0xA0000-0xBFFFF reach the VGA model.
        self.ram_mappings = mem.cpu_mappings()
        for region in self.ram_mappings:
            uc.mem_map_ptr(region.gpa, region.size, unicorn.UC_PROT_ALL, mem.host_address(region))
        # Everything that is not RAM is MMIO: the bus may gain devices (VGA, PCI BARs) at any time, and an
        # access nobody claims reads as all ones, as on a PC.
        holes = []
        cursor = 0
        for region in sorted(self.ram_mappings, key=lambda r: r.gpa):
            if region.gpa > cursor:
                holes.append((cursor, region.gpa - cursor))
            cursor = region.end
        holes.append((cursor, INTA_PAGE - cursor))
        self._hole_read = read_cb = _MMIO_READ_CFUNC(self._mmio_read)
        self._hole_write = write_cb = _MMIO_WRITE_CFUNC(self._mmio_write)
        self._callbacks += [read_cb, write_cb]
        for start, size in holes:
            for piece, piece_size in _pieces(start, start + size):
                self._mmio_map(piece, piece_size, read_cb, write_cb, piece)
                self._mmio_pieces[piece] = piece_size
        # The power-on CPU state: real mode, no paging, so QEMU's virtual->physical translation is the identity
        # while the memory map changes (see the module docstring).
        ctypes.memmove(self._flat_context, self.view.env, ui.ENV_END_RESET_FIELDS)
        inta_read = _MMIO_READ_CFUNC(self._inta_read)
        inta_write = _MMIO_WRITE_CFUNC(lambda *a: None)
        self._callbacks += [inta_read, inta_write]
        self._mmio_map(INTA_PAGE, 0x1000, inta_read, inta_write, 0)
        self.view.vm_vmcb = INTA_PAGE + 0x100 - ui.VMCB_INT_VECTOR

    # -- device memory as RAM ---------------------------------------------------------------------------------
    supports_ram_mapping = True

    def map_ram(self, gpa: int, host_addr: int, size: int) -> None:
        """Replace the MMIO pieces over [gpa, gpa + size) by RAM at host_addr; applied before the next slice."""
        end = gpa + size
        if size <= 0 or (gpa | host_addr | size) & 0xFFF:
            raise ValueError(f"device RAM {gpa:#x}+{size:#x} must be page-aligned")
        if end > LOW_4G:
            raise ValueError(f"device RAM at {gpa:#x}+{size:#x} is above 4 GiB")
        with self._map_lock:
            hit = sorted((s, n) for s, n in self._mmio_pieces.items() if s < end and gpa < s + n)
            covered = sum(min(s + n, end) - max(s, gpa) for s, n in hit)
            if covered != size:
                raise ValueError(f"device RAM at {gpa:#x}+{size:#x} overlaps RAM or other device RAM")
            if sum(n for _, n in hit) > MAX_SPLIT:
                raise ValueError(f"device RAM at {gpa:#x}+{size:#x} would split a large MMIO region")
            ops: list[tuple] = []
            for s, n in hit:
                del self._mmio_pieces[s]
                ops.append(("unmap", s, n))
                for lo, hi in ((s, gpa), (end, s + n)):
                    if lo < hi:
                        self._mmio_pieces[lo] = hi - lo
                        ops.append(("mmio", lo, hi - lo))
            ops.append(("ram", gpa, size, host_addr))
            self._device_ram[gpa] = (host_addr, size)
            self._pending_map_ops += ops
        self._request_map_apply()

    def unmap_ram(self, gpa: int) -> None:
        """The range becomes MMIO again (one piece of its size); applied before the next slice."""
        with self._map_lock:
            if gpa not in self._device_ram:
                raise ValueError(f"no device RAM mapped at {gpa:#x}")
            host_addr, size = self._device_ram.pop(gpa)
            self._mmio_pieces[gpa] = size
            self._pending_map_ops += [("unmap_ram", gpa, size, host_addr), ("mmio", gpa, size)]
        self._request_map_apply()

    def _request_map_apply(self) -> None:
        running = self.running
        if running is None:
            return                                   # the next acquire() applies it
        if self.owner is threading.current_thread():
            self.q.uc_emu_stop(self.uch)             # from a hook of this slice: it ends at the next block
        else:
            running.kick_for_interrupt()

    def _apply_map_ops(self) -> None:
        """On the owner thread, outside emu_start: carry out queued map_ram/unmap_ram requests."""
        with self._map_lock:
            ops, self._pending_map_ops = self._pending_map_ops, []
        v, uc = self.view, self.uc
        saved = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()
        ctypes.memmove(saved, v.env, ui.ENV_END_RESET_FIELDS)
        exception_index = v._exception_index.value
        ctypes.memmove(v.env, self._flat_context, ui.ENV_END_RESET_FIELDS)
        v.tlb_flush()
        try:
            for op in ops:
                kind, start, size = op[:3]
                if kind == "unmap":
                    uc.mem_unmap(start, size)
                elif kind == "mmio":
                    self._mmio_map(start, size, self._hole_read, self._hole_write, start)
                elif kind == "ram":
                    uc.mem_map_ptr(start, size, unicorn.UC_PROT_ALL, op[3])
                else:                                # "unmap_ram": its translated code goes with it
                    v.invalidate_ram(op[3], size)
                    uc.mem_unmap(start, size)
        except Exception:
            detail = f"changing the memory map failed: {traceback.format_exc(limit=4)}"
            log.error("software CPU: %s", detail)
            vcpu = self.current
            if vcpu is not None and vcpu.error is None:
                vcpu.error = detail
        finally:
            ctypes.memmove(v.env, saved, ui.ENV_END_RESET_FIELDS)
            v._exception_index.value = exception_index
            v.tlb_flush()

    def _track_code_pages(self) -> None:
        """Give this instance a code bitmap over its RAM's ram_addr space (uc_internals.CodeDirtyTracking)."""
        top = 0
        for region in self.ram_mappings:
            last = self.q.ram_addr_from_host(self.uch, self.memory.host_address(region) + region.size - 1)
            if last != 0xFFFF_FFFF_FFFF_FFFF:
                top = max(top, last + 1)
        self.natives.code_tracking.register(self.uch, top + (64 << 20))   # headroom for RAM mapped later

    def _mmio_map(self, start: int, size: int, read_cb, write_cb, user: int) -> None:
        err = self.q.uc_mmio_map(self.uch, start, size, ctypes.cast(read_cb, c_void_p), c_void_p(user),
                                 ctypes.cast(write_cb, c_void_p), c_void_p(user))
        if err:
            raise AcceleratorUnavailable(f"unicorn cannot map MMIO at {start:#x}+{size:#x}: error {err}")

    def _ram_written(self, gpa: int, length: int) -> None:
        """GuestMemory write listener: translated code in the range is stale."""
        if self.owner is threading.current_thread():
            self._invalidate(gpa, length)
        else:
            with self._inval_lock:
                self._pending_invalidations.append((gpa, length))
            running = self.running
            if running is not None:
                running.kick_for_interrupt()

    def _invalidate(self, gpa: int, length: int) -> None:
        mem = self.memory
        for r in self.ram_mappings:
            lo, hi = max(gpa, r.gpa), min(gpa + length, r.end)
            if lo < hi:
                self.view.invalidate_ram(mem.host_base + r.offset + (lo - r.gpa), hi - lo)

    def _drain_invalidations(self) -> None:
        if self._pending_invalidations:
            with self._inval_lock:
                pending, self._pending_invalidations = self._pending_invalidations, []
            for gpa, length in pending:
                self._invalidate(gpa, length)

    # -- hooks ------------------------------------------------------------------------------------------------
    def _hook_add(self, htype: int, callback: int, *extra) -> None:
        handle = ctypes.c_size_t()
        err = self.q.uc_hook_add(self.uch, ctypes.byref(handle), htype, c_void_p(callback), None,
                                 c_uint64(1), c_uint64(0), *extra)
        if err:
            raise AcceleratorUnavailable(f"unicorn refused a hook (type {htype}): error {err}")

    def _install_hooks(self) -> None:
        n = self.natives
        self._hook_add(unicorn.UC_HOOK_INTR, n.intr_hook)
        self._hook_add(unicorn.UC_HOOK_INSN_INVALID, n.invalid_hook)
        io_in = _IN_CFUNC(self._io_in)
        io_out = _OUT_CFUNC(self._io_out)
        self._callbacks += [io_in, io_out]
        self._hook_add(unicorn.UC_HOOK_INSN, addr_of_cfunc(io_in), c_int(X.UC_X86_INS_IN))
        self._hook_add(unicorn.UC_HOOK_INSN, addr_of_cfunc(io_out), c_int(X.UC_X86_INS_OUT))
        n.handlers[self.view.env] = {"rdmsr": self._rdmsr, "wrmsr": self._wrmsr, "cpuid": self._cpuid,
                                     "syscall": self._syscall, "sysenter": self._sysenter}

    def _fail(self, where: str) -> None:
        """A hook raised: remember it for the running vCPU and stop emulation."""
        detail = f"{where}: {traceback.format_exc(limit=6)}"
        vcpu = self.running or self.current
        if vcpu is not None and vcpu.error is None:
            vcpu.error = detail
        self.q.uc_emu_stop(self.uch)

    def _io_in(self, _uc, port: int, size: int, _ud) -> int:
        try:
            return self.pio.read(port, size)
        except Exception:
            self._fail(f"port read {port:#x}/{size}")
            return 0xFFFF_FFFF

    def _io_out(self, _uc, port: int, size: int, value: int, _ud) -> None:
        try:
            self.pio.write(port, size, value)
        except Exception:
            self._fail(f"port write {port:#x}/{size} <- {value:#x}")

    def _mmio_read(self, _uc, offset: int, size: int, base: int) -> int:
        addr = (base or 0) + offset
        try:
            vcpu = self.current
            if vcpu is not None:
                apic_base = vcpu.lapic.mmio_base
                if apic_base is not None and apic_base <= addr < apic_base + 0x1000:
                    return vcpu.lapic.mmio_read(addr - apic_base, size)
            return self.mmio.read(addr, size)
        except Exception:
            self._fail(f"MMIO read {addr:#x}/{size}")
            return 0

    def _mmio_write(self, _uc, offset: int, size: int, value: int, base: int) -> None:
        addr = (base or 0) + offset
        try:
            vcpu = self.current
            if vcpu is not None:
                apic_base = vcpu.lapic.mmio_base
                if apic_base is not None and apic_base <= addr < apic_base + 0x1000:
                    vcpu.lapic.mmio_write(addr - apic_base, size, value)
                    return
            self.mmio.write(addr, size, value)
        except Exception:
            self._fail(f"MMIO write {addr:#x}/{size} <- {value:#x}")

    def _inta_read(self, _uc, offset: int, size: int, _ud) -> int:
        """QEMU's CPU loop takes the VIRQ request: this read is the interrupt-acknowledge cycle."""
        try:
            vcpu = self.current
            vector = vcpu.lapic.acknowledge()
            vcpu.stats_interrupts += 1
            return vector
        except Exception:
            self._fail("interrupt acknowledge")
            return 0xFF

    # -- interposed helpers (called from translated code with env; see uc_internals) --------------------------
    def _rdmsr(self, env: int, _arg: int) -> int:
        try:
            v = self.view
            msr = v.reg(1) & 0xFFFF_FFFF
            vcpu = self.current
            if msr == MSR_APIC_BASE or msr == MSR_TSC_DEADLINE or 0x800 <= msr <= 0x8FF:
                value = vcpu.lapic.msr_read(msr)
                if value is None:
                    return ui.raise_code(13)
            elif msr == MSR_IA32_TSC:
                value = (self.rdtsc() + v.tsc_offset) & 0xFFFF_FFFF_FFFF_FFFF
            elif msr == MSR_ARCH_CAPABILITIES:
                value = ARCH_CAPABILITIES
            elif msr == MSR_FEATURE_CONTROL:
                value = 1                             # locked, VMX off (no VMX in CPUID either)
            elif msr in _QEMU_MSRS:
                return ui.HELPER_ORIGINAL
            else:
                return ui.raise_code(13)
            v.set_reg(0, value & 0xFFFF_FFFF)
            v.set_reg(2, value >> 32)
            return ui.HELPER_DONE
        except Exception:
            self._fail("rdmsr")
            return ui.HELPER_DONE

    def _wrmsr(self, env: int, _arg: int) -> int:
        try:
            v = self.view
            msr = v.reg(1) & 0xFFFF_FFFF
            value = (v.reg(0) & 0xFFFF_FFFF) | (v.reg(2) & 0xFFFF_FFFF) << 32
            vcpu = self.current
            if msr == MSR_APIC_BASE or msr == MSR_TSC_DEADLINE or 0x800 <= msr <= 0x8FF:
                if not vcpu.lapic.msr_write(msr, value):
                    return ui.raise_code(13)
                return ui.HELPER_DONE
            if msr == MSR_IA32_TSC:
                v.tsc_offset = value - self.rdtsc()
                return ui.HELPER_DONE
            if msr == MSR_BIOS_SIGN_ID:
                return ui.HELPER_DONE                # the OS writes 0 before CPUID to read the microcode revision

            if msr in _QEMU_MSRS and msr not in _READ_ONLY_MSRS:
                if msr in (0xC000_0100, 0xC000_0101, 0xC000_0102) and not _canonical(value):
                    return ui.raise_code(13)
                return ui.HELPER_ORIGINAL
            return ui.raise_code(13)
        except Exception:
            self._fail("wrmsr")
            return ui.HELPER_DONE

    def _cpuid(self, env: int, _arg: int) -> int:
        try:
            v = self.view
            a, b, c, d = self.cpuid_policy.query(self.current.lapic.apic_id, v.reg(0) & 0xFFFF_FFFF,
                                                 v.reg(1) & 0xFFFF_FFFF, bool(v.cr(4) & CR4_OSXSAVE))
            v.set_reg(0, a)
            v.set_reg(3, b)
            v.set_reg(1, c)
            v.set_reg(2, d)
            return ui.HELPER_DONE
        except Exception:
            self._fail("cpuid")
            return ui.HELPER_DONE

    def _syscall(self, env: int, next_eip_addend: int) -> int:
        """SYSCALL (SDM vol. 2B): RCX/R11 saved, CS/SS from IA32_STAR, RIP from LSTAR (64-bit) or CSTAR."""
        try:
            v = self.view
            if not v.efer & 1:                       # EFER.SCE
                return ui.raise_code(6)
            star = v.u64(ui.ENV_STAR)
            selector = (star >> 32) & 0xFFFF
            next_rip = v.rip + next_eip_addend
            rflags = v.rflags
            code = ui.DESC_G_MASK | ui.DESC_P_MASK | ui.DESC_S_MASK | 0xB << ui.DESC_TYPE_SHIFT
            data = ui.DESC_G_MASK | ui.DESC_B_MASK | ui.DESC_P_MASK | ui.DESC_S_MASK | 0x3 << ui.DESC_TYPE_SHIFT
            if v.hflags & ui.HF_LMA_MASK:
                v.set_reg(1, next_rip)
                v.set_reg(11, rflags)
                code64 = v.hflags & ui.HF_CS64_MASK
                v.rflags = rflags & ~(v.u64(ui.ENV_FMASK) | 1 << 16)
                v.set_seg(ui.ENV_SEGS + ui.R_CS * ui.SEG_SIZE, selector & 0xFFFC, 0, 0xFFFF_FFFF, code | ui.DESC_L_MASK)
                v.set_seg(ui.ENV_SEGS + ui.R_SS * ui.SEG_SIZE, (selector + 8) & 0xFFFC, 0, 0xFFFF_FFFF, data)
                v.rip = v.u64(ui.ENV_LSTAR) if code64 else v.u64(ui.ENV_CSTAR)
            else:
                v.set_reg(1, next_rip & 0xFFFF_FFFF)
                v.rflags = rflags & ~(ui.EFLAGS_IF | 1 << 16 | 1 << 17)
                v.set_seg(ui.ENV_SEGS + ui.R_CS * ui.SEG_SIZE, selector & 0xFFFC, 0, 0xFFFF_FFFF,
                          code | ui.DESC_B_MASK)
                v.set_seg(ui.ENV_SEGS + ui.R_SS * ui.SEG_SIZE, (selector + 8) & 0xFFFC, 0, 0xFFFF_FFFF, data)
                v.rip = star & 0xFFFF_FFFF
            v.update_hflags()
            return ui.HELPER_DONE
        except Exception:
            self._fail("syscall")
            return ui.HELPER_DONE

    def _sysenter(self, env: int, next_eip_addend: int) -> int:
        """SYSENTER (SDM vol. 2B): CS/SS from IA32_SYSENTER_CS, RSP/RIP from IA32_SYSENTER_ESP/EIP."""
        try:
            v = self.view
            cs = v.u32(ui.ENV_SYSENTER_CS) & 0xFFFF
            if not v.hflags & ui.HF_PE_MASK or cs & 0xFFFC == 0:
                return ui.raise_code(13)
            v.rflags = v.rflags & ~(ui.EFLAGS_IF | 1 << 16 | 1 << 17)
            code = ui.DESC_G_MASK | ui.DESC_P_MASK | ui.DESC_S_MASK | 0xB << ui.DESC_TYPE_SHIFT
            data = ui.DESC_G_MASK | ui.DESC_B_MASK | ui.DESC_P_MASK | ui.DESC_S_MASK | 0x3 << ui.DESC_TYPE_SHIFT
            lma = v.hflags & ui.HF_LMA_MASK
            v.set_seg(ui.ENV_SEGS + ui.R_CS * ui.SEG_SIZE, cs & 0xFFFC, 0, 0xFFFF_FFFF,
                      code | (ui.DESC_L_MASK if lma else ui.DESC_B_MASK))
            v.set_seg(ui.ENV_SEGS + ui.R_SS * ui.SEG_SIZE, (cs + 8) & 0xFFFC, 0, 0xFFFF_FFFF, data)
            esp, eip = v.u64(ui.ENV_SYSENTER_ESP), v.u64(ui.ENV_SYSENTER_EIP)
            v.set_reg(4, esp if lma else esp & 0xFFFF_FFFF)
            v.rip = eip if lma else eip & 0xFFFF_FFFF
            v.update_hflags()
            return ui.HELPER_DONE
        except Exception:
            self._fail("sysenter")
            return ui.HELPER_DONE

    # -- interrupt lines ------------------------------------------------------------------------------------
    def set_irq(self, gsi: int, level: bool) -> None:
        # The MADT's interrupt source override: ISA IRQ0 (the PIT) is GSI 2 on the I/O APIC.
        isa = 0 if gsi == platform.PIT_GSI else gsi
        if gsi < 16 and isa != 2:
            self.pic.set_irq(isa, level)
        self.ioapic.set_irq(gsi, level)

    def send_msi(self, address: int, data: int) -> None:
        """Deliver a message-signalled interrupt (PCI 3.0, 6.8; address/data as in SDM vol. 3, 10.11) to the local
        APICs, as KVM_SIGNAL_MSI does for the KVM backend. Callable from any thread; a PCI device's MSI sink.
        A message no APIC accepts (outside 0xFEExxxxx, reserved delivery mode) is counted and dropped."""
        msg = decode_msi(address, data)
        if msg is None:
            self.dropped_msis += 1
            return
        self.apic_bus.deliver_msi(msg)

    def _pic_changed(self) -> None:
        for vcpu in self.vcpus.values():
            vcpu.lapic.pic_changed()

    # -- vCPUs ----------------------------------------------------------------------------------------------
    def create_vcpu(self, index: int) -> Vcpu:
        vcpu = SoftwareVcpu(self, index)
        self.vcpus[index] = vcpu
        return vcpu

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

    def reset_platform(self) -> None:
        self.pic.reset()
        self.pit.reset()
        self.ioapic.reset()
        for vcpu in self.vcpus.values():
            vcpu.lapic.power_on(vcpu.index == 0)
        self._tsc_offset = (-self.rdtsc()) & 0xFFFF_FFFF_FFFF_FFFF

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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.memory.remove_write_listener(self._ram_written)
        for vcpu in self.vcpus.values():
            vcpu.lapic.reset_for_init()
            vcpu.closed = True
            vcpu.kick()
        stopped = self.quiesce()
        _live.discard(self)
        self.natives.handlers.pop(self.view.env, None)
        self.natives.code_tracking.unregister(self.uch)
        if not stopped:
            log.error("software CPU: a vCPU is still inside emulation; its guest RAM stays mapped")
            return
        for gpa, size in [(r.gpa, r.size) for r in self.ram_mappings] + \
                [(gpa, size) for gpa, (_, size) in self._device_ram.items()]:
            try:
                self.uc.mem_unmap(gpa, size)
            except unicorn.UcError:
                pass

    def exception_counts(self) -> dict[int, int]:
        """Exceptions and INT n delivered so far (all VMs of this process), by vector."""
        c = self.natives.intr_counters
        return {i: c[i] for i in range(256) if c[i]}


def _pieces(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut at MMIO_PIECE boundaries below 4 GiB; one piece above."""
    out = []
    while start < end:
        if start >= LOW_4G:
            out.append((start, end - start))
            break
        stop = min(end, (start // MMIO_PIECE + 1) * MMIO_PIECE)
        out.append((start, stop - start))
        start = stop
    return out


def addr_of_cfunc(cfunc) -> int:
    return ctypes.cast(cfunc, c_void_p).value


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top == 0 or top == 0x1FFFF


class SoftwareVcpu(Vcpu, ApicCpu):
    def __init__(self, accel: SoftwareAccelerator, index: int) -> None:
        self.accel = accel
        self.index = index
        self.context = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()
        self.context_valid = False
        if not hasattr(accel, "_initial_context"):
            accel._initial_context = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()
            ctypes.memmove(accel._initial_context, accel.view.env, ui.ENV_END_RESET_FIELDS)
        self.lapic = LocalApic(index, accel.timers, accel.apic_bus, self, bus_hz=CRYSTAL_HZ,
                               tsc_hz=accel.tsc_hz, read_tsc=self._read_tsc, bsp=index == 0)
        self.lapic.pic = accel.pic.acknowledge
        self.lapic.pic_pending = accel.pic.has_interrupt
        accel.apic_bus.add(self.lapic)
        self._cond = threading.Condition()
        self._kicked = False
        self._wake = False
        self.halted = False
        self.wait_for_sipi = False
        self.sipi_vector: int | None = None
        self.init_pending = False
        self.nmi_pending = False
        self.error: str | None = None
        self.closed = False
        self._slice_seq = 0
        self._in_slice = False
        self._rekick = accel.timers.timer(self._rekick_check)
        self._rekick_seq = -1
        self._quantum = accel.timers.timer(self._quantum_expired)
        self.stats_slices = 0
        self.stats_interrupts = 0
        self.stats_halts = 0
        self._if_flag = 1

    def _read_tsc(self) -> int:
        return (self.accel.rdtsc() + self.accel._tsc_offset) & 0xFFFF_FFFF_FFFF_FFFF

    # -- state ----------------------------------------------------------------------------------------------
    def set_state(self, state: CpuState) -> None:
        acc = self.accel
        acc.acquire(self)
        try:
            self._load_state(state)
        finally:
            acc.release()
        self.halted = False
        self.wait_for_sipi = False

    def _load_state(self, s: CpuState) -> None:
        v = self.accel.view
        q = v.q
        # From a clean real-mode base so QEMU's CR0 transition logic (LMA on PG with LME) sees a fresh start.
        q.update_cr0(v.env, 0x60000010 & ~0x80000001 & 0xFFFF_FFFF)
        v.efer = s.efer
        q.update_cr4(v.env, s.cr4)
        q.update_cr3(v.env, s.cr3)
        q.update_cr0(v.env, s.cr0)
        v.efer = s.efer if not (s.cr0 & 0x8000_0000 and s.efer & 0x100) else s.efer | 0x400
        v.set_cr_raw(2, s.cr2)
        for name in GPR_NAMES:
            v.set_reg(_QEMU_REG_INDEX[name], s.regs.get(name, 0))
        for name, idx in _SEG_ORDER:
            v.set_seg(ui.ENV_SEGS + idx * ui.SEG_SIZE, *_seg_to_qemu(getattr(s, name)))
        v.set_seg(ui.ENV_TR, *_seg_to_qemu(s.tr))
        v.set_seg(ui.ENV_LDT, *_seg_to_qemu(s.ldt))
        v.set_seg(ui.ENV_GDT, 0, s.gdt.base, s.gdt.limit, 0)
        v.set_seg(ui.ENV_IDT, 0, s.idt.base, s.idt.limit, 0)
        v.rflags = s.rflags | 2
        v.rip = s.rip
        v.set_u64(ui.ENV_TSC_OFFSET, self.accel._tsc_offset)
        v.update_hflags()
        v.hflags = v.hflags & ~ui.HF_INHIBIT_IRQ_MASK
        v.hflags2 = (v.hflags2 | ui.HF2_GIF_MASK) & ~ui.HF2_NMI_MASK
        v.old_exception = -1
        v.vm_vmcb = INTA_PAGE + 0x100 - ui.VMCB_INT_VECTOR
        v.interrupt_request = 0
        if s.apic_base:
            self.lapic.msr_write(MSR_APIC_BASE, (s.apic_base & ~0x100) | (self.lapic.base_msr & 0x100))
        for msr, value in s.msrs.items():
            self._write_msr_direct(msr, value)
        v.tlb_flush()

    def _write_msr_direct(self, msr: int, value: int) -> None:
        uc = self.accel.uc
        if msr in (MSR_APIC_BASE, MSR_TSC_DEADLINE) or 0x800 <= msr <= 0x8FF:
            self.lapic.msr_write(msr, value)
        elif msr in _QEMU_MSRS:
            uc.reg_write(X.UC_X86_REG_MSR, (msr, value))

    def get_state(self) -> CpuState:
        acc = self.accel
        acc.acquire(self)
        try:
            return self._save_state()
        finally:
            acc.release()

    def _save_state(self) -> CpuState:
        v = self.accel.view
        s = CpuState()
        s.regs = {name: v.reg(_QEMU_REG_INDEX[name]) for name in GPR_NAMES}
        s.rip = v.rip
        s.rflags = v.rflags
        for name, idx in _SEG_ORDER:
            setattr(s, name, _seg_from_qemu(*v.seg(ui.ENV_SEGS + idx * ui.SEG_SIZE)))
        s.tr = _seg_from_qemu(*v.seg(ui.ENV_TR))
        s.ldt = _seg_from_qemu(*v.seg(ui.ENV_LDT))
        _, base, limit, _ = v.seg(ui.ENV_GDT)
        s.gdt = DescriptorTable(base, limit)
        _, base, limit, _ = v.seg(ui.ENV_IDT)
        s.idt = DescriptorTable(base, limit)
        s.cr0, s.cr2, s.cr3, s.cr4 = v.cr(0), v.cr(2), v.cr(3), v.cr(4)
        s.cr8 = self.lapic.tpr >> 4
        s.efer = v.efer
        s.apic_base = self.lapic.base_msr
        return s

    def reset_to_wait_for_sipi(self) -> None:
        with self._cond:
            self.wait_for_sipi = True
            self.halted = False
            self.sipi_vector = None
        self.lapic.power_on(bsp=self.index == 0)

    # -- events from the APIC and the Machine -----------------------------------------------------------------
    def kick(self) -> None:
        """The Machine wants run() to return."""
        with self._cond:
            self._kicked = True
            self._cond.notify_all()
        self._stop_slice()

    def kick_for_interrupt(self) -> None:
        """An interrupt (or something else the vCPU thread must look at) is waiting."""
        acc = self.accel
        if acc.running is self and acc.owner is threading.current_thread():
            # Raised from within this vCPU's own slice (a hook): let QEMU's loop take it at the next block.
            v = acc.view
            v.interrupt_request = v.interrupt_request | ui.CPU_INTERRUPT_VIRQ
            _exit_tb(v)
            return
        with self._cond:
            self._wake = True
            self._cond.notify_all()
        self._stop_slice()

    # ApicCpu
    def wake(self) -> None:
        self.kick_for_interrupt()

    def nmi(self) -> None:
        self.nmi_pending = True
        self.kick_for_interrupt()

    def init(self) -> None:
        """INIT (SDM vol. 3, 9.1.1 / 10.6.1): the processor resets and, as an AP, waits for a SIPI. The wait
        state starts at delivery, not when this vCPU's thread next looks, so a SIPI sent right after the INIT
        is never lost."""
        self.lapic.reset_for_init()
        with self._cond:
            self.wait_for_sipi = True
            self.halted = False
            self.sipi_vector = None
            self.init_pending = True
        self.kick_for_interrupt()

    def sipi(self, vector: int) -> None:
        if self.wait_for_sipi:
            self.sipi_vector = vector
            self.kick_for_interrupt()

    def _stop_slice(self) -> None:
        acc = self.accel
        if acc.running is self and self._in_slice:
            seq = self._slice_seq
            acc.q.uc_emu_stop(acc.uch)
            if self._rekick_seq != seq:
                self._rekick_seq = seq
                self._rekick.arm_after(REKICK_NS)

    def _rekick_check(self) -> None:
        if self._in_slice and self._slice_seq == self._rekick_seq and self.accel.running is self:
            self.accel.q.uc_emu_stop(self.accel.uch)
            self._rekick.arm_after(REKICK_NS)

    def _quantum_expired(self) -> None:
        acc = self.accel
        if acc.lock.waiting() > 0 and acc.running is self:
            if self._in_slice:
                self._stop_slice()
            else:                                  # between `running` and emu_start: look again shortly
                self._quantum.arm_after(REKICK_NS // 4)

    # -- running --------------------------------------------------------------------------------------------
    def run(self) -> VcpuExit:
        while True:
            if self.accel._frozen:
                _park_forever()
            with self._cond:
                if self._kicked:
                    self._kicked = False
                    return VcpuExit(ExitReason.KICKED)
                if self.closed:
                    return VcpuExit(ExitReason.KICKED)
                self._wake = False
            if self.error is not None:
                detail, self.error = self.error, None
                return VcpuExit(ExitReason.ERROR, detail)
            if self.init_pending:
                self.init_pending = False       # a slice interrupted by INIT: its state is discarded by SIPI
            if self.wait_for_sipi:
                if self.sipi_vector is None:
                    self._sleep()
                    continue
                self._start_from_sipi(self.sipi_vector)
            if self.halted:
                if self.nmi_pending or (self._interrupts_enabled() and self.lapic.has_interrupt()):
                    self.halted = False
                else:
                    self._sleep()
                    continue
            result = self._run_slice()
            if result is not None:
                return result

    def _interrupts_enabled(self) -> bool:
        return bool(self._if_flag)

    def _sleep(self) -> None:
        with self._cond:
            while not (self._kicked or self._wake or self.closed):
                self._cond.wait()
            self._wake = False

    def _start_from_sipi(self, vector: int) -> None:
        """SIPI: real mode at vector * 0x1000 (CS = vector << 8, IP = 0)."""
        s = CpuState()
        s.cs = Segment(selector=vector << 8, base=vector << 12, limit=0xFFFF, type=0xB)
        s.rip = 0
        s.apic_base = 0
        s.regs["rdx"] = 0x600                      # processor signature-ish value; SDM 9.1.4 leaves EDX as model
        acc = self.accel
        acc.acquire(self)
        try:
            self._load_state(s)
        finally:
            acc.release()
        with self._cond:
            self.wait_for_sipi = False
            self.sipi_vector = None

    def _run_slice(self) -> VcpuExit | None:
        acc = self.accel
        acc.acquire(self)
        try:
            v = acc.view
            q = acc.q
            req = v.interrupt_request & ~(ui.CPU_INTERRUPT_VIRQ | ui.CPU_INTERRUPT_NMI | ui.CPU_INTERRUPT_HARD)
            if self.lapic.has_interrupt():
                req |= ui.CPU_INTERRUPT_VIRQ
            if self.nmi_pending:
                self.nmi_pending = False
                req |= ui.CPU_INTERRUPT_NMI
            v.interrupt_request = req
            v.old_exception = -1
            self._slice_seq += 1
            acc.running = self
            if acc.lock.waiting() > 0:
                self._quantum.arm_after(QUANTUM_NS)
            self._in_slice = True
            with self._cond:
                pending = self._kicked or self._wake
            if pending or acc._frozen:
                # Something arrived since the checks above: do not start a slice that could miss its kick.
                err = 0
            else:
                err = q.uc_emu_start(acc.uch, v.rip, 0, 0, 0)
            self._in_slice = False
            acc.running = None
            self._quantum.cancel()
            self.stats_slices += 1
            if self.error is not None:
                detail, self.error = self.error, None
                return VcpuExit(ExitReason.ERROR, detail)
            if err:
                return VcpuExit(ExitReason.ERROR, f"unicorn error {err} ({unicorn.UcError(err)}) at "
                                                  f"rip={v.rip:#x} cs={v.seg(ui.ENV_SEGS + 24)[0]:#x}")
            if v.stopped and not v.halted:
                return VcpuExit(ExitReason.SHUTDOWN, f"triple fault at rip={v.rip:#x}")
            if v.halted:
                v.halted = 0
                self.halted = True
                self.stats_halts += 1
                self._if_flag = v.eflags_raw & ui.EFLAGS_IF
                if not self._if_flag and not self.nmi_pending and not self.init_pending \
                        and not self.lapic.has_interrupt() and self._nothing_can_wake():
                    return VcpuExit(ExitReason.HALTED, f"HLT with interrupts disabled at rip={v.rip:#x}")
            return None
        finally:
            acc.release()

    def _nothing_can_wake(self) -> bool:
        """HLT with IF=0 ends for good only if nothing can send an NMI, INIT or SIPI: nothing on this platform
        drives LINT1, so that is the case with a single CPU."""
        return self.accel.num_cpus == 1            # this platform has no NMI source but IPIs


def _park_forever() -> None:
    """A vCPU thread of an accelerator stopped for good (process exit): never touch the emulator again."""
    threading.Event().wait()


def _exit_tb(v: ui.CpuView) -> None:
    """cpu_interrupt's second half: make the running block chain return to QEMU's loop (icount_decr.high = -1)."""
    decr = c_uint64.from_address(v.cpu + ui.CPU_ICOUNT_DECR_PTR).value
    ctypes.c_int16.from_address(decr + 2).value = -1

