"""Global pages kept in the soft TLB across CR3 writes, as the processor keeps them (Intel SDM vol. 3, 4.10.2.4
"Global Pages", 4.10.4.1 "Operations that Invalidate TLBs and Paging-Structure Caches"; unicorn 2.1.4's build of
QEMU's accel/tcg/cputlb.c and target/i386/excp_helper.c).

With CR4.PGE set, a translation whose leaf paging entry has G (bit 8) set survives a MOV to CR3 (and a task
switch): only INVLPG for its address, a CR4 write that changes PGE (or PAE, PSE, SMEP, SMAP), a CR0.PG change or
INVPCID's all-context types remove it. Linux maps its whole kernel half global (without KPTI, which the software
CPU spares it: software_cpuid), so on hardware a process switch costs the user half of the TLB only. QEMU
flushes everything at every CR3 write. Measured in `bench/software_cpu.py --smp` (a uprobe on
tlb_set_page_with_attrs): about 290 refills after each CR3 write, 93 % of them kernel-half addresses in kernel
mode, and the refills (walk, tlb_set_page_with_attrs, the region lookup, the 64 KiB memset per mode) about 12 % of
each vCPU thread.

Two changes, installed once per process before any instance exists (VIREO_GLOBAL_TLB=0 leaves QEMU alone):

* The G bit is recorded with each entry. x86_cpu_tlb_fill ends every walk at one tail (QEMU's `do_mapping`),
  where r9 holds the leaf entry (4-level, PAE and 32-bit paging alike; with paging off the tail is entered by
  falling through instead). The four jumps into that tail go to a stub that keeps `pte & G` in r15 (the A20
  mask's register, dead from there on), the fall-through path clears it, and the call of
  tlb_set_page_with_attrs sets MemTxAttrs.target_tlb_bit0 when r15 is set. QEMU stores the attributes in the
  entry's CPUIOTLBEntry, moves them with the entry to and from the victim TLB, and leaves that bit to the
  target; the x86 target never reads it.
* cpu_x86_update_cr3 tail-calls tlb_flush; that jump goes to a selective flush instead. With CR4.PGE clear it
  is QEMU's flush (G means nothing then). Otherwise, for each MMU mode in use: every non-empty entry without the
  bit is emptied, the kept ones are the mode's new n_used_entries, the victim TLB is emptied, and the CPU's
  tb_jmp_cache is cleared as QEMU's flush clears it (it is indexed by virtual PC alone). The recorded large-page
  range is left as it is: it can only make a later INVLPG flush more. Every 32nd CR3 write is QEMU's full flush,
  so that its resizing of the TLB (which runs at a full flush) goes on; the count is kept in the CPU's
  `elide_flush_count`, a statistic nothing in unicorn reads.

Every other flush (CR0, CR4, EFER, A20, INVPCID, a memory-map change, Vireo's own after loading a CPU state)
calls tlb_flush and stays a full one.

Offsets, from the disassembly of the pinned library and checked byte for byte at install: the tail of
x86_cpu_tlb_fill_x86_64 (+0x465, +0x4a9, +0x4b4 and +0xa19 jump to it at +0x5be, the fall-through enters at +0x5bb,
the call is at +0x621); the tail call at cpu_x86_update_cr3_x86_64+0x1f; CPUState.env_ptr (+0x128),
tb_jmp_cache (+0x138, 4096 pointers); from env: cr[4] (+0x1c8), CPUTLBCommon.dirty (-0x890) and
elide_flush_count (-0x878), CPUTLBDesc d[3] (-0x870, 0x2b8 each: n_used_entries +0x20, vindex +0x28, vtable
+0x30, iotlb +0x2b0), CPUTLBDescFast f[3] (-0x40, 16 each: mask, table); 64-byte CPUTLBEntry, 16-byte
CPUIOTLBEntry (attrs at +8: target_tlb_bit0 is bit 20).
"""
from __future__ import annotations

import ctypes
import os
import struct

from core.hypervisor.uc_internals import UnicornInternalsError, _require_lib, addr_of
from core.hypervisor.uc_patch import _imm64, _NativePage, _patch_text

ENV_VAR = "VIREO_GLOBAL_TLB"
ATTR_GLOBAL = 1 << 20                 # MemTxAttrs.target_tlb_bit0
FULL_FLUSH_EVERY = 32                 # CR3 writes; a power of two (the stub tests the low bits)

# x86_cpu_tlb_fill_x86_64: the three jumps into the tail, the tail's first instructions, and the call.
_FILL_JUMPS = (0x465, 0x4A9, 0x4B4, 0xA19)
_FILL_JUMP_OPCODES = (b"\x0f\x85", b"\x0f\x85", b"\xe9", b"\xe9")
_FILL_TAIL = 0x5BE                    # and %r15d,%ecx (the jumps' target)
_FILL_FALLTHROUGH = 0x5BB             # mov %rsi,%r9 (paging off), then the tail
_FILL_RESUME = 0x5C1                  # mov %r8d,%edx: where both stubs return
_FILL_CALL = 0x621                    # add %ecx,%ecx; call tlb_set_page_with_attrs_x86_64@plt
_CR3_TAIL_CALL = 0x1F                 # jmp tlb_flush_x86_64@plt

_FALLTHROUGH_CODE = bytes.fromhex("4989f1 4421f9")                 # mov %rsi,%r9; and %r15d,%ecx


def mark_paging_code(resume: int) -> bytes:
    """From a walk (r9 = the leaf entry): QEMU's first tail instruction, then r15 = pte & G."""
    return bytes.fromhex("4421f9 4d89cf 4181e700010000") + b"\x48\xb8" + _imm64(resume) + b"\xff\xe0"
    # and %r15d,%ecx; mov %r9,%r15; and $0x100,%r15d; movabs $resume,%rax; jmp *%rax


def mark_flat_code(resume: int) -> bytes:
    """Paging off: QEMU's two instructions, and no G."""
    return bytes.fromhex("4989f1 4421f9 4531ff") + b"\x48\xb8" + _imm64(resume) + b"\xff\xe0"
    # mov %rsi,%r9; and %r15d,%ecx; xor %r15d,%r15d; movabs $resume,%rax; jmp *%rax


def set_page_code(got_slot: int) -> bytes:
    """Called in place of `add %ecx,%ecx; call tlb_set_page_with_attrs`: the attributes with the G bit."""
    return (bytes.fromhex("01c9 4585ff 7406 81c900001000") + b"\x48\xb8" + _imm64(got_slot) + b"\xff\x20")
    # add %ecx,%ecx; test %r15d,%r15d; jz 1f; or $0x100000,%ecx; 1: movabs $slot,%rax; jmp *(%rax)


def cr3_flush_code(full_flush_slot: int) -> bytes:
    """The selective flush, jumped to with rdi = the CPUState (see the module docstring; tests check it against
    GNU as)."""
    return (bytes.fromhex(
        "488b8728010000"          # mov 0x128(%rdi),%rax                 env
        "f680c801000080"          # testb $0x80,0x1c8(%rax)              CR4.PGE
        "0f84d2000000"            # jz full
        "488380 88f7ffff 01"      # addq $1,-0x878(%rax)                 elide_flush_count
        "f680 88f7ffff") + bytes([FULL_FLUSH_EVERY - 1]) + bytes.fromhex(
        "0f84bd000000"            # jz full                              every 32nd
        "57"                      # push %rdi
        "440fb78870f7ffff"        # movzwl -0x890(%rax),%r9d             c.dirty
        "488db090f7ffff"          # lea -0x870(%rax),%rsi                d[0]
        "4c8d50c0"                # lea -0x40(%rax),%r10                 f[0]
        "41bb03000000"            # mov $3,%r11d                         modes
        "660f76c0"                # pcmpeqd %xmm0,%xmm0
        "41f6c101 746f"           # 1: test $1,%r9b; jz 5f
        "498b0a 498b5208"         # mov (%r10),%rcx; mov 8(%r10),%rdx    mask, table
        "48c1e906 48ffc1"         # shr $6,%rcx; inc %rcx                entries
        "4c8b86b0020000"          # mov 0x2b0(%rsi),%r8                  iotlb
        "31c0"                    # xor %eax,%eax                        kept
        "488b3a 48237a08 48237a10 4883ffff 741b"   # 2: empty (read & write & code == -1)? je 4f
        "41f6400a10 7405"         # testb $0x10,0xa(%r8); jz 3f          attrs.target_tlb_bit0
        "48ffc0 eb0f"             # inc %rax; jmp 4f                     a global entry stays
        "0f1102 0f114210 0f114220 0f114230"        # 3: the entry emptied
        "4883c240 4983c010 48ffc9 75c7"            # 4: next entry
        "48894620"                # mov %rax,0x20(%rsi)                  n_used_entries
        "48c7462800000000"        # movq $0,0x28(%rsi)                   vindex
        "488d7e30 b940000000 48c7c0ffffffff f348ab"  # the victim TLB emptied
        "41d1e9 4881c6b8020000 4983c210 41ffcb 0f8574ffffff"   # 5: next mode
        "5f 4881c738010000 31c0 b900100000 f348ab c3"           # tb_jmp_cache cleared; ret
        ) + b"\x48\xb8" + _imm64(full_flush_slot) + b"\xff\x20")  # full: movabs $slot,%rax; jmp *(%rax)


def wanted() -> bool:
    return os.environ.get(ENV_VAR, "1").strip() != "0"


def _export(name: str) -> int:
    """An exported function's address, without touching the argtypes others set on the shared ctypes object."""
    try:
        return addr_of(getattr(_require_lib(), name))
    except AttributeError as exc:
        raise UnicornInternalsError(f"libunicorn does not export {name}") from exc


def _rel32(at: int, size: int, target: int) -> bytes:
    delta = target - (at + size)
    if not -(1 << 31) <= delta < 1 << 31:
        raise UnicornInternalsError(f"a native stub at {target:#x} is out of rel32 reach of {at:#x}")
    return struct.pack("<i", delta)


def _plt_got_slot(plt_entry: int) -> int:
    """The GOT slot a PLT entry (`jmp *disp32(%rip)`) jumps through."""
    code = ctypes.string_at(plt_entry, 6)
    if code[:2] != b"\xff\x25":
        raise UnicornInternalsError(f"no PLT jump at {plt_entry:#x}")
    return plt_entry + 6 + struct.unpack("<i", code[2:])[0]


def _rel_target(at: int, opcode: bytes) -> int:
    code = ctypes.string_at(at, len(opcode) + 4)
    if code[:len(opcode)] != opcode:
        raise UnicornInternalsError(f"unexpected instruction at {at:#x}: {code.hex()}")
    return at + len(code) + struct.unpack("<i", code[len(opcode):])[0]


class GlobalPageTlb:
    """Installs both changes in libunicorn (once per process), with its stubs on `page` (near the library)."""

    def __init__(self, page: _NativePage) -> None:
        fill = _export("x86_cpu_tlb_fill_x86_64")
        cr3 = _export("cpu_x86_update_cr3_x86_64")
        tail = fill + _FILL_TAIL
        for off, opcode in zip(_FILL_JUMPS, _FILL_JUMP_OPCODES, strict=True):
            if _rel_target(fill + off, opcode) != tail:
                raise UnicornInternalsError("x86_cpu_tlb_fill is not the unicorn 2.1.4 build this was derived from")
        if ctypes.string_at(fill + _FILL_FALLTHROUGH, 6) != _FALLTHROUGH_CODE:
            raise UnicornInternalsError("x86_cpu_tlb_fill's tail is not the one this was derived from")
        if ctypes.string_at(fill + _FILL_CALL, 2) != b"\x01\xc9":
            raise UnicornInternalsError("x86_cpu_tlb_fill's call of tlb_set_page_with_attrs is not where expected")
        set_page_plt = _rel_target(fill + _FILL_CALL + 2, b"\xe8")
        flush_plt = _rel_target(cr3 + _CR3_TAIL_CALL, b"\xe9")
        set_page_slot, flush_slot = _plt_got_slot(set_page_plt), _plt_got_slot(flush_plt)
        if ctypes.c_uint64.from_address(flush_slot).value != _export("tlb_flush_x86_64"):
            raise UnicornInternalsError("cpu_x86_update_cr3 does not tail-call tlb_flush")

        resume = fill + _FILL_RESUME
        mark_paging = page.add(mark_paging_code(resume))
        mark_flat = page.add(mark_flat_code(resume))
        set_page = page.add(set_page_code(set_page_slot))
        self.cr3_flush = page.add(cr3_flush_code(flush_slot))
        patches = []                  # every encoding first: a stub out of reach changes nothing
        for off, opcode in zip(_FILL_JUMPS, _FILL_JUMP_OPCODES, strict=True):
            at = fill + off
            patches.append((at, opcode + _rel32(at, len(opcode) + 4, mark_paging)))
        at = fill + _FILL_FALLTHROUGH
        patches.append((at, b"\xe9" + _rel32(at, 5, mark_flat) + b"\x90"))
        at = fill + _FILL_CALL
        patches.append((at, b"\xe8" + _rel32(at, 5, set_page) + b"\x90\x90"))
        at = cr3 + _CR3_TAIL_CALL
        patches.append((at, b"\xe9" + _rel32(at, 5, self.cr3_flush)))
        # This runs before the first unicorn instance exists: no thread is in this code yet.
        for at, code in patches:
            _patch_text(at, code)
