"""The software CPU's side of machine state (docs/machine-state.md): a vCPU of unicorn/QEMU as the neutral
record of core/state/cpu.py, and back.

Registers go through SoftwareVcpu's CpuState path (QEMU's CR0/CR3/CR4 update routines keep the derived hflags
right); MSRs through unicorn's MSR access (QEMU's own rdmsr/wrmsr for the MSRs it implements) and the local APIC
model for IA32_APIC_BASE and TSC_DEADLINE; x87/SSE through unicorn's FPU registers (kept as ST0-7 in stack order,
the tag word reduced to FXSAVE's abridged form); the TSC through the VM's TSC offset. The emulator has no
AVX state and no kvm-clock, so a record that uses either (XCR0 beyond x87|SSE, YMM upper halves that are not
zero, kvm-clock MSRs enabled) is refused with the reason. Likewise an event KVM was in the middle of injecting:
the software CPU delivers interrupts only from its own loop.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from core.devices.lapic_page import lapic_to_page, page_to_lapic
from core.hypervisor import cpu_record as C
from core.hypervisor import uc_internals as ui
from core.hypervisor.software_helpers import _QEMU_MSRS, _READ_ONLY_MSRS, MSR_TSC_ADJUST
from core.state.fields import StateError

if TYPE_CHECKING:
    from core.hypervisor.software_vcpu import SoftwareVcpu

SAVED_MSRS = sorted(m for m in _QEMU_MSRS if m not in _READ_ONLY_MSRS and m != 0xC000_0080)
_FP = [getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)]     # physical registers R0-R7
_XMM = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]
CR4_SUPPORTED = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x10000 | 0x20000 \
    | 0x40000 | 0x100000 | 0x200000       # VME..OSXMMEXCPT, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP (QEMU's TCG)


def capture(vcpu: SoftwareVcpu) -> dict[str, Any]:
    """The record of a stopped vCPU."""
    acc = vcpu.accel
    acc.acquire(vcpu)
    try:
        uc, v = acc.uc, acc.view
        rec = C.from_cpu_state(vcpu._save_state())
        msrs = {}
        for index in SAVED_MSRS:
            try:
                msrs[index] = uc.msr_read(index)
            except Exception:  # an MSR this QEMU build does not implement: nothing to carry
                continue
        msrs[C.MSR_TSC] = vcpu._read_tsc()
        msrs[MSR_TSC_ADJUST] = vcpu.tsc_adjust
        msrs[C.MSR_APIC_BASE] = vcpu.lapic.base_msr
        msrs[C.MSR_TSC_DEADLINE] = vcpu.lapic.tsc_deadline
        rec["msrs"] = C.msrs_out(msrs)
        tags = uc.reg_read(X.UC_X86_REG_FPTAG)
        top = (uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7
        st = []
        for i in range(8):                      # ST(i) is physical register (TOP + i) mod 8
            mantissa, exponent = uc.reg_read(_FP[(top + i) & 7])
            st.append((exponent & 0xFFFF) << 64 | mantissa)
        rec["fpu"] = {"fcw": uc.reg_read(X.UC_X86_REG_FPCW), "fsw": uc.reg_read(X.UC_X86_REG_FPSW),
                      "ftw": sum(1 << i for i in range(8) if (tags >> (2 * i)) & 3 != 3),
                      "fop": uc.reg_read(X.UC_X86_REG_FOP) & 0x7FF, "fip": uc.reg_read(X.UC_X86_REG_FIP),
                      "fdp": uc.reg_read(X.UC_X86_REG_FDP), "mxcsr": uc.reg_read(X.UC_X86_REG_MXCSR),
                      "st": st, "xmm": [uc.reg_read(r) for r in _XMM]}
        rec["ymmh"] = None
        rec["events"] = {"interrupt_shadow": bool(v.hflags & ui.HF_INHIBIT_IRQ_MASK),
                         "nmi_pending": vcpu.nmi_pending, "nmi_masked": bool(v.hflags2 & ui.HF2_NMI_MASK),
                         "exception": None, "interrupt": None, "sipi_vector": vcpu.sipi_vector}
    finally:
        acc.release()
    rec["mp_state"] = "wait_for_sipi" if vcpu.wait_for_sipi else "halted" if vcpu.halted else "runnable"
    rec["lapic"] = lapic_to_page(vcpu.lapic)
    return rec


def check_supported(rec: dict[str, Any], where: str) -> None:
    """Refuse, with the reason, a record this emulator cannot continue."""
    if rec["xcr0"] & ~0x3:
        raise StateError(f"{where}: the guest enabled AVX or later XSAVE state (XCR0 {rec['xcr0']:#x}), which the "
                         f"software CPU does not have; restore it under KVM")
    if rec["ymmh"] is not None and any(rec["ymmh"]):
        raise StateError(f"{where}: the guest has AVX register state, which the software CPU does not have; "
                         f"restore it under KVM")
    if rec["cr4"] & ~CR4_SUPPORTED:
        raise StateError(f"{where}: CR4 {rec['cr4']:#x} enables features the software CPU lacks "
                         f"({rec['cr4'] & ~CR4_SUPPORTED:#x}); restore it under KVM")
    for msr in (C.MSR_KVM_SYSTEM_TIME_NEW, C.MSR_KVM_WALL_CLOCK_NEW):
        if rec["msrs"].get(msr, 0) & 1:
            raise StateError(f"{where}: the guest uses KVM's paravirtual clock (kvm-clock), which the software "
                             f"CPU does not provide; restore it under KVM")
    ev = rec["events"]
    if ev["exception"] is not None or ev["interrupt"] is not None:
        raise StateError(f"{where}: the state was saved while KVM was delivering an "
                         f"{'exception' if ev['exception'] is not None else 'interrupt'}; the software CPU cannot "
                         f"resume in the middle of a delivery: save it again")


def set_tsc(vcpu: SoftwareVcpu, tsc: int) -> None:
    """The VM's TSC reads `tsc` now (one offset for every vCPU: they share the host's TSC)."""
    acc = vcpu.accel
    acc._tsc_offset = (tsc - acc.rdtsc()) & 0xFFFF_FFFF_FFFF_FFFF


def restore(vcpu: SoftwareVcpu, rec: dict[str, Any], where: str) -> None:
    """Load a checked record (cpu.validate) into a stopped vCPU; set_tsc first."""
    check_supported(rec, where)
    state = C.to_cpu_state(rec)
    state.msrs = {}
    acc = vcpu.accel
    acc.acquire(vcpu)
    try:
        uc, v = acc.uc, acc.view
        vcpu._load_state(state)
        vcpu.tsc_adjust = rec["msrs"].get(MSR_TSC_ADJUST, 0)
        for index, value in rec["msrs"].items():
            if index in _QEMU_MSRS and index not in _READ_ONLY_MSRS and index != 0xC000_0080:
                uc.reg_write(X.UC_X86_REG_MSR, (index, value))
        fpu = rec["fpu"]
        uc.reg_write(X.UC_X86_REG_FPCW, fpu["fcw"])
        uc.reg_write(X.UC_X86_REG_FPSW, fpu["fsw"])
        top = (fpu["fsw"] >> 11) & 7
        for i, value in enumerate(fpu["st"]):
            uc.reg_write(_FP[(top + i) & 7], (value & 0xFFFF_FFFF_FFFF_FFFF, value >> 64))
        uc.reg_write(X.UC_X86_REG_FPTAG, sum(3 << (2 * i) for i in range(8) if not fpu["ftw"] >> i & 1))
        uc.reg_write(X.UC_X86_REG_FOP, fpu["fop"])
        uc.reg_write(X.UC_X86_REG_FIP, fpu["fip"])
        uc.reg_write(X.UC_X86_REG_FDP, fpu["fdp"])
        uc.reg_write(X.UC_X86_REG_MXCSR, fpu["mxcsr"])
        for reg, value in zip(_XMM, fpu["xmm"], strict=True):
            uc.reg_write(reg, value)
        ev = rec["events"]
        if ev["interrupt_shadow"]:
            v.hflags = v.hflags | ui.HF_INHIBIT_IRQ_MASK
        if ev["nmi_masked"]:
            v.hflags2 = v.hflags2 | ui.HF2_NMI_MASK
    finally:
        acc.release()
    page_to_lapic(vcpu.lapic, rec["lapic"], rec["msrs"].get(C.MSR_APIC_BASE, vcpu.lapic.base_msr),
                  rec["msrs"].get(C.MSR_TSC_DEADLINE, 0), f"{where}.lapic")
    with vcpu._cond:
        vcpu.nmi_pending = ev["nmi_pending"]
        vcpu.wait_for_sipi = rec["mp_state"] == "wait_for_sipi"
        vcpu.sipi_vector = ev["sipi_vector"] if vcpu.wait_for_sipi else None
        vcpu.halted = rec["mp_state"] == "halted"
        vcpu._if_flag = rec["rflags"] & 0x200
        vcpu._wake = True
