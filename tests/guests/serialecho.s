# Guest: a quick stand-in for a shell on ttyS0, for tests of what happens around a running VM (the serial log,
# adoption by a new service): prints "serialecho: ready", then, idle in HLT between interrupts, echoes every byte
# received on COM1 and prints "serialecho: tick N" on each update-ended interrupt of the RTC (once a second).
# Runs until it is powered off from outside.
#
# 8259A pair remapped to vectors 0x20-0x2F (ICW1-4), COM1 on IRQ 4 with the receive-data interrupt enabled
# (16550 IER bit 0; MCR OUT2 gates the line onto the bus), the MC146818A's update-ended interrupt on IRQ 8
# (register B bit 4; reading register C acknowledges it). Datasheets: Intel 8259A, PC16550D, Motorola MC146818A.
# Multiboot v1 kernel.
        .include "mbheader.inc"
        .set PIC1_CMD, 0x20
        .set PIC1_DATA, 0x21
        .set PIC2_CMD, 0xA0
        .set PIC2_DATA, 0xA1
        .set EOI, 0x20
        .set COM1_IER, 0x3F9
        .set COM1_MCR, 0x3FC
        .set LSR_DR, 0x01
        .set CMOS_INDEX, 0x70
        .set CMOS_DATA, 0x71
        .set RTC_B, 0x0B
        .set RTC_C, 0x0C
        .set RTC_B_UIE, 0x10
        .set GATE_INT0, 0x8E            # present, DPL 0, 32-bit interrupt gate

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $stack_top, %esp
        call flat_gdt_load

        # IDT: IRQ 4 (vector 0x24) and IRQ 8 (0x28) to their handlers, the other IRQ vectors to a bare EOI.
        mov $0x20, %eax
1:      mov $irq_spurious, %ebx
        call set_gate
        inc %eax
        cmp $0x30, %eax
        jb 1b
        mov $0x24, %eax
        mov $irq_com1, %ebx
        call set_gate
        mov $0x28, %eax
        mov $irq_rtc, %ebx
        call set_gate
        lidt idtr

        # 8259A pair: ICW1 edge + ICW4, ICW2 vector bases 0x20/0x28, ICW3 cascade on IR2, ICW4 8086 mode.
        mov $0x11, %al
        out %al, $PIC1_CMD
        out %al, $PIC2_CMD
        mov $0x20, %al
        out %al, $PIC1_DATA
        mov $0x28, %al
        out %al, $PIC2_DATA
        mov $0x04, %al
        out %al, $PIC1_DATA
        mov $0x02, %al
        out %al, $PIC2_DATA
        mov $0x01, %al
        out %al, $PIC1_DATA
        out %al, $PIC2_DATA
        mov $0xEB, %al                  # master: IRQ 2 (the slave) and IRQ 4 (COM1)
        out %al, $PIC1_DATA
        mov $0xFE, %al                  # slave: IRQ 8 (the RTC)
        out %al, $PIC2_DATA

        mov $msg_ready, %esi
        call puts

        mov $COM1_MCR, %dx              # DTR, RTS, OUT2
        mov $0x0B, %al
        out %al, %dx
        mov $COM1_IER, %dx              # receive-data-available interrupt
        mov $0x01, %al
        out %al, %dx
        mov $RTC_B, %al
        out %al, $CMOS_INDEX
        in $CMOS_DATA, %al
        or $RTC_B_UIE, %al
        mov %al, %ah
        mov $RTC_B, %al
        out %al, $CMOS_INDEX
        mov %ah, %al
        out %al, $CMOS_DATA
        mov $RTC_C, %al                 # clear any flag already raised
        out %al, $CMOS_INDEX
        in $CMOS_DATA, %al

1:      sti
        hlt
        jmp 1b

# set_gate: EAX = vector, EBX = handler.
set_gate:
        push %edi
        lea idt(,%eax,8), %edi
        mov %bx, (%edi)
        movw $FLAT_CODE, 2(%edi)
        movb $0, 4(%edi)
        movb $GATE_INT0, 5(%edi)
        push %ebx
        shr $16, %ebx
        mov %bx, 6(%edi)
        pop %ebx
        pop %edi
        ret

irq_com1:                               # every byte waiting in the receiver, echoed
        push %eax
        push %edx
1:      mov $COM1_LSR, %dx
        in %dx, %al
        test $LSR_DR, %al
        jz 2f
        mov $COM1, %dx
        in %dx, %al
        call putc
        jmp 1b
2:      mov $EOI, %al
        out %al, $PIC1_CMD
        pop %edx
        pop %eax
        iret

irq_rtc:
        push %eax
        push %esi
        mov $RTC_C, %al                 # acknowledge: the line drops once register C is read
        out %al, $CMOS_INDEX
        in $CMOS_DATA, %al
        incl ticks
        mov $msg_tick, %esi
        call puts
        mov ticks, %eax
        call putdec
        mov $10, %al
        call putc
        mov $EOI, %al
        out %al, $PIC2_CMD
        out %al, $PIC1_CMD
        pop %esi
        pop %eax
        iret

irq_spurious:
        push %eax
        mov $EOI, %al
        out %al, $PIC2_CMD
        out %al, $PIC1_CMD
        pop %eax
        iret

        .include "common32.inc"

        .section .rodata
msg_ready:  .asciz "serialecho: ready\n"
msg_tick:   .asciz "serialecho: tick "

        .data
        .balign 8
idtr:
        .word 256 * 8 - 1
        .long idt
ticks:  .long 0

        .bss
        .balign 8
idt:    .skip 256 * 8
        .balign 16
        .skip 4096
stack_top:
