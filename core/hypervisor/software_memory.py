"""The software CPU's physical memory map: guest RAM, the MMIO holes, device memory mapped as RAM, and keeping
translated code coherent with writes from the host.

The map is QEMU's memory API as unicorn 2.1.4 wraps it (uc_mem_map_ptr, uc_mmio_map, uc_mem_unmap over
memory_region_add_subregion / memory_region_del_subregion, qemu/softmmu/memory.c and unicorn's uc.c):

* Guest RAM is mapped in place (the Machine's GuestMemory; no copies), minus the legacy VGA window, which stays
  MMIO so that accesses reach the VGA model.
* Everything else below the physical-address limit (QEMU's TCG_PHYS_ADDR_BITS, 40 for x86-64) is MMIO: the bus
  may gain devices (VGA, PCI BARs) at any time, and an access nobody claims reads as all ones, as on a PC. An
  access inside the xAPIC page of the CPU that makes it goes to that CPU's local APIC (Intel SDM vol. 3, 10.4.1:
  each processor sees its own APIC at the IA32_APIC_BASE address).
* The last page below that limit is the interrupt-acknowledge cell: QEMU's CPU loop reads the vector of a VIRQ
  request from `env->vm_vmcb + 100` (target/i386/seg_helper.c, x86_cpu_exec_interrupt), pointed here, so that
  read is the acknowledge cycle of the vCPU's local APIC (see software.py).

Host writes into guest RAM (loader, device DMA) drop translated code for the range (GuestMemory write listener),
at once on the thread that owns the CPU, otherwise queued and applied before the next slice.

Device memory as RAM (map_ram: the VGA framebuffer BAR): unicorn 2.1.4 has no guard against changing the memory
map from a hook -- uc_mem_map_ptr/uc_mem_unmap only wrap QEMU's memory API (`nested_level` counts nested
emu_start calls, nothing more) -- but doing it there is unsafe: uc_mem_unmap frees the MemoryRegion (and, for
MMIO, its callback block) that a hook may be running from, and memory_unmap's uc_invalidate_tb translates the
*guest-physical* range through the current MMU as if it were virtual (get_page_addr_code), so with paging on it
invalidates the wrong code or takes a page fault that leaves CR2 and exception_index set. Mapping requests are
therefore queued and the running slice stopped; the owner applies them before its next emu_start, with the
power-on (real-mode, paging off) context loaded so that translation is the identity, then restores the vCPU's
context and flushes the TLB. Until then the PCI bus's MMIO handler for the BAR serves the same memory. The MMIO
holes below 4 GiB are mapped in aligned 16 MiB pieces (1 MiB in the top 32 MiB, where the BIOS image and small BARs
go): unmapping a region costs a TLB-flush call per page, so a BAR replaces one small piece rather than splitting the
hole (unicorn's own split would also hand the right part
the left part's user data, which is our base address). Ranges above 4 GiB are refused (the caller keeps MMIO).

SoftwareMemoryMap is a part of SoftwareAccelerator (a mixin): the annotations below name what it uses of the rest.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from ctypes import c_int, c_uint32, c_uint64, c_void_p
from typing import TYPE_CHECKING

import unicorn

from core.bus import MmioBus
from core.hypervisor import uc_internals as ui
from core.hypervisor.base import AcceleratorUnavailable, fault_line
from core.hypervisor.uc_doorbells import DoorbellTable
from core.hypervisor.uc_fast_eoi import FastEoiBlock
from core.hypervisor.uc_native import _Natives
from core.hypervisor.uc_native_tick import NativeTick
from core.hypervisor.uc_native_tick import wanted as native_tick_wanted
from core.memory import GuestMemory, MemoryRegion

if TYPE_CHECKING:
    from core.hypervisor.software_vcpu import SoftwareVcpu

log = logging.getLogger(__name__)

PHYS_ADDR_LIMIT = 1 << 40                 # QEMU's TCG_PHYS_ADDR_BITS for x86-64
INTA_PAGE = PHYS_ADDR_LIMIT - 0x1000      # the interrupt-acknowledge cell (see the module docstring)
LOW_4G = 1 << 32
MMIO_PIECE = 16 << 20                     # MMIO holes below 4 GiB are mapped in aligned pieces of this size
# ... and the top 32 MiB in 1 MiB pieces: the BIOS image, and the small BARs firmware places just below the I/O
# APIC (expansion ROMs, register BARs), each replace a small piece, not 16 MiB (4096 page flushes, ~2-5 ms).
FINE_START, FINE_PIECE = LOW_4G - (32 << 20), 1 << 20
MAX_SPLIT = 256 << 20                     # map_ram refuses a range whose MMIO pieces exceed this (flush cost)

_MMIO_READ_CFUNC = ctypes.CFUNCTYPE(c_uint64, c_void_p, c_uint64, c_uint32, c_void_p)
_MMIO_WRITE_CFUNC = ctypes.CFUNCTYPE(None, c_void_p, c_uint64, c_uint32, c_uint64, c_void_p)
# bool cb(uc_engine *uc, uc_mem_type type, uint64_t address, int size, int64_t value, void *user_data)
_WRITE_PROT_CFUNC = ctypes.CFUNCTYPE(ctypes.c_bool, c_void_p, c_int, c_uint64, c_int, ctypes.c_int64, c_void_p)
WRITE_PROT_LOW = (0xC_0000, 0xF_FFFF)      # the write-protection hooks' ranges (inclusive), see _map_memory
WRITE_PROT_HIGH = (0xFF00_0000, 0xFFFF_FFFF)
SHADOW_CHUNK = 0x4000                     # below 1 MiB, RAM may be mapped in 16 KiB pieces (PAM segments)
LOW_1M = 0x10_0000


class SoftwareMemoryMap:
    """The memory-map part of SoftwareAccelerator (see the module docstring)."""

    uc: unicorn.Uc
    uch: int
    q: ui._Qemu
    view: ui.CpuView
    natives: _Natives
    memory: GuestMemory
    mmio: MmioBus
    owner: threading.Thread | None
    current: SoftwareVcpu | None
    running: SoftwareVcpu | None
    ram_mappings: list[MemoryRegion]
    _callbacks: list
    _fail: Callable[[str], None]

    def _init_memory_map(self) -> None:
        self._pending_invalidations: list[tuple[int, int]] = []
        self._inval_kicked: tuple[object, int] | None = None    # (vCPU, slice) last kicked for invalidations
        self._inval_lock = threading.Lock()
        # What a device thread needs to tell whether a write can touch translated code (see _may_hold_code):
        # the code bitmap, and guest RAM above 1 MiB as (gpa, end, ram_addr of gpa). None: assume it can.
        self._code_pages: tuple[memoryview, list[tuple[int, int, int]]] | None = None
        self._map_lock = threading.Lock()
        self._mmio_pieces: dict[int, int] = {}          # start -> size of the MMIO regions over the holes
        self._device_ram: dict[int, tuple[int, int]] = {}  # gpa -> (host address, size) of map_ram mappings
        self._pending_map_ops: list[tuple] = []
        self._flat_context = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()

    def _map_memory(self) -> None:
        uc, mem = self.uc, self.memory
        # RAM minus the legacy VGA window (cpu_mappings): guest accesses to 0xA0000-0xBFFFF reach the VGA model.
        self.ram_mappings = mem.cpu_mappings()
        for region in self.ram_mappings:
            uc.mem_map_ptr(region.gpa, region.size, unicorn.UC_PROT_ALL, mem.host_address(region))
        # Everything that is not RAM is MMIO: the bus may gain devices (VGA, PCI BARs) at any time, and an
        # access nobody claims reads as all ones, as on a PC.
        holes = []
        cursor = 0
        for region in sorted(self.ram_mappings, key=lambda r: r.gpa):
            if region.gpa > cursor:
                holes.append((cursor, region.gpa - cursor))
            cursor = region.end
        holes.append((cursor, INTA_PAGE - cursor))
        self._hole_read = read_cb = _MMIO_READ_CFUNC(self._mmio_read)
        self._hole_write = write_cb = _MMIO_WRITE_CFUNC(self._mmio_write)
        self._callbacks += [read_cb, write_cb]
        # Writes to the holes go through the native EOI stub first; all but an armed EOI reach _mmio_write.
        self.doorbells = DoorbellTable()
        self.fast_eoi = FastEoiBlock(ui.addr_of(write_cb), self.doorbells.address)
        for start, size in holes:
            for piece, piece_size in _pieces(start, start + size):
                self._map_hole(piece, piece_size)
                self._mmio_pieces[piece] = piece_size
        # The power-on CPU state: real mode, no paging, so QEMU's virtual->physical translation is the identity
        # while the memory map changes (see the module docstring).
        ctypes.memmove(self._flat_context, self.view.env, ui.ENV_END_RESET_FIELDS)
        inta_read = _MMIO_READ_CFUNC(self._inta_read)
        inta_write = _MMIO_WRITE_CFUNC(lambda *a: None)
        self._callbacks += [inta_read, inta_write]
        # A vCPU alone on this instance may take its timer's tick, and a lone device interrupt, natively: the
        # acknowledge reads through the native stub first, which hands everything else to _inta_read
        # (uc_native_tick).
        self.native_tick: NativeTick | None = None
        if self.one_vcpu_per_instance and native_tick_wanted():
            self.native_tick = NativeTick(self.natives.native_tick, ui.addr_of(inta_read))
            self._mmio_map(INTA_PAGE, 0x1000, self.natives.native_tick.inta_stub, inta_write,
                           self.native_tick.address)
        else:
            self._mmio_map(INTA_PAGE, 0x1000, inta_read, inta_write, 0)
        self.view.vm_vmcb = INTA_PAGE + 0x100 - ui.VMCB_INT_VECTOR
        # A write to memory mapped read-only (map_ram readonly=True: ROM, write-protected shadow RAM) reaches the
        # MMIO bus like an access to a hole; "handled" makes unicorn carry on, and QEMU then discards the store
        # (TLB_DISCARD_WRITE: the region is read-only in QEMU's memory map, see _apply_map_ops).
        self._write_prot_cb = _WRITE_PROT_CFUNC(self._write_protected)
        self._callbacks.append(self._write_prot_cb)
        # Bounded to where firmware maps read-only memory (shadow RAM below 1 MiB, the BIOS image below 4 GiB; a
        # store to a PCI expansion ROM stops the VM instead): unicorn keeps every page a memory hook covers on its
        # slow store path (a memory-map lookup per store), so an unbounded hook made every guest store to a page
        # holding code 5x slower. The one below 1 MiB is there only while something there is mapped read-only
        # (_update_low_write_hook): SeaBIOS's POST runs with all shadow RAM writable, copying itself and the VGA
        # BIOS there and keeping its variables there, and those stores then take the fast path.
        self._write_prot_high = self._add_write_prot_hook(*WRITE_PROT_HIGH)
        self._write_prot_low: int | None = None
        self._readonly_low: set[int] = set()        # gpa of applied read-only mappings inside WRITE_PROT_LOW

    def _add_write_prot_hook(self, begin: int, end: int) -> int:
        handle = ctypes.c_size_t()
        err = self.q.uc_hook_add(self.uch, ctypes.byref(handle), unicorn.UC_HOOK_MEM_WRITE_PROT,
                                 ctypes.cast(self._write_prot_cb, c_void_p), None, c_uint64(begin), c_uint64(end))
        if err:
            raise AcceleratorUnavailable(f"unicorn refused the write-protection hook: error {err}")
        return handle.value

    def _update_low_write_hook(self) -> None:
        """Outside emu_start (in _apply_map_ops, before the TLB flush that follows it): the hook below 1 MiB
        exactly while a read-only mapping there has been applied."""
        want = bool(self._readonly_low)
        if want and self._write_prot_low is None:
            self._write_prot_low = self._add_write_prot_hook(*WRITE_PROT_LOW)
        elif not want and self._write_prot_low is not None:
            err = ui._lib.uc_hook_del(self.uch, self._write_prot_low)
            if err:
                raise AcceleratorUnavailable(f"unicorn refused to remove the write-protection hook: error {err}")
            self._write_prot_low = None

    # -- device memory as RAM ---------------------------------------------------------------------------------
    supports_ram_mapping = True
    supports_readonly_mapping = True

    def map_ram(self, gpa: int, host_addr: int, size: int, readonly: bool = False) -> None:
        """Replace the MMIO pieces over [gpa, gpa + size) by RAM at host_addr (without write permission when
        `readonly`: writes then reach the MMIO bus); applied before the next slice."""
        end = gpa + size
        if size <= 0 or (gpa | host_addr | size) & 0xFFF:
            raise ValueError(f"device RAM {gpa:#x}+{size:#x} must be page-aligned")
        if end > LOW_4G:
            raise ValueError(f"device RAM at {gpa:#x}+{size:#x} is above 4 GiB")
        with self._map_lock:
            hit = sorted((s, n) for s, n in self._mmio_pieces.items() if s < end and gpa < s + n)
            covered = sum(min(s + n, end) - max(s, gpa) for s, n in hit)
            if covered != size:
                raise ValueError(f"device RAM at {gpa:#x}+{size:#x} overlaps RAM or other device RAM")
            if sum(n for _, n in hit) > MAX_SPLIT:
                raise ValueError(f"device RAM at {gpa:#x}+{size:#x} would split a large MMIO region")
            ops: list[tuple] = []
            for s, n in hit:
                del self._mmio_pieces[s]
                ops.append(("unmap", s, n))
                for lo, hi in ((s, gpa), (end, s + n)):
                    if lo < hi:
                        self._mmio_pieces[lo] = hi - lo
                        ops.append(("mmio", lo, hi - lo))
            ops.append(("ram", gpa, size, host_addr, readonly))
            self._device_ram[gpa] = (host_addr, size)
            self._pending_map_ops += ops
        self._request_map_apply()

    def unmap_ram(self, gpa: int) -> None:
        """The range becomes MMIO again (one piece of its size); applied before the next slice."""
        with self._map_lock:
            if gpa not in self._device_ram:
                raise ValueError(f"no device RAM mapped at {gpa:#x}")
            host_addr, size = self._device_ram.pop(gpa)
            self._mmio_pieces[gpa] = size
            self._pending_map_ops += [("unmap_ram", gpa, size, host_addr), ("mmio", gpa, size)]
        self._request_map_apply()

    def add_ioeventfd(self, gpa: int, fd: int) -> None:
        """A 2-byte write to `gpa` rings eventfd `fd` in the native MMIO write stub (uc_doorbells); at once."""
        self.doorbells.add(gpa, fd)

    def remove_ioeventfd(self, gpa: int) -> None:
        self.doorbells.remove(gpa)

    def ram_mappings_settled(self) -> bool:
        """No request is waiting for _apply_map_ops (which runs on the owner thread, between slices)."""
        return not self._pending_map_ops

    def _request_map_apply(self) -> None:
        running = self.running
        if running is None:
            return                                   # the next acquire() applies it
        if self.owner is threading.current_thread():
            self.q.uc_emu_stop(self.uch)             # from a hook of this slice: it ends at the next block
        else:
            running.kick_for_interrupt()

    def _apply_map_ops(self) -> None:
        """On the owner thread, outside emu_start: carry out queued map_ram/unmap_ram requests."""
        with self._map_lock:
            ops, self._pending_map_ops = self._pending_map_ops, []
        v, uc = self.view, self.uc
        saved = (ctypes.c_char * ui.ENV_END_RESET_FIELDS)()
        ctypes.memmove(saved, v.env, ui.ENV_END_RESET_FIELDS)
        exception_index = v._exception_index.value
        ctypes.memmove(v.env, self._flat_context, ui.ENV_END_RESET_FIELDS)
        v.tlb_flush()
        try:
            for op in ops:
                kind, start, size = op[:3]
                self.natives.region_lookup.forget_overlapping(self.uch, start, size)
                if kind == "unmap":
                    uc.mem_unmap(start, size)
                elif kind == "mmio":
                    self._map_hole(start, size)
                elif kind == "ram":
                    uc.mem_map_ptr(start, size, unicorn.UC_PROT_ALL, op[3])
                    if op[4] and start <= WRITE_PROT_LOW[1] and WRITE_PROT_LOW[0] < start + size:
                        self._readonly_low.add(start)
                    if op[4]:
                        # uc_mem_protect, unlike the perms of uc_mem_map_ptr, also makes the region read-only in
                        # QEMU's memory map, so a store the hook lets through is discarded, never written.
                        uc.mem_protect(start, size, unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC)
                else:                                # "unmap_ram": its translated code goes with it
                    self._readonly_low.discard(start)
                    v.invalidate_ram(op[3], size)
                    uc.mem_unmap(start, size)
            self._update_low_write_hook()
        except Exception as exc:
            log.exception("software CPU: changing the memory map failed")
            detail = fault_line("changing the memory map failed", exc)
            vcpu = self.current
            if vcpu is not None and vcpu.error is None:
                vcpu.error = detail
        finally:
            ctypes.memmove(v.env, saved, ui.ENV_END_RESET_FIELDS)
            v._exception_index.value = exception_index
            v.tlb_flush()

    def _track_code_pages(self) -> None:
        """Give this instance a code bitmap over its RAM's ram_addr space (uc_codetrack.CodeDirtyTracking)."""
        top = 0
        for region in self.ram_mappings:
            last = self.q.ram_addr_from_host(self.uch, self.memory.host_address(region) + region.size - 1)
            if last != 0xFFFF_FFFF_FFFF_FFFF:
                top = max(top, last + 1)
        self.natives.code_tracking.register(self.uch, top + (64 << 20))   # headroom for RAM mapped later
        if self.natives.block_cache is not None:
            self.natives.block_cache.register(self.uch)                  # uc_tb_cache
        bitmap = self.natives.code_tracking.bitmap(self.uch)
        if bitmap is not None:
            spans = []
            for r in self.ram_mappings:
                lo = max(r.gpa, LOW_1M)
                if lo < r.end:
                    ram = self.q.ram_addr_from_host(self.uch, self.memory.host_address(r) + (lo - r.gpa))
                    if ram != 0xFFFF_FFFF_FFFF_FFFF:
                        spans.append((lo, r.end, ram))
            self._code_pages = (bitmap, spans)
        # Page-table walks read RAM directly (uc_physread); RAM mapped later (map_ram) keeps QEMU's path.
        self.natives.page_table_reads.register(self.view.cpu, [(r.gpa, r.size, self.memory.host_address(r))
                                                               for r in self.ram_mappings])
        # The slow path's region lookup answers guest RAM from a table (uc_region_lookup), likewise.
        self.natives.region_lookup.register(self.uch, [(r.gpa, r.size) for r in self.ram_mappings])

    def _map_hole(self, start: int, size: int) -> None:
        self._mmio_map(start, size, self._hole_read, self.natives.fast_eoi.write_stub, start,
                       write_user=self.fast_eoi.user_for(start))

    def _mmio_map(self, start: int, size: int, read_cb, write_cb, user: int, write_user: int | None = None) -> None:
        write = write_cb if isinstance(write_cb, int) else ui.addr_of(write_cb)     # a native stub's address
        read = read_cb if isinstance(read_cb, int) else ui.addr_of(read_cb)
        err = self.q.uc_mmio_map(self.uch, start, size, c_void_p(read), c_void_p(user),
                                 c_void_p(write), c_void_p(user if write_user is None else write_user))
        if err:
            raise AcceleratorUnavailable(f"unicorn cannot map MMIO at {start:#x}+{size:#x}: error {err}")

    def _ram_written(self, gpa: int, length: int) -> None:
        """GuestMemory write listener: translated code in the range is stale."""
        if self.owner is threading.current_thread():
            self._invalidate(gpa, length)
        elif self._may_hold_code(gpa, length):
            with self._inval_lock:
                self._pending_invalidations.append((gpa, length))
            # One kick per slice: the kicked slice ends and the next one starts by draining the whole list (this
            # range too), so a second kick into the same slice does nothing but cost. A device delivering a
            # received frame writes ~40 times (buffers, used entries, the index); a kick each was a uc_emu_stop
            # per write for the device's thread. A slice begun since the last kick is kicked again.
            running = self.running
            if running is not None:
                slice_id = (running, running._slice_seq)
                if slice_id != self._inval_kicked:
                    self._inval_kicked = slice_id
                    running.kick_for_interrupt()

    def _may_hold_code(self, gpa: int, length: int) -> bool:
        """False when no page of [gpa, +length) holds translated code now, by the code bitmap: a device's write
        there (a received frame, a disk read) then needs neither an invalidation nor a kick of the running vCPU,
        which QEMU skips the same way (address_space_write -> invalidate_and_set_dirty tests DIRTY_MEMORY_CODE).
        A page translated after this test was read by the translator after the write had landed: the device
        wrote before calling the listener. Below 1 MiB, or where the range leaves the RAM spans: True."""
        pages = self._code_pages
        if pages is None or length <= 0:
            return True
        bitmap, spans = pages
        end = gpa + length
        for lo, hi, ram in spans:
            if lo <= gpa and end <= hi:
                first = (ram + gpa - lo) >> 12
                last = (ram + end - 1 - lo) >> 12
                for page in range(first, last + 1):
                    if bitmap[page >> 3] >> (page & 7) & 1:
                        return True
                return False
        return True

    def _invalidate(self, gpa: int, length: int) -> None:
        """Translated code is looked up by the RAM block holding the host address; below 1 MiB guest RAM may be
        mapped piecewise (shadow RAM, map_ram) or not at all, so the range is cut at those pieces' bounds and
        host addresses no block holds are skipped (view.invalidate_ram)."""
        mem = self.memory
        for r in mem.regions:
            lo, hi = max(gpa, r.gpa), min(gpa + length, r.end)
            while lo < hi:
                stop = min(hi, (lo // SHADOW_CHUNK + 1) * SHADOW_CHUNK) if lo < LOW_1M else hi
                self.view.invalidate_ram(mem.host_base + r.offset + (lo - r.gpa), stop - lo)
                lo = stop

    def _drain_invalidations(self) -> None:
        if self._pending_invalidations:
            with self._inval_lock:
                pending, self._pending_invalidations = self._pending_invalidations, []
            if not pending:
                return
            # Adjacent and overlapping ranges as one: a received frame's buffers are mostly consecutive (the
            # driver carves them from one large page) and the used ring's entries are, and each range is two
            # calls into the library.
            pending.sort()
            start, end = pending[0][0], pending[0][0] + pending[0][1]
            for gpa, length in pending[1:]:
                if gpa <= end:
                    end = max(end, gpa + length)
                    continue
                self._invalidate(start, end - start)
                start, end = gpa, gpa + length
            self._invalidate(start, end - start)

    def _mmio_read(self, _uc, offset: int, size: int, base: int) -> int:
        addr = (base or 0) + offset
        try:
            vcpu = self.current
            if vcpu is not None:
                apic_base = vcpu.lapic.mmio_base
                if apic_base is not None and apic_base <= addr < apic_base + 0x1000:
                    return vcpu.lapic.mmio_read(addr - apic_base, size)
            return self.mmio.read(addr, size)
        except Exception:
            self._fail(f"MMIO read {addr:#x}/{size}")
            return 0

    def _mmio_write(self, _uc, offset: int, size: int, value: int, base: int) -> None:
        addr = (base or 0) + offset
        try:
            vcpu = self.current
            if vcpu is not None:
                apic_base = vcpu.lapic.mmio_base
                if apic_base is not None and apic_base <= addr < apic_base + 0x1000:
                    vcpu.lapic.mmio_write(addr - apic_base, size, value)
                    return
            self.mmio.write(addr, size, value)
        except Exception:
            self._fail(f"MMIO write {addr:#x}/{size} <- {value:#x}")

    def _write_protected(self, _uc, _type: int, addr: int, size: int, value: int, _ud) -> bool:
        try:
            self.mmio.write(addr, size, value & ((1 << (8 * size)) - 1))
        except Exception:
            self._fail(f"write to read-only memory {addr:#x}/{size} <- {value:#x}")
        return True

    def _inta_read(self, _uc, offset: int, size: int, _ud) -> int:
        """QEMU's CPU loop takes the VIRQ request: this read is the interrupt-acknowledge cycle."""
        try:
            vcpu = self.current
            vector = vcpu.lapic.acknowledge()
            vcpu.stats_interrupts += 1
            return vector
        except Exception:
            self._fail("interrupt acknowledge")
            return 0xFF


def _pieces(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut at MMIO_PIECE boundaries below 4 GiB (FINE_PIECE ones from FINE_START); one piece above."""
    out = []
    while start < end:
        if start >= LOW_4G:
            out.append((start, end - start))
            break
        piece = FINE_PIECE if start >= FINE_START else MMIO_PIECE
        stop = min(end, (start // piece + 1) * piece)
        out.append((start, stop - start))
        start = stop
    return out

