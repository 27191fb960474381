"""A Linux guest's timer tick taken natively on the software CPU: the interrupt acknowledge of the local APIC
timer's vector and the re-arm of IA32_TSC_DEADLINE, without the interpreter.

A busy Linux vCPU ticks 250 times a second (Intel SDM vol. 3, 10.5.4.1 "TSC-Deadline Mode"): the timer expires,
the CPU acknowledges its vector (10.8.4 "Interrupt Acceptance for Fixed Interrupts"), the handler writes the next
deadline with WRMSR and ends with an EOI (10.8.5). The EOI is native already (uc_fast_eoi) and the expiry reaches
the vCPU's own thread as a signal (vcpu_signal_timer). The acknowledge and the WRMSR were Python: the interpreter
lock, the device lock, the model -- and with parallel vCPUs both vCPUs' ticks, which the guest aligns, contend
for them at the same moment (docs/software-cpu.md, session 11).

For a vCPU alone on its unicorn instance, the common case of both is native, on the model's terms:

* The model (core/devices/lapic.py, lapic_catchup.py) *arms* the vCPU's word whenever it leaves its lock, for
  the state it leaves: TICK (on the vCPU's own thread) when a tick needs nothing of it -- the timer in
  TSC-deadline mode and unmasked, its vector above the task priority, nothing requested (IRR empty), at most one
  edge-triggered vector in service, no ExtINT source. The word is the fast EOI's word (uc_fast_eoi), with more
  bits:

      bit 63 FAST      an EOI may be counted natively (uc_fast_eoi's stub: E += 1)
      bit 62 TICK      the timer's expiry may be acknowledged natively
      bit 61 BASE      one vector was in service when the word was armed
      bit 60 DEADLINE  IA32_TSC_DEADLINE may be written natively
      bit 59 NEWDL     the deadline was written natively since the last tick taken natively
      bit 58 PEND      the vector in bits 48-55 is the one requested, deliverable once nothing is in service
      bit 57 TAKEN     that vector was acknowledged natively
      bits 32-47 T     ticks acknowledged natively;  bits 0-31 E   EOIs counted natively

* A device's interrupt is the same when it is the only one requested: the model, leaving its lock on whatever
  thread accepted it (a device's, another vCPU's), arms PEND with its vector if it is deliverable,
  edge-triggered, and at most one edge-triggered vector is in service (TICK and a new deadline are armed only on
  the vCPU's own thread, below).
* The interrupt acknowledge (the read of software_memory's INTA page) is a native MMIO read callback,
  INTA_STUB. Unless code posted to this vCPU by another awaits a serializing invalidation (uc_codeshare's
  attention word): with PEND set and nothing in service (E == T + BASE) it turns PEND into TAKEN with a locked
  compare-and-exchange and returns that vector; with TICK set, nothing in service and the deadline passed on
  the host's TSC, it adds a tick the same way, clears NEWDL and the expiry, and returns the timer's vector.
  Everything else tail-calls the Python callback, as before.
* WRMSR of IA32_TSC_DEADLINE goes through WRMSR_STUB first (in front of the Python wrapper of helper_wrmsr): it
  finds the vCPU's block by its CPUX86State in a process-wide table, and with DEADLINE set it publishes the
  value (the guest's deadline and its host-TSC expiry), sets NEWDL with a locked compare-and-exchange, and sets
  the vCPU's POSIX timer relative to now with timer_settime(2) -- a host TSC interval converted with a
  multiplier rounded up, so the signal never comes before the deadline. Everything else (another MSR, the
  word not armed, a deadline more than 2**47 TSC ticks away, a failed system call) reaches the Python wrapper.
* Any use of the model takes the word first (an atomic exchange with 0, which disarms everything) and applies
  what it counted: T ticks mean the timer's vector was accepted and acknowledged T times, and is in service
  unless E reached T + BASE; TAKEN means the PEND vector left the IRR and is in service unless E passed BASE;
  NEWDL means the deadline is the one last written, otherwise a tick means it fired.
  A stub that loses the race to that exchange sees its bit clear and takes the Python path, so each tick,
  EOI and write is applied exactly once.
* TICK, and the block's expiry and vector with it, are armed only on the vCPU's own thread -- the only thread
  that runs the stubs -- so nothing else writes the expiry while a stub may read it. Any thread may arm the
  rest: the word is 0 from its lock's entry to its exit, and every stub leaves a 0 word to Python.
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections.abc import Callable
from ctypes import c_uint64

from core.hypervisor.uc_internals import ENV_TSC_OFFSET
from core.hypervisor.uc_patch import _imm64, _NativePage
from core.hypervisor.vcpu_signal_timer import SYS_TIMER_SETTIME

FAST = 1 << 63
TICK = 1 << 62
BASE = 1 << 61
DEADLINE = 1 << 60
NEWDL = 1 << 59
PEND = 1 << 58
TAKEN = 1 << 57
TICKS_SHIFT = 32
TICKS_MASK = 0xFFFF
PEND_SHIFT = 48
EOIS_MASK = 0xFFFF_FFFF

# The per-vCPU block (u64 slots), read by both stubs
WORD, EXPIRY, GUEST, VECTOR, PY_INTA, ATTENTION, ZERO, TIMER_ID, MULT = range(9)
SPEC = 9                     # struct itimerspec {it_interval, it_value}, slots 9-12
WRITES = 13                  # deadlines written natively (statistics)
BLOCK_SLOTS = 14
TABLE_SLOTS = 64             # vCPUs with a native tick in one process (entries are reused)
MAX_DELTA = (1 << 47) - 1    # a deadline further away than this goes through Python
ENV_VAR = "VIREO_NATIVE_TICK"   # 0: every tick through Python (for comparison)
LATE = 1.0005                # the signal comes at most 0.05 % late, never early (tsc_hz is measured)


# uint64_t read(uc_engine *uc, uint64_t offset, unsigned size, uint64_t *block) -- unicorn's MMIO read callback
#     mov r11, rdx                                        ; size, for the Python path
#     mov r8, [rcx+ATTENTION]; cmp qword [r8], 0; jne slow   ; code posted by another vCPU: Python serializes
#     mov r10, [rcx+WORD]; mov rax, [r10]
#   retry: bt rax, 58; jc pend                            ; PEND: the one requested vector, judged by the model
#     bt rax, 62; jnc slow                                ; TICK
#     bt rax, 57; jc slow                                 ; a PEND vector was taken: the model looks first
#     mov r9, [rcx+EXPIRY]; test r9, r9; jz slow
#     mov r8, rax; rdtsc; shl rdx, 32; or rax, rdx; cmp rax, r9; mov rax, r8; jb slow   ; not yet due
#     mov r9, rax; shr r9, 32; and r9d, 0xFFFF; bt rax, 61; adc r9d, 0   ; T + BASE
#     cmp eax, r9d; jne slow                              ; something in service (E != T + BASE)
#     cmp r9d, 0xFFFF; jae slow                           ; T full: let the model look
#     mov r9, rax; btr r9, 59; mov r8, 1 << 32; add r9, r8   ; T += 1, NEWDL cleared
#     lock cmpxchg [r10], r9; jne retry
#     mov qword [rcx+EXPIRY], 0; mov rax, [rcx+VECTOR]; ret
#   pend: mov r9, rax; shr r9, 32; and r9d, 0xFFFF; bt rax, 61; adc r9d, 0; cmp eax, r9d; jne slow
#     mov r9, rax; btr r9, 58; bts r9, 57; lock cmpxchg [r10], r9; jne retry   ; PEND -> TAKEN
#     shr rax, 48; movzx eax, al; ret                     ; the vector
#   slow: mov rdx, r11; jmp [rcx+PY_INTA]
INTA_STUB = bytes.fromhex(
    "4989d3" "4c8b4128" "49833800" "0f85da000000" "4c8b11" "498b02" "480fbae03a" "0f828d000000" "480fbae03e"
    "0f83be000000" "480fbae039" "0f82b3000000" "4c8b4908" "4d85c9" "0f84a6000000" "4989c0" "0f31" "48c1e220"
    "4809d0" "4c39c8" "4c89c0" "0f828e000000" "4989c1" "49c1e920" "4181e1ffff0000" "480fbae03d" "4183d100"
    "4439c8" "7572" "4181f9ffff0000" "7369" "4989c1" "490fbaf13b" "49b80000000001000000" "4d01c1" "f04d0fb10a"
    "0f8575ffffff" "48c7410800000000" "488b4118" "c3" "4989c1" "49c1e920" "4181e1ffff0000" "480fbae03d"
    "4183d100" "4439c8" "7520" "4989c1" "490fbaf13a" "490fbae939" "f04d0fb10a" "0f8534ffffff" "48c1e830"
    "0fb6c0" "c3" "4c89da" "ff6120")


def wrmsr_stub_code(table: int, python_wrapper: int) -> bytes:
    """void wrmsr(CPUX86State *env) in front of the Python wrapper of helper_wrmsr (its table: {env, block}
    pairs, 0-terminated):
         cmp dword [rdi+8], 0x6E0; jne py                    ; ECX: IA32_TSC_DEADLINE only
         movabs r8, table
       find: mov rax, [r8]; test rax, rax; jz py; cmp rax, rdi; je found; add r8, 16; jmp find
       found: mov r8, [r8+8]                                 ; the vCPU's block
         mov ecx, [rdi]; mov edx, [rdi+16]; shl rdx, 32; or rcx, rdx        ; EDX:EAX
         xor r9d, r9d; test rcx, rcx; jz publish             ; 0 disarms
         mov r9, rcx; sub r9, [rdi+ENV_TSC_OFFSET]; jnz publish; inc r9      ; host TSC of the deadline (not 0)
       publish: mov [r8+GUEST], rcx; mov [r8+EXPIRY], r9
         mov r10, [r8+WORD]; mov rax, [r10]
       retry: bt rax, 60; jnc py                             ; DEADLINE
         mov r11, rax; bts r11, 59; lock cmpxchg [r10], r11; jne retry      ; NEWDL
         xor eax, eax; test r9, r9; jz set                   ; disarm: it_value 0
         rdtsc; shl rdx, 32; or rax, rdx; mov rcx, r9; sub rcx, rax; jbe past
         mov rax, MAX_DELTA; cmp rcx, rax; ja py
         mov rax, [r8+MULT]; mul rcx; shrd rax, rdx, 32; inc rax; jmp set   ; ns, rounded up
       past: mov eax, 1
       set: xor edx, edx; mov ecx, 1000000000; div rcx; mov [r8+SPEC+16], rax; mov [r8+SPEC+24], rdx
         push rdi; mov rdi, [r8+TIMER_ID]; xor esi, esi; lea rdx, [r8+SPEC]; xor r10d, r10d
         mov eax, SYS_TIMER_SETTIME; syscall; pop rdi        ; relative
         test rax, rax; jnz py                               ; failed: Python sets it again, and says why
         inc qword [r8+WRITES]; ret
       py: movabs rax, python_wrapper; jmp rax"""
    return bytes.fromhex(
        "817f08e0060000" "0f85db000000" "49b8" + _imm64(table).hex() + "498b00" "4885c0" "0f84c5000000" "4839f8"
        "7406" "4983c010" "ebe9" "4d8b4008" "8b0f" "8b5710" "48c1e220" "4809d1" "4531c9" "4885c9" "740f" "4989c9"
        "4c2b8f" + struct.pack("<I", ENV_TSC_OFFSET).hex() + "7503" "49ffc1" "49894810" "4d894808" "4d8b10"
        "498b02" "480fbae03c" "737e" "4989c3" "490fbaeb3b" "f04d0fb11a" "75ea" "31c0" "4d85c9" "7436" "0f31"
        "48c1e220" "4809d0" "4c89c9" "4829c1" "7620" "48b8ffffffffff7f0000" "4839c1" "7748" "498b4040" "48f7e1"
        "480facd020" "48ffc0" "eb05" "b801000000" "31d2" "b900ca9a3b" "48f7f1" "49894058" "49895060" "57"
        "498b7838" "31f6" "498d5048" "4531d2" "b8" + struct.pack("<I", SYS_TIMER_SETTIME).hex() + "0f05" "5f"
        "4885c0" "7505" "49ff4068" "c3" "48b8" + _imm64(python_wrapper).hex() + "ffe0")


def wanted() -> bool:
    return os.environ.get(ENV_VAR, "").strip() != "0"


class NativeTickStubs:
    """The process-wide part: the acknowledge stub, and the table through which the WRMSR stub finds a vCPU's
    block (uc_native places the WRMSR stub, which needs the Python wrapper's address)."""

    def __init__(self, page: _NativePage) -> None:
        self.inta_stub = page.add(INTA_STUB)
        self.table = (c_uint64 * (2 * TABLE_SLOTS + 2))()     # {env, block}..., then a 0 env
        self.wrmsr_stub = 0                                     # placed by uc_native
        self._lock = threading.Lock()

    def register(self, env: int, block: int) -> bool:
        """False when the table is full: that vCPU's WRMSRs and acknowledges then stay Python's."""
        with self._lock:
            t = self.table
            for i in range(TABLE_SLOTS):
                if t[2 * i] in (0, 1):               # free, or a tombstone
                    t[2 * i + 1] = block             # the block first: a reader that matches env sees it
                    t[2 * i] = env
                    return True
        return False

    def unregister(self, env: int) -> None:
        with self._lock:
            t = self.table
            for i in range(TABLE_SLOTS):
                if t[2 * i] == env:
                    t[2 * i] = 1                     # a tombstone: no CPUX86State lies at address 1


class NativeTick:
    """One vCPU's block: what the stubs read and write, and the model's side of it (take and arm, see the module
    docstring). Made with its unicorn instance, whose interrupt-acknowledge page reads through INTA_STUB with this
    block; the vCPU attaches its word, CPUX86State and timer later. Until then the word is the block's ZERO slot,
    which sends every acknowledge to Python."""

    def __init__(self, stubs: NativeTickStubs, python_inta: int) -> None:
        self.stubs = stubs
        self.block = (c_uint64 * BLOCK_SLOTS)()
        self.address = b = ctypes.addressof(self.block)
        self.block[WORD] = self.block[ATTENTION] = b + 8 * ZERO
        self.block[PY_INTA] = python_inta
        self._word: c_uint64 | None = None
        self.env: int | None = None
        self.owner: int | None = None          # the native id of the vCPU's thread, once its timer is bound there
        self.host_tsc_offset: Callable[[], int] = lambda: 0   # guest TSC - host TSC, for this vCPU
        self.taken_ticks = 0
        self.taken_vectors = 0

    def attach(self, word_address: int, env: int, host_tsc_offset: Callable[[], int], tsc_hz: int) -> bool:
        """The vCPU's word (uc_fast_eoi's), CPUX86State and TSC: from now on its WRMSRs find this block. False (and
        nothing attached) when the process already has TABLE_SLOTS such vCPUs."""
        if not self.stubs.register(env, self.address):
            return False
        self.block[MULT] = -(-int(1_000_000_000 * (1 << 32) * LATE) // tsc_hz)
        self.host_tsc_offset = host_tsc_offset
        self._word = c_uint64.from_address(word_address)
        self.block[WORD] = word_address
        self.env = env
        return True

    def detach(self) -> None:
        self.owner = None
        if self.env is not None:
            self.stubs.unregister(self.env)
            self.env = None
        if self._word is not None:
            self._word.value = 0

    def watch(self, attention_address: int) -> None:
        """The INTA stub leaves to Python while the word at this address is non-zero (uc_codeshare)."""
        self.block[ATTENTION] = attention_address

    def set_timer(self, kernel_timer_id: int, thread_id: int) -> None:
        """The vCPU's POSIX timer (vcpu_signal_timer), bound to its thread: the WRMSR stub may set it now."""
        self.block[TIMER_ID] = kernel_timer_id
        self.owner = thread_id

    @property
    def on_owner_thread(self) -> bool:
        """Whether the caller is the vCPU's thread: the only one that arms the word (see the module docstring)."""
        return self.owner is not None and threading.get_native_id() == self.owner

    @property
    def timer_ready(self) -> bool:
        return self.owner is not None and self.env is not None

    @property
    def guest_deadline(self) -> int:
        """The IA32_TSC_DEADLINE value last written natively."""
        return self.block[GUEST]

    @property
    def native_writes(self) -> int:
        return self.block[WRITES]

    def arm_word(self, bits: int) -> None:
        """Arm the word with `bits` (no TICK), from any thread, under the model's lock, after a take."""
        if self._word is not None:
            self._word.value = bits

    def publish(self, bits: int, vector: int, tsc_deadline: int) -> None:
        """Arm the word with `bits` (FAST/TICK/BASE/DEADLINE, counts 0) for the model's current state: the timer's
        vector and deadline. Call on the vCPU's thread, under the model's lock, after a take."""
        b = self.block
        b[VECTOR] = vector
        b[GUEST] = tsc_deadline
        if tsc_deadline:
            b[EXPIRY] = ((tsc_deadline - self.host_tsc_offset()) & 0xFFFF_FFFF_FFFF_FFFF) or 1
        else:
            b[EXPIRY] = 0
        if self._word is not None:
            self._word.value = bits
