"""The vCPU record of the machine-state file: one backend-neutral shape for both accelerators, so state saved
under the software CPU restores under KVM and back (docs/machine-state.md, "vCPU").

What it holds (Intel SDM vol. 3 unless noted): the general registers, RIP, RFLAGS; segment registers with their
hidden descriptor caches; GDTR/IDTR; CR0/2/3/4/8, EFER, XCR0; MSRs by index (the TSC, IA32_APIC_BASE,
TSC_DEADLINE, SYSENTER/STAR/LSTAR/CSTAR/SFMASK/KERNEL_GS_BASE, PAT, MISC_ENABLE, TSC_AUX, and whatever else the
backend keeps); the x87/SSE state in FXSAVE terms (vol. 1, 10.5.1: FCW, FSW, abridged FTW, FOP, FIP, FDP,
MXCSR, ST0-7 as 80-bit values in stack order, XMM0-15) plus the upper halves of YMM0-15 when AVX state exists;
events (interrupt shadow, NMI pending/masked, an exception or interrupt in the middle of delivery); the
multiprocessor state (running, halted, waiting for SIPI); and the local APIC as its 1 KiB register page
(core/state/lapic_page.py).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from core.hypervisor.base import GPR_NAMES, CpuState, DescriptorTable, Segment
from core.state import fields as f

VERSION = 1
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
MP_STATES = ("runnable", "halted", "wait_for_sipi")
MSR_TSC, MSR_APIC_BASE, MSR_TSC_DEADLINE = 0x10, 0x1B, 0x6E0
MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D00, 0x4B564D01
MAX_MSRS = 256

SEGMENT = {"selector": f.U16, "base": f.U64, "limit": f.U32, "type": f.u(4), "present": f.BOOL, "dpl": f.u(2),
           "db": f.BOOL, "s": f.BOOL, "l": f.BOOL, "g": f.BOOL, "avl": f.BOOL, "unusable": f.BOOL}
TABLE = {"base": f.U64, "limit": f.U16}
SCALARS = {"rip": f.U64, "rflags": f.U64, "cr0": f.U64, "cr2": f.U64, "cr3": f.U64, "cr4": f.U64, "cr8": f.u(4),
           "efer": f.U64, "xcr0": f.U64}
FPU = {"fcw": f.U16, "fsw": f.U16, "ftw": f.U8, "fop": f.u(11), "fip": f.U64, "fdp": f.U64, "mxcsr": f.U32,
       "st": f.Ints(8, 0, (1 << 80) - 1), "xmm": f.Ints(16, 0, (1 << 128) - 1)}
EVENTS = {"interrupt_shadow": f.BOOL, "nmi_pending": f.BOOL, "nmi_masked": f.BOOL,
          "exception": f.Optional(f.Ints(max_count=2, hi=0xFFFF_FFFF)),
          "interrupt": f.Optional(f.U8), "sipi_vector": f.Optional(f.U8)}
KEYS = ("regs", *SCALARS, "segments", "gdt", "idt", "msrs", "fpu", "ymmh", "events", "mp_state", "lapic")


def default_fpu() -> dict[str, Any]:
    """The x87/SSE state after FNINIT and a reset MXCSR (what a fresh vCPU has)."""
    return {"fcw": 0x37F, "fsw": 0, "ftw": 0, "fop": 0, "fip": 0, "fdp": 0, "mxcsr": 0x1F80,
            "st": [0] * 8, "xmm": [0] * 16}


def from_cpu_state(s: CpuState) -> dict[str, Any]:
    """The register part of the record from a CpuState (the backends add MSRs, FPU, events, APIC)."""
    return {"regs": {n: s.regs.get(n, 0) for n in GPR_NAMES}, "rip": s.rip, "rflags": s.rflags, "cr0": s.cr0,
            "cr2": s.cr2, "cr3": s.cr3, "cr4": s.cr4, "cr8": s.cr8, "efer": s.efer, "xcr0": 1,
            "segments": {n: asdict(getattr(s, n)) for n in SEGMENTS},
            "gdt": asdict(s.gdt), "idt": asdict(s.idt)}


def to_cpu_state(rec: dict[str, Any]) -> CpuState:
    """A CpuState from a checked record (MSRs other than APIC base are the backend's business)."""
    s = CpuState(regs=dict(rec["regs"]), rip=rec["rip"], rflags=rec["rflags"], cr0=rec["cr0"], cr2=rec["cr2"],
                 cr3=rec["cr3"], cr4=rec["cr4"], cr8=rec["cr8"], efer=rec["efer"],
                 apic_base=rec["msrs"].get(MSR_APIC_BASE, 0xFEE00900),
                 gdt=DescriptorTable(**rec["gdt"]), idt=DescriptorTable(**rec["idt"]))
    for n in SEGMENTS:
        setattr(s, n, Segment(**rec["segments"][n]))
    return s


def validate(rec: Any, where: str) -> dict[str, Any]:
    """Check a vCPU record from a file: every field there, of the right type and range."""
    f.expect_record(rec, where, KEYS)
    out: dict[str, Any] = f.validate({k: rec[k] for k in SCALARS}, SCALARS, where, 0)
    out["regs"] = f.validate(rec["regs"], dict.fromkeys(GPR_NAMES, f.U64), f"{where}.regs", 0)
    segs = f.expect_record(rec["segments"], f"{where}.segments", SEGMENTS)
    out["segments"] = {n: f.validate(segs[n], SEGMENT, f"{where}.segments.{n}", 0) for n in SEGMENTS}
    out["gdt"] = f.validate(rec["gdt"], TABLE, f"{where}.gdt", 0)
    out["idt"] = f.validate(rec["idt"], TABLE, f"{where}.idt", 0)
    msrs = rec["msrs"]
    if not isinstance(msrs, dict) or len(msrs) > MAX_MSRS:
        raise f.StateError(f"{where}.msrs: expected a table of at most {MAX_MSRS} MSRs")
    out["msrs"] = {}
    for key, value in msrs.items():
        try:
            index = int(key, 16)
        except ValueError:
            raise f.StateError(f"{where}.msrs: {key!r} is not an MSR index in hex") from None
        if not 0 <= index <= 0xFFFF_FFFF:
            raise f.StateError(f"{where}.msrs: {key!r} is not a 32-bit MSR index")
        out["msrs"][index] = f.check(value, f.U64, f"{where}.msrs[{key}]")
    out["fpu"] = f.validate(rec["fpu"], FPU, f"{where}.fpu", 0)
    out["ymmh"] = None if rec["ymmh"] is None else f.check(rec["ymmh"], f.Ints(16, 0, (1 << 128) - 1),
                                                             f"{where}.ymmh")
    out["events"] = f.validate(rec["events"], EVENTS, f"{where}.events", 0)
    exc = out["events"]["exception"]
    if exc is not None and (not exc or exc[0] > 31):
        raise f.StateError(f"{where}.events.exception: {exc!r} is not [vector 0-31, error code?]")
    if rec["mp_state"] not in MP_STATES:
        raise f.StateError(f"{where}.mp_state: {rec['mp_state']!r} is not one of {', '.join(MP_STATES)}")
    out["mp_state"] = rec["mp_state"]
    out["lapic"] = f.check(rec["lapic"], f.Bytes(0x400), f"{where}.lapic")
    return out


def msrs_out(msrs: dict[int, int]) -> dict[str, int]:
    """MSR table keys for the file (hex strings: JSON keys are strings)."""
    return {f"{index:x}": value for index, value in sorted(msrs.items())}
