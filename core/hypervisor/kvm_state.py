"""KVM's side of machine state (docs/machine-state.md): a KVM vCPU as the neutral record of core/state/cpu.py
(KVM_GET/SET_REGS, SREGS, FPU, XCRS, MSRS, VCPU_EVENTS, MP_STATE, LAPIC), and the in-kernel 8259A pair, I/O APIC
(KVM_GET/SET_IRQCHIP) and 8254 (KVM_GET/SET_PIT2) converted to and from the records of Vireo's own models
(core/devices/pic.py, ioapic.py, pit.py), so that state moves between the accelerators.

Conversions, field by field (linux/arch/x86/kvm/i8259.c, ioapic.c, i8254.c): a PIC's priority_add is one past
the model's lowest-priority level and its init_state counts the ICWs still expected from 0 where the model
counts from 2; the I/O APIC's irr is the model's pin levels (kept for level-triggered pins only when going to
KVM: an edge pin's irr bit would be delivered again); a PIT channel's count_load_time is CLOCK_MONOTONIC, the
clock of the model's start_ns. KVM_SET_PIT2 restarts every channel's count from its reload value (the kernel
does not take count_load_time back), so under KVM the first PIT period after a restore is a whole one.
"""
from __future__ import annotations

import ctypes
from ctypes import Structure, c_uint32, c_uint64
from typing import TYPE_CHECKING, Any

from core.hypervisor import cpu_record as C
from core.hypervisor import kvm_abi as abi
from core.state.fields import StateError
from core.timers import now_ns

if TYPE_CHECKING:
    from core.hypervisor.kvm import KvmAccelerator
    from core.hypervisor.kvm_vcpu import KvmVcpu

# MSRs carried besides the architectural ones get_state reports: TSC, APIC base, TSC deadline, TSC_AUX, MTRR
# default type, kvm-clock.
EXTRA_MSRS = (C.MSR_TSC, C.MSR_APIC_BASE, C.MSR_TSC_DEADLINE, 0xC000_0103, 0x2FF, C.MSR_KVM_SYSTEM_TIME_NEW,
              C.MSR_KVM_WALL_CLOCK_NEW, 0x4B56_4D02, 0x4B56_4D03, 0x4B56_4D04)
# MSRs whose value must arrive or the restore fails (the rest are set where KVM accepts them).
PORTABLE_MSRS = frozenset((0x174, 0x175, 0x176, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0102,
                           0x277, 0x1A0, 0xC000_0103, C.MSR_KVM_SYSTEM_TIME_NEW, C.MSR_KVM_WALL_CLOCK_NEW))
_MP_TO = {abi.KVM_MP_STATE_RUNNABLE: "runnable", abi.KVM_MP_STATE_HALTED: "halted",
          abi.KVM_MP_STATE_UNINITIALIZED: "wait_for_sipi", abi.KVM_MP_STATE_INIT_RECEIVED: "wait_for_sipi",
          abi.KVM_MP_STATE_SIPI_RECEIVED: "wait_for_sipi"}
_MP_FROM = {"runnable": abi.KVM_MP_STATE_RUNNABLE, "halted": abi.KVM_MP_STATE_HALTED,
            "wait_for_sipi": abi.KVM_MP_STATE_UNINITIALIZED}


class kvm_clock_data(Structure):
    _fields_ = [("clock", c_uint64), ("flags", c_uint32), ("pad0", c_uint32), ("realtime", c_uint64),
                ("host_tsc", c_uint64), ("pad", c_uint32 * 4)]


KVM_GET_CLOCK = abi._IOR(abi.KVMIO, 0x7C, kvm_clock_data)
KVM_SET_CLOCK = abi._IOW(abi.KVMIO, 0x7B, kvm_clock_data)


def _int_le(raw: Any) -> int:
    return int.from_bytes(bytes(raw), "little")


def capture(vcpu: KvmVcpu) -> dict[str, Any]:
    """The record of a stopped KVM vCPU."""
    rec = C.from_cpu_state(vcpu.get_state())
    msrs = dict(vcpu.get_state().msrs)
    msrs.update(vcpu.get_msrs(EXTRA_MSRS))
    rec["msrs"] = C.msrs_out(msrs)
    fpu = abi.kvm_fpu()
    abi.ioctl(vcpu.fd, abi.KVM_GET_FPU, fpu)
    rec["fpu"] = {"fcw": fpu.fcw, "fsw": fpu.fsw, "ftw": fpu.ftwx, "fop": fpu.last_opcode & 0x7FF,
                  "fip": fpu.last_ip, "fdp": fpu.last_dp, "mxcsr": fpu.mxcsr,
                  "st": [_int_le(r) & ((1 << 80) - 1) for r in fpu.fpr], "xmm": [_int_le(x) for x in fpu.xmm]}
    rec["ymmh"] = None
    if vcpu.accel.has_xcrs:
        xcrs = abi.kvm_xcrs()
        abi.ioctl(vcpu.fd, abi.KVM_GET_XCRS, xcrs)
        rec["xcr0"] = next((xcrs.xcrs[i].value for i in range(xcrs.nr_xcrs) if xcrs.xcrs[i].xcr == 0), 1)
    ev = abi.kvm_vcpu_events()
    if vcpu.accel.has_vcpu_events:
        abi.ioctl(vcpu.fd, abi.KVM_GET_VCPU_EVENTS, ev)
    exc = None
    if ev.exception.injected or ev.exception.pending:
        exc = [ev.exception.nr, ev.exception.error_code] if ev.exception.has_error_code else [ev.exception.nr]
    rec["events"] = {"interrupt_shadow": bool(ev.interrupt.shadow), "nmi_pending": bool(ev.nmi.pending),
                     "nmi_masked": bool(ev.nmi.masked), "exception": exc,
                     "interrupt": ev.interrupt.nr if ev.interrupt.injected and not ev.interrupt.soft else None,
                     "sipi_vector": ev.sipi_vector & 0xFF if vcpu.accel.has_vcpu_events else None}
    rec["mp_state"] = _MP_TO.get(vcpu.get_mp_state(), "runnable")
    rec["lapic"] = vcpu.get_lapic()
    return rec


def restore(vcpu: KvmVcpu, rec: dict[str, Any], where: str) -> None:
    """Load a checked record into a stopped KVM vCPU."""
    if rec["ymmh"] is not None and any(rec["ymmh"]):
        raise StateError(f"{where}: the state holds AVX upper halves, which this Vireo does not load under KVM")
    if rec["mp_state"] == "wait_for_sipi":
        # An AP waiting for its SIPI: its registers are whatever the other backend left there (INIT discards
        # them; the SIPI sets CS:IP), and KVM may refuse them. Its APIC and the wait are what matter.
        lapic = abi.kvm_lapic_state()
        ctypes.memmove(ctypes.addressof(lapic), rec["lapic"], len(rec["lapic"]))
        abi.ioctl(vcpu.fd, abi.KVM_SET_LAPIC, lapic)
        vcpu.set_mp_state(abi.KVM_MP_STATE_UNINITIALIZED)
        return
    state = C.to_cpu_state(rec)
    # The TSC is set once for every vCPU by set_tsc; MSRs KVM does not list are left out (the guest saw them
    # on the other backend; they have no meaning here).
    skip = {C.MSR_TSC, C.MSR_APIC_BASE}
    state.msrs = {i: v for i, v in rec["msrs"].items() if i in vcpu.accel.msr_indices and i not in skip}
    deadline = state.msrs.pop(C.MSR_TSC_DEADLINE, 0)
    portable = {i: v for i, v in state.msrs.items() if i in PORTABLE_MSRS}
    others = {i: v for i, v in state.msrs.items() if i not in PORTABLE_MSRS}
    state.msrs = portable
    try:
        vcpu.set_state(state)
    except ValueError as exc:
        raise StateError(f"{where}: {exc}") from None
    # Machine-check banks, variable MTRRs and the like as the other backend models them: what this KVM refuses
    # of those has no effect on the guest's execution here.
    vcpu._set_baseline_msrs(others)
    if vcpu.accel.has_xcrs:
        xcrs = abi.kvm_xcrs()
        xcrs.nr_xcrs = 1
        xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, rec["xcr0"]
        try:
            abi.ioctl(vcpu.fd, abi.KVM_SET_XCRS, xcrs)
        except OSError:
            raise StateError(f"{where}: KVM refused XCR0 {rec['xcr0']:#x} (features this host lacks)") from None
    fpu = abi.kvm_fpu()
    f = rec["fpu"]
    fpu.fcw, fpu.fsw, fpu.ftwx, fpu.last_opcode = f["fcw"], f["fsw"], f["ftw"], f["fop"]
    fpu.last_ip, fpu.last_dp, fpu.mxcsr = f["fip"], f["fdp"], f["mxcsr"]
    for dst, value in zip(fpu.fpr, f["st"], strict=True):
        ctypes.memmove(dst, value.to_bytes(16, "little"), 16)
    for dst, value in zip(fpu.xmm, f["xmm"], strict=True):
        ctypes.memmove(dst, value.to_bytes(16, "little"), 16)
    try:
        abi.ioctl(vcpu.fd, abi.KVM_SET_FPU, fpu)
    except OSError:
        raise StateError(f"{where}: KVM refused the FPU state (MXCSR {f['mxcsr']:#x})") from None
    lapic = abi.kvm_lapic_state()
    ctypes.memmove(ctypes.addressof(lapic), rec["lapic"], len(rec["lapic"]))
    abi.ioctl(vcpu.fd, abi.KVM_SET_LAPIC, lapic)
    if deadline:
        vcpu._set_msrs({C.MSR_TSC_DEADLINE: deadline})   # after the LVT timer is in TSC-deadline mode
    if vcpu.accel.has_vcpu_events:
        e = rec["events"]
        ev = abi.kvm_vcpu_events()
        abi.ioctl(vcpu.fd, abi.KVM_GET_VCPU_EVENTS, ev)
        ev.flags = abi.KVM_VCPUEVENT_VALID_NMI_PENDING | abi.KVM_VCPUEVENT_VALID_SIPI_VECTOR | \
            abi.KVM_VCPUEVENT_VALID_SHADOW
        ev.exception.injected = int(e["exception"] is not None)
        ev.exception.pending = 0
        if e["exception"] is not None:
            ev.exception.nr = e["exception"][0]
            ev.exception.has_error_code = int(len(e["exception"]) > 1)
            ev.exception.error_code = e["exception"][1] if len(e["exception"]) > 1 else 0
        ev.interrupt.injected = int(e["interrupt"] is not None)
        ev.interrupt.nr = e["interrupt"] or 0
        ev.interrupt.soft = 0
        ev.interrupt.shadow = 1 if e["interrupt_shadow"] else 0
        ev.nmi.pending, ev.nmi.masked, ev.nmi.injected = int(e["nmi_pending"]), int(e["nmi_masked"]), 0
        ev.sipi_vector = e["sipi_vector"] or 0
        abi.ioctl(vcpu.fd, abi.KVM_SET_VCPU_EVENTS, ev)
    vcpu.set_mp_state(_MP_FROM[rec["mp_state"]])


def set_tsc(vcpus: list[KvmVcpu], tsc: int) -> None:
    """Every vCPU's TSC reads `tsc` (written together, KVM keeps them synchronised)."""
    for vcpu in vcpus:
        vcpu._set_msrs({C.MSR_TSC: tsc})


# -- the in-kernel chips ------------------------------------------------------------------------------------
def _get_chip(accel: KvmAccelerator, chip_id: int) -> abi.kvm_irqchip:
    chip = abi.kvm_irqchip()
    chip.chip_id = chip_id
    abi.ioctl(accel.vm_fd, abi.KVM_GET_IRQCHIP, chip)
    return chip


def _pic_to_model(p: abi.kvm_pic_state, master: bool) -> dict[str, Any]:
    return {"irr": p.irr, "isr": p.isr, "imr": p.imr, "line": p.last_irr, "elcr": p.elcr,
            "vector_base": p.irq_base & 0xF8, "lowest_priority": (p.priority_add - 1) & 7,
            "read_isr": bool(p.read_reg_select), "poll": bool(p.poll), "special_mask": bool(p.special_mask),
            "auto_eoi": bool(p.auto_eoi), "rotate_on_auto_eoi": bool(p.rotate_on_auto_eoi),
            "special_fully_nested": bool(p.special_fully_nested_mode), "icw4_needed": bool(p.init4),
            "single": False, "level_triggered_all": False,
            "init_step": p.init_state + 1 if p.init_state else 0, "cascade": 0x04 if master else 2}


def _pic_from_model(p: abi.kvm_pic_state, m: dict[str, Any]) -> None:
    p.irr, p.isr, p.imr, p.last_irr, p.elcr = m["irr"], m["isr"], m["imr"], m["line"], m["elcr"] & p.elcr_mask
    p.irq_base, p.priority_add = m["vector_base"], (m["lowest_priority"] + 1) & 7
    p.read_reg_select, p.poll, p.special_mask = int(m["read_isr"]), int(m["poll"]), int(m["special_mask"])
    p.auto_eoi, p.rotate_on_auto_eoi = int(m["auto_eoi"]), int(m["rotate_on_auto_eoi"])
    p.special_fully_nested_mode, p.init4 = int(m["special_fully_nested"]), int(m["icw4_needed"])
    p.init_state = m["init_step"] - 1 if m["init_step"] else 0


def _pit_channel_to_model(ch: abi.kvm_pit_channel_state, index: int, now: int) -> dict[str, Any]:
    loaded = ch.mode <= 5
    mode = ch.mode if loaded else 3
    rw = ch.rw_mode if 1 <= ch.rw_mode <= 3 else 3
    latch: list[int] = []
    if ch.count_latched:
        lc = ch.latched_count
        latch = [lc & 0xFF] if ch.count_latched == 1 else [lc >> 8] if ch.count_latched == 2 else \
            [lc & 0xFF, lc >> 8]
    return {"gate": bool(ch.gate), "control": (index << 6) | (rw << 4) | (mode << 1) | (ch.bcd & 1), "rw": rw,
            "mode": mode, "bcd": bool(ch.bcd), "n": ch.count if 1 <= ch.count <= 0x10000 else 0x10000,
            "loaded": loaded, "running": loaded and (bool(ch.gate) or mode in (0, 4)), "triggered": False,
            "start_ns": ch.count_load_time - now, "frozen_t": 0, "pending_n": None, "pending_at_t": 0,
            "next_trigger_n": None, "null_count": False, "write_msb_next": ch.write_state == 4,
            "write_lsb": ch.write_latch, "read_msb_next": ch.read_state == 4, "latch_bytes": latch,
            "status_latch": ch.status if ch.status_latched else None}


def _pit_channel_from_model(ch: abi.kvm_pit_channel_state, m: dict[str, Any]) -> None:
    rw = m["rw"] or 3
    ch.count = m["n"]
    ch.mode = m["mode"] & 3 if m["mode"] > 5 else m["mode"]
    ch.rw_mode, ch.bcd, ch.gate = rw, int(m["bcd"]), int(m["gate"])
    ch.read_state = (4 if m["read_msb_next"] else 3) if rw == 3 else rw
    ch.write_state = (4 if m["write_msb_next"] else 3) if rw == 3 else rw
    ch.write_latch = m["write_lsb"]
    latch = m["latch_bytes"]
    ch.count_latched = 0 if not latch else rw
    ch.latched_count = latch[0] | (latch[1] << 8 if len(latch) > 1 else 0) if latch else 0
    ch.status_latched = int(m["status_latch"] is not None)
    ch.status = m["status_latch"] or 0


def capture_chips(accel: KvmAccelerator) -> dict[str, Any]:
    """The in-kernel PIC pair, I/O APIC and PIT as the models' records, and the kvm-clock value."""
    now = now_ns()
    master, slave = _get_chip(accel, abi.KVM_IRQCHIP_PIC_MASTER), _get_chip(accel, abi.KVM_IRQCHIP_PIC_SLAVE)
    io = _get_chip(accel, abi.KVM_IRQCHIP_IOAPIC).chip.ioapic
    pit = abi.kvm_pit_state2()
    abi.ioctl(accel.vm_fd, abi.KVM_GET_PIT2, pit)
    clock = kvm_clock_data()
    abi.ioctl(accel.vm_fd, KVM_GET_CLOCK, clock)
    return {"pic": {"master": _pic_to_model(master.chip.pic, True), "slave": _pic_to_model(slave.chip.pic, False)},
            "ioapic": {"regsel": io.ioregsel & 0xFF, "id": io.id & 0xF, "redirection": list(io.redirtbl),
                       "levels": io.irr & 0xFF_FFFF},
            "pit": {"port61": pit.channels[2].gate & 1,
                    "counters": [_pit_channel_to_model(pit.channels[i], i, now) for i in range(3)]},
            "kvm_clock": clock.clock}


def restore_chips(accel: KvmAccelerator, pic: dict[str, Any], ioapic: dict[str, Any], pit_rec: dict[str, Any],
                  kvm_clock: int | None) -> None:
    """Load checked model records (pic/ioapic/pit as the models' set_state take them) into the kernel."""
    for chip_id, name in ((abi.KVM_IRQCHIP_PIC_MASTER, "master"), (abi.KVM_IRQCHIP_PIC_SLAVE, "slave")):
        chip = _get_chip(accel, chip_id)
        _pic_from_model(chip.chip.pic, pic[name])
        abi.ioctl(accel.vm_fd, abi.KVM_SET_IRQCHIP, chip)
    chip = _get_chip(accel, abi.KVM_IRQCHIP_IOAPIC)
    io = chip.chip.ioapic
    io.ioregsel, io.id = ioapic["regsel"], ioapic["id"]
    level_pins = 0
    for i, entry in enumerate(ioapic["redirection"][:abi.KVM_IOAPIC_NUM_PINS]):
        io.redirtbl[i] = entry
        if entry & (1 << 15):
            level_pins |= 1 << i
    io.irr = ioapic["levels"] & level_pins
    abi.ioctl(accel.vm_fd, abi.KVM_SET_IRQCHIP, chip)
    pit = abi.kvm_pit_state2()
    abi.ioctl(accel.vm_fd, abi.KVM_GET_PIT2, pit)
    for i in range(3):
        _pit_channel_from_model(pit.channels[i], pit_rec["counters"][i])
    pit.channels[2].gate = pit_rec["port61"] & 1
    abi.ioctl(accel.vm_fd, abi.KVM_SET_PIT2, pit)
    if kvm_clock is not None:
        clock = kvm_clock_data()
        clock.clock = kvm_clock
        abi.ioctl(accel.vm_fd, KVM_SET_CLOCK, clock)
