"""Page-table reads straight from guest RAM: a native fast path in front of QEMU's `x86_ldq_phys`/`x86_ldl_phys`.

Every TLB refill walks the guest's page tables (Intel SDM vol. 3, 4.4-4.5: up to four 8-byte reads in IA-32e
mode, two 4-byte reads with 32-bit paging), and QEMU's x86 walker reads each entry through `x86_ldq_phys` /
`x86_ldl_phys` (target/i386/helper.c): memory attributes, address-space index, then `address_space_ldq`, which
looks the address up in the FlatView (flatview_translate) before it loads from RAM. In the sha256 workload
(a context switch, hence a full TLB flush, every pipe buffer) that lookup was ~5 % of the vCPU thread.

The guest's RAM is host memory the backend gave unicorn (uc_mem_map_ptr), at fixed guest-physical ranges for the
VM's life. Each unicorn instance registers those ranges here (per CPUState); the wrappers below, redirected in
through the two functions' GOT slots, load the entry from host memory when the whole access lies in a
registered range and the CPU is not in SMM (whose address space differs), and otherwise jump to QEMU's own
function with the same arguments. The result is the same little-endian load address_space_ldq/ldl does on RAM;
MMIO, device RAM mapped later (not registered) and addresses outside RAM take QEMU's path.
"""
from __future__ import annotations

import ctypes
from ctypes import c_uint64

from core.hypervisor.uc_internals import ENV_HFLAGS, X86CPU_ENV, UnicornInternalsError
from core.hypervisor.uc_patch import _find_helper_slots, _imm64, _NativePage, _poke_pointer

HF_SMM_MASK = 1 << 19
RANGE_ENTRIES = 256            # (cpu, gpa start, size, host address) rows shared by every instance in the process


def phys_load_code(table: int, original: int, width: int) -> bytes:
    """uint64_t x86_ldq_phys(CPUState *cs, hwaddr addr) (width 8) / uint32_t x86_ldl_phys (width 4):
         testl $HF_SMM, X86CPU_ENV+ENV_HFLAGS(%rdi); jnz original     ; SMM: QEMU's path
         movabs table, %rax
       next: mov (%rax), %rcx; test %rcx, %rcx; jz original          ; end of the table
         cmp %rcx, %rdi; jne skip                                     ; another instance's range
         mov %rsi, %rdx; sub 8(%rax), %rdx                            ; offset = addr - start
         cmp 16(%rax), %rdx; jae skip                                 ; offset < size ...
         lea WIDTH(%rdx), %rcx; cmp 16(%rax), %rcx; ja skip           ; ... and offset + width <= size
         mov 24(%rax), %rcx; mov (%rcx,%rdx), %rax (width 8) | %eax (width 4); ret
       skip: add $32, %rax; jmp next
       original: movabs original, %rax; jmp *%rax"""
    if X86CPU_ENV + ENV_HFLAGS != 0x8B00:
        raise UnicornInternalsError("env->hflags is not where the page-table fast path reads it")
    head = bytes.fromhex("f787008b000000000800")
    if width == 8:
        return (head + b"\x75\x3d\x48\xb8" + _imm64(table)
                + bytes.fromhex("488b084885c9742b4839cf75204889f2482b5008483b50107313488d4a08483b48107709"
                                "488b4818488b0411c34883c020ebcd")
                + b"\x48\xb8" + _imm64(original) + b"\xff\xe0")
    if width == 4:
        return (head + b"\x75\x3c\x48\xb8" + _imm64(table)
                + bytes.fromhex("488b084885c9742a4839cf751f4889f2482b5008483b50107312488d4a04483b48107708"
                                "488b48188b0411c34883c020ebce")
                + b"\x48\xb8" + _imm64(original) + b"\xff\xe0")
    raise ValueError(width)


class PageTableReads:
    """The fast path above, installed once per process. `register` gives an instance's CPU its RAM ranges;
    without registration (or if installing failed: `reason`) every read takes QEMU's path."""

    def __init__(self, page: _NativePage) -> None:
        self.active = False
        self.reason = ""
        self.table = (c_uint64 * (4 * RANGE_ENTRIES + 4))()
        self.functions: dict[int, tuple[int, int]] = {}       # width -> (fast path, QEMU's function)
        try:
            self._install(page)
            self.active = True
        except UnicornInternalsError as exc:
            self.reason = str(exc)

    def _install(self, page: _NativePage) -> None:
        names = {"x86_ldq_phys_x86_64": 8, "x86_ldl_phys_x86_64": 4}
        slots = _find_helper_slots(list(names))
        table = ctypes.addressof(self.table)
        for name, width in names.items():
            original, pointer_slots = slots[name]
            stub = page.add(phys_load_code(table, original, width))
            self.functions[width] = (stub, original)
            for slot in pointer_slots:
                _poke_pointer(slot, original, stub)

    def register(self, cpu: int, ranges: list[tuple[int, int, int]]) -> None:
        """Guest RAM [gpa, gpa + size) at host address `host`, for each (gpa, size, host), as CPUState `cpu` sees
        it. Before that CPU first runs; rows are written cpu-last, so a reader never sees half a row."""
        if not self.active:
            return
        t = self.table
        free = [i for i in range(RANGE_ENTRIES) if t[4 * i] in (0, 1)]
        if len(free) < len(ranges):
            return                                 # table full: QEMU's path for this instance (still correct)
        for i, (gpa, size, host) in zip(free, ranges, strict=False):
            t[4 * i + 1], t[4 * i + 2], t[4 * i + 3] = gpa, size, host
            t[4 * i] = cpu

    def unregister(self, cpu: int) -> None:
        t = self.table
        for i in range(RANGE_ENTRIES):
            if t[4 * i] == cpu:
                t[4 * i] = 1                       # tombstone: never matches, the scan walks past it (the
                                                   # rest of the row stays valid for a reader mid-scan)
