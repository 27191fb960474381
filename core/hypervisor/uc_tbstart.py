"""The exit check at the start of every translated block, made inline again (unicorn 2.1.4 calls a helper).

QEMU starts every translation block with a load of `icount_decr` and a branch taken only when it is negative
(include/exec/gen-icount.h, gen_tb_start): that is how cpu_exit, uc_emu_stop and an interrupt request
(`icount_decr.u16.high = -1`) make a running chain of blocks return to the CPU loop. unicorn 2.1.4 replaced the
branch with an unconditional call of `helper_check_exit_request(uc, 0)` (its comment: a branch there "fails
liveness analysis"), which does the same test in C. In the sha256 workload that call, taken at every block, was
~6 % of the vCPU thread (perf: the largest single symbol in the library).

This module puts the test back in the generated code, without rebuilding the library: `tcg_gen_code` (called
through the PLT from tb_gen_code) is redirected to a wrapper that runs it and then rewrites the block's first 17
bytes -- only if they are exactly what the x86-64 backend emits for that call:

    48 bf <uc, 8 bytes>      movabs $uc, %rdi
    31 f6 | 33 f6            xor %esi, %esi
    e8 <rel32>               call helper_check_exit_request_x86_64

into

    83 7d f0 00              cmpl $0, -16(%rbp)         ; env is in %rbp; icount_decr.u32 lies 16 bytes below it
    79 0b                    jns +11                    ; not negative: no exit requested, run the block
    e8 <rel32>               call stub                  ; the helper, with its arguments (below)
    66 0f 1f 44 00 00        nopw 0(%rax,%rax)

The stub loads `uc` from env->uc and jumps to the unchanged helper, so when an exit *is* requested everything
happens exactly as before (the helper's return address is still inside the block's prologue: the guest state is
restored to the block's first instruction, as it was). A block whose bytes differ is left as generated.
`helper_check_exit_request` tests `icount_decr.u32 < 0` and `!in_delay_slot` (always 0 on x86): the inline test
is the same condition.

Each unicorn instance maps its own 1 GiB code buffer, one below the other, so only the first instance in a
process lies within rel32 reach of the library. The others' blocks call the helper through the block's constant
pool, `call *disp32(%rip)` (ff 15, 18 bytes), which the rewrite did not recognise: the parallel engine's vCPUs
after the first kept unicorn's call, ~6 % slower, and the slowest vCPU sets a parallel job's time. So the stub
goes in a page below 2 GiB (mmap MAP_32BIT) when the host gives one, the call becomes absolute and reachable
from any buffer, and both forms are rewritten:

    83 7d f0 00              cmpl $0, -16(%rbp)
    79 0b | 79 0c            jns +11 | +12 (the 17- or 18-byte form)
    b8 <stub, 4 bytes>       mov $stub, %eax            ; zero-extended: the stub lies below 2 GiB
    ff d0                    call *%rax                 ; %rax is free here (the original call clobbered it)
    0f 1f 40 00 | 0f 1f 44 00 00                        ; nopl

The rel32 form above (its stub near the library, first instance only) stays the fallback when no page below
2 GiB is to be had.
"""
from __future__ import annotations

import ctypes
import struct
from ctypes import c_uint64

from core.hypervisor.uc_internals import CPU_ICOUNT_DECR, ENV_UC, X86CPU_ENV, UnicornInternalsError, _fn, addr_of
from core.hypervisor.uc_patch import _find_helper_slots, _imm64, _mmap_low, _NativePage, _poke_pointer

TB_TC_PTR = 32                 # TranslationBlock: struct tb_tc tc (void *ptr) after pc, cs_base, flags, size,
                               # icount, cflags, trace_vcpu_dstate (include/exec/exec-all.h of unicorn 2.1.4)
ICOUNT_FROM_ENV = CPU_ICOUNT_DECR - X86CPU_ENV     # -16: X86CPU.neg.icount_decr, just before env
PROLOGUE_BYTES = 17


def check_stub_code(helper: int) -> bytes:
    """Called from a rewritten block prologue (env in %rbp), as the original call was:
         mov ENV_UC(%rbp), %rdi; xor %esi, %esi        ; helper_check_exit_request(uc, in_delay_slot = 0)
         movabs helper, %rax; jmp *%rax                 ; its return address stays the block's"""
    return b"\x48\x8b\xbd" + struct.pack("<i", ENV_UC) + b"\x31\xf6" + b"\x48\xb8" + _imm64(helper) + b"\xff\xe0"


def gen_code_wrapper(original: int, helper: int, stub: int, counter: int) -> bytes:
    """int wrapper(TCGContext *s, TranslationBlock *tb):
         push %rbx; mov %rsi, %rbx
         movabs original, %rax; call *%rax             ; eax = tcg_gen_code(s, tb): code size, or < 0
         test %eax, %eax; js done
         mov TB_TC_PTR(%rbx), %rdx                      ; the block's code
         cmpw $0xbf48, (%rdx); jne done                 ; movabs $imm64, %rdi
         cmpb $0xf6, 11(%rdx); jne done
         movzbl 10(%rdx), %ecx; or $2, %ecx; cmp $0x33, %ecx; jne done      ; xor %esi, %esi (31 f6 or 33 f6)
         cmpb $0xe8, 12(%rdx); jne done                 ; call rel32 ...
         movslq 13(%rdx), %rcx; lea 17(%rdx,%rcx), %rcx
         movabs helper, %r8; cmp %r8, %rcx; jne done    ; ... of helper_check_exit_request
         movabs stub, %r8; lea 11(%rdx), %rcx; sub %rcx, %r8
         movslq %r8d, %rcx; cmp %r8, %rcx; jne done     ; the stub within rel32 reach of the new call
         movl $0x00f07d83, (%rdx)                       ; cmpl $0, -16(%rbp)
         movw $0x0b79, 4(%rdx)                          ; jns +11
         movb $0xe8, 6(%rdx); mov %r8d, 7(%rdx)         ; call stub
         movl $0x441f0f66, 11(%rdx); movw $0, 15(%rdx)  ; nopw 0(%rax,%rax)
         movabs counter, %rcx; lock incq (%rcx)         ; blocks rewritten (statistics, tests)
       done: pop %rbx; ret                              ; eax still tcg_gen_code's result"""
    if ICOUNT_FROM_ENV != -16:
        raise UnicornInternalsError(f"icount_decr is {ICOUNT_FROM_ENV} bytes from env, the code says -16")
    return (bytes.fromhex("534889f3") + b"\x48\xb8" + _imm64(original) + bytes.fromhex("ffd0 85c0 0f8883000000")
            + bytes.fromhex("488b5320 66813a48bf 7578 807a0bf6 7572 0fb64a0a 83c902 83f933 7566 807a0ce8 7560"
                            "48634a0d 488d4c0a11")
            + b"\x49\xb8" + _imm64(helper) + bytes.fromhex("4c39c1 7548")
            + b"\x49\xb8" + _imm64(stub) + bytes.fromhex("488d4a0b 4929c8 4963c8 4c39c1 752f")
            + bytes.fromhex("c702837df000 66c74204790b c64206e8 44894207 c7420b660f1f44 66c7420f0000")
            + b"\x48\xb9" + _imm64(counter) + bytes.fromhex("f048ff01 5b c3"))


def gen_code_wrapper_low(original: int, helper: int, stub: int, counter: int) -> bytes:
    """As gen_code_wrapper, for a stub below 2 GiB (no reach check: the call is absolute), and for both forms the
    backend emits for the helper call: `call rel32` when the helper is within reach of the code buffer (17-byte
    prologue), else `call *disp32(%rip)` through the block's constant pool (18 bytes; every instance after the
    first, whose buffer lies further than 2 GiB from the library):
         ... (as gen_code_wrapper, up to the xor checked)
         movabs helper, %r8
         cmpb $0xe8, 12(%rdx); jne far
         movslq 13(%rdx), %rcx; lea 17(%rdx,%rcx), %rcx; cmp %r8, %rcx; jne done
         movw $0x0b79, 4(%rdx); movl $0x1f0fd0ff, 11(%rdx); movw $0x0040, 15(%rdx)   ; jns +11; call *%rax; nopl
         jmp common
       far: cmpw $0x15ff, 12(%rdx); jne done                ; call *disp32(%rip) ...
         movslq 14(%rdx), %rcx; cmp %r8, 18(%rdx,%rcx); jne done    ; ... through a pool slot holding the helper
         movw $0x0c79, 4(%rdx); movl $0x1f0fd0ff, 11(%rdx); movw $0x0044, 15(%rdx); movb $0, 17(%rdx)
                                                              ; jns +12; call *%rax; nopl 0(%rax,%rax)
       common: movl $0x00f07d83, (%rdx); movb $0xb8, 6(%rdx); movl $stub, 7(%rdx)   ; cmpl; mov $stub, %eax
         movabs counter, %rcx; lock incq (%rcx)
       done: pop %rbx; ret"""
    if ICOUNT_FROM_ENV != -16:
        raise UnicornInternalsError(f"icount_decr is {ICOUNT_FROM_ENV} bytes from env, the code says -16")
    if not 0 < stub < 1 << 31:
        raise UnicornInternalsError(f"stub {stub:#x} is not below 2 GiB")
    return (bytes.fromhex("534889f3") + b"\x48\xb8" + _imm64(original) + bytes.fromhex("ffd0 85c0 0f88a1000000")
            + bytes.fromhex("488b5320 66813a48bf 0f8592000000 807a0bf6 0f8588000000 0fb64a0a 83c902 83f933 757c")
            + b"\x49\xb8" + _imm64(helper)
            + bytes.fromhex("807a0ce8 7523 48634a0d 488d4c0a11 4c39c1 755e"
                            "66c74204790b c7420bffd00f1f 66c7420f4000 eb2a"
                            "66817a0cff15 7541 48634a0e 4c39440a12 7536"
                            "66c74204790c c7420bffd00f1f 66c7420f4400 c6421100"
                            "c702837df000 c64206b8 c74207") + struct.pack("<I", stub)
            + b"\x48\xb9" + _imm64(counter) + bytes.fromhex("f048ff01 5b c3"))


class InlineExitCheck:
    """The rewrite above, installed once per process (before the first unicorn instance translates anything).
    If the library is not the expected build nothing is patched (every block keeps the helper call: correct,
    only slower) and `reason` says why. `rewritten` counts the blocks rewritten so far."""

    def __init__(self, page: _NativePage) -> None:
        self.active = False
        self.reason = ""
        self._counter = c_uint64(0)
        try:
            self._install(page)
            self.active = True
        except UnicornInternalsError as exc:
            self.reason = str(exc)

    @property
    def rewritten(self) -> int:
        return self._counter.value

    def _install(self, page: _NativePage) -> None:
        helper = addr_of(_fn("helper_check_exit_request_x86_64", None))
        # The helper's body as derived from (tcg-runtime.c): the exit test the inline form must equal --
        # mov UC_CPU(%rdi), %r8; mov CPU_ICOUNT_DECR(%r8), %eax; test %eax, %eax; jns ret; test %esi, %esi
        expected = bytes.fromhex("4c8b87b8010000 418b80408a0000 85c0 7904 85f6")
        if ctypes.string_at(helper, len(expected)) != expected:
            raise UnicornInternalsError("helper_check_exit_request is not the unicorn 2.1.4 build this was "
                                        "derived from")
        slots = _find_helper_slots(["tcg_gen_code_x86_64"])
        original, pointer_slots = slots["tcg_gen_code_x86_64"]
        low = _low_page()
        if low is not None:
            self._low = low                         # kept for the process's life, as the library page is
            stub = low.add(check_stub_code(helper))
            low.seal()
            wrapper = page.add(gen_code_wrapper_low(original, helper, stub, ctypes.addressof(self._counter)))
        else:
            stub = page.add(check_stub_code(helper))
            wrapper = page.add(gen_code_wrapper(original, helper, stub, ctypes.addressof(self._counter)))
        self.stub = stub
        for slot in pointer_slots:
            _poke_pointer(slot, original, wrapper)


def _low_page() -> _NativePage | None:
    """A native-code page below 2 GiB, or None if the host will not map one there."""
    base = _mmap_low()
    return _NativePage(base=base) if base else None
