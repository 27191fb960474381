# Guest (a), real mode: prints from real mode, programs the 8259A pair (vector base 8, as a PC BIOS does) and
# the 8254 (channel 0, mode 2, 100 Hz), installs an IRQ 0 handler in the IVT (vector 8), waits with STI/HLT for
# five timer interrupts, then enters protected mode to power off through ACPI.
#
# Raw image linked at 0x7C00. Two ways in, with the same output:
#   * real-mode entry: load realmode16.bin at 0x7C00, CS = 0, IP = 0x7C00 (any flat real-mode state, IVT at 0);
#   * from the Multiboot wrapper realmode.elf (realmode_mb.s), which copies this image to 0x7C00 and jumps to pm16_entry
#     (offset 8) in 16-bit protected mode; pm16_entry drops to real mode.
# Datasheets: Intel 8259A (ICW1-4, OCW2 EOI), Intel 8254 (control word, mode 2); SDM vol. 3, 9.9.2 (leaving
# protected mode), 20.1.4 (real-mode interrupt vector table).

        .set PIC1_CMD, 0x20
        .set PIC1_DATA, 0x21
        .set PIC2_CMD, 0xA0
        .set PIC2_DATA, 0xA1
        .set PIT_CH0, 0x40
        .set PIT_CTRL, 0x43
        .set PIT_DIVISOR, 11932         # 1193182 Hz / 100
        .set TICKS_WANTED, 5

        .code16
        .text
        .globl _start
_start:
        jmp real_start
        .org 8                          # realmode_mb.s jumps to offset 8
pm16_entry:                             # 16-bit protected mode, CS = 16-bit code segment with base 0
        mov $0x10, %ax                  # 16-bit data segment, base 0, limit 64 KiB: sane real-mode caches
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov %cr0, %eax
        and $0xFFFFFFFE, %eax
        mov %eax, %cr0
        ljmp $0, $real_start

real_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0x7C00, %sp
        cld
        mov $msg_hello, %si
        call puts16

        # 8259A pair: ICW1 edge + ICW4, ICW2 vector bases 0x08/0x70, ICW3 cascade on IR2, ICW4 8086 mode.
        mov $0x11, %al
        out %al, $PIC1_CMD
        out %al, $PIC2_CMD
        mov $0x08, %al
        out %al, $PIC1_DATA
        mov $0x70, %al
        out %al, $PIC2_DATA
        mov $0x04, %al
        out %al, $PIC1_DATA
        mov $0x02, %al
        out %al, $PIC2_DATA
        mov $0x01, %al
        out %al, $PIC1_DATA
        out %al, $PIC2_DATA
        mov $0xFE, %al                  # only IRQ 0
        out %al, $PIC1_DATA
        mov $0xFF, %al
        out %al, $PIC2_DATA

        movw $irq0_handler, 8*4         # IVT entry 8: offset, segment
        movw $0, 8*4+2

        mov $0x34, %al                  # channel 0, lobyte/hibyte, mode 2 (rate generator), binary
        out %al, $PIT_CTRL
        mov $PIT_DIVISOR & 0xFF, %al
        out %al, $PIT_CH0
        mov $PIT_DIVISOR >> 8, %al
        out %al, $PIT_CH0

        sti
1:      hlt
        cmpw $TICKS_WANTED, ticks
        jb 1b
        cli
        mov $0xFF, %al                  # mask the timer again
        out %al, $PIC1_DATA
        mov $msg_ticks, %si
        call puts16

        # Protected mode for the ACPI walk (the tables may lie above 1 MiB).
        lgdtl flat_gdtr
        mov %cr0, %eax
        or $1, %eax
        mov %eax, %cr0
        ljmpl $FLAT_CODE, $pm32

irq0_handler:
        incw %cs:ticks
        push %ax
        mov $0x20, %al                  # OCW2: non-specific EOI
        out %al, $PIC1_CMD
        pop %ax
        iret

putc16:
        cmp $10, %al
        jne 1f
        push %ax
        mov $13, %al
        call 1f
        pop %ax
1:      push %dx
        push %ax
2:      mov $0x3FD, %dx
        in %dx, %al
        test $0x20, %al
        jz 2b
        pop %ax
        mov $0x3F8, %dx
        out %al, %dx
        pop %dx
        ret

puts16:
        push %ax
        push %si
1:      lodsb
        test %al, %al
        jz 2f
        call putc16
        jmp 1b
2:      pop %si
        pop %ax
        ret

        .code32
pm32:
        mov $FLAT_DATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov $0x7C00, %esp
        call acpi_poweroff

        .include "common32.inc"

ticks:  .word 0
msg_hello:
        .asciz "realmode: hello from real mode\n"
msg_ticks:
        .asciz "realmode: 5 PIT interrupts through the IVT\n"
