"""kvm_abi.py against the system's <linux/kvm.h>: every struct size and field offset, every ioctl number.

Compiles a small C probe that prints the header's values; skipped where no C compiler or kernel headers exist.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from core.hypervisor import kvm_abi as abi

HEADER = Path("/usr/include/linux/kvm.h")

STRUCTS = {
    "kvm_userspace_memory_region": abi.kvm_userspace_memory_region,
    "kvm_regs": abi.kvm_regs,
    "kvm_segment": abi.kvm_segment,
    "kvm_dtable": abi.kvm_dtable,
    "kvm_sregs": abi.kvm_sregs,
    "kvm_fpu": abi.kvm_fpu,
    "kvm_lapic_state": abi.kvm_lapic_state,
    "kvm_msr_entry": abi.kvm_msr_entry,
    "kvm_msrs": abi.kvm_msrs,
    "kvm_msr_list": abi.kvm_msr_list,
    "kvm_cpuid_entry2": abi.kvm_cpuid_entry2,
    "kvm_cpuid2": abi.kvm_cpuid2,
    "kvm_irq_level": abi.kvm_irq_level,
    "kvm_pit_config": abi.kvm_pit_config,
    "kvm_pit_channel_state": abi.kvm_pit_channel_state,
    "kvm_pit_state2": abi.kvm_pit_state2,
    "kvm_pic_state": abi.kvm_pic_state,
    "kvm_ioapic_state": abi.kvm_ioapic_state,
    "kvm_irqchip": abi.kvm_irqchip,
    "kvm_irq_routing_irqchip": abi.kvm_irq_routing_irqchip,
    "kvm_irq_routing_entry": abi.kvm_irq_routing_entry,
    "kvm_irq_routing": abi.kvm_irq_routing,
    "kvm_mp_state": abi.kvm_mp_state,
    "kvm_msi": abi.kvm_msi,
    "kvm_vcpu_events": abi.kvm_vcpu_events,
    "kvm_debugregs": abi.kvm_debugregs,
    "kvm_xcr": abi.kvm_xcr,
    "kvm_xcrs": abi.kvm_xcrs,
}

# Python field name -> C member designator, where they differ.
RENAMED = {("kvm_vcpu_events", "triple_fault_pending"): "triple_fault.pending"}

RUN_FIELDS = {
    "immediate_exit": "immediate_exit", "exit_reason": "exit_reason", "if_flag": "if_flag",
    "exit": "hw", "kvm_valid_regs": "kvm_valid_regs",
}
RUN_EXIT_FIELDS = {
    "io.direction": "io.direction", "io.size": "io.size", "io.port": "io.port", "io.count": "io.count",
    "io.data_offset": "io.data_offset", "mmio.phys_addr": "mmio.phys_addr", "mmio.data": "mmio.data",
    "mmio.len": "mmio.len", "mmio.is_write": "mmio.is_write", "internal.suberror": "internal.suberror",
    "internal.ndata": "internal.ndata", "internal.data": "internal.data",
    "fail_entry.hardware_entry_failure_reason": "fail_entry.hardware_entry_failure_reason",
    "fail_entry.cpu": "fail_entry.cpu", "system_event.type": "system_event.type",
    "system_event.ndata": "system_event.ndata", "system_event.data": "system_event.data",
}

IOCTLS = [n for n in dir(abi) if n.startswith("KVM_") and isinstance(getattr(abi, n), int)
          and getattr(abi, n) >= 0xAE00]
CONSTANT_PREFIXES = ("KVM_EXIT_", "KVM_CAP_", "KVM_MP_STATE_", "KVM_SYSTEM_EVENT_", "KVM_INTERNAL_ERROR_",
                     "KVM_IRQCHIP_", "KVM_VCPUEVENT_", "KVM_PIT_")
CONSTANTS = [n for n in dir(abi) if n.startswith(CONSTANT_PREFIXES)
             and n not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT") and isinstance(getattr(abi, n), int)]


def _offset(struct: type, dotted: str) -> int:
    off = 0
    for part in dotted.split("."):
        field = getattr(struct, part)
        off += field.offset
        struct = dict(struct._fields_)[part]
        while issubclass(struct, ctypes.Array):
            struct = struct._type_
    return off


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not HEADER.exists():
        pytest.skip("needs a C compiler and linux-libc-dev to read <linux/kvm.h>")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]

    def emit(key: str, expr: str) -> None:
        lines.append(f'  printf("%s %llu\\n", "{key}", (unsigned long long)({expr}));')

    for cname, struct in STRUCTS.items():
        emit(f"sizeof.{cname}", f"sizeof(struct {cname})")
        for fname, _ in struct._fields_:
            if fname.startswith("pad") or fname in ("reserved", "entries", "indices"):
                continue
            member = RENAMED.get((cname, fname), fname)
            emit(f"offset.{cname}.{fname}", f"offsetof(struct {cname}, {member})")
    emit("sizeof.kvm_run.exit", "sizeof(((struct kvm_run *)0)->hw)")
    for pyname, cname in RUN_FIELDS.items():
        emit(f"offset.kvm_run.{pyname}", f"offsetof(struct kvm_run, {cname})")
    for pyname, cname in RUN_EXIT_FIELDS.items():
        emit(f"offset.kvm_run.exit.{pyname}", f"offsetof(struct kvm_run, {cname})")
    for name in IOCTLS + CONSTANTS:
        lines.append(f"#ifdef {name}")   # newer than this header: nothing to compare against
        emit(f"value.{name}", name)
        lines.append("#endif")
    lines += ["  return 0;", "}"]
    d = tmp_path_factory.mktemp("kvmabi")
    (d / "probe.c").write_text("\n".join(lines))
    subprocess.run([cc, "-o", str(d / "probe"), str(d / "probe.c")], check=True, capture_output=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_struct_sizes_and_offsets(header_values: dict[str, int]) -> None:
    for cname, struct in STRUCTS.items():
        assert ctypes.sizeof(struct) == header_values[f"sizeof.{cname}"], cname
        for fname, _ in struct._fields_:
            key = f"offset.{cname}.{fname}"
            if key in header_values:
                assert getattr(struct, fname).offset == header_values[key], key


def test_kvm_run_layout(header_values: dict[str, int]) -> None:
    for pyname in RUN_FIELDS:
        assert _offset(abi.kvm_run, pyname) == header_values[f"offset.kvm_run.{pyname}"], pyname
    for pyname in RUN_EXIT_FIELDS:
        got = abi.KVM_RUN_EXIT_OFFSET + _offset(abi._kvm_run_exit, pyname)
        assert got == header_values[f"offset.kvm_run.exit.{pyname}"], pyname
    assert ctypes.sizeof(abi._kvm_run_exit) == 256


def test_ioctl_numbers_and_constants(header_values: dict[str, int]) -> None:
    assert "KVM_SET_TSS_ADDR" in IOCTLS and "KVM_RUN" in IOCTLS
    checked = 0
    for name in IOCTLS + CONSTANTS:
        if f"value.{name}" in header_values:
            assert getattr(abi, name) == header_values[f"value.{name}"], name
            checked += 1
    assert checked >= len(IOCTLS)
