"""The native code the software CPU installs in libunicorn once per process: exception delivery hooks, the
wrappers interposed in front of QEMU's x86 helpers, and RDTSC.

* Three pieces of native code (bytes below with their assembly), placed in an executable page (uc_patch):
  - the UC_HOOK_INTR callback: `x86_cpu_do_interrupt(uc->cpu)`, i.e. QEMU's own delivery of the pending
    exception or INT n through the IVT/IDT (Intel SDM vol. 3, ch. 6: gates, privilege changes, TSS stacks, IST,
    error codes) -- in native code because a fault during delivery longjmps back into the CPU loop, which must
    never cross Python frames;
  - the UC_HOOK_INSN_INVALID callback: the same for #UD (unicorn reports #UD there instead of UC_HOOK_INTR);
  - a wrapper placed in front of the TCG helpers for RDMSR, WRMSR, CPUID, SYSCALL and SYSENTER: it calls a Python
    callback and, by its return value, returns, runs the original helper, or raises an exception in the guest
    (`raise_exception_err_ra`, with the return address into the translated block so the guest state is exact).
  SYSCALL and SYSENTER do their common case in native code first (uc_sysentry) and reach this wrapper only
  for the rest. The wrappers are installed by rewriting the helper's two function pointers in the library: its
  GOT slot (used by the translator to emit the call) and its entry in QEMU's `all_helpers` table (which the
  translator looks up by that same pointer). This happens once per process, before any unicorn instance exists.
* RDTSC as a native function (the host's invariant TSC, read without a system call).
* QEMU's cpu_interrupt as a native function, so that a device thread can raise an interrupt request in a running
  vCPU atomically (software_vcpu's wake).
* The port I/O hooks: UC_HOOK_INSN callbacks for IN and OUT that serve a device's data lane (core/pio_lanes.py)
  from its buffer and hand every other access to the accelerator's Python callback.
* The write protection of translated code (uc_codetrack), the inline exit check at the start of every
  translated block (uc_tbstart), page-table reads straight from guest RAM (uc_physread), the native EOI
  (uc_fast_eoi) and the native timer tick (uc_native_tick: its acknowledge stub, and a stub in front of the
  WRMSR wrapper), in the same page.
* A second-level cache of translated blocks in front of QEMU's hash table (uc_tb_cache), in the GOT slot of
  tb_htable_lookup.
* A floor of 1024 entries under QEMU's resizing of the soft TLB (uc_tlb_floor), rewritten in place.
* The slow path's memory-region lookup answered from a table for guest RAM (uc_region_lookup), through each
  registered instance's `uc->memory_mapping` pointer.
* Global pages kept in the soft TLB across CR3 writes (uc_global_tlb).
"""
from __future__ import annotations

import ctypes
import logging
import struct
import threading
from collections.abc import Callable
from ctypes import c_int, c_uint64, c_void_p

from core.hypervisor import uc_sysentry
from core.hypervisor.uc_codetrack import CodeDirtyTracking
from core.hypervisor.uc_fast_eoi import FastEoiStubs
from core.hypervisor.uc_global_tlb import GlobalPageTlb
from core.hypervisor.uc_global_tlb import wanted as global_tlb_wanted
from core.hypervisor.uc_internals import UC_CPU, UnicornInternalsError, addr_of, qemu
from core.hypervisor.uc_native_tick import NativeTickStubs, wrmsr_stub_code
from core.hypervisor.uc_patch import _find_helper_slots, _imm64, _NativePage, _poke_pointer
from core.hypervisor.uc_physread import PageTableReads
from core.hypervisor.uc_region_lookup import RegionLookup
from core.hypervisor.uc_tb_cache import BlockCache
from core.hypervisor.uc_tb_cache import wanted as block_cache_wanted
from core.hypervisor.uc_tbstart import InlineExitCheck
from core.hypervisor.uc_tlb_floor import install_tlb_floor, wanted_floor
from core.hypervisor.vcpu_signal_timer import HANDLER_STUB as TIMER_SIGNAL_HANDLER
from core.pio_lanes import LANES, WRITE_KEY

log = logging.getLogger(__name__)


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


def pio_in_hook_code() -> bytes:
    """uint32_t hook(uc_engine *uc, uint32_t port, int size, struct table *t)   -- layout in core/pio_lanes.py
         lea r8, [rcx+16]; mov r9d, LANES
       next: cmp esi, [r8]; je found; add r8, 24; dec r9d; jnz next
         jmp [rcx]                                  ; no read lane for this port: t->fallback_in(same args)
       found: mov eax, [r8+4]; lea r10d, [rax+rdx]; cmp r10d, [r8+8]; jae last   ; pos + size < end?
         mov [r8+4], r10d; add rax, [r8+16]        ; pos += size; rax = buffer + old pos
         cmp edx, 2; je w; cmp edx, 4; je d; movzx eax, byte [rax]; ret
       w: movzx eax, word [rax]; ret
       d: mov eax, [rax]; ret
       last: jmp [rcx]                              ; the block's last access is the device's"""
    return bytes.fromhex("4c8d4110" "41b9" + struct.pack("<I", LANES).hex() + "413b30740b4983c01841ffc975f2ff21"
                         "418b4004448d1410453b5008731d45895004490340 10".replace(" ", "")
                         + "83fa02740983fa0474080fb600c30fb700c38b00c3ff21")


def pio_out_hook_code() -> bytes:
    """void hook(uc_engine *uc, uint32_t port, int size, uint32_t value, struct table *t)
         mov r11d, esi; or r11d, WRITE_KEY; lea r9, [r8+16]; mov r10d, LANES
       next: cmp r11d, [r9]; je found; add r9, 24; dec r10d; jnz next
         jmp [r8+8]                                 ; no write lane: t->fallback_out(same args)
       found: mov eax, [r9+4]; lea r11d, [rax+rdx]; cmp r11d, [r9+8]; jae last
         mov [r9+4], r11d; add rax, [r9+16]
         cmp edx, 2; je w; cmp edx, 4; je d; mov [rax], cl; ret
       w: mov [rax], cx; ret
       d: mov [rax], ecx; ret
       last: jmp [r8+8]"""
    return bytes.fromhex("4189f34181cb" + struct.pack("<I", WRITE_KEY).hex() + "4d8d4810" "41ba"
                         + struct.pack("<I", LANES).hex() + "453b19740d4983c11841ffca75f241ff6008"
                         "418b4104448d1c10453b5908731c45895904490341 10".replace(" ", "")
                         + "83fa02740883fa0474078808c3668908c38908c341ff6008")


RDTSC_CODE = b"\x0f\x31\x48\xc1\xe2\x20\x48\x09\xd0\xc3"   # rdtsc; shl rdx, 32; or rax, rdx; ret

# void cpu_interrupt_from_any_thread(uint32_t *interrupt_request, uint32_t bits, int16_t *icount_decr_high):
#   lock or [rdi], esi; mov word [rdx], -1; ret
# QEMU's cpu_interrupt (the request bit, then the exit request that ends the running block chain at its next
# block), with the bit set atomically: the vCPU thread clears other bits of the same word as it runs.
CPU_INTERRUPT_CODE = b"\xf0\x09\x37" + b"\x66\xc7\x02\xff\xff" + b"\xc3"


def raise_code(vector: int, error_code: int = 0) -> int:
    """The value a helper callback returns to raise `vector` (with `error_code`) in the guest."""
    return (error_code & 0xFFFF_FFFF) << 32 | 0x100 | vector


HELPER_DONE = 0
HELPER_ORIGINAL = 1
HelperCallback = Callable[[int, int], int]
_HELPER_CFUNC = ctypes.CFUNCTYPE(c_uint64, c_void_p, c_int)
INTERPOSED_HELPERS = ("rdmsr", "wrmsr", "cpuid", "syscall", "sysenter")
NATIVE_ENTRIES = {"syscall": uc_sysentry.syscall_code, "sysenter": uc_sysentry.sysenter_code}


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
        self.cpu_interrupt = ctypes.CFUNCTYPE(None, c_void_p, ctypes.c_uint32, c_void_p)(
            self.page.add(CPU_INTERRUPT_CODE))
        self.pio_in_hook = self.page.add(pio_in_hook_code())
        self.pio_out_hook = self.page.add(pio_out_hook_code())
        # env address -> {helper name: python callback}
        self.handlers: dict[int, dict[str, HelperCallback]] = {}
        self._cfuncs = []
        self.originals: dict[str, int] = {}
        self.native_entries: list[str] = []
        self.native_tick = NativeTickStubs(self.page)
        slots = _find_helper_slots([f"helper_{h}_x86_64" for h in INTERPOSED_HELPERS])
        raise_fn = addr_of(q.raise_exception_err_ra)
        for name in INTERPOSED_HELPERS:
            original, pointer_slots = slots[f"helper_{name}_x86_64"]
            self.originals[name] = original
            cfunc = _HELPER_CFUNC(self._make_dispatch(name))
            self._cfuncs.append(cfunc)
            wrapper = self.page.add(helper_wrapper_code(addr_of(cfunc), raise_fn, original))
            if name in NATIVE_ENTRIES and uc_sysentry.layout_ok():
                # the common case natively, every other one through the Python wrapper (uc_sysentry)
                wrapper = self.page.add(NATIVE_ENTRIES[name](addr_of(q.read_eflags), addr_of(q.write_eflags),
                                                             addr_of(q.update_hflags), wrapper))
                self.native_entries.append(name)
            elif name == "wrmsr":
                # IA32_TSC_DEADLINE of a vCPU with a native tick natively, every other one as before (uc_native_tick)
                wrapper = self.page.add(wrmsr_stub_code(ctypes.addressof(self.native_tick.table), wrapper))
                self.native_tick.wrmsr_stub = wrapper
            for slot in pointer_slots:
                _poke_pointer(slot, original, wrapper)
        self.code_tracking = CodeDirtyTracking(self.page)
        self.exit_check = InlineExitCheck(self.page)
        self.page_table_reads = PageTableReads(self.page)
        self.region_lookup = RegionLookup(self.page)
        self.fast_eoi = FastEoiStubs(self.page)
        self.timer_signal_handler = self.page.add(TIMER_SIGNAL_HANDLER)     # vcpu_signal_timer
        self.block_cache: BlockCache | None = None                          # uc_tb_cache
        if block_cache_wanted():
            try:
                self.block_cache = BlockCache(self.page)
            except UnicornInternalsError as exc:
                log.warning("software CPU: QEMU's block lookup stays as it is: %s", exc)
        try:
            install_tlb_floor(wanted_floor())
        except UnicornInternalsError as exc:
            log.warning("software CPU: the soft TLB keeps QEMU's 64-entry floor: %s", exc)
        self.global_tlb: GlobalPageTlb | None = None                        # uc_global_tlb
        if global_tlb_wanted():
            try:
                self.global_tlb = GlobalPageTlb(self.page)
            except UnicornInternalsError as exc:
                log.warning("software CPU: a CR3 write flushes global pages too, as in QEMU: %s", exc)
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

