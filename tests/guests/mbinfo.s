# Guest (d): reads the Multiboot information structure (Multiboot 0.6.96, 3.3): checks the magic in EAX,
# prints mem_upper (KiB above 1 MiB, flags bit 0), the memory size it implies in MiB ((mem_upper + 1024) / 1024,
# exact when RAM is one block below the PCI hole) and the command line (flags bit 2). Then powers off.
        .include "mbheader.inc"
        .set MB_BOOT_MAGIC, 0x2BADB002

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $stack_top, %esp
        call flat_gdt_load
        cmp $MB_BOOT_MAGIC, %eax
        je 1f
        mov $msg_badmagic, %esi
        call puts
        call puthex
        mov $10, %al
        call putc
        jmp done
1:      mov $msg_magic, %esi
        call puts
        testl $1, (%ebx)                # flags.0: mem_lower / mem_upper valid
        jz 2f
        mov $msg_upper, %esi
        call puts
        mov 8(%ebx), %eax
        call putdec
        mov $msg_kib, %esi
        call puts
        mov 8(%ebx), %eax
        add $1024, %eax
        shr $10, %eax
        call putdec
        mov $msg_mib, %esi
        call puts
        jmp 3f
2:      mov $msg_nomem, %esi
        call puts
3:      testl $4, (%ebx)                # flags.2: cmdline valid
        jz 4f
        mov $msg_cmdline, %esi
        call puts
        mov 16(%ebx), %esi
        call puts
        mov $msg_quote, %esi
        call puts
        jmp done
4:      mov $msg_nocmdline, %esi
        call puts
done:
        call acpi_poweroff

        .include "common32.inc"

        .section .rodata
msg_badmagic:  .asciz "mbinfo: bad multiboot magic "
msg_magic:     .asciz "mbinfo: multiboot magic ok\n"
msg_upper:     .asciz "mbinfo: mem_upper="
msg_kib:       .asciz " KiB, memory="
msg_mib:       .asciz " MiB\n"
msg_nomem:     .asciz "mbinfo: no memory information\n"
msg_cmdline:   .asciz "mbinfo: cmdline=\""
msg_quote:     .asciz "\"\n"
msg_nocmdline: .asciz "mbinfo: no command line\n"

        .bss
        .balign 16
stack:  .skip 4096
stack_top:
