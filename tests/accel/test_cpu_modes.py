"""Tiny guests on both accelerators, KVM and the software CPU, without a Machine: real-mode IVT interrupts and the
PIT, 32-bit protected mode with a ring-3 task taking INT 0x80 and a page fault, 64-bit long mode with SYSCALL/SYSRET
and a #PF on an IST stack, the local APIC timer (x2APIC one-shot and TSC-deadline), a triple fault, and the legacy
VGA window between RAM below and above it. Each guest ends by writing the rig's done port (KVM's in-kernel LAPIC
keeps a HLT inside the kernel).

This host's /dev/kvm is kvm_pvm, which cannot run 32-bit paging or a non-PVM guest's SYSCALL (tests/helpers/accel.py
PVM_CANNOT): those two scenarios run on KVM only where it is hardware virtualization. The software CPU's own
scenarios (LOCK atomicity under slice stops, HLT with interrupts off) are in tests/software_cpu/."""
from __future__ import annotations

import pytest

from core.hypervisor.base import CpuState, DescriptorTable, ExitReason, Segment
from tests.helpers.accel import ACCELS, require_accel, require_guest
from tests.helpers.software_guest import IDT, IST1, Rig, assemble, long_mode_setup


@pytest.fixture(params=ACCELS)
def accel(request) -> str:
    return request.param


@pytest.fixture
def rig(accel):
    require_accel(accel)
    r = Rig(accel=accel)
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
        mov $0x510, %dx                 # done
        out %al, %dx
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
    assert rig.done, ex.detail


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
        mov $0x510, %dx                 # done
        out %al, %dx
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


def test_protected_mode_ring3_int80_and_page_fault(accel, rig):
    require_guest(accel, "pmode32")     # 32-bit paging: PVM_CANNOT
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
    assert rig.done, ex.detail


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
        mov $0x510, %dx                 # done
        out %al, %dx
        cli
        hlt
"""


# -- 64-bit long mode (tests.helpers.software_guest.long_mode_setup) ------------------------------------------
def test_long_mode_syscall_sysret_and_ist_page_fault(accel, rig):
    require_guest(accel, "long64")      # SYSCALL from a non-PVM guest: PVM_CANNOT
    code = assemble(LONG64, 64, 0x100000)
    pf = 0x100000 + code.index(bytes.fromhex("58 66 ba e9 00"))     # pop %rax; mov $0xE9, %dx
    ex = rig.run(long_mode_setup(rig, code, pf_handler=pf))
    assert bytes(rig.debug.out) == b"Y"
    kernel_cs, arg, caller_if, error_code, cr2, rsp, user_cs = rig.debug.words
    assert (kernel_cs, arg, caller_if) == (0x10, 0x1234, 0x200)
    assert error_code == 0b110 and cr2 == 0x800000
    assert rsp == IST1 - 5 * 8                       # the IST1 stack, minus the frame (error code popped)
    assert user_cs == 0x33
    assert rig.done, ex.detail


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
        mov $0x510, %dx                 # done
        out %al, %dx
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
    assert rig.done, ex.detail


def test_triple_fault_is_shutdown(rig):
    code = assemble(".code64\n ud2\n", 64, 0x100000)     # #UD with no IDT entries -> #GP -> #DF -> shutdown
    s = long_mode_setup(rig, code)
    s.idt = DescriptorTable(IDT, 0)
    ex = rig.run(s)
    assert ex.reason == ExitReason.SHUTDOWN


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
        mov $0x510, %dx                 # done
        out %al, %dx
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
    assert rig.done, ex.detail
    assert recorder.writes == [(0xB8000, 2, 0x0741)]
    assert rig.debug.words == [0x5A5A5A5A, 0x11223344, 0x55667788]
    assert rig.memory.read_u32(0x9FFFC) == 0x11223344 and rig.memory.read_u32(0xC0000) == 0x55667788
    assert rig.memory.read_u16(0xB8000) == 0                 # the RAM under the window is not touched
