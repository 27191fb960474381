"""One KVM vCPU (Documentation/virt/kvm/api.rst, 4 "API description" and 5 "The kvm_run structure").

A KvmVcpu runs KVM_RUN on its own thread and dispatches the exits that need Python (port I/O, MMIO) to the buses
(api.rst 5, "The kvm_run structure"); everything else the kernel handles, HLT included (the in-kernel local APIC
wakes the vCPU). Its CPUID is kvm_cpuid's table for this vCPU's APIC ID.

kick(): set kvm_run.immediate_exit and send the vCPU thread a signal whose handler does nothing and is installed
without SA_RESTART, so a KVM_RUN in progress returns EINTR and one about to start returns at once (api.rst 5,
immediate_exit). The handler is a libc function that ignores its argument (getpid), installed with sigaction
through ctypes: it needs no Python, so it works whichever thread creates the VM and costs nothing per kick.

Power-on reset: the state KVM gives a fresh vCPU (registers at the reset vector, LAPIC, FPU, XCR0, debug
registers, pending events; Intel SDM vol. 3, table 9-1) is captured at creation and written back by
power_on_reset(), with the power-on MSR values this KVM accepts (IA32_PAT, IA32_MISC_ENABLE, MTRRdefType ...;
SDM vol. 4 for the MSRs).
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import threading
from typing import TYPE_CHECKING

from core.hypervisor import kvm_abi as abi
from core.hypervisor.base import (
    GPR_NAMES,
    AcceleratorUnavailable,
    CpuState,
    DescriptorTable,
    ExitReason,
    Segment,
    Vcpu,
    VcpuExit,
)
from core.hypervisor.host_signals import install_handler
from core.hypervisor.kvm_cpuid import build_cpuid

if TYPE_CHECKING:
    from core.hypervisor.kvm import KvmAccelerator

# MSRs (Intel SDM vol. 4).
MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_PAT = 0x277
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_IA32_TSC_DEADLINE = 0x6E0
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_SYSCALL_MASK = 0xC000_0084
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_TSC_AUX = 0xC000_0103

MISC_ENABLE_FAST_STRINGS = 1 << 0
MISC_ENABLE_BTS_UNAVAILABLE = 1 << 11     # no branch trace store / PEBS is offered to the guest
MISC_ENABLE_PEBS_UNAVAILABLE = 1 << 12
PAT_POWER_ON = 0x0007_0406_0007_0406      # SDM vol. 3, 13.12.4: WB WT UC- UC, twice
MTRR_ENABLE_WB = (1 << 11) | 6            # MTRRs on, default type write-back: there is no firmware to set them

# Values every vCPU starts with (and returns to at reset), where the index list says KVM has the MSR.
POWER_ON_MSRS = {
    MSR_IA32_TSC: 0,
    MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRINGS | MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE,
    MSR_IA32_SYSENTER_CS: 0, MSR_IA32_SYSENTER_ESP: 0, MSR_IA32_SYSENTER_EIP: 0,
    MSR_IA32_PAT: PAT_POWER_ON,
    MSR_MTRR_DEF_TYPE: MTRR_ENABLE_WB,
    MSR_IA32_TSC_DEADLINE: 0,
    MSR_STAR: 0, MSR_LSTAR: 0, MSR_CSTAR: 0, MSR_SYSCALL_MASK: 0, MSR_KERNEL_GS_BASE: 0, MSR_TSC_AUX: 0,
}

# MSRs get_state reports (architectural state a loader or a snapshot cares about; the TSC is left out so that a
# get_state/set_state round trip does not step the guest's clock back).
STATE_MSRS = (MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_STAR, MSR_LSTAR, MSR_CSTAR,
              MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE, MSR_IA32_PAT, MSR_IA32_MISC_ENABLE)

APIC_BASE_BSP = 1 << 8


# -- the kick signal -----------------------------------------------------------------------------------------
KICK_SIGNAL = signal.SIGRTMIN + 4    # an RT signal: nobody else uses it; glibc reserves the first two


def _install_kick_signal() -> None:
    """Give KICK_SIGNAL a handler that returns at once, without SA_RESTART: delivering it to a thread inside
    KVM_RUN makes the ioctl fail with EINTR (api.rst KVM_RUN: it returns -EINTR when a signal is pending)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:             # getpid ignores its argument and is signal-safe
        install_handler(KICK_SIGNAL, ctypes.cast(libc.getpid, ctypes.c_void_p).value, 0)
    except OSError as exc:
        raise AcceleratorUnavailable(f"cannot install the vCPU kick signal: {exc.strerror}") from None


# -- exit decoding ---------------------------------------------------------------------------------------------
_EXIT = abi.KVM_RUN_EXIT_OFFSET
_IO_LAYOUT = struct.Struct("<BBHIQ")        # direction, size, port, count, data_offset
_MMIO_LAYOUT = struct.Struct("<Q8sIB")      # phys_addr, data, len, is_write
_MMIO_DATA_Q = (_EXIT + 8) // 8             # index of mmio.data in a u64 view of kvm_run
_MASK = {1: 0xFF, 2: 0xFFFF, 3: 0xFF_FFFF, 4: 0xFFFF_FFFF, 5: (1 << 40) - 1, 6: (1 << 48) - 1, 7: (1 << 56) - 1,
         8: (1 << 64) - 1}
_SYSTEM_EVENTS = {abi.KVM_SYSTEM_EVENT_SHUTDOWN: "shutdown", abi.KVM_SYSTEM_EVENT_RESET: "reset",
                  abi.KVM_SYSTEM_EVENT_CRASH: "crash"}
_INTERNAL_ERRORS = {abi.KVM_INTERNAL_ERROR_EMULATION: "instruction emulation failed",
                    abi.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
                    abi.KVM_INTERNAL_ERROR_DELIVERY_EV: "VM exit while delivering an event",
                    abi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason"}


class _MsrRefused(ValueError):
    def __init__(self, index: int, value: int) -> None:
        super().__init__(f"KVM refused MSR {index:#x} = {value:#x}")
        self.index = index



class KvmVcpu(Vcpu):
    """One KVM vCPU; its APIC ID (and KVM vCPU id) is its index."""

    def __init__(self, accel: KvmAccelerator, index: int) -> None:
        self.index = index
        self.accel = accel
        self.pio = accel.pio
        self.mmio = accel.mmio
        self._closed = False
        self._kicked = False
        self._kick_lock = threading.Lock()
        self._thread_id: int | None = None
        self._in_run = False
        self.exits = 0
        self.fd = abi.ioctl(accel.vm_fd, abi.KVM_CREATE_VCPU, index)
        try:
            self._mm = mmap.mmap(self.fd, accel.vcpu_mmap_size, flags=mmap.MAP_SHARED,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._u8 = memoryview(self._mm)
            self._u16 = self._u8.cast("H")
            self._u32 = self._u8.cast("I")
            self._u64 = self._u8.cast("Q")
            # Port data lives in the kvm_run mapping at data_offset; index it with the view of the access size.
            # indexed by access size: (view, log2 size)
            self._pio_views = (None, (self._u8, 0), (self._u16, 1), None, (self._u32, 2))
            self._setup_cpuid()
            self._msr_baseline = self._set_baseline_msrs(
                {i: v for i, v in POWER_ON_MSRS.items() if i in accel.msr_indices})
            self._capture_power_on()
        except BaseException:
            self.close()
            raise

    # -- setup ----------------------------------------------------------------------------------------------
    def _setup_cpuid(self) -> None:
        entries = build_cpuid(self.accel.supported_cpuid, self.index, self.accel.num_cpus)
        buf = abi.cpuid_buffer(len(entries))
        for dst, e in zip(buf.entries, entries, strict=True):
            dst.function, dst.index, dst.flags = e.function, e.index, e.flags
            dst.eax, dst.ebx, dst.ecx, dst.edx = e.eax, e.ebx, e.ecx, e.edx
        abi.ioctl(self.fd, abi.KVM_SET_CPUID2, buf)
        self.cpuid = entries

    def _capture_power_on(self) -> None:
        """What KVM made of this vCPU at creation is its RESET state (SDM vol. 3, table 9-1)."""
        self._regs_power_on = abi.kvm_regs()
        abi.ioctl(self.fd, abi.KVM_GET_REGS, self._regs_power_on)
        self._sregs_power_on = abi.kvm_sregs()
        abi.ioctl(self.fd, abi.KVM_GET_SREGS, self._sregs_power_on)
        self._lapic_power_on = abi.kvm_lapic_state()
        abi.ioctl(self.fd, abi.KVM_GET_LAPIC, self._lapic_power_on)
        self._fpu_power_on = abi.kvm_fpu()
        abi.ioctl(self.fd, abi.KVM_GET_FPU, self._fpu_power_on)
        self._xcrs_power_on = self._debugregs_power_on = self._events_power_on = None
        if self.accel.has_xcrs:
            self._xcrs_power_on = abi.kvm_xcrs()
            abi.ioctl(self.fd, abi.KVM_GET_XCRS, self._xcrs_power_on)
        if self.accel.has_debugregs:
            self._debugregs_power_on = abi.kvm_debugregs()
            abi.ioctl(self.fd, abi.KVM_GET_DEBUGREGS, self._debugregs_power_on)
        if self.accel.has_vcpu_events:
            ev = abi.kvm_vcpu_events()
            abi.ioctl(self.fd, abi.KVM_GET_VCPU_EVENTS, ev)
            # Nothing pending, no NMI, no interrupt shadow; these flags make KVM apply those fields too.
            ev.flags = (abi.KVM_VCPUEVENT_VALID_NMI_PENDING | abi.KVM_VCPUEVENT_VALID_SIPI_VECTOR
                        | abi.KVM_VCPUEVENT_VALID_SHADOW)
            self._events_power_on = ev

    def power_on_reset(self) -> None:
        """Back to the state after RESET: registers at the reset vector, LAPIC/FPU/XCR0/DRs/MSRs as at creation,
        no pending events; the BSP runnable, an AP waiting for INIT/SIPI."""
        if self._events_power_on is not None:
            abi.ioctl(self.fd, abi.KVM_SET_VCPU_EVENTS, self._events_power_on)
        abi.ioctl(self.fd, abi.KVM_SET_REGS, self._regs_power_on)
        # sregs first: they carry IA32_APIC_BASE, and the LAPIC registers are read in the mode it selects.
        abi.ioctl(self.fd, abi.KVM_SET_SREGS, self._sregs_power_on)
        abi.ioctl(self.fd, abi.KVM_SET_LAPIC, self._lapic_power_on)
        abi.ioctl(self.fd, abi.KVM_SET_FPU, self._fpu_power_on)
        if self._xcrs_power_on is not None:
            abi.ioctl(self.fd, abi.KVM_SET_XCRS, self._xcrs_power_on)
        if self._debugregs_power_on is not None:
            abi.ioctl(self.fd, abi.KVM_SET_DEBUGREGS, self._debugregs_power_on)
        self._set_msrs(self._msr_baseline)
        self.set_mp_state(abi.KVM_MP_STATE_RUNNABLE if self.index == 0 else abi.KVM_MP_STATE_UNINITIALIZED)

    # -- MSRs / MP state -------------------------------------------------------------------------------------
    def _set_msrs(self, msrs: dict[int, int]) -> None:
        if not msrs:
            return
        buf = abi.msrs_buffer(len(msrs))
        for entry, (index, value) in zip(buf.entries, msrs.items(), strict=True):
            entry.index, entry.data = index, value & (1 << 64) - 1
        done = abi.ioctl(self.fd, abi.KVM_SET_MSRS, buf)
        if done != len(msrs):   # KVM stops at the first MSR it refuses and returns how many it set
            bad = list(msrs)[done]
            raise _MsrRefused(bad, msrs[bad])

    def _set_baseline_msrs(self, msrs: dict[int, int]) -> dict[int, int]:
        """Set what this KVM accepts of the power-on MSR values; return that subset (a KVM that lists an MSR but
        refuses a value for it, e.g. one whose CPUID bit is off, must not make the whole backend unusable)."""
        accepted = dict(msrs)
        while accepted:
            try:
                self._set_msrs(accepted)
                break
            except _MsrRefused as exc:
                del accepted[exc.index]
        return accepted

    def get_msrs(self, indices: tuple[int, ...] | list[int]) -> dict[int, int]:
        wanted = [i for i in indices if i in self.accel.msr_indices]
        if not wanted:
            return {}
        buf = abi.msrs_buffer(len(wanted))
        for entry, index in zip(buf.entries, wanted, strict=True):
            entry.index = index
        done = abi.ioctl(self.fd, abi.KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(done)}

    def get_mp_state(self) -> int:
        st = abi.kvm_mp_state()
        abi.ioctl(self.fd, abi.KVM_GET_MP_STATE, st)
        return st.mp_state

    def set_mp_state(self, mp_state: int) -> None:
        st = abi.kvm_mp_state()
        st.mp_state = mp_state
        abi.ioctl(self.fd, abi.KVM_SET_MP_STATE, st)

    def reset_to_wait_for_sipi(self) -> None:
        """An AP after RESET/INIT: halted until the in-kernel LAPIC takes a SIPI (SDM vol. 3, 8.4.3)."""
        self.set_mp_state(abi.KVM_MP_STATE_UNINITIALIZED)

    # -- register state ---------------------------------------------------------------------------------------
    @staticmethod
    def _seg_to_kvm(seg: Segment, out: abi.kvm_segment) -> None:
        out.base, out.limit, out.selector, out.type = seg.base, seg.limit, seg.selector, seg.type
        out.present, out.dpl, out.db, out.s = int(seg.present), seg.dpl, int(seg.db), int(seg.s)
        out.l, out.g, out.avl, out.unusable = int(seg.l), int(seg.g), int(seg.avl), int(seg.unusable)

    @staticmethod
    def _seg_from_kvm(k: abi.kvm_segment) -> Segment:
        return Segment(selector=k.selector, base=k.base, limit=k.limit, type=k.type, present=bool(k.present),
                       dpl=k.dpl, db=bool(k.db), s=bool(k.s), l=bool(k.l), g=bool(k.g), avl=bool(k.avl),
                       unusable=bool(k.unusable))

    def set_state(self, state: CpuState) -> None:
        """Load architectural state; segment limits are byte limits (the expanded descriptor-cache value, as
        KVM and CpuState keep them). Makes the vCPU runnable: a loader's entry state means "start here"."""
        regs = abi.kvm_regs()
        for name in GPR_NAMES:
            setattr(regs, name, state.regs.get(name, 0) & (1 << 64) - 1)
        regs.rip, regs.rflags = state.rip, state.rflags | 0x2
        sregs = abi.kvm_sregs()
        abi.ioctl(self.fd, abi.KVM_GET_SREGS, sregs)   # keeps a pending interrupt's bit in interrupt_bitmap
        for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
            self._seg_to_kvm(getattr(state, name), getattr(sregs, name))
        for name in ("gdt", "idt"):
            table: DescriptorTable = getattr(state, name)
            getattr(sregs, name).base = table.base
            getattr(sregs, name).limit = table.limit
        sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8 = state.cr0, state.cr2, state.cr3, state.cr4, state.cr8
        sregs.efer = state.efer
        sregs.apic_base = state.apic_base if self.index == 0 else state.apic_base & ~APIC_BASE_BSP
        abi.ioctl(self.fd, abi.KVM_SET_SREGS, sregs)
        abi.ioctl(self.fd, abi.KVM_SET_REGS, regs)
        if state.msrs:
            self._set_msrs(state.msrs)
        self.set_mp_state(abi.KVM_MP_STATE_RUNNABLE)

    def get_state(self) -> CpuState:
        regs = abi.kvm_regs()
        abi.ioctl(self.fd, abi.KVM_GET_REGS, regs)
        sregs = abi.kvm_sregs()
        abi.ioctl(self.fd, abi.KVM_GET_SREGS, sregs)
        st = CpuState(regs={name: getattr(regs, name) for name in GPR_NAMES}, rip=regs.rip, rflags=regs.rflags)
        for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
            setattr(st, name, self._seg_from_kvm(getattr(sregs, name)))
        st.gdt = DescriptorTable(sregs.gdt.base, sregs.gdt.limit)
        st.idt = DescriptorTable(sregs.idt.base, sregs.idt.limit)
        st.cr0, st.cr2, st.cr3, st.cr4, st.cr8 = sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8
        st.efer, st.apic_base = sregs.efer, sregs.apic_base
        st.msrs = self.get_msrs(STATE_MSRS)
        return st

    def get_lapic(self) -> bytes:
        """The local APIC's 1 KiB register page as KVM holds it (api.rst KVM_GET_LAPIC)."""
        st = abi.kvm_lapic_state()
        abi.ioctl(self.fd, abi.KVM_GET_LAPIC, st)
        return ctypes.string_at(ctypes.addressof(st), ctypes.sizeof(st))   # .regs would stop at a NUL

    # -- running ------------------------------------------------------------------------------------------------
    def kick(self) -> None:
        with self._kick_lock:
            if self._closed:
                return
            self._kicked = True
            self._u8[1] = 1     # kvm_run.immediate_exit: a KVM_RUN about to start returns EINTR at once
            # Signal only a thread that is inside run(): run() clears _in_run under this lock before it returns,
            # so the thread id is that of a live thread.
            if self._in_run and self._thread_id is not None:
                signal.pthread_kill(self._thread_id, KICK_SIGNAL)

    def _take_kick(self) -> bool:
        with self._kick_lock:
            if not self._kicked:
                return False
            self._kicked = False
            self._u8[1] = 0
            return True

    def run(self) -> VcpuExit:
        """KVM_RUN until an exit the Machine must see. Port I/O and MMIO are handled here; HLT waits in the
        kernel (in-kernel LAPIC) until an interrupt or a kick."""
        with self._kick_lock:
            if self._closed:
                return VcpuExit(ExitReason.ERROR, "the vCPU is closed")
            self._thread_id = threading.get_ident()
            self._in_run = True
        ioctl = abi.raw_ioctl()
        get_errno = ctypes.get_errno
        fd, run_request = self.fd, abi.KVM_RUN
        mm, u32, u64 = self._mm, self._u32, self._u64
        pio_views = self._pio_views
        pio_read, pio_write = self.pio.read, self.pio.write
        mmio_read, mmio_write = self.mmio.read, self.mmio.write
        unpack_io, unpack_mmio = _IO_LAYOUT.unpack_from, _MMIO_LAYOUT.unpack_from
        exit_io, exit_mmio, io_out = abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO, abi.KVM_EXIT_IO_OUT
        masks, mm_len = _MASK, len(mm)
        exits = 0
        try:
            while True:
                if ioctl(fd, run_request, None) < 0:
                    err = get_errno()
                    if err == errno.EINTR:
                        if self._take_kick():
                            return VcpuExit(ExitReason.KICKED)
                        continue            # some other signal: carry on
                    if err == errno.EAGAIN:
                        continue            # an AP woken without a SIPI for it (KVM_RUN)
                    return VcpuExit(ExitReason.ERROR, f"KVM_RUN failed: {os.strerror(err)}{self._where()}")
                exits += 1
                reason = u32[2]
                if reason == exit_io:
                    direction, size, port, count, offset = unpack_io(mm, _EXIT)
                    entry = pio_views[size] if size < 5 else None
                    if entry is None or offset & (size - 1) or offset + size * count > mm_len:
                        return self._error(f"port I/O exit with size {size}, count {count}, offset {offset}")
                    view = entry[0]
                    i = offset >> entry[1]
                    if direction == io_out:
                        if count == 1:
                            pio_write(port, size, view[i])
                        else:
                            self.pio.write_string(port, size, mm[offset:offset + size * count])
                    elif count == 1:
                        view[i] = pio_read(port, size)
                    else:
                        mm[offset:offset + size * count] = self.pio.read_string(port, size, count)
                elif reason == exit_mmio:
                    addr, data, length, is_write = unpack_mmio(mm, _EXIT)
                    mask = masks.get(length)
                    if mask is None:
                        return self._error(f"MMIO exit of {length} bytes at {addr:#x}")
                    if is_write:
                        mmio_write(addr, length, int.from_bytes(data, "little") & mask)
                    else:
                        u64[_MMIO_DATA_Q] = mmio_read(addr, length) & mask
                elif reason == abi.KVM_EXIT_INTR:
                    if self._take_kick():
                        return VcpuExit(ExitReason.KICKED)
                else:
                    return self._other_exit(reason)
        finally:
            with self._kick_lock:
                self._in_run = False
            self.exits += exits

    def _error(self, what: str) -> VcpuExit:
        return VcpuExit(ExitReason.ERROR, f"{what}{self._where()}")

    def _where(self) -> str:
        try:
            regs = abi.kvm_regs()
            abi.ioctl(self.fd, abi.KVM_GET_REGS, regs)
            sregs = abi.kvm_sregs()
            abi.ioctl(self.fd, abi.KVM_GET_SREGS, sregs)
        except OSError:
            return ""
        return f" at {sregs.cs.selector:04x}:{regs.rip:#x} (cr0={sregs.cr0:#x} cr4={sregs.cr4:#x} efer={sregs.efer:#x})"

    def _other_exit(self, reason: int) -> VcpuExit:
        run = abi.kvm_run.from_buffer_copy(self._mm)
        ex = run.exit
        if reason == abi.KVM_EXIT_SHUTDOWN:
            return VcpuExit(ExitReason.SHUTDOWN, self._where().strip())
        if reason == abi.KVM_EXIT_HLT:
            # Only without an in-kernel LAPIC, which this backend always creates.
            return VcpuExit(ExitReason.HALTED, f"HLT{self._where()}")
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            kind = _SYSTEM_EVENTS.get(ex.system_event.type, f"type {ex.system_event.type}")
            if ex.system_event.type == abi.KVM_SYSTEM_EVENT_RESET:
                return VcpuExit(ExitReason.SHUTDOWN, "system reset requested (KVM system event)")
            return VcpuExit(ExitReason.ERROR, f"KVM system event {kind}")
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            sub = ex.internal.suberror
            data = " ".join(f"{ex.internal.data[i]:#x}" for i in range(min(ex.internal.ndata, 16)))
            what = _INTERNAL_ERRORS.get(sub, "internal error")
            return self._error(f"KVM internal error {sub} ({what}), data [{data}]")
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            fe = ex.fail_entry
            return self._error(f"VM entry failed: hardware reason {fe.hardware_entry_failure_reason:#x} "
                               f"on host CPU {fe.cpu}")
        if reason == abi.KVM_EXIT_UNKNOWN:
            return self._error(f"unknown exit, hardware exit reason {ex.hw.hardware_exit_reason:#x}")
        name = abi.EXIT_REASON_NAMES.get(reason, "?")
        return self._error(f"unexpected KVM exit {reason} ({name})")

    def close(self) -> None:
        with self._kick_lock:
            if self._closed:
                return
            self._closed = True
        for attr in ("_u64", "_u32", "_u16", "_u8"):
            view = self.__dict__.pop(attr, None)
            if view is not None:
                view.release()
        self._pio_views = ()
        mm = self.__dict__.pop("_mm", None)
        if mm is not None:
            mm.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
