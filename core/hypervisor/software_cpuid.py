"""What CPUID tells a guest of the software CPU (Intel SDM vol. 2A, "CPUID"; the 0x4000_0000 range as reserved
for hypervisors by Intel and AMD).

The base values come from QEMU's own model of the emulated CPU (an Intel Haswell, whose features the TCG
translator implements; QEMU has already dropped what TCG cannot do, such as AVX). On top of that this module makes
CPUID describe the machine the backend really provides, and nothing it does not:

* topology: the vCPU's APIC ID (leaf 1 EBX, leaf 0xB x2APIC ID), the number of logical processors (leaf 1, leaf 4,
  leaf 0xB) -- one core per package thread-free, as the MADT lists them;
* caches (leaf 4): the model's L1 and L2, private to each core, and an L3 shared by all cores. Linux takes the
  last-level cache's sharing as the set of CPUs that "share cache" (`cpus_share_cache`): between CPUs that do not,
  every wake-up of a task on another CPU is sent as an IPI (the remote wake list), and the scheduler's search for
  an idle CPU at wake-up stays within one CPU. Without the L3, a 2-vCPU guest sent ~1,700 IPIs a second while
  running two piped hashing jobs (bench/software_cpu.py --smp), each one three Python exits in the xAPIC;
* the local APIC: x2APIC and the TSC-deadline timer are implemented (core/devices/lapic.py), so both are set;
  leaf 6 ARAT (the APIC timer keeps running in every C-state, since there are no C-states);
* time: the TSC runs at a fixed, known frequency (the host's invariant TSC): leaf 0x15 gives the crystal clock and
  the TSC/crystal ratio, leaf 0x16 the nominal frequency, leaf 0x8000_0007 EDX bit 8 "invariant TSC"; the APIC
  timer counts at that crystal clock, as on the Intel parts whose leaf 0x15 Linux trusts;
* hidden: VMX, SMX, MONITOR/MWAIT, the thermal/power-management and performance-monitoring leaves (no PMU, no
  MSRs behind them), SVM, and the AVX state components in leaf 0xD;
* IA32_TSC_ADJUST (leaf 7 EBX bit 1, SDM vol. 3, 18.17.3): the MSR is implemented (software_helpers). With the
  invariant TSC it lets Linux (5.16+, `check_system_tsc_reliable`) trust the TSC without its clocksource
  watchdog. The watchdog compares the TSC with jiffies, and jiffies lose ticks whenever the host deschedules the
  vCPU thread: on a busy host it declared the TSC unstable mid-boot and the guest fell back to the jiffies clock,
  booting in 8-14 s instead of 2;
* IA32_ARCH_CAPABILITIES (leaf 7 EDX bit 29) saying the CPU is not affected by Meltdown/MDS/TAA/SSB -- true of a
  translated CPU, and it spares the guest KPTI;
* not claimed: enhanced/fast-short REP MOVSB/STOSB (leaf 7 EBX bit 9 ERMS, EDX bit 4 FSRM). They tell software
  that byte-wise string instructions are the fastest way to copy; under a translator each iteration of a REP
  string instruction is a pass through a translated block, so a guest picking `rep movsb` copies a byte per
  block. Without them (and with IA32_MISC_ENABLE fast strings off, see software.py) Linux and glibc pick their
  unrolled loops, 64 bytes per block;
* the hypervisor bit and a 0x4000_0000 leaf with Vireo's signature.
"""
from __future__ import annotations

from math import gcd

CRYSTAL_HZ = 25_000_000          # the APIC timer clock and the TSC's reference (leaf 0x15 ECX)
HYPERVISOR_SIGNATURE = b"VireoVireoVi"
MAX_BASIC_LEAF = 0x16
MAX_HYPERVISOR_LEAF = 0x4000_0010

# Leaf 1 ECX
ECX_MONITOR, ECX_DS_CPL, ECX_VMX, ECX_SMX, ECX_EST, ECX_TM2 = 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
ECX_PDCM, ECX_PCID, ECX_DCA, ECX_X2APIC, ECX_TSC_DEADLINE = 1 << 15, 1 << 17, 1 << 18, 1 << 21, 1 << 24
ECX_OSXSAVE, ECX_AVX, ECX_F16C, ECX_HYPERVISOR, ECX_FMA = 1 << 27, 1 << 28, 1 << 29, 1 << 31, 1 << 12
# Leaf 1 EDX
EDX_ACPI, EDX_HTT, EDX_TM, EDX_PBE, EDX_DS = 1 << 22, 1 << 28, 1 << 29, 1 << 31, 1 << 21
EDX7_ARCH_CAPABILITIES = 1 << 29
EBX7_TSC_ADJUST, EBX7_ERMS, EDX7_FSRM = 1 << 1, 1 << 9, 1 << 4
# Leaf 4 subleaf 3: a unified level-3 cache shared by every core of the package (QEMU's model has none, and QEMU
# adds the same with its `l3-cache` property). 16 MiB: 16 ways x 64-byte lines x 16384 sets; self-initialising
# (EAX bit 8), inclusive (EDX bit 1), complex indexing (EDX bit 2).
L3_SUBLEAF = 3
L3_EAX, L3_EBX, L3_ECX, L3_EDX = 3 | 3 << 5 | 1 << 8, (16 - 1) << 22 | (64 - 1), 16384 - 1, 1 << 1 | 1 << 2
# Leaf 0x8000_0001 ECX
ECX_SVM = 1 << 2


def split(sig: bytes) -> tuple[int, int, int]:
    return (int.from_bytes(sig[0:4], "little"), int.from_bytes(sig[4:8], "little"),
            int.from_bytes(sig[8:12], "little"))


class CpuidPolicy:
    """CPUID answers for every vCPU of one machine. `base(leaf, subleaf)` is QEMU's model answer."""

    def __init__(self, base, num_cpus: int, tsc_hz: int) -> None:
        self._base = base
        self.num_cpus = num_cpus
        self.tsc_hz = tsc_hz
        g = gcd(tsc_hz, CRYSTAL_HZ)
        self.tsc_ratio = (tsc_hz // g, CRYSTAL_HZ // g)     # numerator (EBX), denominator (EAX)
        while self.tsc_ratio[0] > 0xFFFF_FFFF:
            self.tsc_ratio = (self.tsc_ratio[0] >> 1, max(1, self.tsc_ratio[1] >> 1))
        self._cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    def _model(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        key = (leaf, subleaf)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._base(leaf, subleaf)
        return hit

    def query(self, apic_id: int, leaf: int, subleaf: int, cr4_osxsave: bool) -> tuple[int, int, int, int]:
        n = self.num_cpus
        core_bits = max(0, (n - 1).bit_length())
        if leaf == 0:
            _, b, c, d = self._model(0, 0)
            return MAX_BASIC_LEAF, b, c, d
        if leaf == 1:
            a, b, c, d = self._model(1, 0)
            b = (b & 0x0000_FFFF) | (min(n, 255) << 16) | ((apic_id & 0xFF) << 24)
            c &= ~(ECX_MONITOR | ECX_DS_CPL | ECX_VMX | ECX_SMX | ECX_EST | ECX_TM2 | ECX_PDCM | ECX_PCID | ECX_DCA
                   | ECX_AVX | ECX_F16C | ECX_FMA | ECX_OSXSAVE)
            c |= ECX_X2APIC | ECX_TSC_DEADLINE | ECX_HYPERVISOR | (ECX_OSXSAVE if cr4_osxsave else 0)
            d &= ~(EDX_ACPI | EDX_TM | EDX_PBE | EDX_DS | EDX_HTT)
            if n > 1:
                d |= EDX_HTT
            return a, b, c, d
        if leaf == 2:
            return self._model(2, 0)
        if leaf == 4:
            cores = ((1 << core_bits) - 1) << 26     # addressable core IDs in the package, minus one
            if subleaf == L3_SUBLEAF:
                return L3_EAX | ((1 << core_bits) - 1) << 14 | cores, L3_EBX, L3_ECX, L3_EDX
            a, b, c, d = self._model(4, subleaf)
            if a & 0x1F == 0 or (a >> 5) & 7 >= 3:
                return 0, 0, 0, 0
            return (a & 0x3FFF) | cores, b, c, d     # L1 and L2: private to each core
        if leaf == 6:
            return 1 << 2, 0, 0, 0                   # ARAT
        if leaf == 7:
            if subleaf != 0:
                return 0, 0, 0, 0
            a, b, c, d = self._model(7, 0)
            # No OSPKE; IA32_TSC_ADJUST and IA32_ARCH_CAPABILITIES exist; no ERMS/FSRM (see the module docstring).
            return 0, (b & ~EBX7_ERMS) | EBX7_TSC_ADJUST, c & ~(1 << 4), (d & ~EDX7_FSRM) | EDX7_ARCH_CAPABILITIES
        if leaf == 0xB:
            if subleaf == 0:
                return 0, 1, 0x100 | subleaf, apic_id
            if subleaf == 1:
                return core_bits, n, 0x200 | subleaf, apic_id
            return 0, 0, subleaf & 0xFF, apic_id
        if leaf == 0xD:
            if subleaf == 0:
                return 0x3, 0x240, 0x240, 0            # x87 and SSE state only; legacy area + header
            if subleaf == 1:
                a, _, _, _ = self._model(0xD, 1)
                return a & 0x1, 0, 0, 0                # XSAVEOPT only
            return 0, 0, 0, 0
        if leaf == 0x15:
            num, den = self.tsc_ratio
            return den, num, CRYSTAL_HZ, 0
        if leaf == 0x16:
            mhz = self.tsc_hz // 1_000_000
            return mhz, mhz, CRYSTAL_HZ // 1_000_000, 0
        if leaf <= MAX_BASIC_LEAF:
            return 0, 0, 0, 0                          # 3, 5, 8-0xA, 0xC, 0xE-0x14: nothing behind them
        if leaf == 0x4000_0000:
            return (MAX_HYPERVISOR_LEAF, *split(HYPERVISOR_SIGNATURE))
        if leaf == 0x4000_0010:
            return self.tsc_hz // 1000, CRYSTAL_HZ // 1000, 0, 0   # TSC and APIC bus frequencies in kHz
        if 0x4000_0000 < leaf <= MAX_HYPERVISOR_LEAF:
            return 0, 0, 0, 0
        if leaf == 0x8000_0001:
            a, b, c, d = self._model(leaf, subleaf)
            return a, b, c & ~ECX_SVM, d
        if leaf == 0x8000_0007:
            return 0, 0, 0, 1 << 8                     # invariant TSC
        if 0x8000_0000 <= leaf:
            max_ext = self._model(0x8000_0000, 0)[0]
            if leaf <= max_ext:
                return self._model(leaf, subleaf)
            return self.query(apic_id, MAX_BASIC_LEAF, subleaf, cr4_osxsave)   # Intel: highest basic leaf
        return self.query(apic_id, MAX_BASIC_LEAF, subleaf, cr4_osxsave)
