"""Direct access to the QEMU CPU state inside unicorn 2.1.4, for what its public API leaves out.

unicorn is QEMU's TCG as a library. Its API gives registers, memory maps and a few hooks, but not the pieces a
full PC needs: delivery of exceptions and external interrupts through the guest's IVT/IDT (Intel SDM vol. 3,
ch. 6), the hidden segment-descriptor caches (SDM vol. 3, 3.4.3), RDMSR/WRMSR of MSRs it does not know
(IA32_APIC_BASE, the x2APIC range, IA32_TSC_DEADLINE), SYSCALL/SYSENTER with their architectural effect
(SDM vol. 2B, "SYSCALL"), and code-cache invalidation by guest-physical address. This module is the layout of
QEMU's state inside the library and the routines it exports:

* Struct offsets of `struct uc_struct`, `CPUState`, `X86CPU` and `CPUX86State`. They were derived from the
  exact source of the pinned version (the PyPI sdist of unicorn 2.1.4: include/uc_priv.h,
  qemu/include/hw/core/cpu.h, qemu/target/i386/cpu.h) by compiling a program that prints `offsetof(...)` with the
  library's own build flags (cmake -DUNICORN_ARCH=x86, then the compile line of target/i386/seg_helper.c).
  `verify()` checks them against the running library (pointer identities and register round trips through the
  public API) and refuses to run with a clear message if they do not hold.
* QEMU's own routines that the library exports (`x86_cpu_do_interrupt_x86_64`, `x86_update_hflags_x86_64`,
  `cpu_x86_update_cr0_x86_64`, `tlb_flush_x86_64`, `tb_invalidate_phys_range_x86_64`, ...), called via ctypes.
* The CPU state of one instance as typed accessors (CpuView), for the vCPU's state load/save and the helpers.

What the backend installs in the library's code lives elsewhere: uc_native (exception delivery hooks, helper
wrappers, RDTSC), uc_codetrack (QEMU's write protection of translated code), uc_patch (how the library is patched).
"""
from __future__ import annotations

import ctypes
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
CPU_ICOUNT_DECR = 35392        # X86CPU: neg.icount_decr (CPUNegativeOffsetState, just before env)
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
    check("CPUState.icount_decr_ptr", c_uint64.from_address(view.cpu + CPU_ICOUNT_DECR_PTR).value,
          view.cpu + CPU_ICOUNT_DECR)
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
