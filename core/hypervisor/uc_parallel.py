"""Atomic LOCK/XCHG across unicorn instances: QEMU's parallel (MTTCG) code generation turned on per instance, and
its "stop the world" fallback (EXCP_ATOMIC) handled -- for vCPUs that each run their own unicorn 2.1.4 instance
over the same guest RAM on their own host thread (software_parallel).

Intel SDM vol. 3, 8.1.2.2 ("Software Controlled Bus Locking"): a LOCK-prefixed read-modify-write, and XCHG with a
memory operand, is atomic against every other processor. QEMU translates such instructions with
`tcg_gen_atomic_*` (tcg/tcg-op.c), which emits a host atomic only when the translation block is generated for a
parallel context (CF_PARALLEL in `tcg_ctx->tb_cflags`); otherwise a plain load, operation and store. unicorn
compiles `curr_cflags()` to 0, so CF_PARALLEL is never set: two instances on two threads lose updates
(docs/software-cpu.md, "Parallel vCPUs", measured). What is installed here (once per process, only when a
parallel VM is created, so the time-shared engine's library is left exactly as it was):

* A wrapper in the GOT slot of `gen_intermediate_code_x86_64`, which `tb_gen_code` (accel/tcg/translate-all.c)
  calls through the PLT with (cpu, tb, max_insns). For an instance registered here it sets CF_PARALLEL in
  `tcg_ctx->tb_cflags` (read by tcg-op.c) and in `tb->cflags` (read by target/i386/translate.c for
  CMPXCHG8B/16B) for the translation, then clears it from `tb->cflags` again, so that the block is hashed, and
  found, under unicorn's cflags of 0. Instances not registered (every time-shared VM) translate as before.
* XCHG made atomic: the library's XCHG helpers are plain loads and stores (see XCHG_HELPER_PATCHES); they are
  rewritten in place into the host's XCHG.
* PAUSE yields the host thread (sched_yield) before QEMU's helper leaves the CPU loop, as a hardware
  virtualization's pause-loop exiting does: a vCPU spinning on a lock whose holder's thread the host has
  descheduled gives it the core instead of its time slice.
* A wrapper in the GOT slot of `cpu_loop_exit_atomic_x86_64`. `atomic_mmu_lookup` (accel/tcg/cputlb.c) calls it
  for a LOCK operand it cannot make atomic on the host -- misaligned, in MMIO, or whose read and write TLB
  entries differ -- and it longjmps out of the block with EXCP_ATOMIC, the state restored to the start of the
  instruction. unicorn's loop (softmmu/cpus.c tcg_cpu_exec) does not handle EXCP_ATOMIC and would re-enter the
  block forever; the wrapper marks the instance and sets `uc->stop_request`, so emu_start returns. The caller
  then does what QEMU's `cpu_exec_step_atomic` does (step_atomic below): every other vCPU of the VM paused
  (World), this one instruction run in a block of its own translated without CF_PARALLEL (cflags_next_tb =
  STEP_CFLAGS: one instruction, and CF_LAST_IO as a marker, so that the block hashes apart from the normal ones
  and the wrapper knows not to make it parallel), then everyone resumes.

The stubs' bytes are below with their assembly (tests/software_cpu/test_software_parallel.py assembles it and
compares). Offsets: CPUState.cflags_next_tb (+0x18) and uc_struct.tcg_ctx (+0x300) are read from the
disassembly of cpu_exec and tb_gen_code of the pinned library; `install` checks the instructions that use them.
"""
from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable
from ctypes import c_int32, c_uint64

from core.hypervisor.uc_internals import CPU_UC, ENV_UC, UC_STOP_REQUEST, UnicornInternalsError, _fn, addr_of, qemu
from core.hypervisor.uc_patch import _find_helper_slots, _imm64, _NativePage, _patch_text, _poke_pointer

_libc = ctypes.CDLL(None)

CF_COUNT_MASK = 0x7FFF
CF_LAST_IO = 0x8000
CF_PARALLEL = 0x80000
STEP_CFLAGS = CF_LAST_IO | 1          # one instruction, marked (see the module docstring)
CPU_CFLAGS_NEXT_TB = 0x18             # CPUState: uint32_t cflags_next_tb
UC_TCG_CTX = 0x300                    # struct uc_struct: TCGContext *tcg_ctx
TCG_TB_CFLAGS = 0x64                  # TCGContext: uint32_t tb_cflags
TB_CFLAGS = 0x18                      # TranslationBlock: uint32_t cflags
ENTRY_WORDS = 4                       # table entry: uch, flags (bit 0: parallel), atomic exit seen, the TSC at
                                      # the start of its latest translation (uc_codeshare's protect reads it)
MAX_INSTANCES = 256

# tb_gen_code of unicorn 2.1.4 (x86-64), the instructions this module relies on: `mov 0x81a8(%rdi),%rax;
# ...; mov 0x300(%rax),%rbp` (cpu->uc->tcg_ctx) and `mov %edi,0x18(%rbx); ...; mov %edi,0x64(%rbp)` (tb->cflags,
# tcg_ctx->tb_cflags).
_TB_GEN_CODE_UC = bytes.fromhex("488b87a8810000")          # mov 0x81a8(%rdi),%rax   at +0x14
_TB_GEN_CODE_TCG_CTX = bytes.fromhex("488ba800030000")     # mov 0x300(%rax),%rbp    at +0x20
_TB_GEN_CODE_CFLAGS = bytes.fromhex("897b18")              # mov %edi,0x18(%rbx)     at +0xF5
_TB_GEN_CODE_TB_CFLAGS = bytes.fromhex("897d64")           # mov %edi,0x64(%rbp)     at +0x100
# cpu_exec: `mov 0x18(%rbx),%r9d; cmp $-1,%r9d` (cflags_next_tb)
_CPU_EXEC_NEXT_TB = bytes.fromhex("448b4b184183f9ff")

# XCHG with a memory operand (implicitly locked, SDM vol. 3, 8.1.2.1): unicorn 2.1.4's build of QEMU's
# helper_atomic_xchg* (accel/tcg/atomic_template.h) came out as a plain load and store, unlike its fetch_add and
# cmpxchg helpers (lock xadd, lock cmpxchg): measured, an xchg spinlock over two instances deadlocked within seconds
# (two vCPUs both "took" it, one release lost). Each helper is atomic_mmu_lookup, then those two moves; they are
# rewritten in place, same length, into the host's xchg (implicitly locked) and a move of the old value to where
# the rest of the helper expects it. (name, offset, original bytes, replacement):
XCHG_HELPER_PATCHES = (
    ("helper_atomic_xchgb_x86_64", 0xF, "0fb6108818", "86180fb6d3"),          # movzbl (%rax),%edx; mov %bl,(%rax)
    ("helper_atomic_xchgw_le_x86_64", 0xF, "0fb710668918", "6687180fb7d3"),   # movzwl (%rax),%edx; mov %bx,(%rax)
    ("helper_atomic_xchgl_le_x86_64", 0xF, "448b008918", "87184189d8"),       # mov (%rax),%r8d; mov %ebx,(%rax)
    ("helper_atomic_xchgq_le_x86_64", 0x10, "4c8b00488918", "4887184989d8"),  # mov (%rax),%r8; mov %rbx,(%rax)
)
# What precedes the patched bytes in each helper: push %rbx; mov %edx,%ebx (%rdx,%rbx for q); mov %ecx,%edx;
# mov 0x8(%rsp),%rcx; call atomic_mmu_lookup (rel32, checked as a call only).
_XCHG_PROLOGUES = {0xF: "5389d389ca488b4c2408e8", 0x10: "534889d389ca488b4c2408e8"}

_LOOKUP = "488b87{uc}48b9{table}4c8b014d85c0{jz}4939c074064883c120ebed"


def gen_wrapper_code(table: int, original: int) -> bytes:
    """void wrapper(CPUState *cpu, TranslationBlock *tb, int max_insns):
         mov rax, [rdi + CPU_UC]; movabs rcx, table
       1: mov r8, [rcx]; test r8, r8; jz 3f; cmp r8, rax; je 2f; add rcx, 32; jmp 1b   ; find the instance
       2: test byte ptr [rcx + 8], 1; jz 3f                   ; not translating in parallel now
         mov r8d, [rsi + 0x18]; and r8d, 0xffff; cmp r8d, STEP_CFLAGS; je 3f   ; the atomic step's block
         mov rax, [rax + UC_TCG_CTX]; or dword ptr [rax + 0x64], CF_PARALLEL   ; tcg_ctx->tb_cflags
         or dword ptr [rsi + 0x18], CF_PARALLEL
         mov r9, rdx; rdtsc; shl rdx, 32; or rax, rdx; mov [rcx + 24], rax; mov rdx, r9   ; when it started
         push rsi; movabs rax, original; call rax
         pop rsi; and dword ptr [rsi + 0x18], ~CF_PARALLEL; ret  ; hashed under unicorn's cflags again
       3: movabs rax, original; jmp rax"""
    return (bytes.fromhex(_LOOKUP.format(uc=struct.pack("<I", CPU_UC).hex(), table=_imm64(table).hex(), jz="7463"))
            + bytes.fromhex("f64108017452448b46184181e0ffff00004181f8") + struct.pack("<I", STEP_CFLAGS)
            + bytes.fromhex("743e488b80") + struct.pack("<I", UC_TCG_CTX)
            + bytes.fromhex("814864") + struct.pack("<I", CF_PARALLEL) + bytes.fromhex("814e18")
            + struct.pack("<I", CF_PARALLEL) + bytes.fromhex("4989d10f3148c1e2204809d0488941184c89ca")
            + b"\x56\x48\xb8" + _imm64(original) + bytes.fromhex("ffd05e816618")
            + struct.pack("<I", ~CF_PARALLEL & 0xFFFF_FFFF) + b"\xc3"
            + b"\x48\xb8" + _imm64(original) + b"\xff\xe0")


def atomic_exit_wrapper_code(table: int, original: int) -> bytes:
    """void wrapper(CPUState *cpu, uintptr_t retaddr)   -- noreturn, as the original:
         mov rax, [rdi + CPU_UC]; movabs rcx, table
       1: mov r8, [rcx]; test r8, r8; jz 3f; cmp r8, rax; je 2f; add rcx, 32; jmp 1b
       2: mov qword ptr [rcx + 16], 1                        ; this instance needs the atomic step
         mov byte ptr [rax + UC_STOP_REQUEST], 1             ; so unicorn's loop returns instead of retrying
       3: movabs rax, original; jmp rax"""
    return (bytes.fromhex(_LOOKUP.format(uc=struct.pack("<I", CPU_UC).hex(), table=_imm64(table).hex(), jz="741a"))
            + bytes.fromhex("48c7411001000000c680") + struct.pack("<I", UC_STOP_REQUEST) + b"\x01"
            + b"\x48\xb8" + _imm64(original) + b"\xff\xe0")


def pause_wrapper_code(table: int, sched_yield: int, original: int) -> bytes:
    """void wrapper(CPUX86State *env, int next_eip_addend) -- PAUSE (a spin-wait loop):
         mov rax, [rdi + ENV_UC]; movabs rcx, table
       1: mov r8, [rcx]; test r8, r8; jz 3f; cmp r8, rax; je 2f; add rcx, 32; jmp 1b
       2: push rdi; push rsi; sub rsp, 8; movabs rax, sched_yield; call rax; add rsp, 8; pop rsi; pop rdi
       3: movabs rax, original; jmp rax                      ; QEMU's helper_pause: leave the CPU loop"""
    return (bytes.fromhex(_LOOKUP.format(uc=struct.pack("<I", ENV_UC).hex(), table=_imm64(table).hex(), jz="7423"))
            + bytes.fromhex("57564883ec0848b8") + _imm64(sched_yield) + bytes.fromhex("ffd04883c4085e5f48b8")
            + _imm64(original) + b"\xff\xe0")


class ParallelTranslation:
    """The two wrappers (installed once per process) and the table of instances they apply to."""

    def __init__(self) -> None:
        self.table = (c_uint64 * (ENTRY_WORDS * MAX_INSTANCES + ENTRY_WORDS))()
        self._lock = threading.Lock()
        q = qemu()
        tb_gen_code = addr_of(_fn("tb_gen_code_x86_64", None))
        cpu_exec = addr_of(_fn("cpu_exec_x86_64", None))
        for where, want in ((tb_gen_code + 0x14, _TB_GEN_CODE_UC), (tb_gen_code + 0x20, _TB_GEN_CODE_TCG_CTX),
                            (tb_gen_code + 0xF5, _TB_GEN_CODE_CFLAGS), (tb_gen_code + 0x100, _TB_GEN_CODE_TB_CFLAGS),
                            (cpu_exec + 0x197, _CPU_EXEC_NEXT_TB)):
            if ctypes.string_at(where, len(want)) != want:
                raise UnicornInternalsError("tb_gen_code/cpu_exec are not the unicorn 2.1.4 build the parallel "
                                            "translation was derived from")
        xchg = []
        for name, off, old, new in XCHG_HELPER_PATCHES:
            fn = addr_of(_fn(name, None))
            head = bytes.fromhex(_XCHG_PROLOGUES[off])
            if ctypes.string_at(fn, len(head)) != head or ctypes.string_at(fn + off, len(old) // 2) not in (
                    bytes.fromhex(old), bytes.fromhex(new)):
                raise UnicornInternalsError(f"{name} is not the unicorn 2.1.4 build the XCHG fix was derived from")
            xchg.append((fn + off, bytes.fromhex(new)))
        slots = _find_helper_slots(["gen_intermediate_code_x86_64", "cpu_loop_exit_atomic_x86_64",
                                    "helper_pause_x86_64"])
        self.page = _NativePage(near=addr_of(q.do_interrupt))
        table = ctypes.addressof(self.table)
        gen_orig, gen_slots = slots["gen_intermediate_code_x86_64"]
        atomic_orig, atomic_slots = slots["cpu_loop_exit_atomic_x86_64"]
        pause_orig, pause_slots = slots["helper_pause_x86_64"]
        gen = self.page.add(gen_wrapper_code(table, gen_orig))
        atomic = self.page.add(atomic_exit_wrapper_code(table, atomic_orig))
        pause = self.page.add(pause_wrapper_code(table, addr_of(_libc.sched_yield), pause_orig))
        self.page.seal()
        for slot in gen_slots:
            _poke_pointer(slot, gen_orig, gen)
        for slot in atomic_slots:
            _poke_pointer(slot, atomic_orig, atomic)
        for slot in pause_slots:
            _poke_pointer(slot, pause_orig, pause)
        for where, code in xchg:
            if ctypes.string_at(where, len(code)) != code:
                _patch_text(where, code)

    def _entry(self, uch: int) -> int | None:
        t = self.table
        for i in range(MAX_INSTANCES):
            if t[ENTRY_WORDS * i] == uch:
                return ENTRY_WORDS * i
        return None

    def register(self, uch: int) -> None:
        """Translate `uch`'s blocks for a parallel context from now on (before it runs: blocks translated before
        stay as they were)."""
        with self._lock:
            t = self.table
            e = self._entry(uch)
            if e is None:
                for i in range(MAX_INSTANCES):
                    if t[ENTRY_WORDS * i] in (0, 1):          # free, or the tombstone of an unregistered one
                        e = ENTRY_WORDS * i
                        break
                else:
                    raise UnicornInternalsError(f"more than {MAX_INSTANCES} parallel vCPUs in one process")
                t[e + 1] = t[e + 2] = 0
                t[e] = uch
            t[e + 1] = 1

    def unregister(self, uch: int) -> None:
        with self._lock:
            e = self._entry(uch)
            if e is not None:
                t = self.table
                t[e + 1] = t[e + 2] = 0
                t[e] = 1                                       # tombstone: the lookup walks past it

    def translation_start_cell(self, uch: int) -> int:
        """The address of the word holding the TSC at which `uch`'s latest translation started."""
        e = self._entry(uch)
        if e is None:
            raise UnicornInternalsError("instance not registered for parallel translation")
        return ctypes.addressof(self.table) + 8 * (e + 3)

    def take_atomic_exit(self, uch: int) -> bool:
        """Whether `uch`'s last emu_start ended at a LOCK operand that needs the atomic step (and forget it)."""
        e = self._entry(uch)
        if e is None or not self.table[e + 2]:
            return False
        self.table[e + 2] = 0
        return True


_parallel: ParallelTranslation | None = None
_parallel_lock = threading.Lock()


def parallel_translation() -> ParallelTranslation:
    """Install (once) and return the parallel translation wrappers."""
    global _parallel
    with _parallel_lock:
        if _parallel is None:
            _parallel = ParallelTranslation()
        return _parallel


class World:
    """QEMU's start_exclusive/end_exclusive (cpus-common.c) for the vCPU threads of one VM: a vCPU counts itself
    running around each emu_start (enter/leave); `exclusive` stops every running one (their `stop` callables,
    uc_emu_stop on their instance, repeated until they are out: unicorn clears a stop that lands before its
    emu_start begins) and holds new ones at `enter` until it ends."""

    RESTOP_S = 0.0005

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: set = set()
        self._owner: object | None = None
        self.stats_exclusive = 0

    def enter(self, member: object) -> None:
        with self._cond:
            while self._owner is not None and self._owner is not member:
                self._cond.wait()
            self._running.add(member)

    def leave(self, member: object) -> None:
        with self._cond:
            self._running.discard(member)
            self._cond.notify_all()

    def start_exclusive(self, member: object, stops: Callable[[], list[Callable[[], None]]]) -> None:
        """Wait until no other member is inside emu_start and hold them out. `member` must not be inside."""
        with self._cond:
            while self._owner is not None:
                self._cond.wait()
            self._owner = member
            self.stats_exclusive += 1
            while self._running - {member}:
                for stop in stops():
                    stop()
                self._cond.wait(self.RESTOP_S)

    def end_exclusive(self) -> None:
        with self._cond:
            self._owner = None
            self._cond.notify_all()


def step_atomic(cpu: int, run: Callable[[], int], stop: Callable[[], None]) -> int:
    """With the world stopped by the caller: run the instruction at the current PC in a block of its own
    translated without CF_PARALLEL (QEMU's cpu_exec_step_atomic). `run` starts emulation at the current PC
    (emu_start) and `stop` ends it (uc_emu_stop); the block after the step may run too before the stop lands,
    which is harmless while the world is stopped. Returns run()'s result."""
    next_tb = c_int32.from_address(cpu + CPU_CFLAGS_NEXT_TB)
    next_tb.value = STEP_CFLAGS
    done = threading.Event()

    def stopper() -> None:
        delay = 0.0001
        while not done.wait(delay):
            if next_tb.value == -1:                 # the step's block was looked up: now end the slice
                stop()
            delay = min(delay * 2, 0.002)

    t = threading.Thread(target=stopper, name="atomic-step", daemon=True)
    t.start()
    try:
        return run()
    finally:
        done.set()
        t.join()
        if next_tb.value != -1:                     # the slice ended before it got there (an exit request)
            next_tb.value = -1
