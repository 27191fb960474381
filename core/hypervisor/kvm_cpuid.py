"""The CPUID table a KVM vCPU gets: what KVM supports (api.rst KVM_GET_SUPPORTED_CPUID), with the topology made
consistent for this VM and the hypervisor leaves filled in.

Topology follows Intel SDM vol. 2A, CPUID leaves 01H (initial APIC ID, logical processor count, HTT), 04H (cores
sharing each cache), 0BH and 1FH (x2APIC topology: one thread per core, the VM's cores in one package; vol. 3,
8.9 "Programming Considerations for Hardware Multi-Threading Capable Processors"), and AMD's 80000008H and
8000001EH. Leaf 0x40000000 says "KVMKVMKVM" (Documentation/virt/kvm/x86/cpuid.rst), so Linux uses kvm-clock,
which KVM implements itself; kvm-para features that need a VMM's cooperation Vireo does not give are cleared.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from core.hypervisor import kvm_abi as abi

# CPUID bits.
CPUID_1_ECX_HYPERVISOR = 1 << 31
CPUID_1_EDX_HTT = 1 << 28
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_CPUID_FEATURES = 0x4000_0001
# kvm-para features that need a VMM's cooperation Vireo does not give (KVM_CAP_EXIT_HYPERCALL, an I/O APIC that
# passes 15-bit destination IDs, SEV migration control): never advertise them. Linux asm/kvm_para.h numbering.
KVM_FEATURE_MSI_EXT_DEST_ID = 1 << 15
KVM_FEATURE_HC_MAP_GPA_RANGE = 1 << 16
KVM_FEATURE_MIGRATION_CONTROL = 1 << 17
KVM_HINTS_REALTIME = 1 << 0
AMD_VENDOR_EBX = 0x6874_7541   # "Auth" of "AuthenticAMD"


def _ceil_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _bits_for(n: int) -> int:
    """Width of the APIC ID field that numbers n items (SDM vol. 3, 8.9.1)."""
    return (n - 1).bit_length() if n > 1 else 0


@dataclass
class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def build_cpuid(supported: list[CpuidEntry], apic_id: int, num_cpus: int) -> list[CpuidEntry]:
    """The CPUID table for vCPU `apic_id` of a VM with `num_cpus` single-threaded cores in one package, from
    what KVM supports. Topology follows SDM vol. 2A CPUID leaves 01H, 04H, 0BH, 1FH (and AMD's 80000008H,
    8000001EH)."""
    out: list[CpuidEntry] = []
    vendor_amd = any(e.function == 0 and e.ebx == AMD_VENDOR_EBX for e in supported)
    cores_pow2 = _ceil_pow2(num_cpus)
    core_bits = _bits_for(num_cpus)
    topology_leaves = {e.function for e in supported if e.function in (0xB, 0x1F)}
    for e in supported:
        e = CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        if e.function in topology_leaves:
            continue    # rebuilt below
        if e.function == 1:
            e.ebx = (e.ebx & 0x0000_FFFF) | (apic_id & 0xFF) << 24 | (min(cores_pow2, 255) << 16)
            e.ecx |= CPUID_1_ECX_HYPERVISOR
            if num_cpus > 1:
                e.edx |= CPUID_1_EDX_HTT
            else:
                e.edx &= ~CPUID_1_EDX_HTT
        elif e.function == 4:
            if e.eax & 0x1F:   # a cache descriptor (type 0 ends the list)
                level = (e.eax >> 5) & 7
                sharing = cores_pow2 - 1 if level == 3 else 0
                e.eax = (e.eax & 0x3FFF) | (sharing & 0xFFF) << 14 | ((cores_pow2 - 1) & 0x3F) << 26
            else:
                e.eax = 0
        elif e.function == 0x4000_0000:
            e.eax = max(e.eax, KVM_CPUID_FEATURES)
            e.ebx, e.ecx, e.edx = struct.unpack("<III", KVM_SIGNATURE)
        elif e.function == KVM_CPUID_FEATURES:
            e.eax &= ~(KVM_FEATURE_MSI_EXT_DEST_ID | KVM_FEATURE_HC_MAP_GPA_RANGE | KVM_FEATURE_MIGRATION_CONTROL)
            e.edx &= ~KVM_HINTS_REALTIME
        elif e.function == 0x8000_0008 and vendor_amd:
            e.ecx = (e.ecx & ~0xF0FF) | (core_bits & 0xF) << 12 | ((num_cpus - 1) & 0xFF)
        elif e.function == 0x8000_001E and vendor_amd:
            e.eax, e.ebx, e.ecx = apic_id, apic_id & 0xFF, 0
        out.append(e)
    for function in sorted(topology_leaves):
        flags = abi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        # level 0: SMT, one thread per core; level 1: cores of the package; level 2: end of the list.
        out.append(CpuidEntry(function, 0, flags, 0, 1, 1 << 8 | 0, apic_id))
        out.append(CpuidEntry(function, 1, flags, core_bits, num_cpus, 2 << 8 | 1, apic_id))
        out.append(CpuidEntry(function, 2, flags, 0, 0, 2, apic_id))
    return out
