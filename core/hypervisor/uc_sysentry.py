"""SYSCALL and SYSENTER in native code: the system-call entry of a 64-bit (and a 32-bit) Linux guest without a
pass through Python.

unicorn 2.1.4 replaced QEMU's helper_syscall with a call of its UC_HOOK_INSN hooks, so the instruction's
architectural effect has to be supplied (uc_native interposes a wrapper in front of the helper). The Python
version (software_helpers.X86HelperInterposition._syscall/_sysenter) was ~4 % of the vCPU thread in a Linux
workload; the common cases are done here, in the wrapper itself, and every other case jumps to that Python path
unchanged. Intel SDM vol. 2B:

* SYSCALL in IA-32e mode with EFER.SCE set: RCX = RIP of the next instruction, R11 = RFLAGS (RF cleared),
  RFLAGS &= ~(IA32_FMASK | RF), CS = IA32_STAR[47:32] & 0xFFFC (flat 64-bit code, DPL 0), SS = that + 8
  (flat data), RIP = IA32_LSTAR (IA32_CSTAR from compatibility mode, as QEMU does). Outside IA-32e mode, or
  without SCE (#UD), the Python path.
* SYSENTER in protected mode with IA32_SYSENTER_CS[15:2] != 0: RFLAGS &= ~(IF | RF | VM), CS = SYSENTER_CS & 0xFFFC
  (flat code: 64-bit in IA-32e mode, else 32-bit), SS = that + 8 (flat data), RSP/RIP = IA32_SYSENTER_ESP/EIP
  (truncated to 32 bits outside IA-32e mode). Otherwise (#GP(0)) the Python path.

Both keep QEMU's own bookkeeping by calling the library's routines, as the Python path does through ctypes:
`helper_read_eflags` (RFLAGS assembled from the lazy condition codes), `helper_write_eflags` (all bits;
arithmetic flags back to CC_SRC/CC_OP, DF to env->df) and `x86_update_hflags` (CPL, CS64, ... from the new
segment caches). The segment caches are written field by field (SegmentCache: selector, base, limit, flags),
with the same descriptor flags the Python path uses. SYSRET and SYSEXIT are QEMU's own helpers (not interposed).
"""
from __future__ import annotations

from core.hypervisor import uc_internals as ui
from core.hypervisor.uc_patch import _imm64

# The offsets the code below was assembled with (disp32 fields); checked against uc_internals by `layout_ok`.
ASSUMED = {"ENV_REGS": 0, "ENV_EIP": 128, "ENV_HFLAGS": 176, "ENV_SEGS": 184, "SEG_SIZE": 24, "ENV_EFER": 592,
           "ENV_STAR": 4824, "ENV_LSTAR": 4840, "ENV_CSTAR": 4848, "ENV_FMASK": 4856, "ENV_SYSENTER_CS": 4800,
           "ENV_SYSENTER_ESP": 4808, "ENV_SYSENTER_EIP": 4816, "HF_PE_MASK": 0x80, "HF_LMA_MASK": 0x4000,
           "HF_CS64_MASK": 0x8000}
CODE64_FLAGS = 0xA09B00        # G | L | P | S | type 0xB (execute/read, accessed)
CODE32_FLAGS = 0xC09B00        # G | B | P | S | type 0xB
DATA_FLAGS = 0xC09300          # G | B | P | S | type 3 (read/write, accessed)


def layout_ok() -> bool:
    return all(getattr(ui, name) == value for name, value in ASSUMED.items()) and \
        CODE64_FLAGS == ui.DESC_G_MASK | ui.DESC_L_MASK | ui.DESC_P_MASK | ui.DESC_S_MASK | 0xB << 8 and \
        DATA_FLAGS == ui.DESC_G_MASK | ui.DESC_B_MASK | ui.DESC_P_MASK | ui.DESC_S_MASK | 3 << 8


def syscall_code(read_eflags: int, write_eflags: int, update_hflags: int, slow: int) -> bytes:
    """void syscall(CPUX86State *env, int next_eip_addend)    -- AT&T syntax
         testb $1, ENV_EFER(%rdi); jz slow                     ; EFER.SCE
         testl $HF_LMA, ENV_HFLAGS(%rdi); jz slow              ; IA-32e mode
         push %rbx; push %r12; push %r13; mov %rdi, %rbx
         movslq %esi, %rax; add ENV_EIP(%rbx), %rax; mov %rax, 8(%rbx)        ; RCX = next RIP
         mov ENV_HFLAGS(%rbx), %r12d                            ; CS64 before the switch
         movabs read_eflags, %rax; call *%rax; mov %rax, 88(%rbx)              ; R11 = RFLAGS
         mov ENV_FMASK(%rbx), %rsi; or $0x10000, %rsi; not %rsi; and %rax, %rsi  ; RFLAGS & ~(FMASK | RF)
         mov %rbx, %rdi; mov $0xffffffff, %edx; movabs write_eflags, %rax; call *%rax
         movzwl ENV_STAR+4(%rbx), %eax                          ; STAR[47:32]
         mov %eax, %ecx; and $0xfffc, %ecx; mov %ecx, ENV_CS(%rbx)
         movq $0, ENV_CS+8(%rbx); movl $0xffffffff, ENV_CS+16(%rbx); movl $CODE64_FLAGS, ENV_CS+20(%rbx)
         add $8, %eax; and $0xfffc, %eax; mov %eax, ENV_SS(%rbx)
         movq $0, ENV_SS+8(%rbx); movl $0xffffffff, ENV_SS+16(%rbx); movl $DATA_FLAGS, ENV_SS+20(%rbx)
         mov ENV_CSTAR(%rbx), %rax; test $HF_CS64, %r12d; cmovnz ENV_LSTAR(%rbx), %rax; mov %rax, ENV_EIP(%rbx)
         mov %rbx, %rdi; movabs update_hflags, %rax; call *%rax
         pop %r13; pop %r12; pop %rbx; ret
       slow: movabs slow, %rax; jmp *%rax                      ; the Python path, entered as the helper was"""
    return (bytes.fromhex("f687500200000 10f84f8000000 f787b000000000400000 0f84e8000000 53 4154 4155 4889fb"
                          "4863c6 480383800000 00 48894308 448ba3b0000000".replace(" ", ""))
            + b"\x48\xb8" + _imm64(read_eflags)
            + bytes.fromhex("ffd0 48894358 488bb3f8120000 4881ce00000100 48f7d6 4821c6 4889df baffffffff"
                            .replace(" ", ""))
            + b"\x48\xb8" + _imm64(write_eflags)
            + bytes.fromhex("ffd0 0fb783dc120000 89c1 81e1fcff0000 898bd0000000 48c783d800000000000000"
                            "c783e0000000ffffffff c783e4000000009ba000 83c008 25fcff0000 8983e8000000"
                            "48c783f000000000000000 c783f8000000ffffffff c783fc0000000093c000"
                            "488b83f0120000 41f7c400800000 480f4583e8120000 488983800000 00 4889df"
                            .replace(" ", ""))
            + b"\x48\xb8" + _imm64(update_hflags)
            + bytes.fromhex("ffd0 415d 415c 5b c3".replace(" ", ""))
            + b"\x48\xb8" + _imm64(slow) + b"\xff\xe0")


def sysenter_code(read_eflags: int, write_eflags: int, update_hflags: int, slow: int) -> bytes:
    """void sysenter(CPUX86State *env, int next_eip_addend)   -- AT&T syntax
         movzwl ENV_SYSENTER_CS(%rdi), %eax; test $0xfffc, %eax; jz slow     ; no selector: #GP(0)
         testb $HF_PE, ENV_HFLAGS(%rdi); jz slow               ; real mode: #GP(0)
         push %rbx; push %r12; push %r13; mov %rdi, %rbx; mov %eax, %r12d
         movabs read_eflags, %rax; call *%rax; and $~0x30200, %rax          ; RFLAGS & ~(IF | RF | VM)
         mov %rax, %rsi; mov %rbx, %rdi; mov $0xffffffff, %edx; movabs write_eflags, %rax; call *%rax
         mov %r12d, %eax; and $0xfffc, %eax; mov %eax, ENV_CS(%rbx)
         movq $0, ENV_CS+8(%rbx); movl $0xffffffff, ENV_CS+16(%rbx)
         lea 8(%r12), %eax; and $0xfffc, %eax; mov %eax, ENV_SS(%rbx)
         movq $0, ENV_SS+8(%rbx); movl $0xffffffff, ENV_SS+16(%rbx); movl $DATA_FLAGS, ENV_SS+20(%rbx)
         mov ENV_SYSENTER_ESP(%rbx), %rax; mov ENV_SYSENTER_EIP(%rbx), %rcx
         testl $HF_LMA, ENV_HFLAGS(%rbx); jnz 1f
         movl $CODE32_FLAGS, ENV_CS+20(%rbx); mov %eax, %eax; mov %ecx, %ecx; jmp 2f    ; legacy: 32 bits
       1: movl $CODE64_FLAGS, ENV_CS+20(%rbx)
       2: mov %rax, 32(%rbx); mov %rcx, ENV_EIP(%rbx)         ; RSP, RIP
         mov %rbx, %rdi; movabs update_hflags, %rax; call *%rax
         pop %r13; pop %r12; pop %rbx; ret
       slow: movabs slow, %rax; jmp *%rax"""
    return (bytes.fromhex("0fb787c0120000 a9fcff0000 0f84e7000000 f687b000000080 0f84da000000 53 4154 4155"
                          "4889fb 4189c4".replace(" ", ""))
            + b"\x48\xb8" + _imm64(read_eflags)
            + bytes.fromhex("ffd0 4825fffdfcff 4889c6 4889df baffffffff".replace(" ", ""))
            + b"\x48\xb8" + _imm64(write_eflags)
            + bytes.fromhex("ffd0 4489e0 25fcff0000 8983d0000000 48c783d800000000000000 c783e0000000ffffffff"
                            "418d442408 25fcff0000 8983e8000000 48c783f000000000000000 c783f8000000ffffffff"
                            "c783fc0000000093c000 488b83c8120000 488b8bd0120000 f783b000000000400000 7510"
                            "c783e4000000009bc000 89c0 89c9 eb0a c783e4000000009ba000 48894320 48898b80000000"
                            "4889df".replace(" ", ""))
            + b"\x48\xb8" + _imm64(update_hflags)
            + bytes.fromhex("ffd0 415d 415c 5b c3".replace(" ", ""))
            + b"\x48\xb8" + _imm64(slow) + b"\xff\xe0")
