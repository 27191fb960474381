"""Self-modifying code on the software CPU with QEMU's code-page write tracking restored
(uc_internals.CodeDirtyTracking): stores to pages without translated code take the fast path even where the
page tables allow execution, and every store that changes translated code is still seen -- in the same page as
running code, after data writes made the page's TLB entry fast, and through a second virtual alias."""
from __future__ import annotations

import threading
import time

import pytest

from core.hypervisor.base import CpuState, ExitReason, Segment
from tests.helpers.software_guest import Rig, assemble

pytest.importorskip("unicorn")


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def flat32(entry: int, cr0: int = 0x11, cr3: int = 0) -> CpuState:
    s = CpuState()
    flat = dict(base=0, limit=0xFFFF_FFFF, db=True, g=True)
    s.cs = Segment(selector=0x08, type=0xB, **flat)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, Segment(selector=0x10, type=3, **flat))
    s.cr0, s.cr3 = cr0, cr3
    s.rip = entry
    s.regs["rsp"] = 0x9000
    return s


def test_tracking_is_installed_on_the_pinned_unicorn():
    from core.hypervisor import uc_native
    tracking = uc_native.natives().code_tracking
    assert tracking.active, tracking.reason


# Paging off: every page is executable. `f` returns the immediate of its `mov`. Each round first writes data
# into the page (64 stores that touch no code: the TLB entry must stay on the slow path, the page still holds
# translated code), then rewrites that immediate and calls f, which must return the new value.
SAME_PAGE = r"""
        .code32
start:  xor %esi, %esi                  # sum of what f returned
        mov $1, %ebx
1:      mov $64, %ecx
2:      mov %ecx, data(,%ecx,4)         # data stores next to the code
        loop 2b
        mov %ebx, f + 1                 # f: mov $imm32, %eax -- patch the immediate
        call f
        add %eax, %esi
        inc %ebx
        cmp $200, %ebx
        jbe 1b
        mov %esi, %eax
        mov $0xE9, %dx
        out %eax, %dx
        cli
        hlt
        .align 16
f:      mov $0, %eax
        ret
data:   .fill 65 * 4, 1, 0
"""


def test_code_patched_in_a_page_that_also_takes_data_writes(rig):
    rig.memory.write(0x10000, assemble(SAME_PAGE, 32, 0x10000))
    ex = rig.run(flat32(0x10000))
    assert ex.reason == ExitReason.HALTED
    assert rig.debug.words == [sum(range(1, 201))]


# Paging on, no NX (32-bit paging): physical page 0x30000 is mapped at 0x400000 (executed) and at 0x800000
# (written). The alias is written first while the page holds no code (its TLB entry goes fast), then the code
# runs through 0x400000, then is changed through the alias: the change must be seen.
ALIAS = r"""
        .code32
start:  mov $0x20000, %edi              # page directory at 0x20000, page tables at 0x21000 and 0x22000
        movl $0x21003, (%edi)           # 0-4 MiB: identity
        movl $0x22003, 4(%edi)          # 4-8 MiB: 0x400000 -> 0x30000
        movl $0x23003, 8(%edi)          # 8-12 MiB: 0x800000 -> 0x30000
        xor %ecx, %ecx
1:      mov %ecx, %eax
        shl $12, %eax
        or $3, %eax
        mov %eax, 0x21000(,%ecx,4)
        inc %ecx
        cmp $1024, %ecx
        jb 1b
        movl $0x30003, 0x22000
        movl $0x30003, 0x23000
        mov $0x20000, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        mov $0x800000, %edi             # write `mov $1, %eax; ret` through the alias: no code there yet
        movl $0x000001B8, (%edi)
        movl $0x0000C300, 4(%edi)
        mov $0x400000, %eax
        call *%eax                      # translate and run it: 1
        mov $0xE9, %dx
        out %eax, %dx
        movl $0x000002B8, 0x800000      # now `mov $2, %eax` through the same alias TLB entry
        mov $0x400000, %eax
        call *%eax
        out %eax, %dx
        cli
        hlt
"""


def test_code_changed_through_a_virtual_alias(rig):
    rig.memory.write(0x10000, assemble(ALIAS, 32, 0x10000))
    ex = rig.run(flat32(0x10000))
    assert ex.reason == ExitReason.HALTED
    assert rig.debug.words == [1, 2]


def test_host_writes_to_code_are_seen(rig):
    """A device (DMA) or the loader rewriting code the guest already ran: translations are dropped."""
    code = assemble(r"""
        .code32
1:      call f
        mov $0xE9, %dx
        out %eax, %dx
        cmp $2, %eax
        jne 1b
        cli
        hlt
        .align 16
f:      mov $1, %eax
        ret
    """, 32, 0x10000)
    f = 0x10000 + code.index(bytes.fromhex("b8 01 00 00 00 c3"))
    rig.memory.write(0x10000, code)
    seen = []

    def on_port(value: int) -> None:
        seen.append(value)
        if len(seen) == 3:
            rig.memory.write(f + 1, (2).to_bytes(4, "little"))
    rig.debug.io_write = lambda port, size, value: on_port(value)
    ex = rig.run(flat32(0x10000))
    assert ex.reason == ExitReason.HALTED
    assert seen == [1, 1, 1, 2]


@pytest.mark.parametrize("base", [0x10000, 0x200000], ids=["below-1MiB", "above-1MiB"])
def test_a_device_threads_burst_of_writes_into_running_code_is_seen(rig, base):
    """A device thread (not the vCPU's) writes a page of code the guest is running in a tight loop without
    exits: many data writes into the page, then the new immediate. The vCPU is kicked once per slice for such
    writes (software_memory._ram_written) and drains every range before its next slice, so the last write,
    made while a kick for the first is still out, is seen too; without a kick the loop never ends. Above 1 MiB
    the device thread decides by the code bitmap whether to kick at all, so this also checks that lookup."""
    code = assemble(r"""
        .code32
        jmp start
        .align 16
data:   .fill 256, 1, 0                 # below the code: its ranges sort before the immediate's
start:  mov $0xE9, %dx
        mov $7, %eax
        out %eax, %dx                   # running: the host starts writing now
1:      call f
        cmp $2, %eax
        jne 1b
        out %eax, %dx
        cli
        hlt
        .align 16
f:      mov $1, %eax
        ret
    """, 32, base)
    f = base + code.index(bytes.fromhex("b8 01 00 00 00 c3"))
    data = base + 0x10
    rig.memory.write(base, code)
    started = threading.Event()

    def device() -> None:
        started.wait(10)
        time.sleep(0.05)                # the loop has been translated and is running
        for i in range(0, 200, 2):      # every other byte: 100 ranges that do not merge
            rig.memory.write(data + i, bytes([i & 0xFF]))
        rig.memory.write(f + 1, (2).to_bytes(4, "little"))

    rig.debug.io_write = lambda port, size, value: (rig.debug.words.append(value), started.set())
    writer = threading.Thread(target=device)
    writer.start()
    ex = rig.run(flat32(base), timeout=10)
    writer.join()
    assert ex.reason == ExitReason.HALTED
    assert rig.debug.words == [7, 2]


def test_a_device_write_where_no_code_was_translated_costs_the_vcpu_nothing(rig):
    """A device thread's write (a received frame, a disk block) to RAM above 1 MiB whose pages hold no translated
    code queues no invalidation and kicks no vCPU: the code bitmap says so, as QEMU's DIRTY_MEMORY_CODE does.
    A write to a page that does hold translated code is still queued."""
    code = assemble(r"""
        .code32
        mov $0xE9, %dx
        mov $1, %eax
        out %eax, %dx
        cli
        hlt
    """, 32, 0x200000)
    rig.memory.write(0x200000, code)
    assert rig.run(flat32(0x200000)).reason == ExitReason.HALTED
    accel = rig.accel

    def from_a_device_thread(gpa: int, data: bytes) -> list:
        accel._pending_invalidations.clear()
        writer = threading.Thread(target=rig.memory.write, args=(gpa, data))
        writer.start()
        writer.join()
        return list(accel._pending_invalidations)

    assert from_a_device_thread(0x300000, bytes(8192)) == []             # two pages, no code in either
    assert from_a_device_thread(0x1FF000, bytes(4096)) == []             # the page just below the code
    assert from_a_device_thread(0x200000 + len(code), b"\x90") == [(0x200000 + len(code), 1)]   # the code page
    assert from_a_device_thread(0x1FFFFC, bytes(8)) == [(0x1FFFFC, 8)]     # straddling into it
    assert from_a_device_thread(0x80000, b"\x90") == [(0x80000, 1)]       # below 1 MiB: always queued
