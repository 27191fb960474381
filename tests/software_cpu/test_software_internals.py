"""The unicorn internals the software CPU relies on: struct offsets verified against the running library, the
native stubs' bytes against GNU as, QEMU delivering an exception raised by an interposed helper (RDMSR of an
unknown MSR -> #GP through the guest's IDT), and the CPUID policy."""
from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_internals as ui  # noqa: E402
from core.hypervisor import uc_native  # noqa: E402
from core.hypervisor.software_cpuid import CpuidPolicy  # noqa: E402
from tests.helpers.software_guest import Rig, assemble, long_mode_setup  # noqa: E402


def test_offsets_verified_on_a_fresh_engine():
    import unicorn
    from unicorn import x86_const as X
    uc_native.natives()
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.reg_read(X.UC_X86_REG_RAX)
    ui.verify(ui.CpuView(uc))


def test_verify_reports_a_wrong_layout(monkeypatch):
    import unicorn
    from unicorn import x86_const as X
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.reg_read(X.UC_X86_REG_RAX)
    view = ui.CpuView(uc)
    view.env += 8                                # as if X86CPU.env had moved
    view._regs = (ui.c_uint64 * 16).from_address(view.env)
    with pytest.raises(ui.UnicornInternalsError, match="do not match"):
        ui.verify(view)


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_native_stub_bytes_match_their_assembly(tmp_path):
    def gas(src: str) -> bytes:
        obj = tmp_path / "s.o"
        subprocess.run(["as", "--64", "-o", str(obj), "-"], input=(".intel_syntax noprefix\n" + src).encode(),
                       check=True)
        out = tmp_path / "s.bin"
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)], check=True)
        return out.read_bytes()
    a, b, c = 0x1111111111111111, 0x2222222222222222, 0x3333333333333333
    assert uc_native.intr_hook_code(a, b) == gas(f"""
        mov eax, esi; movzx eax, al; movabs rcx, {a}; inc qword ptr [rcx + rax*8]
        mov rdi, [rdi + {ui.UC_CPU}]; movabs rax, {b}; jmp rax""")
    assert uc_native.invalid_hook_code(b) == gas(f"""
        sub rsp, 8; mov rdi, [rdi + {ui.UC_CPU}]; movabs rax, {b}; call rax; mov eax, 1; add rsp, 8; ret""")
    assert uc_native.helper_wrapper_code(a, b, c) == gas(f"""
        push rbx; push r12; push r13; mov rbx, rdi; mov r12d, esi; movabs rax, {a}; call rax
        test rax, rax; jz 1f; cmp rax, 1; je 2f
        mov rdi, rbx; movzx esi, al; mov rdx, rax; shr rdx, 32; mov rcx, [rsp + 24]; movabs rax, {b}; call rax; ud2
    2:  mov rdi, rbx; mov esi, r12d; pop r13; pop r12; pop rbx; movabs rax, {c}; jmp rax
    1:  pop r13; pop r12; pop rbx; ret""")


GP_ON_UNKNOWN_MSR = r"""
        .code64
        lea gp(%rip), %rax              # IDT[13] -> gp
        mov %rax, %rbx
        and $0xFFFF, %eax
        or $0x100000, %eax
        mov %rbx, %rdx
        shr $16, %rdx
        shl $48, %rdx
        or %rdx, %rax
        mov $0x8E, %edx
        shl $40, %rdx
        or %rdx, %rax
        mov %rax, 0x7000 + 13 * 16
        mov $0x1B, %ecx                 # IA32_APIC_BASE reaches the local APIC
        rdmsr
        mov $0xE9, %dx
        out %eax, %dx
        mov $0x12345678, %ecx           # nobody implements this MSR: #GP(0)
faulting:
        rdmsr
        jmp .
gp:     pop %rax                        # error code
        mov $0xE9, %dx
        out %eax, %dx
        pop %rax                        # RIP of the faulting RDMSR
        out %eax, %dx
        lea faulting(%rip), %rax
        out %eax, %dx
        cli
        hlt
"""


def test_interposed_rdmsr_reaches_the_apic_and_raises_gp():
    rig = Rig()
    try:
        code = assemble(GP_ON_UNKNOWN_MSR, 64, 0x100000)
        rig.run(long_mode_setup(rig, code))
        apic_base, error_code, rip, expected_rip = rig.debug.words
        assert apic_base == 0xFEE00900
        assert error_code == 0 and rip == expected_rip
    finally:
        rig.close()


def test_cpuid_policy_describes_the_machine():
    def base(leaf, sub):
        return {0: (0xD, 0x756E6547, 0x6C65746E, 0x49656E69), 1: (0x306C4, 0x800, 0xCED82223, 0x078BFBFD)}.get(
            leaf, (0, 0, 0, 0))
    p = CpuidPolicy(base, num_cpus=2, tsc_hz=2_600_000_000)
    assert p.query(1, 0, 0, False)[0] >= 0x15
    a, b, c, d = p.query(1, 1, 0, False)
    assert b >> 24 == 1 and (b >> 16) & 0xFF == 2          # APIC ID, logical processors
    assert c & (1 << 21) and c & (1 << 24) and c & (1 << 31)   # x2APIC, TSC-deadline, hypervisor
    assert not c & (1 << 5) and not c & (1 << 3)            # no VMX, no MONITOR
    den, num, crystal, _ = p.query(0, 0x15, 0, False)
    assert crystal * num // den == 2_600_000_000
    assert p.query(0, 0x8000_0007, 0, False)[3] & (1 << 8)  # invariant TSC
    assert p.query(1, 0xB, 1, False)[1] == 2 and p.query(1, 0xB, 0, False)[3] == 1
    l3 = p.query(1, 4, 3, False)[0]
    assert l3 & 0x1F == 3 and (l3 >> 5) & 7 == 3 and (l3 >> 14) & 0xFFF == 1   # unified L3, shared by 2 IDs
    assert p.query(1, 4, 4, False) == (0, 0, 0, 0)         # the list ends after it


TSC_ADJUST_GUEST = r"""
        .code64
        mov $7, %eax
        xor %ecx, %ecx
        cpuid
        mov %ebx, %eax
        mov $0xE9, %dx
        out %eax, %dx                   # 1: leaf 7 EBX (bit 1: IA32_TSC_ADJUST)
        mov $0x3B, %ecx
        rdmsr
        mov $0xE9, %dx
        out %eax, %dx                   # 2: IA32_TSC_ADJUST after reset (low half)
        rdtsc
        shl $32, %rdx
        or %rax, %rdx
        mov %rdx, %r8                   # t0
        mov $0x3B, %ecx
        xor %eax, %eax
        mov $0x100, %edx
        wrmsr                           # IA32_TSC_ADJUST = 1 << 40: the TSC jumps ahead by 1 << 40
        rdtsc
        shl $32, %rdx
        or %rax, %rdx
        sub %r8, %rdx
        mov %rdx, %rax
        shr $32, %rax
        mov $0xE9, %dx
        out %eax, %dx                   # 3: (t1 - t0) >> 32, 0x100 (the jump) unless 2**32 cycles passed
        rdtsc
        shl $32, %rdx
        or %rax, %rdx
        mov %rdx, %r9                   # t2
        mov $0x10, %ecx
        xor %eax, %eax
        xor %edx, %edx
        wrmsr                           # IA32_TSC = 0: IA32_TSC_ADJUST moves by the same amount (-t2 - elapsed)
        mov $0x3B, %ecx
        rdmsr
        shl $32, %rdx
        or %rax, %rdx                   # adjust
        add %r9, %rdx
        mov $1, %rax
        shl $40, %rax
        sub %rdx, %rax                  # (1 << 40) - (adjust + t2): the cycles between reading t2 and the write
        mov %rax, %rbx
        mov $0xE9, %dx
        out %eax, %dx                   # 4: low half
        mov %rbx, %rax
        shr $32, %rax
        out %eax, %dx                   # 5: high half (0)
        rdtsc
        mov %edx, %eax
        mov $0xE9, %dx
        out %eax, %dx                   # 6: the TSC's high half right after it was set to 0 (0)
        cli
        hlt
"""


def test_tsc_adjust_msr_moves_with_the_tsc():
    """IA32_TSC_ADJUST (SDM vol. 3, 18.17.3), which Linux needs to trust the TSC without its jiffies watchdog: CPUID
    says it exists; it reads 0 after reset; writing it moves the TSC by as much; writing the TSC moves it too."""
    rig = Rig()
    try:
        code = assemble(TSC_ADJUST_GUEST, 64, 0x100000)
        rig.run(long_mode_setup(rig, code))
        ebx7, adjust0, jump_high, elapsed_low, elapsed_high, tsc_high = rig.debug.words
        assert ebx7 & (1 << 1)
        assert adjust0 == 0
        assert jump_high == 0x100
        assert elapsed_high == 0 and elapsed_low < 1 << 31      # a few cycles' worth, never negative
        assert tsc_high == 0
    finally:
        rig.close()
