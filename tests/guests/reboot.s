# Guest (f): counts its boots in RAM that survives a reset (a signature and a counter at 0x9E000, below the
# EBDA and clear of what the loaders write) and prints "boot N". Boot 1 resets through the i8042 (command 0xFE
# pulses the CPU reset line, after waiting for the input buffer to drain); boot 2 through the PIIX reset control
# register at 0xCF9 (0x06 = system reset | reset CPU); boot 3 clears the signature and powers off.
        .include "mbheader.inc"
        .set COUNTER_ADDR, 0x9E000
        .set COUNTER_MAGIC, 0x544F4F42  # "BOOT"

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $stack_top, %esp
        call flat_gdt_load
        cmpl $COUNTER_MAGIC, COUNTER_ADDR
        je 1f
        movl $COUNTER_MAGIC, COUNTER_ADDR
        movl $0, COUNTER_ADDR + 4
1:      incl COUNTER_ADDR + 4
        mov $msg_boot, %esi
        call puts
        mov COUNTER_ADDR + 4, %eax
        call putdec
        mov $10, %al
        call putc
        cmpl $1, COUNTER_ADDR + 4
        je reset_kbd
        cmpl $2, COUNTER_ADDR + 4
        je reset_cf9
        movl $0, COUNTER_ADDR
        mov $msg_done, %esi
        call puts
        call acpi_poweroff

reset_kbd:
        mov $msg_kbd, %esi
        call puts
        mov $0x10000, %ecx
1:      in $0x64, %al                   # status bit 1: input buffer full
        test $2, %al
        jz 2f
        loop 1b
2:      mov $0xFE, %al
        out %al, $0x64
        jmp failed

reset_cf9:
        mov $msg_cf9, %esi
        call puts
        mov $0xCF9, %dx
        mov $0x06, %al
        out %al, %dx
failed:
        mov $0x100, %ecx                # a reset takes effect at once on a PC; allow a little slack
1:      out %al, $0x80
        loop 1b
        mov $msg_failed, %esi
        call puts
        call acpi_poweroff

        .include "common32.inc"

        .section .rodata
msg_boot:   .asciz "reboot: boot "
msg_kbd:    .asciz "reboot: resetting through the keyboard controller\n"
msg_cf9:    .asciz "reboot: resetting through port 0xCF9\n"
msg_done:   .asciz "reboot: done, powering off\n"
msg_failed: .asciz "reboot: the reset did not happen\n"

        .bss
        .balign 16
stack:  .skip 4096
stack_top:
