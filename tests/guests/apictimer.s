# Guest (h): the local APIC timer in periodic mode (SDM vol. 3, 10.5.4): software-enable the APIC through the
# spurious-interrupt vector register, divide by 16, LVT timer = periodic | vector 0x40, initial count 100000;
# with the 8259As masked, STI/HLT until ten timer interrupts (each handler writes EOI), then mask the timer,
# print, power off.
        .include "mbheader.inc"
        .set LAPIC_ID, 0x20
        .set LAPIC_EOI, 0xB0
        .set LAPIC_SVR, 0xF0
        .set LAPIC_LVT_TIMER, 0x320
        .set LAPIC_TIMER_INIT, 0x380
        .set LAPIC_TIMER_DIV, 0x3E0
        .set TIMER_VECTOR, 0x40
        .set SPURIOUS_VECTOR, 0xFF
        .set TICKS_WANTED, 10

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $stack_top, %esp
        call flat_gdt_load
        mov $0xFF, %al                  # mask both 8259As: only the APIC timer may interrupt
        out %al, $0x21
        out %al, $0xA1

        mov $TIMER_VECTOR, %eax
        mov $timer_handler, %ebx
        call set_gate
        mov $SPURIOUS_VECTOR, %eax
        mov $spurious_handler, %ebx
        call set_gate
        lidt idtr

        mov $0x1B, %ecx                 # IA32_APIC_BASE
        rdmsr
        and $0xFFFFF000, %eax
        mov %eax, %ebx
        mov %ebx, lapic
        movl $0x100 | SPURIOUS_VECTOR, LAPIC_SVR(%ebx)
        movl $0x3, LAPIC_TIMER_DIV(%ebx)
        movl $0x20000 | TIMER_VECTOR, LAPIC_LVT_TIMER(%ebx)
        movl $100000, LAPIC_TIMER_INIT(%ebx)
        mov $msg_start, %esi
        call puts
        sti
1:      hlt
        cmpl $TICKS_WANTED, ticks
        jb 1b
        cli
        movl $0x10000 | TIMER_VECTOR, LAPIC_LVT_TIMER(%ebx)
        movl $0, LAPIC_TIMER_INIT(%ebx)
        mov $msg_done, %esi
        call puts
        call acpi_poweroff

timer_handler:
        push %eax
        incl ticks
        mov lapic, %eax
        movl $0, LAPIC_EOI(%eax)
        pop %eax
        iret

spurious_handler:                       # no EOI for a spurious interrupt (SDM vol. 3, 10.9)
        iret

# set_gate: EAX = vector, EBX = handler; 32-bit interrupt gate, DPL 0.
set_gate:
        push %edi
        lea idt(,%eax,8), %edi
        mov %bx, (%edi)
        movw $FLAT_CODE, 2(%edi)
        movw $0x8E00, 4(%edi)
        push %ebx
        shr $16, %ebx
        mov %bx, 6(%edi)
        pop %ebx
        pop %edi
        ret

        .include "common32.inc"

        .section .rodata
msg_start: .asciz "apictimer: periodic LAPIC timer started\n"
msg_done:  .asciz "apictimer: 10 LAPIC timer interrupts\n"

        .data
        .balign 8
idtr:
        .word 256 * 8 - 1
        .long idt
ticks:  .long 0
lapic:  .long 0

        .bss
        .balign 8
idt:    .skip 256 * 8
        .balign 16
stack:  .skip 4096
stack_top:
