"""Direct access to the QEMU CPU state inside unicorn 2.1.4, for what its public API leaves out.

unicorn is QEMU's TCG as a library. Its API gives registers, memory maps and a few hooks, but not the pieces a
full PC needs: delivery of exceptions and external interrupts through the guest's IVT/IDT (Intel SDM vol. 3,
ch. 6), the hidden segment-descriptor caches (SDM vol. 3, 3.4.3), RDMSR/WRMSR of MSRs it does not know
(IA32_APIC_BASE, the x2APIC range, IA32_TSC_DEADLINE), SYSCALL/SYSENTER with their architectural effect
(SDM vol. 2B, "SYSCALL"), and code-cache invalidation by guest-physical address. This module reaches them:

* Struct offsets of `struct uc_struct`, `CPUState`, `X86CPU` and `CPUX86State`. They were derived from the
  exact source of the pinned version (the PyPI sdist of unicorn 2.1.4: include/uc_priv.h,
  qemu/include/hw/core/cpu.h, qemu/target/i386/cpu.h) by compiling a program that prints `offsetof(...)` with the
  library's own build flags (cmake -DUNICORN_ARCH=x86, then the compile line of target/i386/seg_helper.c).
  `verify()` checks them against the running library (pointer identities and register round trips through the
  public API) and refuses to run with a clear message if they do not hold.
* QEMU's own routines that the library exports (`x86_cpu_do_interrupt_x86_64`, `x86_update_hflags_x86_64`,
  `cpu_x86_update_cr0_x86_64`, `tlb_flush_x86_64`, `tb_invalidate_phys_range_x86_64`, ...), called via ctypes.
* Three pieces of native code (bytes below with their assembly), placed in an executable page:
  - the UC_HOOK_INTR callback: `x86_cpu_do_interrupt(uc->cpu)`, i.e. QEMU's own delivery of the pending
    exception or INT n through the IVT/IDT (gates, privilege changes, TSS stacks, IST, error codes) -- in native
    code because a fault during delivery longjmps back into the CPU loop, which must never cross Python frames;
  - the UC_HOOK_INSN_INVALID callback: the same for #UD (unicorn reports #UD there instead of UC_HOOK_INTR);
  - a wrapper placed in front of the TCG helpers for RDMSR, WRMSR, CPUID, SYSCALL and SYSENTER: it calls a Python
    callback and, by its return value, returns, runs the original helper, or raises an exception in the guest
    (`raise_exception_err_ra`, with the return address into the translated block so the guest state is exact).
  The wrappers are installed by rewriting the helper's two function pointers in the library: its GOT slot (used
  by the translator to emit the call) and its entry in QEMU's `all_helpers` table (which the translator looks up
  by that same pointer). This happens once per process, before any unicorn instance exists.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import threading
from collections.abc import Callable
from ctypes import POINTER, c_int, c_uint32, c_uint64, c_void_p

import unicorn
from unicorn import x86_const as X

try:
    from unicorn.unicorn_py3.unicorn import uclib as _lib
except ImportError:  # pragma: no cover - other binding layouts are not the pinned version
    _lib = None

PINNED_VERSION = "2.1.4"


class UnicornInternalsError(RuntimeError):
    """The installed unicorn is not the layout this module was derived from."""


# -- offsets (bytes) derived from the unicorn 2.1.4 sdist; see the module docstring ----------------------------
UC_CPU = 440                   # struct uc_struct: CPUState *cpu
UC_STOP_REQUEST = 1389         # struct uc_struct: bool stop_request
UC_NO_EXIT_REQUEST = 2034      # struct uc_struct: bool no_exit_request (see disable_mid_instruction_exits)
CPU_STOP = 17                  # CPUState: bool stop
CPU_STOPPED = 18               # CPUState: bool stopped
CPU_EXIT_REQUEST = 21          # CPUState: bool exit_request (volatile)
CPU_INTERRUPT_REQUEST = 28     # CPUState: uint32_t interrupt_request
CPU_ENV_PTR = 296              # CPUState: void *env_ptr
CPU_ICOUNT_DECR_PTR = 304      # CPUState: IcountDecr *icount_decr_ptr
CPU_HALTED = 33176             # CPUState: uint32_t halted
CPU_EXCEPTION_INDEX = 33184    # CPUState: int32_t exception_index
CPU_UC = 33192                 # CPUState: struct uc_struct *uc
X86CPU_ENV = 35408             # X86CPU: CPUX86State env (CPUState parent_obj is at 0)

ENV_REGS = 0                   # target_ulong regs[16]
ENV_EIP = 128
ENV_EFLAGS = 136
ENV_CC_SRC = 152
ENV_CC_OP = 168
ENV_DF = 172
ENV_HFLAGS = 176
ENV_HFLAGS2 = 180
ENV_SEGS = 184                 # SegmentCache segs[6]: ES CS SS DS FS GS
ENV_LDT = 328
ENV_TR = 352
ENV_GDT = 376
ENV_IDT = 400
ENV_CR = 424                   # target_ulong cr[9]
ENV_A20_MASK = 496
ENV_EFER = 592
ENV_SYSENTER_CS = 4800
ENV_SYSENTER_ESP = 4808
ENV_SYSENTER_EIP = 4816
ENV_STAR = 4824
ENV_LSTAR = 4840
ENV_CSTAR = 4848
ENV_FMASK = 4856
ENV_KERNELGSBASE = 4864
ENV_TSC_AUX = 4896
ENV_MSR_IA32_MISC_ENABLE = 4920
ENV_PAT = 5280
ENV_ERROR_CODE = 5384
ENV_EXCEPTION_IS_INT = 5388
ENV_EXCEPTION_NEXT_EIP = 5392
ENV_OLD_EXCEPTION = 5496
ENV_VM_VMCB = 5504
ENV_TSC_OFFSET = 5512
ENV_END_RESET_FIELDS = 5568    # everything per-CPU lies before this (what uc_context_save copies)
ENV_CPUID_LEVEL = 5604
ENV_FEATURES = 5632            # FeatureWordArray features (uint64_t per word)
ENV_UC = 7000                  # struct uc_struct *uc

SEG_SIZE = 24                  # SegmentCache: uint32 selector @0, target_ulong base @8, uint32 limit @16, flags @20
R_ES, R_CS, R_SS, R_DS, R_FS, R_GS = range(6)

# CPUState.interrupt_request bits (qemu/include/hw/core/cpu.h, target/i386/cpu.h)
CPU_INTERRUPT_HARD = 0x2
CPU_INTERRUPT_EXITTB = 0x4
CPU_INTERRUPT_VIRQ = 0x100
CPU_INTERRUPT_NMI = 0x200
# env->hflags / hflags2 bits (target/i386/cpu.h)
HF_CPL_MASK = 0x3
HF_INHIBIT_IRQ_MASK = 0x8
HF_CS32_MASK = 0x10
HF_SS32_MASK = 0x20
HF_PE_MASK = 0x80
HF_LMA_MASK = 0x4000
HF_CS64_MASK = 0x8000
HF2_GIF_MASK = 0x1
HF2_NMI_MASK = 0x4
VMCB_INT_VECTOR = 100          # offsetof(struct vmcb, control.int_vector): where CPU_INTERRUPT_VIRQ reads the vector
# Feature words (FeatureWord enum)
FEAT_1_EDX, FEAT_1_ECX, FEAT_7_0_EBX, FEAT_7_0_ECX, FEAT_7_0_EDX = 0, 1, 2, 3, 4
FEAT_8000_0001_EDX, FEAT_8000_0001_ECX = 6, 7
CC_OP_EFLAGS = 1               # CCOp enum: flags held in cc_src

# Segment descriptor flag bits as QEMU keeps them (the descriptor's high dword; SDM vol. 3, 3.4.5)
DESC_TYPE_SHIFT = 8
DESC_S_MASK = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P_MASK = 1 << 15
DESC_AVL_MASK = 1 << 20
DESC_L_MASK = 1 << 21
DESC_B_MASK = 1 << 22
DESC_G_MASK = 1 << 23

EFLAGS_IF = 1 << 9


def _require_lib() -> ctypes.CDLL:
    if _lib is None or unicorn.__version__ != PINNED_VERSION:
        raise UnicornInternalsError(
            f"the software CPU needs unicorn {PINNED_VERSION} exactly (found "
            f"{getattr(unicorn, '__version__', '?')}): its QEMU internals are addressed by offset; "
            f"install it with `pip install unicorn=={PINNED_VERSION}`")
    return _lib


def _fn(name: str, restype, *argtypes):
    lib = _require_lib()
    try:
        f = getattr(lib, name)
    except AttributeError as exc:
        raise UnicornInternalsError(f"libunicorn does not export {name}: not the unicorn {PINNED_VERSION} build "
                                    "this backend was written for") from exc
    f.restype = restype
    f.argtypes = argtypes
    return f


class _Qemu:
    """The exported QEMU routines, bound lazily (import must not fail on a host without unicorn)."""

    def __init__(self) -> None:
        self.do_interrupt = _fn("x86_cpu_do_interrupt_x86_64", None, c_void_p)
        self.update_hflags = _fn("x86_update_hflags_x86_64", None, c_void_p)
        self.update_cr0 = _fn("cpu_x86_update_cr0_x86_64", None, c_void_p, c_uint32)
        self.update_cr3 = _fn("cpu_x86_update_cr3_x86_64", None, c_void_p, c_uint64)
        self.update_cr4 = _fn("cpu_x86_update_cr4_x86_64", None, c_void_p, c_uint32)
        self.read_eflags = _fn("helper_read_eflags_x86_64", c_uint64, c_void_p)
        self.write_eflags = _fn("helper_write_eflags_x86_64", None, c_void_p, c_uint64, c_uint32)
        self.tlb_flush = _fn("tlb_flush_x86_64", None, c_void_p)
        self.cpuid = _fn("cpu_x86_cpuid_x86_64", None, c_void_p, c_uint32, c_uint32, POINTER(c_uint32),
                         POINTER(c_uint32), POINTER(c_uint32), POINTER(c_uint32))
        self.ram_addr_from_host = _fn("qemu_ram_addr_from_host_x86_64", c_uint64, c_void_p, c_void_p)
        self.tb_invalidate_phys_range = _fn("tb_invalidate_phys_range_x86_64", None, c_void_p, c_uint64, c_uint64)
        self.raise_exception_err_ra = _fn("raise_exception_err_ra_x86_64", None, c_void_p, c_int, c_int, c_uint64)
        self.uc_hook_add = _lib.uc_hook_add
        self.uc_emu_start = _lib.uc_emu_start
        self.uc_emu_stop = _lib.uc_emu_stop
        self.uc_mmio_map = _lib.uc_mmio_map


_qemu: _Qemu | None = None


def qemu() -> _Qemu:
    global _qemu
    if _qemu is None:
        _qemu = _Qemu()
    return _qemu


def addr_of(fn) -> int:
    return ctypes.cast(fn, c_void_p).value


# -- native code ----------------------------------------------------------------------------------------------
_PAGE = 4096


class _NativePage:
    """One page of machine code: written while writable, then made read+execute (never both)."""

    def __init__(self, near: int | None = None) -> None:
        self.base = _mmap_near(near) if near is not None else 0
        if not self.base:
            self._mem = mmap.mmap(-1, _PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self.base = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        self._used = 0

    def add(self, code: bytes) -> int:
        if self._used + len(code) > _PAGE:
            raise UnicornInternalsError("native code page full")
        addr = self.base + self._used
        ctypes.memmove(addr, code, len(code))
        self._used += (len(code) + 15) & ~15
        return addr

    def seal(self) -> None:
        _mprotect(self.base, _PAGE, mmap.PROT_READ | mmap.PROT_EXEC)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (c_void_p, ctypes.c_size_t, c_int)
_libc.mprotect.restype = c_int


_libc.mmap.argtypes = (c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long)
_libc.mmap.restype = c_void_p
_MAP_PRIVATE_ANONYMOUS = 0x22
_MAP_FIXED_NOREPLACE = 0x100000


def _mmap_near(addr: int) -> int:
    """A read/write page within +-1 GiB of `addr` (so rel32 jumps reach it from there), or 0 if none is free.
    Never unmapped: native code lives as long as the process."""
    for delta in range(1, 64):
        for sign in (-1, 1):
            hint = (addr + sign * delta * (16 << 20)) & ~(_PAGE - 1)
            if hint <= 0:
                continue
            got = _libc.mmap(hint, _PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                             _MAP_PRIVATE_ANONYMOUS | _MAP_FIXED_NOREPLACE, -1, 0)
            if got in (None, ctypes.c_void_p(-1).value):
                continue
            if abs(got - addr) < 1 << 30:
                return got
            _libc.munmap(c_void_p(got), ctypes.c_size_t(_PAGE))     # a kernel that took it as a mere hint
    return 0


def _mprotect(addr: int, length: int, prot: int) -> None:
    start = addr & ~(_PAGE - 1)
    end = (addr + length + _PAGE - 1) & ~(_PAGE - 1)
    if _libc.mprotect(start, end - start, prot) != 0:
        raise UnicornInternalsError(f"mprotect failed: errno {ctypes.get_errno()}")


def _imm64(value: int) -> bytes:
    return struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF)


def intr_hook_code(counters: int, do_interrupt: int) -> bytes:
    """void hook(uc_engine *uc, uint32_t intno, void *ud):
         mov eax, esi; movzx eax, al; movabs rcx, counters; inc qword [rcx+rax*8]   ; per-vector statistics
         mov rdi, [rdi+UC_CPU]; movabs rax, do_interrupt; jmp rax                    ; deliver as QEMU does"""
    return (b"\x89\xf0\x0f\xb6\xc0" + b"\x48\xb9" + _imm64(counters) + b"\x48\xff\x04\xc1"
            + b"\x48\x8b\xbf" + struct.pack("<I", UC_CPU) + b"\x48\xb8" + _imm64(do_interrupt) + b"\xff\xe0")


def invalid_hook_code(do_interrupt: int) -> bytes:
    """bool hook(uc_engine *uc, void *ud):
         sub rsp, 8; mov rdi, [rdi+UC_CPU]; movabs rax, do_interrupt; call rax   ; deliver #UD
         mov eax, 1; add rsp, 8; ret                                                ; handled"""
    return (b"\x48\x83\xec\x08" + b"\x48\x8b\xbf" + struct.pack("<I", UC_CPU) + b"\x48\xb8" + _imm64(do_interrupt)
            + b"\xff\xd0" + b"\xb8\x01\x00\x00\x00" + b"\x48\x83\xc4\x08" + b"\xc3")


def helper_wrapper_code(callback: int, raise_fn: int, original: int) -> bytes:
    """void wrapper(CPUX86State *env, int arg)   -- [rsp] is the return address into the translated block
         push rbx; push r12; push r13; mov rbx, rdi; mov r12d, esi
         movabs rax, callback; call rax            ; r = callback(env, arg)
         test rax, rax; jz done                    ; 0: handled
         cmp rax, 1; je original                   ; 1: let the original helper do it
         mov rdi, rbx; movzx esi, al; mov rdx, rax; shr rdx, 32; mov rcx, [rsp+24]
         movabs rax, raise_exception_err_ra; call rax; ud2     ; else: raise vector al, error code r>>32
       original: mov rdi, rbx; mov esi, r12d; pop r13; pop r12; pop rbx; movabs rax, original; jmp rax
       done: pop r13; pop r12; pop rbx; ret"""
    return (b"\x53\x41\x54\x41\x55\x48\x89\xfb\x41\x89\xf4"
            + b"\x48\xb8" + _imm64(callback) + b"\xff\xd0"
            + b"\x48\x85\xc0\x74\x3d\x48\x83\xf8\x01\x74\x20"
            + b"\x48\x89\xdf\x0f\xb6\xf0\x48\x89\xc2\x48\xc1\xea\x20\x48\x8b\x4c\x24\x18"
            + b"\x48\xb8" + _imm64(raise_fn) + b"\xff\xd0\x0f\x0b"
            + b"\x48\x89\xdf\x44\x89\xe6\x41\x5d\x41\x5c\x5b" + b"\x48\xb8" + _imm64(original) + b"\xff\xe0"
            + b"\x41\x5d\x41\x5c\x5b\xc3")


RDTSC_CODE = b"\x0f\x31\x48\xc1\xe2\x20\x48\x09\xd0\xc3"   # rdtsc; shl rdx, 32; or rax, rdx; ret


def raise_code(vector: int, error_code: int = 0) -> int:
    """The value a helper callback returns to raise `vector` (with `error_code`) in the guest."""
    return (error_code & 0xFFFF_FFFF) << 32 | 0x100 | vector


HELPER_DONE = 0
HELPER_ORIGINAL = 1
HelperCallback = Callable[[int, int], int]
_HELPER_CFUNC = ctypes.CFUNCTYPE(c_uint64, c_void_p, c_int)
INTERPOSED_HELPERS = ("rdmsr", "wrmsr", "cpuid", "syscall", "sysenter")


class _Natives:
    """The process-wide native stubs and helper interposition (installed once)."""

    def __init__(self) -> None:
        q = qemu()
        self.page = _NativePage(near=addr_of(q.do_interrupt))
        self.intr_counters = (c_uint64 * 256)()
        do_int = addr_of(q.do_interrupt)
        self.intr_hook = self.page.add(intr_hook_code(ctypes.addressof(self.intr_counters), do_int))
        self.invalid_hook = self.page.add(invalid_hook_code(do_int))
        self.rdtsc = ctypes.CFUNCTYPE(c_uint64)(self.page.add(RDTSC_CODE))
        # env address -> {helper name: python callback}
        self.handlers: dict[int, dict[str, HelperCallback]] = {}
        self._cfuncs = []
        self.originals: dict[str, int] = {}
        slots = _find_helper_slots([f"helper_{h}_x86_64" for h in INTERPOSED_HELPERS])
        raise_fn = addr_of(q.raise_exception_err_ra)
        for name in INTERPOSED_HELPERS:
            original, pointer_slots = slots[f"helper_{name}_x86_64"]
            self.originals[name] = original
            cfunc = _HELPER_CFUNC(self._make_dispatch(name))
            self._cfuncs.append(cfunc)
            wrapper = self.page.add(helper_wrapper_code(addr_of(cfunc), raise_fn, original))
            for slot in pointer_slots:
                _poke_pointer(slot, original, wrapper)
        self.code_tracking = CodeDirtyTracking(self.page)
        self.page.seal()

    def _make_dispatch(self, name: str) -> Callable[[int, int], int]:
        handlers = self.handlers

        def dispatch(env: int, arg: int) -> int:
            table = handlers.get(env)
            if table is None:
                return HELPER_ORIGINAL
            cb = table.get(name)
            if cb is None:
                return HELPER_ORIGINAL
            return cb(env, arg)
        return dispatch


_natives: _Natives | None = None
_natives_lock = threading.Lock()


def natives() -> _Natives:
    """Install (once) and return the native stubs. Must run before the first unicorn instance is created."""
    global _natives
    with _natives_lock:
        if _natives is None:
            _natives = _Natives()
        return _natives


def _poke_pointer(addr: int, expected: int, value: int) -> None:
    cell = c_uint64.from_address(addr)
    if cell.value == value:
        return
    if cell.value != expected:
        raise UnicornInternalsError(f"libunicorn pointer at {addr:#x} is {cell.value:#x}, expected {expected:#x}")
    _mprotect(addr, 8, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        cell.value = value
    finally:
        _mprotect(addr, 8, mmap.PROT_READ)


def _find_helper_slots(symbols: list[str]) -> dict[str, tuple[int, list[int]]]:
    """For each symbol: (its run-time address, the run-time addresses of every data word the dynamic linker
    filled with it: GOT slots and absolute pointers in tables), read from the library's ELF dynamic relocations."""
    path = _require_lib()._name
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise UnicornInternalsError(f"{path}: not a little-endian ELF64 library")
    e_shoff, = struct.unpack_from("<Q", elf, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    dynsym = next(s for s in sections if s[1] == 11)          # SHT_DYNSYM
    dynstr = sections[dynsym[6]]
    names: dict[int, str] = {}
    values: dict[str, int] = {}
    for i in range(dynsym[5] // 24):
        st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", elf, dynsym[4] + i * 24)
        end = elf.index(b"\0", dynstr[4] + st_name)
        name = elf[dynstr[4] + st_name:end].decode()
        names[i] = name
        values[name] = st_value
    wanted = set(symbols)
    found: dict[str, list[int]] = {s: [] for s in symbols}
    for sec in sections:
        if sec[1] != 4:                                        # SHT_RELA
            continue
        for off in range(sec[4], sec[4] + sec[5], 24):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", elf, off)
            rtype, sym = r_info & 0xFFFFFFFF, r_info >> 32
            if rtype in (1, 6, 7) and names.get(sym) in wanted and r_addend == 0:  # R_X86_64_64/GLOB_DAT/JUMP_SLOT
                found[names[sym]].append(r_offset)
    base = addr_of(_lib.uc_open) - values["uc_open"]
    result = {}
    for s in symbols:
        if s not in values or not found[s]:
            raise UnicornInternalsError(f"{path}: no relocations for {s}; cannot interpose it")
        result[s] = (base + values[s], [base + r for r in found[s]])
    return result


def _local_symbols(name: str) -> list[int]:
    """Run-time addresses of every local (static) function called `name` in the library's .symtab (empty if the
    library is stripped)."""
    elf, sections, base = _elf()
    symtab = next((sec for sec in sections if sec[1] == 2), None)     # SHT_SYMTAB
    if symtab is None:
        return []
    strtab = sections[symtab[6]]
    want = name.encode() + b"\0"
    out = []
    for i in range(symtab[5] // 24):
        st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", elf, symtab[4] + i * 24)
        start = strtab[4] + st_name
        if st_value and elf[start:start + len(want)] == want:
            out.append(base + st_value)
    return out


def _elf() -> tuple[bytes, list[tuple], int]:
    """The library file, its section headers and its load address (from an exported symbol)."""
    path = _require_lib()._name
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise UnicornInternalsError(f"{path}: not a little-endian ELF64 library")
    e_shoff, = struct.unpack_from("<Q", elf, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    dynsym = next(sec for sec in sections if sec[1] == 11)
    dynstr = sections[dynsym[6]]
    for i in range(dynsym[5] // 24):
        st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", elf, dynsym[4] + i * 24)
        if elf[dynstr[4] + st_name:dynstr[4] + st_name + 8] == b"uc_open\0":
            return elf, sections, addr_of(_lib.uc_open) - st_value
    raise UnicornInternalsError(f"{path}: uc_open not in the dynamic symbol table")


# -- translated-code write protection, as QEMU tracks it (see CodeDirtyTracking) --------------------------------
# notdirty_write (accel/tcg/cputlb.c) of unicorn 2.1.4 for x86-64, from its entry up to and including the check
# this module replaces: `if (... && !(tlbe->addr_code != -1) && ...) tlb_set_dirty(...)`. Verified byte for byte
# before patching (the call displacements are relative, so the bytes do not depend on the load address).
NOTDIRTY_PROLOGUE = bytes.fromhex(
    "41574989ff41564189d641554989cd41544989f4554c89cd534889f381e3ff0f00004883ec28488b87a8810000498b7118"
    "4c894424084809de4889c7ff90200100004885c0742d4989c1f6808800000004753548837d08ff7413498b87a8810000"
    "8b80203a00004139415c7c0748837d10ff747c")
NOTDIRTY_GATE = 0x6D            # offset of `cmpq $-1, 0x10(%rbp); je set_dirty` (7 bytes)
NOTDIRTY_SET_DIRTY = 0xF0       # the hook-list check, then the tail call to tlb_set_dirty
NOTDIRTY_RETURN = 0x74          # epilogue: leave the TLB entry in the slow path
CODE_TABLE_ENTRIES = 64         # unicorn instances per process with a code bitmap (uc, bitmap, pages)


def notdirty_stub_code(table: int, set_dirty: int, keep_slow: int) -> bytes:
    """Jumped to from the gate inside notdirty_write (its frame: r9 = the MemoryRegion, r15 = the CPUState,
    0x10(%rsp) = the ram_addr written, rbp = the TLB entry):
         testb $UC_PROT_EXEC, 0x88(%r9); jz original   ; not an executable region: unicorn's own rule
         mov 0x10(%rsp), %rax; mov CPU_UC(%r15), %rcx    ; ram_addr, uc
         movabs table, %rdx
       find: mov (%rdx), %r8; test %r8, %r8; jz slow; cmp %r8, %rcx; je found; add $24, %rdx; jmp find
       found: shr $12, %rax; cmp 16(%rdx), %rax; jae slow; mov 8(%rdx), %rcx; bt %rax, (%rcx); jc slow
       dirty: movabs set_dirty, %rax; jmp *%rax         ; no translated code in the page: fast writes from now
       original: cmpq $-1, 0x10(%rbp); je dirty
       slow: movabs keep_slow, %rax; jmp *%rax"""
    return (bytes.fromhex("41f6818800000004 7449 488b442410 498b8f") + struct.pack("<I", CPU_UC)
            + b"\x48\xba" + _imm64(table)
            + bytes.fromhex("4c8b02 4d85c0 7432 4c39c1 7406 4883c218 ebed 48c1e80c 483b4210 731d 488b4a08"
                            "480fa301 7213")
            + b"\x48\xb8" + _imm64(set_dirty) + b"\xff\xe0"
            + bytes.fromhex("48837d10ff 74ed") + b"\x48\xb8" + _imm64(keep_slow) + b"\xff\xe0")


def _code_bitmap_lookup(table: int) -> bytes:
    """rdi = uc, rsi = ram_addr -> rax = page number, rcx = bitmap, or to the end label (+offset) if untracked:
         movabs table, %rdx
       find: mov (%rdx), %r8; test %r8, %r8; jz end; cmp %r8, %rdi; je found; add $24, %rdx; jmp find
       found: mov %rsi, %rax; shr $12, %rax; cmp 16(%rdx), %rax; jae end; mov 8(%rdx), %rcx"""
    return (b"\x48\xba" + _imm64(table)
            + bytes.fromhex("4c8b02 4d85c0 7420 4c39c7 7406 4883c218 ebed 4889f0 48c1e80c 483b4210 7308 488b4a08"))


def protect_stub_code(table: int, map_ram_ptr: int, reset_dirty: int) -> bytes:
    """void tlb_protect_code(uc, ram_addr) -- the page now holds translated code:
         <lookup>; bts %rax, (%rcx)                       ; mark it in this instance's code bitmap
       end: push %rbx; push %r12; sub $8, %rsp; mov %rdi, %rbx
         mov %rsi, %rdx; xor %esi, %esi; movabs qemu_map_ram_ptr, %rax; call *%rax     ; host = ptr(uc, 0, ram)
         mov UC_CPU(%rbx), %rdi; mov %rax, %rsi; mov $4096, %edx
         movabs tlb_reset_dirty, %rax; call *%rax        ; every TLB entry writing the page: slow path again
         add $8, %rsp; pop %r12; pop %rbx; ret"""
    return (_code_bitmap_lookup(table) + bytes.fromhex("480fab01")
            + bytes.fromhex("53 4154 4883ec08 4889fb 4889f2 31f6") + b"\x48\xb8" + _imm64(map_ram_ptr)
            + b"\xff\xd0" + b"\x48\x8b\xbb" + struct.pack("<I", UC_CPU) + bytes.fromhex("4889c6 ba00100000")
            + b"\x48\xb8" + _imm64(reset_dirty) + bytes.fromhex("ffd0 4883c408 415c 5b c3"))


def unprotect_stub_code(table: int) -> bytes:
    """void tlb_unprotect_code(uc, ram_addr) -- the page's last translated block is gone:
         <lookup>; btr %rax, (%rcx)
       end: ret"""
    return _code_bitmap_lookup(table) + bytes.fromhex("480fb301 c3")


class CodeDirtyTracking:
    """Fast guest writes to RAM that holds no translated code, also where the guest's page tables allow
    execution (no NX: a non-PAE 32-bit kernel, real mode, paging off).

    QEMU sends a store through its slow path (notdirty_write: invalidate translated code in the range) only while
    the physical page holds translated code -- its DIRTY_MEMORY_CODE bitmap, set by tlb_protect_code when a page
    gets its first translated block, cleared by tlb_unprotect_code when the last one goes. unicorn 2.1.4 removed
    that bitmap and approximates it by "the TLB entry is not executable", so without NX every store to every page
    takes the slow path for good (measured: the 32-bit kernel's in-guest decompression ran 20 s, mostly in
    notdirty_write). This restores QEMU's rule: tlb_protect_code / tlb_unprotect_code (called through the PLT)
    are redirected to stubs keeping one bitmap per unicorn instance (indexed by ram_addr page), and the gate in
    notdirty_write consults it. tlb_protect_code also puts every TLB entry writing that page back on the slow
    path (tlb_reset_dirty by host address), as QEMU does, so a write through another virtual alias is seen too.

    Installed once per process; if the library's bytes are not the expected ones nothing is patched (the
    backend stays correct, only slower) and `reason` says why."""

    def __init__(self, page: _NativePage) -> None:
        self.active = False
        self.reason = ""
        self.table = (c_uint64 * (3 * CODE_TABLE_ENTRIES + 3))()
        self._bitmaps: dict[int, object] = {}
        try:
            self._install(page)
            self.active = True
        except UnicornInternalsError as exc:
            self.reason = str(exc)

    def _install(self, page: _NativePage) -> None:
        funcs = _local_symbols("notdirty_write.isra.0")
        anchor = addr_of(_fn("tlb_set_dirty_x86_64", None))
        after = [f for f in funcs if f > anchor]
        if not after:
            raise UnicornInternalsError("notdirty_write not found in the library's symbol table")
        fn = min(after)
        if ctypes.string_at(fn, len(NOTDIRTY_PROLOGUE)) != NOTDIRTY_PROLOGUE:
            raise UnicornInternalsError("notdirty_write is not the unicorn 2.1.4 build this was derived from")
        slots = _find_helper_slots(["tlb_protect_code_x86_64", "tlb_unprotect_code_x86_64",
                                    "tlb_reset_dirty_by_vaddr_x86_64"])
        table = ctypes.addressof(self.table)
        gate = fn + NOTDIRTY_GATE
        stub = page.add(notdirty_stub_code(table, fn + NOTDIRTY_SET_DIRTY, fn + NOTDIRTY_RETURN))
        if abs(stub - (gate + 5)) >= 1 << 31:
            raise UnicornInternalsError("no native page within reach of the library for the notdirty gate")
        protect = page.add(protect_stub_code(table, addr_of(_fn("qemu_map_ram_ptr_x86_64", c_void_p)),
                                             addr_of(_fn("tlb_reset_dirty_x86_64", None))))
        unprotect = page.add(unprotect_stub_code(table))
        # unicorn's stand-in for the bitmap: after every translation, walk the whole TLB to put the block's page
        # back on the slow path. With the bitmap, tlb_protect_code does that once, when a page gets its first
        # block, and an entry is only made fast while its page has none -- so this becomes a no-op (`ret`).
        no_op = page.add(b"\xc3")
        for name, wrapper in (("tlb_protect_code_x86_64", protect), ("tlb_unprotect_code_x86_64", unprotect),
                              ("tlb_reset_dirty_by_vaddr_x86_64", no_op)):
            original, pointer_slots = slots[name]
            for slot in pointer_slots:
                _poke_pointer(slot, original, wrapper)
        # The gate last: from here on notdirty_write consults bitmaps the redirected helpers keep.
        _patch_text(gate, b"\xe9" + struct.pack("<i", stub - (gate + 5)) + b"\x90\x90")

    def register(self, uch: int, ram_bytes: int) -> None:
        """Give unicorn instance `uch` a code bitmap for ram_addr space [0, ram_bytes). Before it first runs."""
        if not self.active:
            return
        pages = (ram_bytes + _PAGE - 1) // _PAGE
        bitmap = mmap.mmap(-1, max(_PAGE, (pages + 7) // 8 + 8))
        t = self.table
        for i in range(CODE_TABLE_ENTRIES):
            if t[3 * i] in (0, 1):                 # free, or the tombstone of an unregistered instance
                self._bitmaps[uch] = bitmap
                t[3 * i + 1] = ctypes.addressof(ctypes.c_char.from_buffer(bitmap))
                t[3 * i + 2] = pages
                t[3 * i] = uch
                return
        # Table full: that instance keeps unicorn's rule (slow stores to executable pages), still correct.

    def unregister(self, uch: int) -> None:
        t = self.table
        for i in range(CODE_TABLE_ENTRIES):
            if t[3 * i] == uch:
                t[3 * i] = 1                       # tombstone: the lookup walks past it, never matches
                t[3 * i + 1] = t[3 * i + 2] = 0
        self._bitmaps.pop(uch, None)


def _patch_text(addr: int, code: bytes) -> None:
    """Overwrite library code (made writable for the moment; still executable, for other threads)."""
    rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    _mprotect(addr, len(code), rwx)
    try:
        ctypes.memmove(addr, code, len(code))
    finally:
        _mprotect(addr, len(code), mmap.PROT_READ | mmap.PROT_EXEC)


# -- a view of one CPU inside a unicorn instance ---------------------------------------------------------------
class _Field:
    """A CpuView attribute backed by the ctypes scalar stored under `slot`: reads and writes its value."""

    def __init__(self, slot: str, mask: int | None = None, read_only: bool = False) -> None:
        self.slot, self.mask, self.read_only = slot, mask, read_only

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: CpuView | None, owner: type) -> int:
        if obj is None:
            return self  # type: ignore[return-value]
        return getattr(obj, self.slot).value

    def __set__(self, obj: CpuView, v: int) -> None:
        if self.read_only:
            raise AttributeError(f"CpuView.{self.name} is read-only")
        getattr(obj, self.slot).value = v & self.mask if self.mask is not None else v


class CpuView:
    """Typed accessors for the QEMU CPU state of one unicorn x86-64 instance."""

    def __init__(self, uc: unicorn.Uc) -> None:
        self.uc = uc
        self.uch = uc._uch if isinstance(uc._uch, int) else ctypes.cast(uc._uch, c_void_p).value
        self.cpu = c_uint64.from_address(self.uch + UC_CPU).value
        if not self.cpu:
            raise UnicornInternalsError("uc->cpu is NULL: the engine was not initialised")
        self.env = self.cpu + X86CPU_ENV
        e = self.env
        self._eip = c_uint64.from_address(e + ENV_EIP)
        self._eflags = c_uint64.from_address(e + ENV_EFLAGS)
        self._hflags = c_uint32.from_address(e + ENV_HFLAGS)
        self._hflags2 = c_uint32.from_address(e + ENV_HFLAGS2)
        self._regs = (c_uint64 * 16).from_address(e + ENV_REGS)
        self._cr = (c_uint64 * 9).from_address(e + ENV_CR)
        self._efer = c_uint64.from_address(e + ENV_EFER)
        self._old_exception = ctypes.c_int32.from_address(e + ENV_OLD_EXCEPTION)
        self._error_code = ctypes.c_int32.from_address(e + ENV_ERROR_CODE)
        self._vm_vmcb = c_uint64.from_address(e + ENV_VM_VMCB)
        self._halted = c_uint32.from_address(self.cpu + CPU_HALTED)
        self._stopped = ctypes.c_bool.from_address(self.cpu + CPU_STOPPED)
        self._interrupt_request = c_uint32.from_address(self.cpu + CPU_INTERRUPT_REQUEST)
        self._exception_index = ctypes.c_int32.from_address(self.cpu + CPU_EXCEPTION_INDEX)
        self._tsc_offset = c_uint64.from_address(e + ENV_TSC_OFFSET)
        self.q = qemu()

    # -- plain fields --------------------------------------------------------------------------------------
    # QEMU fields read and written as they are (the ctypes object named by each _Field lives in __init__).
    rip = _Field("_eip")
    hflags = _Field("_hflags")
    hflags2 = _Field("_hflags2")
    efer = _Field("_efer")
    halted = _Field("_halted")
    interrupt_request = _Field("_interrupt_request")
    old_exception = _Field("_old_exception")
    vm_vmcb = _Field("_vm_vmcb")
    tsc_offset = _Field("_tsc_offset", mask=0xFFFF_FFFF_FFFF_FFFF)
    stopped = _Field("_stopped", read_only=True)

    def reg(self, i: int) -> int:
        return self._regs[i]

    def set_reg(self, i: int, v: int) -> None:
        self._regs[i] = v & 0xFFFF_FFFF_FFFF_FFFF

    @property
    def eflags_raw(self) -> int:
        """env->eflags: IF/IOPL/VM/... are exact; the arithmetic flags and DF live elsewhere (use rflags)."""
        return self._eflags.value

    @property
    def rflags(self) -> int:
        return self.q.read_eflags(self.env)

    @rflags.setter
    def rflags(self, v: int) -> None:
        # cpu_load_eflags with every writable bit: arithmetic flags to cc_src, DF to df, the rest to eflags.
        self.q.write_eflags(self.env, v, 0xFFFF_FFFF)

    def cr(self, i: int) -> int:
        return self._cr[i]

    def set_cr_raw(self, i: int, v: int) -> None:
        self._cr[i] = v

    def u64(self, off: int) -> int:
        return c_uint64.from_address(self.env + off).value

    def set_u64(self, off: int, v: int) -> None:
        c_uint64.from_address(self.env + off).value = v & 0xFFFF_FFFF_FFFF_FFFF

    def u32(self, off: int) -> int:
        return c_uint32.from_address(self.env + off).value

    def set_u32(self, off: int, v: int) -> None:
        c_uint32.from_address(self.env + off).value = v & 0xFFFF_FFFF

    # -- segment caches --------------------------------------------------------------------------------------
    def seg(self, off: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of the SegmentCache at env offset `off`."""
        a = self.env + off
        return (c_uint32.from_address(a).value, c_uint64.from_address(a + 8).value,
                c_uint32.from_address(a + 16).value, c_uint32.from_address(a + 20).value)

    def set_seg(self, off: int, selector: int, base: int, limit: int, flags: int) -> None:
        a = self.env + off
        c_uint32.from_address(a).value = selector & 0xFFFF
        c_uint64.from_address(a + 8).value = base & 0xFFFF_FFFF_FFFF_FFFF
        c_uint32.from_address(a + 16).value = limit & 0xFFFF_FFFF
        c_uint32.from_address(a + 20).value = flags & 0xFFFF_FFFF

    def load_seg_cache(self, seg: int, selector: int, base: int, limit: int, flags: int) -> None:
        """cpu_x86_load_seg_cache (target/i386/cpu.h) for CS or SS: the cache plus the hflags derived from it."""
        self.set_seg(ENV_SEGS + seg * SEG_SIZE, selector, base, limit, flags)
        h = self.hflags
        if seg == R_CS and h & HF_LMA_MASK and flags & DESC_L_MASK:
            h |= HF_CS32_MASK | HF_SS32_MASK | HF_CS64_MASK
        elif seg == R_CS:
            h = (h & ~(HF_CS32_MASK | HF_CS64_MASK)) | ((flags >> 22 & 1) * HF_CS32_MASK)
        elif seg == R_SS:
            cpl = (flags >> DESC_DPL_SHIFT) & 3
            h = (h & ~(HF_SS32_MASK | HF_CPL_MASK)) | ((flags >> 22 & 1) * HF_SS32_MASK) | cpl
            if h & HF_CS64_MASK:
                h |= HF_SS32_MASK
        self.hflags = h

    # -- QEMU routines -----------------------------------------------------------------------------------------
    def update_hflags(self) -> None:
        self.q.update_hflags(self.env)

    def tlb_flush(self) -> None:
        self.q.tlb_flush(self.cpu)

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        a, b, c, d = c_uint32(), c_uint32(), c_uint32(), c_uint32()
        self.q.cpuid(self.env, leaf, subleaf, a, b, c, d)
        return a.value, b.value, c.value, d.value

    def invalidate_ram(self, host_ptr: int, length: int) -> None:
        """Drop translated code for host RAM [host_ptr, +length) (a mapped guest RAM range)."""
        ram = self.q.ram_addr_from_host(self.uch, host_ptr)
        if ram != 0xFFFF_FFFF_FFFF_FFFF:
            self.q.tb_invalidate_phys_range(self.uch, ram, ram + length)

    def feature(self, word: int) -> int:
        return self.u64(ENV_FEATURES + 8 * word)

    def set_feature(self, word: int, value: int) -> None:
        self.set_u64(ENV_FEATURES + 8 * word, value)


def disable_mid_instruction_exits(view: CpuView) -> None:
    """Translate without unicorn's exit check after every guest memory access.

    unicorn 2.1.4 emits, after each guest load and store, a call that leaves the CPU loop at once when an exit was
    requested (uc_emu_stop from another thread), restoring EIP to the start of the *current* instruction. If that
    happens after the store of a read-modify-write (LOCK CMPXCHG taking a spinlock, CALL, PUSH ...), the
    instruction runs again on the next slice with its first effect already done: a guest spinlock is then taken
    twice and the kernel deadlocks (found booting Linux; it is also how a #PF gets "recorded without reaching the
    hook"). `no_exit_request` (used by unicorn for ARM IT blocks) suppresses those checks at translation time;
    the exit check at the start of every translation block stays, so a stop takes effect at the next block
    boundary, where the guest state is exact. Must be set before any code is translated."""
    ctypes.c_bool.from_address(view.uch + UC_NO_EXIT_REQUEST).value = True


def verify(view: CpuView) -> None:
    """Check the offsets against the running library; raise UnicornInternalsError saying what differs."""
    problems = []

    def check(what: str, got: int, want: int) -> None:
        if got != want:
            problems.append(f"{what}: {got:#x} != {want:#x}")

    check("CPUState.env_ptr", c_uint64.from_address(view.cpu + CPU_ENV_PTR).value, view.env)
    check("CPUState.uc", c_uint64.from_address(view.cpu + CPU_UC).value, view.uch)
    check("CPUX86State.uc", c_uint64.from_address(view.env + ENV_UC).value, view.uch)
    uc = view.uc
    saved = {r: uc.reg_read(r) for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_R15, X.UC_X86_REG_RIP)}
    uc.reg_write(X.UC_X86_REG_RAX, 0x1122334455667788)
    uc.reg_write(X.UC_X86_REG_R15, 0x0F0E0D0C0B0A0908)
    uc.reg_write(X.UC_X86_REG_RIP, 0xFFFF800012345678)
    check("regs[RAX]", view.reg(0), 0x1122334455667788)
    check("regs[R15]", view.reg(15), 0x0F0E0D0C0B0A0908)
    check("eip", view.rip, 0xFFFF800012345678)
    for r, v in saved.items():
        uc.reg_write(r, v)
    check("cr[0]", view.cr(0), uc.reg_read(X.UC_X86_REG_CR0))
    check("cr[4]", view.cr(4), uc.reg_read(X.UC_X86_REG_CR4))
    check("efer", view.efer, uc.reg_read(X.UC_X86_REG_MSR, 0xC0000080))
    gdtr = uc.reg_read(X.UC_X86_REG_GDTR)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x12345000, 0x7F, 0))
    check("gdt.base", view.seg(ENV_GDT)[1], 0x12345000)
    check("gdt.limit", view.seg(ENV_GDT)[2], 0x7F)
    uc.reg_write(X.UC_X86_REG_GDTR, gdtr)
    uc.reg_write(X.UC_X86_REG_MSR, (0xC0000100, 0xABCD000))      # IA32_FS_BASE
    check("segs[FS].base", view.seg(ENV_SEGS + R_FS * SEG_SIZE)[1], 0xABCD000)
    uc.reg_write(X.UC_X86_REG_MSR, (0xC0000082, 0xFFFFFFFF81000000))   # IA32_LSTAR
    check("lstar", view.u64(ENV_LSTAR), 0xFFFFFFFF81000000)
    uc.reg_write(X.UC_X86_REG_MSR, (0xC0000102, 0x5555000))     # IA32_KERNEL_GS_BASE
    check("kernelgsbase", view.u64(ENV_KERNELGSBASE), 0x5555000)
    uc.reg_write(X.UC_X86_REG_MSR, (0x174, 0x10))               # IA32_SYSENTER_CS
    check("sysenter_cs", view.u32(ENV_SYSENTER_CS), 0x10)
    for msr in (0xC0000100, 0xC0000082, 0xC0000102, 0x174):
        uc.reg_write(X.UC_X86_REG_MSR, (msr, 0))
    if not view.hflags2 & HF2_GIF_MASK:
        problems.append("hflags2 lacks GIF (reset state unexpected)")
    if view.old_exception != -1:
        problems.append(f"old_exception is {view.old_exception} after reset, expected -1")
    stop = ctypes.c_bool.from_address(view.uch + UC_STOP_REQUEST)
    if stop.value:
        problems.append("uc->stop_request set before any emulation")
    view.q.uc_emu_stop(view.uch)            # outside emulation it only records the request
    if not stop.value:
        problems.append("uc_emu_stop did not set uc->stop_request at the expected offset")
    stop.value = False
    if ctypes.c_bool.from_address(view.uch + UC_NO_EXIT_REQUEST).value:
        problems.append("uc->no_exit_request set on a fresh engine")
    if problems:
        raise UnicornInternalsError("unicorn internals do not match the layout of unicorn "
                                    f"{PINNED_VERSION} this backend was derived from: " + "; ".join(problems))
