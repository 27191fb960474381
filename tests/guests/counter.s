# Guest: a counter on the serial port every 100 ms, until powered off from outside -- the running guest of the
# save/restore tests (tests/state/). 64-bit mode (entered through longmode.inc); the 8254's counter 0 in mode 2
# at 100 Hz (divisor 11932 of 1.193182 MHz) on IRQ 0 through the 8259A pair remapped to vectors 0x20-0x2F (the
# PIT is the same 1.193182 MHz device under both accelerators, so the rate survives a move between them); every
# tenth interrupt the idle loop prints "counter: N" with N counting from 1 in decimal.
# Datasheets: Intel 8254, Intel 8259A; the interrupt gate layout is the SDM's (vol. 3, 6.14.1).
        .include "longmode.inc"
        .set PIC1_CMD, 0x20
        .set PIC1_DATA, 0x21
        .set PIC2_CMD, 0xA0
        .set PIC2_DATA, 0xA1
        .set PIT_CH0, 0x40
        .set PIT_CMD, 0x43
        .set PIT_DIVISOR, 11932
        .set TIMER_VECTOR, 0x20

        .code64
main64:
        mov $0x11, %al                  # ICW1: edge, cascade, ICW4 follows
        out %al, $PIC1_CMD
        out %al, $PIC2_CMD
        mov $0x20, %al                  # ICW2: master at 0x20, slave at 0x28
        out %al, $PIC1_DATA
        mov $0x28, %al
        out %al, $PIC2_DATA
        mov $0x04, %al                  # ICW3: slave on IR2
        out %al, $PIC1_DATA
        mov $0x02, %al
        out %al, $PIC2_DATA
        mov $0x01, %al                  # ICW4: 8086 mode
        out %al, $PIC1_DATA
        out %al, $PIC2_DATA
        mov $0xFE, %al                  # only IRQ 0
        out %al, $PIC1_DATA
        mov $0xFF, %al
        out %al, $PIC2_DATA

        mov $TIMER_VECTOR, %edi
        lea timer_handler(%rip), %rsi
        call set_gate64
        lidt idtr

        mov $0x34, %al                  # counter 0, LSB then MSB, mode 2, binary
        out %al, $PIT_CMD
        mov $PIT_DIVISOR & 0xFF, %al
        out %al, $PIT_CH0
        mov $PIT_DIVISOR >> 8, %al
        out %al, $PIT_CH0
        lea msg_start(%rip), %rsi
        call puts64
        sti
1:      hlt
        cmpl $10, ticks
        jb 1b
        subl $10, ticks
        incq counter
        lea msg_counter(%rip), %rsi
        call puts64
        mov counter, %rax
        call putdec64
        mov $10, %al
        call putc64
        jmp 1b

timer_handler:
        push %rax
        incl ticks
        mov $0x20, %al                  # non-specific EOI
        out %al, $PIC1_CMD
        pop %rax
        iretq

# putdec64: RAX in decimal.
putdec64:
        push %rax
        push %rcx
        push %rdx
        push %rdi
        lea decbuf_end(%rip), %rdi
        mov $10, %ecx
1:      xor %edx, %edx
        div %rcx
        add $0x30, %dl
        dec %rdi
        mov %dl, (%rdi)
        test %rax, %rax
        jnz 1b
2:      mov (%rdi), %al
        test %al, %al
        jz 3f
        call putc64
        inc %rdi
        jmp 2b
3:      pop %rdi
        pop %rdx
        pop %rcx
        pop %rax
        ret

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
msg_start:   .asciz "counter: started\n"
msg_counter: .asciz "counter: "

        .data
        .balign 8
idtr:
        .word 256 * 16 - 1
        .quad idt
counter: .quad 0
ticks:  .long 0
decbuf: .skip 24
decbuf_end: .byte 0

        .bss
        .balign 16
idt:    .skip 256 * 16
stack:  .skip 4096
stack_top:
