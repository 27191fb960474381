"""The software CPU: x86-64 emulated by unicorn 2.1.4 (QEMU's TCG), behind the same interface as KVM.

What unicorn leaves out is supplied here and in its helpers, per the Intel SDM:

* Exceptions and INT n (vol. 3, ch. 6) are delivered by QEMU's own `x86_cpu_do_interrupt` from native hooks
  (uc_native): real-mode IVT, protected- and long-mode IDT, privilege changes with TSS stacks, IST, error codes,
  CR2, double and triple faults.
* External interrupts, NMI, INIT/SIPI and HLT are the vCPU's (software_vcpu): delivered inside QEMU's CPU loop at
  an instruction boundary, through CPUState.interrupt_request, with the vector read from the local APIC at the
  moment the CPU takes the interrupt.
* RDMSR/WRMSR (IA32_APIC_BASE, x2APIC, IA32_TSC_DEADLINE, IA32_TSC; #GP for MSRs nobody implements), CPUID
  (software_cpuid), SYSCALL/SYSENTER with their architectural effect (vol. 2B), by interposing on QEMU's helpers
  (software_helpers).
* The TSC is the host's invariant TSC plus a per-VM offset (QEMU's RDTSC reads the host TSC natively), at the
  frequency measured at start-up and reported in CPUID leaf 0x15/0x16.
* The physical memory map -- RAM in place, MMIO everywhere else, device memory mapped as RAM, translated code
  dropped when the host writes guest RAM -- is software_memory's.
* SMP: one instance per vCPU running in parallel (software_parallel, the default with 2+ vCPUs); or, with
  VIREO_PARALLEL_VCPUS=0, one unicorn instance per VM time-shared by the vCPU threads (software_sched).

A SoftwareAccelerator is those parts together (one class made of the mixins of those modules, sharing the one
emulator's state). It has no interrupt controllers of its own beyond each vCPU's local APIC: the 8259A pair, the
I/O APIC, the PIT and the APIC bus are the board's (core/board.py), which joins the local APICs to its APIC bus
(connect_apic_bus).

Every Python exception in a hook stops emulation and run() returns VcpuExit(ERROR, detail): a device-model bug
stops that VM, never the host process.
"""
from __future__ import annotations

import logging
import sys
import time
from ctypes import c_uint64

import unicorn
from unicorn import x86_const as X

from core.bus import MmioBus, PortIoBus
from core.devices.apic_bus import ApicBus
from core.hypervisor import uc_internals as ui
from core.hypervisor.base import Accelerator, AcceleratorUnavailable, Vcpu, fault_line
from core.hypervisor.software_cpuid import CpuidPolicy
from core.hypervisor.software_helpers import X86HelperInterposition
from core.hypervisor.software_memory import SoftwareMemoryMap
from core.hypervisor.software_sched import VcpuScheduler, _live, _register_live
from core.hypervisor.software_vcpu import SoftwareVcpu
from core.hypervisor.uc_native import natives
from core.memory import GuestMemory
from core.timers import TimerQueue

log = logging.getLogger(__name__)

# IA32_MISC_ENABLE as firmware leaves it, except fast strings (bit 0) off: the bit tells the OS that REP MOVS/STOS
# are the fast way to copy (Linux then picks `rep movsq` for memcpy/clear_page/copy_user); translated, every
# iteration is a pass through a block, so the unrolled loops Linux uses without it are about twice as fast.
MISC_ENABLE_DEFAULT = 0

# The TSC is counted against CLOCK_MONOTONIC over at least this long. Each end is the tightest of five clock reads
# around one rdtsc (well under 1 us apart), so the error is below 100 ppm, against the 1 MHz the result is rounded to
# (300-500 ppm of a 2-3 GHz TSC).
TSC_CALIBRATION_NS = 10_000_000

# Each instance's translation buffer. Unicorn's default is 1 GiB, mapped by mmap one below the other. With that
# default, from the second instance on (the second vCPU of a parallel VM) the buffer's low end, where blocks are
# allocated first, is more than 2 GiB from libunicorn. Every helper call of its blocks is then an indirect
# `call *disp32(%rip)` through the constant pool, not `call rel32` (tcg/i386 tcg_out_branch). perf of the 2-job
# --smp run showed that vCPU's thread with 3 points more outside translated code than the first vCPU's, the
# lookup_tb_ptr wrapper alone 1.7 % against under 0.3 %. With 256 MiB the buffers of four instances stay within
# reach in a VM process (one VM each; a crowded address space may still place them further), and the two threads
# profile the same. A Linux boot and its workloads use a few tens of MiB; a full buffer is flushed (tb_flush)
# and refilled, as before.
CODE_BUFFER_BYTES = 256 << 20

_tsc_hz: int | None = None
_tsc_first: tuple[int, int] | None = None


def _tsc_sample() -> tuple[int, int]:
    """(CLOCK_MONOTONIC ns, TSC) read together: the tightest bracket of the clock read around one rdtsc."""
    rdtsc = natives().rdtsc
    best = None
    for _ in range(5):
        a = time.perf_counter_ns()
        t = rdtsc()
        b = time.perf_counter_ns()
        if best is None or b - a < best[0]:
            best = (b - a, (a + b) // 2, t)
    return best[1], best[2]


def start_tsc_calibration() -> None:
    """Take the first sample of host_tsc_hz's measurement now, so that the wait it needs overlaps other start-up
    work (the accelerator's setup) instead of being slept through."""
    global _tsc_first
    if _tsc_hz is None and _tsc_first is None:
        _tsc_first = _tsc_sample()


def host_tsc_hz() -> int:
    """The host TSC frequency, measured once against CLOCK_MONOTONIC (the TSC is invariant on the hosts we run on;
    the kernel says so with constant_tsc/nonstop_tsc), from start_tsc_calibration's sample (taken now if there is
    none) to one at least TSC_CALIBRATION_NS later."""
    global _tsc_hz
    if _tsc_hz is None:
        start_tsc_calibration()
        n0, t0 = _tsc_first
        left = TSC_CALIBRATION_NS - (time.perf_counter_ns() - n0)
        if left > 0:
            time.sleep(left / 1e9)
        n1, t1 = _tsc_sample()
        hz = (t1 - t0) * 1_000_000_000 // (n1 - n0)
        _tsc_hz = (hz + 500_000) // 1_000_000 * 1_000_000 if hz > 100_000_000 else hz
    return _tsc_hz


class SoftwareAccelerator(X86HelperInterposition, SoftwareMemoryMap, VcpuScheduler, Accelerator):
    name = "software"

    def __init__(self, memory: GuestMemory, pio: PortIoBus, mmio: MmioBus, num_cpus: int,
                 timers: TimerQueue) -> None:
        super().__init__(memory, pio, mmio, num_cpus, timers)
        try:
            self.natives = natives()
        except ui.UnicornInternalsError as exc:
            raise AcceleratorUnavailable(f"the software CPU cannot start: {exc}") from exc
        start_tsc_calibration()                       # finished at the first use of tsc_hz (create_vcpu)
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64, cpu=X.UC_CPU_X86_HASWELL)
        self.uc.ctl_set_tcg_buffer_size(CODE_BUFFER_BYTES)   # before the lazy initialisation maps it
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
        self.rdtsc = self.natives.rdtsc
        self._interrupt_request_addr = v.cpu + ui.CPU_INTERRUPT_REQUEST
        self._exit_request_addr = c_uint64.from_address(v.cpu + ui.CPU_ICOUNT_DECR_PTR).value + 2
        self._init_scheduler()
        self._init_memory_map()
        self._callbacks: list = []
        self.vcpus: dict[int, SoftwareVcpu] = {}
        self._tsc_offset = (-self.rdtsc()) & 0xFFFF_FFFF_FFFF_FFFF
        self._map_memory()
        self._install_hooks()
        self._track_code_pages()
        self.apic_bus: ApicBus | None = None          # the board's, once connect_apic_bus has joined it
        memory.add_write_listener(self._ram_written)
        self._cpuid_policy: CpuidPolicy | None = None
        self._closed = False
        _register_live(self)

    @property
    def one_vcpu_per_instance(self) -> bool:
        """Whether each vCPU has this unicorn instance to itself, always run by its own thread (a 1-vCPU VM; the
        parallel engine's instances say so too)."""
        return self.num_cpus == 1

    @property
    def tsc_hz(self) -> int:
        """The guest TSC's frequency (the host's): first asked for by the vCPUs' local APICs, once the board has
        built its devices, so the measurement started with the accelerator rarely has to wait."""
        return host_tsc_hz()

    @property
    def cpuid_policy(self) -> CpuidPolicy:
        if self._cpuid_policy is None:
            self._cpuid_policy = CpuidPolicy(self.view.cpuid, self.num_cpus, self.tsc_hz)
        return self._cpuid_policy

    def _fail(self, where: str) -> None:
        """A hook raised: remember it for the running vCPU and stop emulation."""
        exc = sys.exc_info()[1]
        log.error("software CPU: %s", where, exc_info=exc)
        detail = fault_line(where, exc) if exc is not None else where
        vcpu = self.running or self.current
        if vcpu is not None and vcpu.error is None:
            vcpu.error = detail
        self.q.uc_emu_stop(self.uch)

    def connect_apic_bus(self, bus: ApicBus) -> None:
        self.apic_bus = bus

    def raise_virq(self) -> None:
        """QEMU's cpu_interrupt(CPU_INTERRUPT_VIRQ) on the loaded vCPU, from any thread: the running block chain
        returns to QEMU's loop at its next block, which takes the interrupt when EFLAGS.IF allows (software_vcpu's
        wake)."""
        self.natives.cpu_interrupt(self._interrupt_request_addr, ui.CPU_INTERRUPT_VIRQ, self._exit_request_addr)

    def emu_start_slice(self, v: ui.CpuView) -> int:
        """One slice of emulation from the current RIP (software_vcpu); software_parallel wraps it."""
        return self.q.uc_emu_start(self.uch, v.rip, 0, 0, 0)

    # -- vCPUs ----------------------------------------------------------------------------------------------
    def create_vcpu(self, index: int) -> Vcpu:
        if self.apic_bus is None:
            raise RuntimeError("the software CPU's local APICs need the board's APIC bus: call connect_apic_bus "
                               "before create_vcpu")
        vcpu = SoftwareVcpu(self, index, self.apic_bus)
        self.vcpus[index] = vcpu
        return vcpu

    def reset_platform(self) -> None:
        for vcpu in self.vcpus.values():
            vcpu.lapic.power_on(vcpu.index == 0)
            vcpu.tsc_adjust = vcpu.tsc_delta = 0          # IA32_TSC_ADJUST is 0 after reset (SDM vol. 3, 18.17.3)
        self._tsc_offset = (-self.rdtsc()) & 0xFFFF_FFFF_FFFF_FFFF

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.memory.remove_write_listener(self._ram_written)
        for vcpu in self.vcpus.values():
            vcpu.lapic.reset_for_init()
            vcpu.close_timer()
            vcpu.closed = True
            vcpu.kick()
        stopped = self.quiesce()
        _live.discard(self)
        self.natives.handlers.pop(self.view.env, None)
        self.natives.code_tracking.unregister(self.uch)
        self.natives.page_table_reads.unregister(self.view.cpu)
        if not stopped:
            log.error("software CPU: a vCPU is still inside emulation; its guest RAM stays mapped")
            return
        self.doorbells.close()
        if self.natives.block_cache is not None:
            self.natives.block_cache.unregister(self.uch)     # no vCPU can be inside its lookup any more
        self.natives.region_lookup.unregister(self.uch)       # before the regions it names are unmapped
        for gpa, size in [(r.gpa, r.size) for r in self.ram_mappings] + \
                [(gpa, size) for gpa, (_, size) in self._device_ram.items()]:
            try:
                self.uc.mem_unmap(gpa, size)
            except unicorn.UcError:
                pass
