# Guest (g): in 64-bit mode (entered through longmode.inc), loads an empty IDT and executes UD2: the #UD cannot
# be delivered (vector beyond the IDT limit -> #GP, which cannot be delivered either -> #DF, likewise) so the
# CPU shuts down (SDM vol. 3, 6.15 "Interrupt 8 -- Double Fault Exception"; triple fault). The VM must end up
# crashed; the host process must carry on.
        .include "longmode.inc"

        .code64
main64:
        lea msg(%rip), %rsi
        call puts64
        lidt empty_idtr
        ud2
        int3
        lea msg_alive(%rip), %rsi       # not reached on a correct CPU
        call puts64
        call acpi_poweroff64

        .include "common64.inc"

        .section .rodata
msg:       .asciz "triplefault: loading an empty IDT, then ud2\n"
msg_alive: .asciz "triplefault: still running?!\n"
        .balign 8
empty_idtr:
        .word 0
        .quad 0

        .bss
        .balign 16
stack:  .skip 1024
stack_top:
