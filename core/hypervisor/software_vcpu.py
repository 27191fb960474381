"""One vCPU of the software CPU: its architectural state in QEMU's CPUX86State, its local APIC, and its run loop.

What a vCPU adds to QEMU's translated CPU, per the Intel SDM:

* Register state crosses the Vcpu interface as CpuState. Loading it goes through QEMU's own CR0/CR3/CR4 update
  routines (target/i386/helper.c cpu_x86_update_cr0 ...), so the derived hflags (CPL, PE, LMA, CS64 ...) and the
  EFER.LMA transition follow vol. 3, 9.8.5 "Initializing IA-32e Mode"; segment registers with their hidden
  descriptor caches (vol. 3, 3.4.3) are written into QEMU's SegmentCache.
* External interrupts are delivered inside QEMU's CPU loop at an instruction boundary where EFLAGS.IF = 1 and no
  STI/MOV SS shadow is active (vol. 3, 6.8.3), through CPUState.interrupt_request's VIRQ request: QEMU then reads
  the vector from `env->vm_vmcb + 100`, which points into the interrupt-acknowledge page (software_memory), so
  the local APIC's state changes exactly when the CPU takes the interrupt, and a fault during delivery is handled
  by QEMU's loop (never from outside it).
* NMI through CPU_INTERRUPT_NMI (QEMU blocks further NMIs until IRET; vol. 3, 6.7.1).
* INIT and SIPI (vol. 3, 8.4 "Multiple-Processor (MP) Initialization"): INIT resets the local APIC and makes the
  vCPU wait for a SIPI, which starts it in real mode at vector * 0x1000.
* HLT: emulation returns; the vCPU thread sleeps until an interrupt is deliverable, or an NMI/INIT/SIPI or a kick.
  With IF = 0 and nothing able to wake it, it sleeps until the Machine ends it -- as hardware hangs.
* The TSC is the host's invariant TSC plus a per-VM offset (QEMU's RDTSC reads the host TSC natively).

The emulator is shared by every vCPU of the VM (software_sched): each slice and each state access first
acquires it.
"""
from __future__ import annotations

import ctypes
import threading
from ctypes import c_uint64
from typing import TYPE_CHECKING

import unicorn
from unicorn import x86_const as X

from core.devices.lapic import ApicCpu, LocalApic
from core.hypervisor import uc_internals as ui
from core.hypervisor.base import (
    GPR_NAMES,
    CpuState,
    DescriptorTable,
    ExitReason,
    Segment,
    Vcpu,
    VcpuExit,
)
from core.hypervisor.software_cpuid import CRYSTAL_HZ
from core.hypervisor.software_helpers import _QEMU_MSRS, MSR_APIC_BASE, MSR_TSC_ADJUST, MSR_TSC_DEADLINE
from core.hypervisor.software_memory import INTA_PAGE
from core.hypervisor.software_sched import QUANTUM_NS, REKICK_NS, _park_forever
from core.hypervisor.uc_fast_eoi import FastEoiWord
from core.hypervisor.vcpu_signal_timer import VcpuSignalTimer
from core.hypervisor.vcpu_signal_timer import wanted as signal_timer_wanted

if TYPE_CHECKING:
    from core.devices.apic_bus import ApicBus
    from core.hypervisor.software import SoftwareAccelerator


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


class SoftwareVcpu(Vcpu, ApicCpu):
    def __init__(self, accel: SoftwareAccelerator, index: int, apic_bus: ApicBus) -> None:
        self.accel = accel
        self.index = index
        self.context = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()
        self.context_valid = False
        if not hasattr(accel, "_initial_context"):
            accel._initial_context = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()
            ctypes.memmove(accel._initial_context, accel.view.env, ui.ENV_END_RESET_FIELDS)
        self.lapic = LocalApic(index, accel.timers, apic_bus, self, bus_hz=CRYSTAL_HZ,
                               tsc_hz=accel.tsc_hz, read_tsc=self._read_tsc, bsp=index == 0)
        apic_bus.add(self.lapic)
        self._fast_eoi = FastEoiWord(accel.natives.fast_eoi)
        self._fast_eoi.block = accel.fast_eoi
        self.lapic.attach_fast_eoi(self._fast_eoi)
        self._cond = threading.Condition()
        # A vCPU alone on its instance takes its local APIC timer on its own thread (vcpu_signal_timer); vCPUs
        # time-sharing an instance leave it to the TimerQueue thread, since the signal would reach one of them.
        self._vtimer: VcpuSignalTimer | None = None
        if accel.one_vcpu_per_instance and signal_timer_wanted():
            self._vtimer = VcpuSignalTimer(self.lapic._timer_fired, accel.natives.timer_signal_handler,
                                           accel._interrupt_request_addr, accel._exit_request_addr,
                                           on_foreign_arm=self._timer_moved)
            self.lapic.use_polled_timer(self._vtimer)
        # ...and then its tick's acknowledge and deadline re-arm natively too (uc_native_tick).
        tick = accel.native_tick if self._vtimer is not None else None
        if tick is not None and not tick.attach(self._fast_eoi.address, accel.view.env, self._host_tsc_offset,
                                                accel.tsc_hz):
            tick = None
        self._native_tick = tick
        self._kicked = False
        self._wake = False
        self.halted = False
        self.wait_for_sipi = False
        self.sipi_vector: int | None = None
        # This vCPU's TSC is the VM's (accel._tsc_offset) plus tsc_delta, moved by its own WRMSRs to IA32_TSC and
        # IA32_TSC_ADJUST; tsc_adjust is the MSR, which counts those moves (SDM vol. 3, 18.17.3).
        self.tsc_adjust = 0
        self.tsc_delta = 0
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

    def _host_tsc_offset(self) -> int:
        """What the guest's RDTSC adds to the host's TSC (the WRMSR stub uses the same field)."""
        return self.accel.view.tsc_offset

    def _read_tsc(self) -> int:
        return (self.accel.rdtsc() + self.accel._tsc_offset + self.tsc_delta) & 0xFFFF_FFFF_FFFF_FFFF

    def move_tsc(self, view: ui.CpuView, delta: int, adjust_too: bool) -> None:
        """A WRMSR moved this vCPU's TSC by delta (modulo 2**64): its translated RDTSC (the loaded context's
        offset), the local APIC's deadline clock and, when the MSR says so, IA32_TSC_ADJUST follow."""
        mask = 0xFFFF_FFFF_FFFF_FFFF
        self.tsc_delta = (self.tsc_delta + delta) & mask
        view.tsc_offset = (view.tsc_offset + delta) & mask
        if adjust_too:
            self.tsc_adjust = (self.tsc_adjust + delta) & mask
        self.lapic.poll_timer()         # a native tick's expiry is on the host's TSC: the model publishes it again

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
        self.tsc_delta = 0            # a loaded state runs on the VM's TSC (set_tsc); TSC_ADJUST is its record
        v.set_u64(ui.ENV_TSC_OFFSET, self.accel._tsc_offset)
        self.lapic.poll_timer()         # a native tick's expiry was on the old TSC offset: taken back
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
        elif msr == MSR_TSC_ADJUST:
            self.tsc_adjust = value & 0xFFFF_FFFF_FFFF_FFFF
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
        """A maskable interrupt may now be deliverable. A running slice takes it inside QEMU's loop, as QEMU's
        cpu_interrupt has it: the VIRQ request is set atomically from whichever thread raised it (a device's, the
        timer's, another vCPU's), and the block chain returns to the loop at its next block. The slice keeps
        running: ending it costs a return into Python, a new emu_start and, under load, the interpreter lock --
        the larger part of a network reply's reaction time (docs/net-performance.md)."""
        acc = self.accel
        if acc.running is self and self._in_slice:
            # The interrupt is in the local APIC's IRR before this check. If the slice ends before the request
            # lands, the vCPU loop reads IRR (has_interrupt) after it has left the slice, so nothing is lost.
            acc.raise_virq()
            return
        with self._cond:
            self._wake = True
            self._cond.notify_all()

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

    def _timer_moved(self) -> None:
        """Another thread armed this vCPU's local APIC timer (a restore, an INIT): a halted vCPU sleeps until the
        deadline it knew of, so it looks again."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def close_timer(self) -> None:
        if self._native_tick is not None:
            self._native_tick.detach()
        if self._vtimer is not None:
            self._vtimer.close()

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
    def bind_timer_to_current_thread(self) -> None:
        """The local APIC timer's signal, and the native tick, belong to the calling thread from now on."""
        vt = self._vtimer
        if vt is not None and vt.thread_id != threading.get_native_id():
            vt.bind_to_current_thread()
            if self._native_tick is not None and vt.kernel_id is not None:
                self._native_tick.set_timer(vt.kernel_id, vt.thread_id)
                self.lapic.attach_native_tick(self._native_tick)

    def run(self) -> VcpuExit:
        self.bind_timer_to_current_thread()
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
        vt = self._vtimer
        if vt is not None:
            self.lapic.poll_timer()             # its expiry is this thread's to fire, halted or not
        with self._cond:
            while not (self._kicked or self._wake or self.closed):
                timeout = None if vt is None else vt.seconds_left()
                if timeout == 0:
                    break                       # the deadline came: the next look (has_interrupt, _sleep) fires it
                self._cond.wait(timeout)
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
            req = v.interrupt_request & ~(ui.CPU_INTERRUPT_VIRQ | ui.CPU_INTERRUPT_NMI | ui.CPU_INTERRUPT_HARD)
            if self.lapic.has_interrupt():
                req |= ui.CPU_INTERRUPT_VIRQ
            if self.nmi_pending:
                self.nmi_pending = False
                req |= ui.CPU_INTERRUPT_NMI
            v.interrupt_request = req
            vt = self._vtimer
            if vt is not None and vt.due() and self.lapic.has_interrupt():
                # The timer's signal came after the look above and its VIRQ request was overwritten.
                v.interrupt_request = req | ui.CPU_INTERRUPT_VIRQ
            v.old_exception = -1
            self._slice_seq += 1
            acc.running = self
            if acc.lock.waiting() > 0:
                self._quantum.arm_after(QUANTUM_NS)
            self._in_slice = True
            with self._cond:
                pending = self._kicked or self._wake
            ran = not (pending or acc._frozen)
            if not ran:
                # Something arrived since the checks above: do not start a slice that could miss its kick.
                err = 0
            else:
                if acc.fast_eoi.block[1] != self._fast_eoi.address:
                    acc.fast_eoi.disarm()      # armed for another vCPU time-sharing this instance
                err = acc.emu_start_slice(v)
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
            if not ran:
                return None                 # a fresh instance's CPU reads as stopped until its first emu_start
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


def _exit_tb(v: ui.CpuView) -> None:
    """cpu_interrupt's second half: make the running block chain return to QEMU's loop (icount_decr.high = -1)."""
    decr = c_uint64.from_address(v.cpu + ui.CPU_ICOUNT_DECR_PTR).value
    ctypes.c_int16.from_address(decr + 2).value = -1

