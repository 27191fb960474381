"""Tiny guests on the software CPU: real-mode IVT interrupts and the PIT, 32-bit protected mode with a ring-3 task
taking INT 0x80 and a page fault, 64-bit long mode with SYSCALL/SYSRET and a #PF on an IST stack, the local APIC
timer (x2APIC one-shot and TSC-deadline), atomicity of LOCK instructions under constant time-slice stops, and
the triple-fault / HLT-with-interrupts-off endings."""
from __future__ import annotations

import struct
import threading

import pytest

from core.hypervisor.base import CpuState, DescriptorTable, ExitReason, Segment
from tests.helpers.software_guest import Rig, assemble

pytest.importorskip("unicorn")


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


# -- real mode ---------------------------------------------------------------------------------------------------
REAL_MODE = r"""
        .code16
start:  cli
        mov $0x07C0, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x1000, %sp
        xor %ax, %ax
        mov %ax, %es
        movw $irq0, %es:0x20            # IVT[8]: IRQ0 with the PIC's vector base at 8, as a PC BIOS sets it
        movw $0x07C0, %es:0x22
        movw $swint, %es:0x84           # IVT[0x21]
        movw $0x07C0, %es:0x86
        mov $0x11, %al                  # 8259A: ICW1..ICW4, master base 8, slave base 0x70
        out %al, $0x20
        mov $0x08, %al
        out %al, $0x21
        mov $0x04, %al
        out %al, $0x21
        mov $0x01, %al
        out %al, $0x21
        mov $0xFE, %al                  # only IRQ0
        out %al, $0x21
        mov $0x11, %al
        out %al, $0xA0
        mov $0x70, %al
        out %al, $0xA1
        mov $0x02, %al
        out %al, $0xA1
        mov $0x01, %al
        out %al, $0xA1
        mov $0xFF, %al
        out %al, $0xA1
        mov $0x34, %al                  # 8254 channel 0, mode 2, divisor 1193 (1 kHz)
        out %al, $0x43
        mov $0xA9, %al
        out %al, $0x40
        mov $0x04, %al
        out %al, $0x40
        int $0x21
        sti
wait:   hlt
        cmpw $5, ticks
        jb wait
        cli
        mov $'T', %al
        out %al, $0xE9
        hlt
irq0:   push %ax
        incw ticks
        mov $0x20, %al
        out %al, $0x20
        pop %ax
        iret
swint:  push %ax
        mov $'R', %al
        out %al, $0xE9
        pop %ax
        iret
ticks:  .word 0
"""


def test_real_mode_ivt_and_pit(rig):
    rig.memory.write(0x7C00, assemble(REAL_MODE, 16, 0))
    s = CpuState()
    s.cs = Segment(selector=0x07C0, base=0x7C00, limit=0xFFFF, type=0xB)
    s.rip = 0
    ex = rig.run(s)
    assert bytes(rig.debug.out) == b"RT"
    assert ex.reason == ExitReason.HALTED


# -- 32-bit protected mode: ring 3, INT 0x80 through a DPL-3 gate, a user page fault ----------------------------
PMODE32 = r"""
        .code32
        .set TSS, 0x13000
start:  lgdt gdtr
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0x18000, %esp
        movl $0x18000, TSS+4            # TSS.ESP0 / SS0: the ring-0 stack for the privilege change
        movl $0x10, TSS+8
        movw $0x68, TSS+0x66
        mov $0x28, %ax
        ltr %ax
        mov $pf, %eax                   # IDT: #PF (interrupt gate, DPL 0), 0x80 (interrupt gate, DPL 3)
        mov $0x8E00, %ebx
        mov $14, %ecx
        call setgate
        mov $sys80, %eax
        mov $0xEE00, %ebx
        mov $0x80, %ecx
        call setgate
        lidt idtr
        mov $0x20000, %edi              # page table: identity 0-4 MiB, user, except 0x300000 not present
        xor %ecx, %ecx
2:      mov %ecx, %eax
        shl $12, %eax
        or $7, %eax
        mov %eax, (%edi,%ecx,4)
        inc %ecx
        cmp $1024, %ecx
        jb 2b
        movl $0, 0x20000 + 0x300 * 4
        movl $0x20007, 0x21000          # page directory entry 0
        mov $0x21000, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        push $0x23                      # iret to ring 3
        push $0x1C000
        pushf
        push $0x1B
        push $user
        iret
user:   mov $0x23, %ax
        mov %ax, %ds
        int $0x80
        movl $1, 0x300000
        jmp .
sys80:  mov $'S', %al
        out %al, $0xE9
        mov 4(%esp), %eax               # the interrupted CS: its RPL is the caller's privilege
        and $3, %eax
        add $'0', %al
        out %al, $0xE9
        iret
pf:     pop %eax                        # error code
        mov $0xE9, %dx
        out %eax, %dx
        mov %cr2, %eax
        out %eax, %dx
        mov %esp, %eax
        out %eax, %dx
        cli
        hlt
setgate:                                # eax = handler, ebx = type/DPL bits, ecx = vector
        lea idt(,%ecx,8), %edi
        mov %eax, %edx
        and $0xFFFF, %eax
        or $0x80000, %eax
        mov %eax, (%edi)
        and $0xFFFF0000, %edx
        or %ebx, %edx
        mov %edx, 4(%edi)
        ret
        .align 8
gdt:    .quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00CFFA000000FFFF, 0x00CFF2000000FFFF
        .quad 0x0000890130000067        # TSS at 0x13000, limit 0x67
gdtr:   .word gdtr - gdt - 1
        .long gdt
idtr:   .word 256 * 8 - 1
        .long idt
        .align 8
idt:    .fill 256 * 8, 1, 0
"""


def test_protected_mode_ring3_int80_and_page_fault(rig):
    rig.memory.write(0x10000, assemble(PMODE32, 32, 0x10000))
    s = CpuState()
    flat = dict(base=0, limit=0xFFFF_FFFF, db=True, g=True)
    s.cs = Segment(selector=0x08, type=0xB, **flat)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, Segment(selector=0x10, type=3, **flat))
    s.cr0 = 0x11
    s.rip = 0x10000
    ex = rig.run(s)
    assert bytes(rig.debug.out) == b"S3"
    error_code, cr2, esp = rig.debug.words
    assert error_code == 0b110                    # user-mode write to a not-present page
    assert cr2 == 0x300000
    assert 0x18000 - 0x100 < esp < 0x18000        # on the TSS ring-0 stack
    assert ex.reason == ExitReason.HALTED


# -- 64-bit long mode ------------------------------------------------------------------------------------------
PML4, PDPT, PD, PT, GDT, TSS, IDT = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000
RSP0, IST1, USER_STACK = 0x80000, 0x90000, 0x70000


def long_mode_setup(rig: Rig, code: bytes, pf_handler: int | None = None) -> CpuState:
    """Identity map of 0-16 MiB (user-accessible 2 MiB pages, 8-10 MiB in 4 KiB pages with 0x800000 absent),
    Linux's GDT layout, a TSS with RSP0 and IST1, an IDT with #PF on IST1."""
    mem = rig.memory
    mem.write_u64(PML4, PDPT | 7)
    mem.write_u64(PDPT, PD | 7)
    for i in range(8):
        mem.write_u64(PD + 8 * i, (i << 21) | 0x87)
    mem.write_u64(PD + 8 * 4, PT | 7)
    for i in range(512):
        mem.write_u64(PT + 8 * i, (0x800000 + (i << 12)) | 7)
    mem.write_u64(PT, 0)
    gdt = [0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CFFA000000FFFF, 0x00CFF2000000FFFF,
           0x00AFFA000000FFFF, 0, 0x0000890000000067 | (TSS & 0xFFFFFF) << 16, 0]
    mem.write(GDT, struct.pack(f"<{len(gdt)}Q", *gdt))
    mem.write_u64(TSS + 4, RSP0)
    mem.write_u64(TSS + 0x24, IST1)
    if pf_handler is not None:
        lo = (pf_handler & 0xFFFF) | 0x10 << 16 | 1 << 32 | 0x8E << 40 | ((pf_handler >> 16) & 0xFFFF) << 48
        mem.write(IDT + 14 * 16, struct.pack("<QQ", lo, pf_handler >> 32))
    mem.write(0x100000, code)
    s = CpuState()
    s.cs = Segment(selector=0x10, base=0, limit=0xFFFF_FFFF, type=0xB, l=True, g=True)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, Segment(selector=0x18, base=0, limit=0xFFFF_FFFF, type=3, db=True, g=True))
    s.gdt = DescriptorTable(GDT, len(gdt) * 8 - 1)
    s.idt = DescriptorTable(IDT, 256 * 16 - 1)
    s.cr0, s.cr3, s.cr4, s.efer = 0x8000_0011, PML4, 0x20, 0x500
    s.rip = 0x100000
    s.regs["rsp"] = RSP0
    return s


LONG64 = r"""
        .code64
start:  mov $0x40, %ax
        ltr %ax
        mov $0xC0000081, %ecx           # STAR: SYSCALL CS 0x10/SS 0x18, SYSRET base 0x23 (CS 0x33, SS 0x2B)
        xor %eax, %eax
        mov $0x00230010, %edx
        wrmsr
        mov $0xC0000082, %ecx           # LSTAR
        lea sys(%rip), %rax
        mov %rax, %rdx
        shr $32, %rdx
        wrmsr
        mov $0xC0000084, %ecx           # FMASK: IF
        mov $0x200, %eax
        xor %edx, %edx
        wrmsr
        mov $0xC0000080, %ecx           # EFER.SCE
        rdmsr
        or $1, %eax
        wrmsr
        lea user(%rip), %rcx
        mov $0x202, %r11
        mov $0x70000, %rsp
        sysretq
user:   mov $0x1234, %rdi
        syscall
        movq $1, 0x800000
        jmp .
sys:    mov $'Y', %al
        out %al, $0xE9
        mov $0xE9, %dx
        mov %cs, %eax
        out %eax, %dx
        mov %rdi, %rax
        out %eax, %dx
        mov %r11, %rax                  # the caller's RFLAGS, IF set
        and $0x200, %eax
        out %eax, %dx
        sysretq
pf:     pop %rax
        mov $0xE9, %dx
        out %eax, %dx
        mov %cr2, %rax
        out %eax, %dx
        mov %rsp, %rax
        out %eax, %dx
        mov 8(%rsp), %rax
        out %eax, %dx
        cli
        hlt
"""


def test_long_mode_syscall_sysret_and_ist_page_fault(rig):
    code = assemble(LONG64, 64, 0x100000)
    pf = 0x100000 + code.index(bytes.fromhex("58 66 ba e9 00"))     # pop %rax; mov $0xE9, %dx
    ex = rig.run(long_mode_setup(rig, code, pf_handler=pf))
    assert bytes(rig.debug.out) == b"Y"
    kernel_cs, arg, caller_if, error_code, cr2, rsp, user_cs = rig.debug.words
    assert (kernel_cs, arg, caller_if) == (0x10, 0x1234, 0x200)
    assert error_code == 0b110 and cr2 == 0x800000
    assert rsp == IST1 - 5 * 8                       # the IST1 stack, minus the frame (error code popped)
    assert user_cs == 0x33
    assert ex.reason == ExitReason.HALTED


APIC_TIMER = r"""
        .code64
start:  lea handler(%rip), %rax         # IDT[0x40]
        mov %rax, %rbx
        and $0xFFFF, %eax
        or $0x100000, %eax
        mov %rbx, %rdx
        shr $16, %rdx
        shl $48, %rdx
        or %rdx, %rax
        mov $0x8E, %edx
        shl $40, %rdx
        or %rdx, %rax
        mov %rax, 0x7000 + 0x40 * 16
        shr $32, %rbx
        mov %rbx, 0x7000 + 0x40 * 16 + 8
        mov $0x1B, %ecx                 # x2APIC mode
        rdmsr
        or $0xC00, %eax
        wrmsr
        mov $0x80F, %ecx                # SVR: software enable
        mov $0x1FF, %eax
        xor %edx, %edx
        wrmsr
        mov $0x83E, %ecx                # divide by 1
        mov $0xB, %eax
        wrmsr
        mov $0x832, %ecx                # LVT timer: one-shot, vector 0x40
        mov $0x40, %eax
        wrmsr
        mov $0x838, %ecx                # initial count: 1 ms at 25 MHz
        mov $25000, %eax
        wrmsr
        sti
1:      hlt
        cmpb $1, count(%rip)
        jb 1b
        mov $0x832, %ecx                # LVT timer: TSC-deadline mode
        mov $0x40040, %eax
        xor %edx, %edx
        wrmsr
        rdtsc
        shl $32, %rdx
        or %rdx, %rax
        add $2000000, %rax
        mov %rax, %rdx
        shr $32, %rdx
        mov $0x6E0, %ecx
        wrmsr
2:      hlt
        cmpb $2, count(%rip)
        jb 2b
        cli
        hlt
handler:
        incb count(%rip)
        mov $'A', %al
        add count(%rip), %al
        out %al, $0xE9
        mov $0x80B, %ecx                # EOI
        xor %eax, %eax
        xor %edx, %edx
        wrmsr
        iretq
count:  .byte 0
"""


def test_apic_timer_oneshot_and_tsc_deadline(rig):
    code = assemble(APIC_TIMER, 64, 0x100000)
    ex = rig.run(long_mode_setup(rig, code))
    assert bytes(rig.debug.out) == b"BC"
    assert ex.reason == ExitReason.HALTED


LOCKED = r"""
        .code64
start:  mov $400000, %rcx
1:      lock incq counter(%rip)
        mov counter2(%rip), %rax
2:      lea 1(%rax), %rdx
        lock cmpxchg %rdx, counter2(%rip)
        jnz 2b
        dec %rcx
        jnz 1b
        mov counter(%rip), %rax
        mov $0xE9, %dx
        out %eax, %dx
        mov counter2(%rip), %rax
        out %eax, %dx
        cli
        hlt
        .align 8
counter: .quad 0
counter2: .quad 0
"""


def test_locked_instructions_stay_atomic_under_slice_stops(rig):
    """Stops requested from another thread end slices only between blocks: a LOCK RMW never runs twice."""
    code = assemble(LOCKED, 64, 0x100000)
    vcpu = rig.vcpus[0]
    done = threading.Event()
    stops = [0]

    def stopper() -> None:
        while not done.wait(0.0002):
            vcpu.kick_for_interrupt()
            stops[0] += 1
    t = threading.Thread(target=stopper)
    t.start()
    try:
        ex = rig.run(long_mode_setup(rig, code), timeout=60)
    finally:
        done.set()
        t.join()
    assert rig.debug.words == [400000, 400000]
    assert vcpu.stats_slices > 10 and stops[0] > 10
    assert ex.reason == ExitReason.HALTED


def test_triple_fault_is_shutdown(rig):
    code = assemble(".code64\n ud2\n", 64, 0x100000)     # #UD with no IDT entries -> #GP -> #DF -> shutdown
    s = long_mode_setup(rig, code)
    s.idt = DescriptorTable(IDT, 0)
    ex = rig.run(s)
    assert ex.reason == ExitReason.SHUTDOWN


def test_hlt_with_interrupts_off_halts_for_good(rig):
    code = assemble(".code64\n cli\n hlt\n", 64, 0x100000)
    ex = rig.run(long_mode_setup(rig, code))
    assert ex.reason == ExitReason.HALTED


class _WindowRecorder:
    """An MMIO device over the legacy VGA window that records writes and answers reads with a pattern."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def mmio_read(self, addr: int, size: int) -> int:
        return 0x5A5A5A5A & ((1 << (8 * size)) - 1)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.writes.append((addr, size, value))


def test_vga_window_reaches_the_mmio_bus_and_ram_around_it_stays_ram(rig):
    recorder = _WindowRecorder()
    rig.mmio.register(0xA0000, 0x20000, recorder)
    code = assemble(r"""
        .code32
        movw $0x0741, 0xB8000           # 'A', light grey: a text-mode cell
        movl $0x11223344, 0x9FFFC       # the last RAM dword below the window
        movl $0x55667788, 0xC0000       # the first RAM dword above it
        mov 0xB8000, %eax
        mov $0xE9, %dx
        out %eax, %dx
        mov 0x9FFFC, %eax
        out %eax, %dx
        mov 0xC0000, %eax
        out %eax, %dx
        cli
        hlt
    """, 32, 0x10000)
    rig.memory.write(0x10000, code)
    s = CpuState()
    flat = dict(base=0, limit=0xFFFF_FFFF, db=True, g=True)
    s.cs = Segment(selector=0x08, type=0xB, **flat)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, Segment(selector=0x10, type=3, **flat))
    s.cr0 = 0x11
    s.rip = 0x10000
    ex = rig.run(s)
    assert ex.reason == ExitReason.HALTED
    assert recorder.writes == [(0xB8000, 2, 0x0741)]
    assert rig.debug.words == [0x5A5A5A5A, 0x11223344, 0x55667788]
    assert rig.memory.read_u32(0x9FFFC) == 0x11223344 and rig.memory.read_u32(0xC0000) == 0x55667788
    assert rig.memory.read_u16(0xB8000) == 0                 # the RAM under the window is not touched
