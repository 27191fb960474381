"""Translated code kept coherent across the unicorn instances of one VM (one instance per vCPU, software_parallel):
a store by any vCPU to a page another vCPU has translated code from reaches that vCPU's translation cache
(Intel SDM vol. 3, 8.1.3 "Handling Self- and Cross-Modifying Code").

Each instance has its own translation cache. QEMU learns that a page holds translated code through
tlb_protect_code / tlb_unprotect_code (accel/tcg/translate-all.c) and sends a store to such a page through
notdirty_write (accel/tcg/cputlb.c), which invalidates the *writer's* translations; uc_codetrack restores that per
instance. For the instances of a parallel VM (a "group") this module replaces it, once per process, in front of
uc_codetrack's stubs (instances not registered here go on to them unchanged):

* tlb_protect_code / tlb_unprotect_code of a registered instance call Python (CodeShare.protect / unprotect):
  the group records, per ram_addr page, which of its instances hold code there (a 64-bit holder mask the native
  gate reads). Protecting also puts the instance's own TLB entries writing the page back on the slow path
  (tlb_reset_dirty, on its own thread, as uc_codetrack does).
* The gate in notdirty_write (uc_codetrack's patch point) jumps here first. For a registered instance: if any
  *other* instance holds code in the page, the store stays on the slow path and Python is told
  (CodeShare.written), which posts the page to each of them, clears their bits (until they translate there
  again) and asks them to leave their block chain (kick); each invalidates the whole page on its own thread
  before it runs again or when it serializes (invalidate_posted). A page that holds code, or ever held code in
  any instance (the mask's EVER bit), stays on the slow path; only a page that never held code gets a fast TLB
  entry (uc_codetrack's rule, for the union). Another thread's TLB cannot be reset safely from here (its owner
  may reallocate it at any time): see the first-translation reset below.
* The translate/protect race: an instance reads a page's bytes, then tlb_protect_code sets its bit; a store whose
  gate read the holders in between was not posted to it. The gate stamps every slow store's page with the TSC
  (a locked exchange, so the stamp is visible before it reads the holders); protect treats a page stamped
  after the translation began (uc_parallel's wrapper notes the TSC then) as posted.
* QEMU's ordering hole: notdirty_write runs before the store it precedes, so an instance that re-translates in
  between keeps the old bytes. A posted page is therefore invalidated once more at each of the receiving vCPU's
  serializing events (CPUID, an interrupt taken) until one comes after the writer was seen past its store (its
  epoch moved on: it came back to Python) or RECENT_NS passed: by the time a vCPU serializes after seeing the
  writer's later stores (SDM vol. 3, 8.1.3), the store has landed.
* Fast TLB entries made before a page first held code: the gate records which instances made one (dirtied);
  when the page's first translation in the VM sets EVER, each of those is asked (kicked) to reset its own, on
  its own thread, and then posts the page back as written, so what it stored through them is seen. A store
  through such an entry between the translation and that reset is seen once the writer has reset (it leaves
  emulation within a block of the kick).

Instances of one group must share ram_addr numbering (the same RAM mapped in the same order); software_parallel
checks that. Stub bytes are below with their assembly (tests/software_cpu/test_software_parallel.py checks them).
"""
from __future__ import annotations

import ctypes
import struct
import threading
import time
from collections.abc import Callable
from ctypes import c_uint64, c_void_p

from core.hypervisor.uc_codetrack import NOTDIRTY_GATE, NOTDIRTY_RETURN, NOTDIRTY_SET_DIRTY
from core.hypervisor.uc_internals import CPU_UC, UnicornInternalsError, _fn, addr_of
from core.hypervisor.uc_native import natives
from core.hypervisor.uc_patch import (
    _PAGE,
    _find_helper_slots,
    _imm64,
    _local_symbols,
    _NativePage,
    _patch_text,
    _poke_pointer,
)

MAX_INSTANCES = 256
MAX_MEMBERS = 63                      # instances per group: one bit each in a page's holder mask
EVER = 1 << 63                        # in a page's mask: some instance has held code there (never cleared)
_ENTRY = 4                            # table entry words: uch, the group's holder masks, pages, this instance's bit
RECENT_NS = 1_000_000_000             # how long a posted page is invalidated again at serializing events
STAMP_SLACK = 100_000                 # TSC ticks: a store stamped this close before a translation began races it

_GATE = ("41f68188000000040f84ba000000498b8f{uc}48ba{table}4c8b024d85c00f849d0000004939c874064883c220ebe94c8b54241"
         "049c1ea0c4c3b521073774989d30f3148c1e2204809d04d8b4308498b5310498d54d0084a8704d24f8b04d0498b4318480fbae83"
         "f48f7d04985c0752e4d85c075404d8b4308498b5310488d145502000000498d14d0498b4318f04a0904d248b8{dirty}ffe04889"
         "cf488b7424104489f248b8{notify}ffd048b8{slow}ffe048b8{other}ffe0")
_PROTECT = "48ba{table}4c8b024d85c074174939f874064883c220ebed48b8{mine}ffe048b8{other}ffe0"
_UNPROTECT = ("48ba{table}4c8b024d85c074334939f874064883c220ebed4889f048c1e80c483b4210731a4c8b4208498b04c04885421874"
              "0c48b8{mine}ffe0c348b8{other}ffe0")


def gate_stub_code(table: int, set_dirty: int, notify: int, keep_slow: int, other: int) -> bytes:
    """Jumped to from the gate in notdirty_write (r9 = the MemoryRegion, r15 = the CPUState, 0x10(%rsp) = the
    ram_addr written, r14d = the store's size, rbp = the TLB entry; rsp is 16-byte aligned there):
         test byte ptr [r9 + 0x88], 4; jz 9f                 ; not an executable region: uc_codetrack's rule
         mov rcx, [r15 + CPU_UC]; movabs rdx, table
       1: mov r8, [rdx]; test r8, r8; jz 9f; cmp r8, rcx; je 2f; add rdx, 32; jmp 1b
       2: mov r10, [rsp + 0x10]; shr r10, 12; cmp r10, [rdx + 16]; jae 8f   ; beyond the masks: slow
         mov r11, rdx; rdtsc; shl rdx, 32; or rax, rdx
         mov r8, [r11 + 8]; mov rdx, [r11 + 16]; lea rdx, [r8 + rdx*8 + 8]   ; the stamps follow the masks
         xchg [rdx + r10*8], rax                             ; stamp the page (a full barrier: then read)
         mov r8, [r8 + r10*8]                                ; the page's holders
         mov rax, [r11 + 24]; bts rax, 63; not rax
         test r8, rax; jnz 7f                                ; another instance holds code there
         test r8, r8; jnz 8f                                 ; this one does, or the page ever held code: slow
         mov r8, [r11 + 8]; mov rdx, [r11 + 16]; lea rdx, [rdx*2 + 2]; lea rdx, [r8 + rdx*8]   ; "dirtied" masks
         mov rax, [r11 + 24]; lock or [rdx + r10*8], rax    ; this instance may now store there fast
         movabs rax, set_dirty; jmp rax
       7: mov rdi, rcx; mov rsi, [rsp + 0x10]; mov edx, r14d; movabs rax, notify; call rax   ; written(uc, ram, n)
       8: movabs rax, keep_slow; jmp rax
       9: movabs rax, other; jmp rax                           ; uc_codetrack's stub"""
    return bytes.fromhex(_GATE.format(uc=struct.pack("<I", CPU_UC).hex(), table=_imm64(table).hex(),
                                      dirty=_imm64(set_dirty).hex(), notify=_imm64(notify).hex(),
                                      slow=_imm64(keep_slow).hex(), other=_imm64(other).hex()))


def protect_stub_code(table: int, mine: int, other: int) -> bytes:
    """void tlb_protect_code(uc_engine *uc, ram_addr_t addr):
         movabs rdx, table
       1: mov r8, [rdx]; test r8, r8; jz 3f; cmp r8, rdi; je 2f; add rdx, 32; jmp 1b
       2: movabs rax, mine; jmp rax                            ; a registered instance: Python
       3: movabs rax, other; jmp rax                           ; uc_codetrack's stub"""
    return bytes.fromhex(_PROTECT.format(table=_imm64(table).hex(), mine=_imm64(mine).hex(),
                                         other=_imm64(other).hex()))


def unprotect_stub_code(table: int, mine: int, other: int) -> bytes:
    """void tlb_unprotect_code(uc_engine *uc, ram_addr_t addr) -- called at every store to a page with a PageDesc
    but no blocks left, so the common case stays native:
         movabs rdx, table
       1: mov r8, [rdx]; test r8, r8; jz 4f; cmp r8, rdi; je 2f; add rdx, 32; jmp 1b
       2: mov rax, rsi; shr rax, 12; cmp rax, [rdx + 16]; jae 3f
         mov r8, [rdx + 8]; mov rax, [r8 + rax*8]; test rax, [rdx + 24]; jz 3f   ; not a holder: nothing to do
         movabs rax, mine; jmp rax                             ; Python
       3: ret
       4: movabs rax, other; jmp rax"""
    return bytes.fromhex(_UNPROTECT.format(table=_imm64(table).hex(), mine=_imm64(mine).hex(),
                                           other=_imm64(other).hex()))


_PAGE_CFUNC = ctypes.CFUNCTYPE(None, c_void_p, c_uint64)
_WRITE_CFUNC = ctypes.CFUNCTYPE(None, c_void_p, c_uint64, ctypes.c_uint32)


class Member:
    """One instance of a group: its bit in the holder masks, what was posted to it, and how to kick it."""

    def __init__(self, uch: int, cpu: int, kick: Callable[[], None], start_cell: int) -> None:
        self.uch, self.cpu, self.kick = uch, cpu, kick
        self.start_cell = c_uint64.from_address(start_cell)  # TSC at the start of its latest translation
        self.bit = 0
        # ram_addr page -> (writer, its epoch then): written by others, not yet invalidated here
        self.pending: dict[int, tuple[Member | None, int]] = {}
        self.resets: set[int] = set()          # pages that first held code elsewhere: this TLB's fast entries go
        # page -> (deadline ns, writer, its epoch when it posted): invalidated, and again at serializing events
        # until the writer is seen past its store (its epoch moved on) or the deadline passes
        self.recent: dict[int, tuple[int, Member | None, int]] = {}
        # Advanced on this instance's thread at each of its Python exits that follow a store it posted (its next
        # posting store, its next slice, serializing event): a posted store has landed once it moved on.
        self.epoch = 0
        self.kicked = False
        self.stats_posted = 0
        # Non-zero while invalidate_posted has work at a serializing event (pending, resets or recent pages, or
        # a store this instance posted whose landing others wait to see): uc_native_tick's acknowledge stub then
        # leaves the interrupt to Python, which calls it.
        self.attention = c_uint64(0)

    def note_work(self) -> None:
        self.attention.value = 1

    def settle(self) -> None:
        """After invalidate_posted, under the group's lock."""
        if not (self.pending or self.resets or self.recent):
            self.attention.value = 0


class Group:
    """The instances of one VM and, per ram_addr page, which of them hold translated code there."""

    def __init__(self, ram_bytes: int) -> None:
        self.pages = (ram_bytes + _PAGE - 1) // _PAGE
        # One array, as the gate finds them: masks[0 .. pages] (holders, EVER), stamps[0 .. pages] (the TSC of the
        # last slow store to each page), dirtied[0 .. pages] (the instances that made a TLB entry writing the page
        # fast).
        n = self.pages + 1
        self.masks = (c_uint64 * (3 * n))()
        self.stamps = (c_uint64 * n).from_buffer(self.masks, 8 * n)
        self.dirtied = (c_uint64 * n).from_buffer(self.masks, 16 * n)
        self.members: dict[int, Member] = {}
        self.lock = threading.Lock()


class CodeShare:
    """The process-wide stubs and the registered instances (see the module docstring)."""

    def __init__(self) -> None:
        tracking = natives().code_tracking
        if not tracking.active:
            raise UnicornInternalsError(f"code-page tracking is not installed: {tracking.reason}")
        self.table = (c_uint64 * (_ENTRY * MAX_INSTANCES + _ENTRY))()
        self._groups: dict[int, Group] = {}
        self._lock = threading.Lock()
        self._protect_cb = _PAGE_CFUNC(self.protect)
        self._unprotect_cb = _PAGE_CFUNC(self.unprotect)
        self._written_cb = _WRITE_CFUNC(self.written)
        self._map_ram_ptr = _fn("qemu_map_ram_ptr_x86_64", c_void_p, c_void_p, c_void_p, c_uint64)
        self._reset_dirty = _fn("tlb_reset_dirty_x86_64", None, c_void_p, c_uint64, c_uint64)
        funcs = _local_symbols("notdirty_write.isra.0")
        anchor = addr_of(_fn("tlb_set_dirty_x86_64", None))
        fn = min(f for f in funcs if f > anchor)
        gate = fn + NOTDIRTY_GATE
        code = ctypes.string_at(gate, 5)
        if code[0] != 0xE9:
            raise UnicornInternalsError("notdirty_write's gate is not uc_codetrack's jump")
        codetrack_stub = gate + 5 + struct.unpack("<i", code[1:])[0]
        slots = _find_helper_slots(["tlb_protect_code_x86_64", "tlb_unprotect_code_x86_64"])
        page = self.page = _NativePage(near=gate)
        table = ctypes.addressof(self.table)
        stub = page.add(gate_stub_code(table, fn + NOTDIRTY_SET_DIRTY, addr_of(self._written_cb),
                                       fn + NOTDIRTY_RETURN, codetrack_stub))
        if abs(stub - (gate + 5)) >= 1 << 31:
            raise UnicornInternalsError("no native page within reach of the library for the notdirty gate")
        wrappers = []
        for name, cb, make in (("tlb_protect_code_x86_64", self._protect_cb, protect_stub_code),
                               ("tlb_unprotect_code_x86_64", self._unprotect_cb, unprotect_stub_code)):
            _original, pointer_slots = slots[name]
            current = c_uint64.from_address(pointer_slots[0]).value      # uc_codetrack's stub
            wrappers.append((current, pointer_slots, page.add(make(table, addr_of(cb), current))))
        page.seal()
        for current, pointer_slots, wrapper in wrappers:
            for slot in pointer_slots:
                _poke_pointer(slot, current, wrapper)
        _patch_text(gate, b"\xe9" + struct.pack("<i", stub - (gate + 5)))

    # -- registration ---------------------------------------------------------------------------------------
    def new_group(self, ram_bytes: int) -> Group:
        return Group(ram_bytes)

    def register(self, group: Group, member: Member) -> None:
        """Before the instance first runs (its code bitmap in uc_codetrack is not used from now on)."""
        with self._lock:
            used = {m.bit for m in group.members.values()}
            free = [b for b in range(MAX_MEMBERS) if b not in used]
            if not free:
                raise UnicornInternalsError(f"more than {MAX_MEMBERS} vCPUs in one parallel VM")
            member.bit = free[0]
            t = self.table
            for i in range(MAX_INSTANCES):
                if t[_ENTRY * i] in (0, 1):
                    with group.lock:
                        group.members[member.uch] = member
                    self._groups[member.uch] = group
                    t[_ENTRY * i + 1] = ctypes.addressof(group.masks)
                    t[_ENTRY * i + 2] = group.pages
                    t[_ENTRY * i + 3] = 1 << member.bit
                    t[_ENTRY * i] = member.uch
                    return
            raise UnicornInternalsError(f"more than {MAX_INSTANCES} parallel vCPUs in one process")

    def unregister(self, uch: int) -> None:
        with self._lock:
            t = self.table
            for i in range(MAX_INSTANCES):
                if t[_ENTRY * i] == uch:
                    t[_ENTRY * i] = 1                 # tombstone: the lookups walk past it
            group = self._groups.pop(uch, None)
        if group is not None:
            with group.lock:
                member = group.members.pop(uch, None)
                if member is not None:
                    keep = ~(1 << member.bit) & 0xFFFF_FFFF_FFFF_FFFF
                    masks = group.masks
                    for page in range(group.pages):
                        if masks[page]:
                            masks[page] &= keep

    # -- called from the library (on the instance's own thread) --------------------------------------------
    def protect(self, uch: int, ram_addr: int) -> None:
        group = self._groups.get(uch)
        if group is None:
            return
        page = ram_addr >> 12
        with group.lock:
            member = group.members.get(uch)
            if member is None:
                return
            kicks = []
            if page < group.pages:
                if not group.masks[page] & EVER:
                    # The page's first translation in the VM: other instances that made fast TLB entries writing
                    # it while it held no code (dirtied) reset theirs, on their own thread, and then post the page
                    # back as written (their stores before the reset were not seen).
                    dirtied = group.dirtied[page]
                    for m in group.members.values():
                        if m is not member and dirtied >> m.bit & 1:
                            m.resets.add(page)
                            m.note_work()
                            if not m.kicked:
                                m.kicked = True
                                kicks.append(m.kick)
                group.masks[page] |= 1 << member.bit | EVER
                # The bytes were read before this call: a store whose gate ran after this translation started
                # (uc_parallel's wrapper notes when) and before the bit was set was not posted here and may have
                # landed after the read. Its stamp is visible now (the gate stamps, with a full barrier, before it
                # reads the holders), so such a page is treated as posted: invalidated again at this vCPU's
                # serializing events (invalidate_posted).
                if group.stamps[page] + STAMP_SLACK >= member.start_cell.value:
                    member.recent[page] = (time.monotonic_ns() + RECENT_NS, None, 0)
                    member.note_work()
        # As uc_codetrack's stub: this instance's own TLB entries writing the page go back to the slow path.
        host = self._map_ram_ptr(uch, None, page << 12)
        if host:
            self._reset_dirty(member.cpu, host, _PAGE)
        for kick in kicks:
            kick()

    def unprotect(self, uch: int, ram_addr: int) -> None:
        group = self._groups.get(uch)
        if group is None:
            return
        page = ram_addr >> 12
        with group.lock:
            member = group.members.get(uch)
            if member is not None and page < group.pages:
                group.masks[page] &= ~(1 << member.bit) & 0xFFFF_FFFF_FFFF_FFFF

    def written(self, uch: int, ram_addr: int, size: int) -> None:
        """A store by `uch` to a page other instances of its group hold code in (before the store is done): the
        page is posted to them, whole, and their bits cleared at once -- they invalidate the whole page before
        they run again, so later stores to it need not reach Python until one translates code there again."""
        group = self._groups.get(uch)
        if group is None:
            return
        page = ram_addr >> 12
        if page >= group.pages:
            return
        kicks = []
        with group.lock:
            writer = group.members.get(uch)
            if writer is not None:
                writer.epoch += 1                  # its earlier posted stores have landed
            epoch = writer.epoch if writer is not None else 0
            holders = group.masks[page]
            for m in group.members.values():
                if m.uch != uch and holders >> m.bit & 1:
                    m.pending[page] = (writer, epoch)
                    m.note_work()
                    if writer is not None:
                        writer.note_work()     # its next serializing event moves its epoch on
                    m.stats_posted += 1
                    holders &= ~(1 << m.bit)
                    if not m.kicked:
                        m.kicked = True
                        kicks.append(m.kick)
            group.masks[page] = holders
        for kick in kicks:
            kick()

    # -- the receiving instance, on its own thread ----------------------------------------------------------
    def invalidate_posted(self, uch: int, invalidate: Callable[[int], None], now_ns: int,
                          serializing: bool) -> None:
        """Drop `uch`'s translations of the pages others wrote: those posted since the last call and, at a
        serializing event (CPUID, an interrupt taken), once more every one posted in the last RECENT_NS -- a
        writer is told before its store lands (notdirty_write precedes the store), and its later stores to the
        page may take a fast TLB entry, so a translation made in between holds old bytes; by the time this vCPU
        serializes after seeing the writer's later stores (SDM vol. 3, 8.1.3), they have landed."""
        group = self._groups.get(uch)
        if group is None:
            return
        with group.lock:
            member = group.members.get(uch)
            if member is None:
                return
            member.epoch += 1
            pending, member.pending = member.pending, {}
            resets, member.resets = member.resets, set()
            member.kicked = False
            recent = member.recent
            again = []
            if serializing and recent:
                keep = {}
                for page, (deadline, writer, epoch) in recent.items():
                    if page in pending:
                        continue
                    again.append(page)             # invalidated now, after the writer's store if it moved on
                    if deadline > now_ns and (writer is None or writer.epoch <= epoch):
                        keep[page] = (deadline, writer, epoch)
                member.recent = recent = keep
            deadline = now_ns + RECENT_NS
            for page, (writer, epoch) in pending.items():
                recent[page] = (deadline, writer, epoch)
            if not resets:
                member.settle()
        for page in sorted(pending):
            invalidate(page)
        for page in again:
            invalidate(page)
        if resets:
            with group.lock:
                for page in resets:
                    group.dirtied[page] &= ~(1 << member.bit) & 0xFFFF_FFFF_FFFF_FFFF
                member.settle()
        for page in sorted(resets):
            host = self._map_ram_ptr(uch, None, page << 12)
            if host:
                self._reset_dirty(member.cpu, host, _PAGE)
            self.written(uch, page << 12, 1)       # what this vCPU stored there before is seen now


_share: CodeShare | None = None
_share_lock = threading.Lock()


def code_share() -> CodeShare:
    """Install (once) and return the cross-instance code tracking."""
    global _share
    with _share_lock:
        if _share is None:
            _share = CodeShare()
        return _share
