# Guest (e), SMP: the BSP counts the enabled processors in the ACPI MADT (ACPI 6.4, 5.2.12.2), copies a
# real-mode trampoline to 0x8000 and starts the APs with INIT, SIPI, SIPI through its local APIC's ICR
# (all-excluding-self; SDM vol. 3, 8.4.4.1 "Typical BSP initialization sequence"). Each AP enters protected
# mode on the BSP's GDT, takes its own stack, reads its APIC ID and prints it under a spinlock. The BSP waits
# for all of them (or a timeout), prints the total and powers off.
        .include "mbheader.inc"
        .set LAPIC_ID, 0x20
        .set LAPIC_SVR, 0xF0
        .set LAPIC_ICR_LO, 0x300
        .set LAPIC_ICR_HI, 0x310
        .set TRAMPOLINE, 0x8000         # SIPI vector 0x08
        .set MAX_APS, 31
        .set ICR_INIT_ALL_BUT_SELF, 0x000C4500
        .set ICR_SIPI_ALL_BUT_SELF, 0x000C4600 | (TRAMPOLINE >> 12)

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $bsp_stack_top, %esp
        call flat_gdt_load
        mov $0x1B, %ecx                 # IA32_APIC_BASE
        rdmsr
        and $0xFFFFF000, %eax
        mov %eax, lapic
        mov %eax, %ebx
        orl $0x1FF, LAPIC_SVR(%ebx)     # software-enable, spurious vector 0xFF

        movl $1, ncpus
        mov $0x43495041, %eax           # "APIC"
        call acpi_find_table
        test %eax, %eax
        jz 3f
        mov 4(%eax), %ecx               # length
        add %eax, %ecx
        lea 44(%eax), %esi              # interrupt controller structures follow the 44-byte header
        xor %edx, %edx
1:      cmp %ecx, %esi
        jae 2f
        cmpb $0, (%esi)                 # type 0: processor local APIC
        jne 4f
        testl $1, 4(%esi)               # flags.0: enabled
        jz 4f
        inc %edx
4:      movzbl 1(%esi), %eax
        test %eax, %eax
        jz 2f
        add %eax, %esi
        jmp 1b
2:      test %edx, %edx
        jz 3f
        mov %edx, ncpus
3:      mov $msg_bsp, %esi
        call puts
        mov LAPIC_ID(%ebx), %eax
        shr $24, %eax
        call putdec
        mov $msg_madt, %esi
        call puts
        mov ncpus, %eax
        call putdec
        mov $msg_cpus, %esi
        call puts
        cmpl $1, ncpus
        je all_online

        mov $tramp_start, %esi
        mov $TRAMPOLINE, %edi
        mov $tramp_end - tramp_start, %ecx
        rep movsb
        movl $0, LAPIC_ICR_HI(%ebx)
        movl $ICR_INIT_ALL_BUT_SELF, LAPIC_ICR_LO(%ebx)
        call icr_wait
        mov $1000, %ecx                 # ~10 ms of port-0x80 delays
        call io_delay
        movl $ICR_SIPI_ALL_BUT_SELF, LAPIC_ICR_LO(%ebx)
        call icr_wait
        mov $20, %ecx
        call io_delay
        movl $ICR_SIPI_ALL_BUT_SELF, LAPIC_ICR_LO(%ebx)
        call icr_wait

        mov $500000, %ecx               # wait for the APs, a few seconds at most
1:      mov ncpus, %eax
        dec %eax
        cmp %eax, ap_online
        jae all_online
        out %al, $0x80
        pause
        loop 1b
        call print_lock
        mov $msg_timeout, %esi
        call puts
        mov ap_online, %eax
        call putdec
        mov $10, %al
        call putc
        call print_unlock
        call acpi_poweroff

all_online:
        call print_lock
        mov $msg_all, %esi
        call puts
        mov ncpus, %eax
        call putdec
        mov $msg_online, %esi
        call puts
        call print_unlock
        call acpi_poweroff

icr_wait:                               # until the delivery-status bit clears
        testl $0x1000, LAPIC_ICR_LO(%ebx)
        jz 1f
        pause
        jmp icr_wait
1:      ret

io_delay:                               # ECX port-0x80 writes
        out %al, $0x80
        loop io_delay
        ret

print_lock:
        push %eax
1:      mov $1, %eax
        xchg %eax, plock
        test %eax, %eax
        jz 2f
        pause
        jmp 1b
2:      pop %eax
        ret

print_unlock:
        movl $0, plock
        ret

# Real-mode trampoline, copied to TRAMPOLINE; position-independent within its segment (CS = 0x0800 after the
# SIPI), so every address it uses is an offset from tramp_start.
        .code16
tramp_start:
        cli
        cld
        mov %cs, %ax
        mov %ax, %ds
        lgdtl tramp_gdtr - tramp_start
        mov %cr0, %eax
        or $1, %eax
        mov %eax, %cr0
        ljmpl $FLAT_CODE, $ap_entry32
        .balign 4
tramp_gdtr:
        .word flat_gdt_end - flat_gdt - 1
        .long flat_gdt
tramp_end:

        .code32
ap_entry32:
        mov $FLAT_DATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss
        mov $1, %eax
        lock xadd %eax, ap_started      # this AP's slot
        cmp $MAX_APS, %eax
        jae ap_park
        inc %eax
        shl $12, %eax
        add $ap_stacks, %eax
        mov %eax, %esp
        mov lapic, %ebx
        call print_lock
        mov $msg_ap, %esi
        call puts
        mov LAPIC_ID(%ebx), %eax
        shr $24, %eax
        call putdec
        mov $msg_ap_online, %esi
        call puts
        call print_unlock
        lock incl ap_online
ap_park:
        cli
        hlt
        jmp ap_park

        .include "common32.inc"

        .section .rodata
msg_bsp:       .asciz "smp: BSP has APIC ID "
msg_madt:      .asciz ", the MADT lists "
msg_cpus:      .asciz " CPUs\n"
msg_ap:        .asciz "smp: AP with APIC ID "
msg_ap_online: .asciz " online\n"
msg_all:       .asciz "smp: all "
msg_online:    .asciz " CPUs online\n"
msg_timeout:   .asciz "smp: timeout waiting for the APs; online: "

        .data
        .balign 4
lapic:      .long 0
ncpus:      .long 1
ap_started: .long 0
ap_online:  .long 0
plock:      .long 0

        .bss
        .balign 4096
ap_stacks:  .skip (MAX_APS + 1) * 4096
bsp_stack:  .skip 4096
bsp_stack_top:
