# Guest (g): loads an empty IDT and executes INT3: the #BP cannot be delivered (vector beyond the IDT limit ->
# #GP, which cannot be delivered either -> #DF, likewise) so the CPU shuts down (SDM vol. 3, 6.15 "Interrupt 8
# -- Double Fault Exception", triple fault). The VM must end up crashed; the host process must carry on.
        .include "mbheader.inc"
        .text
        .code32
        .globl _start
_start:
        cli
        mov $stack_top, %esp
        call flat_gdt_load
        mov $msg, %esi
        call puts
        lidt empty_idtr
        int3
        ud2
        mov $msg_alive, %esi            # not reached on a correct CPU
        call puts
        call acpi_poweroff

        .include "common32.inc"

        .section .rodata
msg:       .asciz "triplefault: loading an empty IDT, then int3\n"
msg_alive: .asciz "triplefault: still running?!\n"
        .balign 8
empty_idtr:
        .word 0
        .long 0

        .bss
        .balign 16
stack:  .skip 1024
stack_top:
