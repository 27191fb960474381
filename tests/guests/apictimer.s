# Guest (h): the local APIC timer in periodic mode (SDM vol. 3, 10.5.4), in 64-bit mode (entered through
# longmode.inc): software-enable the APIC through the spurious-interrupt vector register, divide by 16, LVT
# timer = periodic | vector 0x40, initial count 100000; with the 8259As masked, STI/HLT until ten timer
# interrupts (each handler writes EOI), then mask the timer, print, power off.
        .include "longmode.inc"
        .set LAPIC_EOI, 0xB0
        .set LAPIC_SVR, 0xF0
        .set LAPIC_LVT_TIMER, 0x320
        .set LAPIC_TIMER_INIT, 0x380
        .set LAPIC_TIMER_DIV, 0x3E0
        .set TIMER_VECTOR, 0x40
        .set SPURIOUS_VECTOR, 0xFF
        .set TICKS_WANTED, 10

        .code64
main64:
        mov $0xFF, %al                  # mask both 8259As: only the APIC timer may interrupt
        out %al, $0x21
        out %al, $0xA1
        mov $TIMER_VECTOR, %edi
        lea timer_handler(%rip), %rsi
        call set_gate64
        mov $SPURIOUS_VECTOR, %edi
        lea spurious_handler(%rip), %rsi
        call set_gate64
        lidt idtr

        mov $0x1B, %ecx                 # IA32_APIC_BASE
        rdmsr
        and $0xFFFFF000, %eax
        mov %eax, %ebx                  # below 4 GiB: identity-mapped
        mov %rbx, lapic
        movl $0x100 | SPURIOUS_VECTOR, LAPIC_SVR(%rbx)
        movl $0x3, LAPIC_TIMER_DIV(%rbx)
        movl $0x20000 | TIMER_VECTOR, LAPIC_LVT_TIMER(%rbx)
        movl $100000, LAPIC_TIMER_INIT(%rbx)
        lea msg_start(%rip), %rsi
        call puts64
        sti
1:      hlt
        cmpl $TICKS_WANTED, ticks
        jb 1b
        cli
        movl $0x10000 | TIMER_VECTOR, LAPIC_LVT_TIMER(%rbx)
        movl $0, LAPIC_TIMER_INIT(%rbx)
        lea msg_done(%rip), %rsi
        call puts64
        call acpi_poweroff64

timer_handler:
        push %rax
        incl ticks
        mov lapic, %rax
        movl $0, LAPIC_EOI(%rax)
        pop %rax
        iretq

spurious_handler:                       # no EOI for a spurious interrupt (SDM vol. 3, 10.9)
        iretq

# set_gate64: EDI = vector, RSI = handler; 64-bit interrupt gate, DPL 0, no IST.
set_gate64:
        push %rax
        mov %edi, %eax
        shl $4, %eax
        lea idt(%rax), %rax
        mov %si, (%rax)
        movw $LM_KCODE, 2(%rax)
        movw $0x8E00, 4(%rax)
        push %rsi
        shr $16, %rsi
        mov %si, 6(%rax)
        shr $16, %rsi
        mov %esi, 8(%rax)
        movl $0, 12(%rax)
        pop %rsi
        pop %rax
        ret

        .include "common64.inc"

        .section .rodata
msg_start: .asciz "apictimer: periodic LAPIC timer started\n"
msg_done:  .asciz "apictimer: 10 LAPIC timer interrupts\n"

        .data
        .balign 8
idtr:
        .word 256 * 16 - 1
        .quad idt
lapic:  .quad 0
ticks:  .long 0

        .bss
        .balign 16
idt:    .skip 256 * 16
stack:  .skip 4096
stack_top:
