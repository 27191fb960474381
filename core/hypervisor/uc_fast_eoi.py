"""The local APIC's end-of-interrupt write taken natively on the software CPU, in its common case.

An interrupt handler ends with a write to the xAPIC's EOI register (Intel SDM vol. 3, 10.8.5 "Signaling Interrupt
Servicing Completion"): the highest-priority bit of the In-Service Register clears, and for a level-triggered
vector the EOI goes on to the I/O APICs. Through unicorn that write is an MMIO callback into Python: the
interpreter lock, the device lock, the model. A Linux guest makes one per timer tick and per device interrupt --
7 per network request, a quarter of the vCPU thread's exits (docs/net-performance.md) -- and each one can wait
for the lock while a network or timer thread holds it.

The common case needs no model: one vector in service, edge-triggered, nothing else requested. Then the EOI
only empties the ISR, nothing becomes deliverable and nothing goes to the I/O APICs. So:

* The model (core/devices/lapic.py) *arms* this vCPU's word when it acknowledges an interrupt and that case
  holds: bit 63 (FAST) set, count 0, and points the instance's block at the word and at the EOI register's
  guest-physical address.
* The MMIO write callback of the instance's holes is a native stub (WRITE_STUB below). A 4-byte write to that
  address while FAST is set adds one to the count with a locked compare-and-exchange, and returns. A 2-byte write
  to a queue doorbell's address rings its eventfd (uc_doorbells). Every other write tail-calls the Python
  callback, exactly as before.
* Any use of the model takes the word first (`take`: an atomic exchange with 0, which also clears FAST) under
  the model's lock, and applies the EOIs it counted. A stub that loses that race sees FAST clear and takes the
  Python path, so an EOI is applied exactly once, before the model next looks at its ISR -- before an
  interrupt accepted from another thread is judged deliverable, in particular.

The block is per unicorn instance. A slice of a vCPU other than the one it is armed for disarms it, so with
time-shared vCPUs one vCPU's EOI is never counted on another's word.
"""
from __future__ import annotations

import ctypes
from ctypes import c_uint64
from typing import TYPE_CHECKING

from core.hypervisor.uc_patch import _NativePage

if TYPE_CHECKING:
    from core.hypervisor.uc_native_tick import NativeTick

FAST = 1 << 63
NOT_ARMED = 0xFFFF_FFFF_FFFF_FFFF     # no guest-physical address a 4-byte write can have
EOI_REGISTER = 0xB0                   # offset in the xAPIC page (SDM vol. 3, table 10-1)

# void write(uc_engine *uc, uint64_t offset, unsigned size, uint64_t value, struct {piece, block} *user),
# unicorn's MMIO write callback; block = {armed EOI address, &word, the Python callback, &doorbell table}; a write
# that is not an armed EOI rings the doorbell bound at its address, if any (uc_doorbells), before it goes to Python:
#     mov r9, [r8+8]; mov r8, [r8]          ; the block; the piece's base, which the Python callback takes
#     lea rax, [r8+rsi]; cmp rax, [r9]; jne bell
#     cmp edx, 4; jne slow
#     mov r10, [r9+8]; mov rax, [r10]
#   retry: bt rax, 63; jnc slow             ; not armed (any use of the model since the acknowledge clears it)
#     lea r11, [rax+1]; lock cmpxchg [r10], r11; jne retry; ret
#   bell: cmp edx, 2; jne slow              ; a virtio notification is 2 bytes
#     mov r10, [r9+24]; mov r11, [r10]      ; the table; its count
#   next: test r11, r11; jz slow
#     cmp rax, [r10+16]; je ring
#     add r10, 16; dec r11; jmp next
#   ring: mov edi, [r10+24]                 ; write(fd, &table[1], 8): the eventfd's counter + 1
#     mov rsi, [r9+24]; add rsi, 8; mov edx, 8; mov eax, 1; syscall; ret
#   slow: jmp [r9+16]
WRITE_STUB = bytes.fromhex("4d8b4808 4d8b00 498d0430 493b01 751f 83fa04 7553 4d8b5108 498b02"
                           "480fbae03f 7345 4c8d5801 f04d0fb11a 75ee c3"
                           "83fa02 7534 4d8b5118 4d8b1a 4d85db 7428 493b4210 7409 4983c210 49ffcb ebec"
                           "418b7a18 498b7118 4883c608 ba08000000 b801000000 0f05 c3"
                           "41ff6110")
# uint64_t xchg(uint64_t *word, uint64_t value): mov rax, rsi; xchg [rdi], rax; ret
XCHG_STUB = bytes.fromhex("4889f0 488707 c3")


class FastEoiStubs:
    """The process-wide native code (on uc_native's page)."""

    def __init__(self, page: _NativePage) -> None:
        self.write_stub = page.add(WRITE_STUB)
        # A handful of instructions: called with the interpreter lock held (PYFUNCTYPE), so that taking the word
        # never hands the lock to another thread.
        self.xchg = ctypes.PYFUNCTYPE(c_uint64, ctypes.c_void_p, c_uint64)(page.add(XCHG_STUB))


class FastEoiBlock:
    """One unicorn instance's block, and the per-piece records its MMIO holes' write callback receives."""

    def __init__(self, python_write: int, doorbells: int) -> None:
        self.block = (c_uint64 * 4)(NOT_ARMED, 0, python_write, doorbells)
        self._records: dict[int, ctypes.Array] = {}

    def user_for(self, piece: int) -> int:
        """The write callback's user data for the MMIO piece at `piece` (kept alive here)."""
        record = self._records.get(piece)
        if record is None:
            record = self._records[piece] = (c_uint64 * 2)(piece, ctypes.addressof(self.block))
        return ctypes.addressof(record)

    def disarm(self) -> None:
        self.block[0] = NOT_ARMED

    def arm(self, word: FastEoiWord, eoi_address: int) -> None:
        self.block[1] = word.address
        self.block[0] = eoi_address


class FastEoiWord:
    """One vCPU's word: FAST and the count of EOIs written natively since the model last looked."""

    def __init__(self, stubs: FastEoiStubs) -> None:
        self._word = c_uint64(0)
        self.address = ctypes.addressof(self._word)
        self._xchg = stubs.xchg
        self.block: FastEoiBlock | None = None     # the instance the vCPU runs on
        self.native: NativeTick | None = None      # its timer tick, when taken natively too (uc_native_tick)

    def take(self) -> int:
        """The EOIs counted since the last take, and FAST cleared (call under the model's lock)."""
        if not self._word.value:                  # not armed: the stub cannot be counting
            return 0
        return self._xchg(self.address, 0) & ~FAST

    def take_word(self) -> int:
        """The whole word (uc_native_tick's layout), and every bit cleared (call under the model's lock)."""
        if not self._word.value:
            return 0
        return self._xchg(self.address, 0)

    def point_block(self, mmio_base: int) -> None:
        """Aim the instance's EOI stub at this word and the xAPIC page at `mmio_base` (the word's FAST bit is set
        by whoever arms it)."""
        if self.block is not None:
            self.block.arm(self, mmio_base + EOI_REGISTER)

    def arm(self, mmio_base: int) -> None:
        """The vCPU acknowledged the only vector now in service, edge-triggered, with nothing else requested
        (call under the model's lock, on the vCPU's thread, after a take)."""
        if self.block is not None:
            self._word.value = FAST
            self.block.arm(self, mmio_base + EOI_REGISTER)
