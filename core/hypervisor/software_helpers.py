"""The software CPU's hooks into QEMU's translated code: port I/O, exception delivery, and the x86 helpers it
interposes on (RDMSR, WRMSR, CPUID, SYSCALL, SYSENTER).

unicorn 2.1.4 translates IN/OUT into calls of UC_HOOK_INSN callbacks (native ones that serve data lanes, then
Python), reports exceptions and INT n through
UC_HOOK_INTR and #UD through UC_HOOK_INSN_INVALID; both of those are answered by native stubs that run QEMU's own
`x86_cpu_do_interrupt` (uc_native). The instructions QEMU implements in C helpers (target/i386/tcg/
misc_helper.c, seg_helper.c) reach Python through the wrapper uc_native installs in front of each helper;
a callback here returns HELPER_DONE (emulated), HELPER_ORIGINAL (QEMU's own helper does it) or raise_code(...)
(the guest takes that exception, with the exact state of the faulting instruction).

Architectural behaviour, per the Intel SDM:

* RDMSR/WRMSR (vol. 4 for the MSRs): IA32_APIC_BASE, the x2APIC range 0x800-0x8FF and IA32_TSC_DEADLINE go to the
  vCPU's local APIC (vol. 3, 10.12, 10.5.4.1); IA32_TSC reads and writes the guest TSC (host TSC plus the offset,
  vol. 3, 17.17); IA32_ARCH_CAPABILITIES says the CPU does not speculate; IA32_FEATURE_CONTROL is locked with VMX
  off; what QEMU implements is left to it, and every other MSR raises #GP(0), as do non-canonical FS/GS bases.
* CPUID: the policy of software_cpuid for the executing vCPU's APIC ID (OSXSAVE follows CR4).
* SYSCALL and SYSENTER (vol. 2B): their architectural effect on RCX/R11, CS/SS, RFLAGS and RIP, in 64-bit and
  legacy modes; #UD without EFER.SCE, #GP(0) for SYSENTER without a selector in IA32_SYSENTER_CS.

X86HelperInterposition is a part of SoftwareAccelerator (a mixin): the annotations below name what it uses of the
rest. Every callback catches its own exceptions (SoftwareAccelerator._fail stops the slice and reports them).
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import c_int, c_uint32, c_uint64, c_void_p
from typing import TYPE_CHECKING

import unicorn
from unicorn import x86_const as X

from core.bus import PortIoBus
from core.hypervisor import uc_internals as ui
from core.hypervisor.base import AcceleratorUnavailable
from core.hypervisor.software_cpuid import CpuidPolicy
from core.hypervisor.uc_native import HELPER_DONE, HELPER_ORIGINAL, _Natives, raise_code

if TYPE_CHECKING:
    from core.hypervisor.software_vcpu import SoftwareVcpu

CR4_OSXSAVE = 1 << 18

MSR_IA32_TSC = 0x10
MSR_APIC_BASE = 0x1B
MSR_FEATURE_CONTROL = 0x3A
MSR_TSC_ADJUST = 0x3B
_U64 = 0xFFFF_FFFF_FFFF_FFFF
MSR_BIOS_SIGN_ID = 0x8B
MSR_ARCH_CAPABILITIES = 0x10A
# A translated CPU does not speculate: not affected by Meltdown (RDCL_NO), SSB, MDS, page-size-change MCE, TAA.
# Telling the guest so spares it KPTI's page-table switch (a full soft-TLB flush) on every kernel entry and exit.
ARCH_CAPABILITIES = 1 << 0 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 8
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


class X86HelperInterposition:
    """The hooks and interposed helpers of SoftwareAccelerator (see the module docstring)."""

    uch: int
    q: ui._Qemu
    view: ui.CpuView
    natives: _Natives
    pio: PortIoBus
    current: SoftwareVcpu | None
    cpuid_policy: CpuidPolicy
    rdtsc: Callable[[], int]
    _callbacks: list
    _fail: Callable[[str], None]

    def _hook_add(self, htype: int, callback: int, *extra, user_data: int | None = None) -> None:
        handle = ctypes.c_size_t()
        err = self.q.uc_hook_add(self.uch, ctypes.byref(handle), htype, c_void_p(callback), c_void_p(user_data),
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
        # The native hooks serve the devices' data lanes (core/pio_lanes.py) and pass every other access on.
        lanes = self.pio.lanes
        lanes.set_fallbacks(addr_of_cfunc(io_in), addr_of_cfunc(io_out))
        self._hook_add(unicorn.UC_HOOK_INSN, n.pio_in_hook, c_int(X.UC_X86_INS_IN), user_data=lanes.address)
        self._hook_add(unicorn.UC_HOOK_INSN, n.pio_out_hook, c_int(X.UC_X86_INS_OUT), user_data=lanes.address)
        n.handlers[self.view.env] = {"rdmsr": self._rdmsr, "wrmsr": self._wrmsr, "cpuid": self._cpuid,
                                     "syscall": self._syscall, "sysenter": self._sysenter}

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

    # -- interposed helpers (called from translated code with env; see uc_native) ------------------------------
    def _rdmsr(self, env: int, _arg: int) -> int:
        try:
            v = self.view
            msr = v.reg(1) & 0xFFFF_FFFF
            vcpu = self.current
            if msr == MSR_APIC_BASE or msr == MSR_TSC_DEADLINE or 0x800 <= msr <= 0x8FF:
                value = vcpu.lapic.msr_read(msr)
                if value is None:
                    return raise_code(13)
            elif msr == MSR_IA32_TSC:
                value = (self.rdtsc() + v.tsc_offset) & 0xFFFF_FFFF_FFFF_FFFF
            elif msr == MSR_TSC_ADJUST:
                value = vcpu.tsc_adjust
            elif msr == MSR_ARCH_CAPABILITIES:
                value = ARCH_CAPABILITIES
            elif msr == MSR_FEATURE_CONTROL:
                value = 1                             # locked, VMX off (no VMX in CPUID either)
            elif msr in _QEMU_MSRS:
                return HELPER_ORIGINAL
            else:
                return raise_code(13)
            v.set_reg(0, value & 0xFFFF_FFFF)
            v.set_reg(2, value >> 32)
            return HELPER_DONE
        except Exception:
            self._fail("rdmsr")
            return HELPER_DONE

    def _wrmsr(self, env: int, _arg: int) -> int:
        try:
            v = self.view
            msr = v.reg(1) & 0xFFFF_FFFF
            value = (v.reg(0) & 0xFFFF_FFFF) | (v.reg(2) & 0xFFFF_FFFF) << 32
            vcpu = self.current
            if msr == MSR_APIC_BASE or msr == MSR_TSC_DEADLINE or 0x800 <= msr <= 0x8FF:
                if not vcpu.lapic.msr_write(msr, value):
                    return raise_code(13)
                return HELPER_DONE
            if msr == MSR_IA32_TSC:        # SDM vol. 3, 18.17.3: IA32_TSC_ADJUST moves by what the TSC moved
                vcpu.move_tsc(v, (value - self.rdtsc() - v.tsc_offset) & _U64, adjust_too=True)
                return HELPER_DONE
            if msr == MSR_TSC_ADJUST:      # ...and the TSC by what IA32_TSC_ADJUST moved
                vcpu.move_tsc(v, (value - vcpu.tsc_adjust) & _U64, adjust_too=True)
                return HELPER_DONE
            if msr == MSR_BIOS_SIGN_ID:
                return HELPER_DONE                # the OS writes 0 before CPUID to read the microcode revision

            if msr in _QEMU_MSRS and msr not in _READ_ONLY_MSRS:
                if msr in (0xC000_0100, 0xC000_0101, 0xC000_0102) and not _canonical(value):
                    return raise_code(13)
                return HELPER_ORIGINAL
            return raise_code(13)
        except Exception:
            self._fail("wrmsr")
            return HELPER_DONE

    def _cpuid(self, env: int, _arg: int) -> int:
        try:
            v = self.view
            a, b, c, d = self.cpuid_policy.query(self.current.lapic.apic_id, v.reg(0) & 0xFFFF_FFFF,
                                                 v.reg(1) & 0xFFFF_FFFF, bool(v.cr(4) & CR4_OSXSAVE))
            v.set_reg(0, a)
            v.set_reg(3, b)
            v.set_reg(1, c)
            v.set_reg(2, d)
            return HELPER_DONE
        except Exception:
            self._fail("cpuid")
            return HELPER_DONE

    def _syscall(self, env: int, next_eip_addend: int) -> int:
        """SYSCALL (SDM vol. 2B): RCX/R11 saved, CS/SS from IA32_STAR, RIP from LSTAR (64-bit) or CSTAR."""
        try:
            v = self.view
            if not v.efer & 1:                       # EFER.SCE
                return raise_code(6)
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
            return HELPER_DONE
        except Exception:
            self._fail("syscall")
            return HELPER_DONE

    def _sysenter(self, env: int, next_eip_addend: int) -> int:
        """SYSENTER (SDM vol. 2B): CS/SS from IA32_SYSENTER_CS, RSP/RIP from IA32_SYSENTER_ESP/EIP."""
        try:
            v = self.view
            cs = v.u32(ui.ENV_SYSENTER_CS) & 0xFFFF
            if not v.hflags & ui.HF_PE_MASK or cs & 0xFFFC == 0:
                return raise_code(13)
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
            return HELPER_DONE
        except Exception:
            self._fail("sysenter")
            return HELPER_DONE


def addr_of_cfunc(cfunc) -> int:
    return ctypes.cast(cfunc, c_void_p).value


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top == 0 or top == 0x1FFFF

