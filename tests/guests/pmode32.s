# Guest (b), 32-bit protected mode: own GDT (ring 0 and ring 3 segments, a TSS), an IDT, paging (first 4 MiB
# identity-mapped, user-accessible), then a ring-3 task that makes a system call through an int 0x80 trap gate
# (DPL 3) and writes to an unmapped page; the #PF handler prints the error code and CR2 and powers off.
# SDM vol. 3: 3.4.5 (descriptors), 6.10-6.14 (IDT, gates, privilege change through the TSS's SS0:ESP0),
# 4.3 (32-bit paging), 6.15 (#PF error code: bit 0 P, bit 1 W/R, bit 2 U/S).
# Multiboot v1 kernel.
        .include "mbheader.inc"
        .set KCODE, 0x08
        .set KDATA, 0x10
        .set UCODE, 0x18
        .set UDATA, 0x20
        .set TSSSEL, 0x28
        .set FAULT_ADDR, 0x00400000     # first byte past the identity map: PDE 1 is not present
        .set GATE_INT0, 0x8E            # present, DPL 0, 32-bit interrupt gate
        .set GATE_TRAP3, 0xEF           # present, DPL 3, 32-bit trap gate

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $kstack_top, %esp
        lgdt gdtr
        ljmp $KCODE, $1f
1:      mov $KDATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %fs
        mov %ax, %gs
        mov %ax, %ss

        # TSS: SS0:ESP0 for interrupts from ring 3; no I/O bitmap (I/O map base past the limit).
        movl $kstack_top, tss+4
        movl $KDATA, tss+8
        movw $104, tss+102
        mov $tss, %eax
        mov %ax, gdt_tss+2
        shr $16, %eax
        mov %al, gdt_tss+4
        mov %ah, gdt_tss+7
        mov $TSSSEL, %ax
        ltr %ax

        # IDT: exceptions 0-31 to stubs that report and power off, #PF and int 0x80 to their handlers.
        xor %eax, %eax
1:      mov exc_stubs(,%eax,4), %ebx
        mov $GATE_INT0, %ecx
        call set_gate
        inc %eax
        cmp $32, %eax
        jb 1b
        mov $14, %eax
        mov $pf_handler, %ebx
        mov $GATE_INT0, %ecx
        call set_gate
        mov $0x80, %eax
        mov $syscall_handler, %ebx
        mov $GATE_TRAP3, %ecx
        call set_gate
        lidt idtr
        mov $msg_pm, %esi
        call puts

        # Paging: one page table identity-mapping 0-4 MiB, present | writable | user.
        mov $pt0, %edi
        mov $0x007, %eax
        mov $1024, %ecx
1:      stosl
        add $4096, %eax
        loop 1b
        mov $pt0, %eax
        or $0x007, %eax
        mov %eax, pd
        mov $pd, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80010000, %eax            # PG | WP
        mov %eax, %cr0
        mov $msg_paging, %esi
        call puts

        # To ring 3: IRET with SS:ESP, EFLAGS (IF = 0, IOPL = 0), CS:EIP.
        push $UDATA | 3
        push $ustack_top
        push $0x002
        push $UCODE | 3
        push $user_main
        iret

# set_gate: EAX = vector, EBX = handler, CL = type/attributes.
set_gate:
        push %edi
        lea idt(,%eax,8), %edi
        mov %bx, (%edi)
        movw $KCODE, 2(%edi)
        movb $0, 4(%edi)
        mov %cl, 5(%edi)
        push %ebx
        shr $16, %ebx
        mov %bx, 6(%edi)
        pop %ebx
        pop %edi
        ret

user_main:                              # ring 3
        mov $UDATA | 3, %ax
        mov %ax, %ds
        mov %ax, %es
        mov $1, %eax                    # "write": EBX = string
        mov $msg_user, %ebx
        int $0x80
        movl $0x5A5A5A5A, FAULT_ADDR    # not-present page, user-mode write: error code 6
        jmp .

syscall_handler:                        # trap gate; stack: EIP, CS, EFLAGS, ESP, SS of the caller
        push %eax
        push %esi
        mov $msg_sys, %esi
        call puts
        mov 12(%esp), %eax              # caller's CS: its RPL is the ring it ran in
        and $3, %eax
        call putdec
        mov $msg_colon, %esi
        call puts
        mov %ebx, %esi
        call puts
        pop %esi
        pop %eax
        iret

pf_handler:                             # stack: error code, EIP, CS, EFLAGS, ESP, SS
        mov $KDATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov $msg_pf, %esi
        call puts
        mov (%esp), %eax
        call puthex
        mov $msg_cr2, %esi
        call puts
        mov %cr2, %eax
        call puthex
        mov $msg_from, %esi
        call puts
        mov 8(%esp), %eax
        and $3, %eax
        call putdec
        mov $10, %al
        call putc
        mov %cr0, %eax                  # paging off: the ACPI tables need not be in the 4 MiB map
        and $0x7FFFFFFF, %eax
        mov %eax, %cr0
        call acpi_poweroff

exc_common:                             # [esp] = vector
        mov $KDATA, %ax
        mov %ax, %ds
        mov %ax, %es
        mov $msg_exc, %esi
        call puts
        pop %eax
        call putdec
        mov $msg_stack, %esi            # error code and EIP, or EIP and CS, depending on the vector
        call puts
        mov (%esp), %eax
        call puthex
        mov $0x20, %al
        call putc
        mov 4(%esp), %eax
        call puthex
        mov $10, %al
        call putc
        mov %cr0, %eax
        and $0x7FFFFFFF, %eax
        mov %eax, %cr0
        call acpi_poweroff

        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_stub_\v:
        push $\v
        jmp exc_common
        .endr

        .include "common32.inc"

        .section .rodata
        .balign 4
exc_stubs:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .long exc_stub_\v
        .endr
msg_pm:     .asciz "pmode32: protected mode, GDT, IDT and TSS loaded\n"
msg_paging: .asciz "pmode32: paging enabled\n"
msg_user:   .asciz "hello from user mode\n"
msg_sys:    .asciz "pmode32: int 0x80 from ring "
msg_colon:  .asciz ": "
msg_pf:     .asciz "pmode32: page fault, error code "
msg_cr2:    .asciz ", cr2 "
msg_from:   .asciz ", from ring "
msg_exc:    .asciz "pmode32: unexpected exception "
msg_stack:  .asciz ", stack: "

        .data
        .balign 8
gdt:
        .quad 0
        .quad 0x00CF9B000000FFFF        # 0x08 kernel code
        .quad 0x00CF93000000FFFF        # 0x10 kernel data
        .quad 0x00CFFB000000FFFF        # 0x18 user code (DPL 3)
        .quad 0x00CFF3000000FFFF        # 0x20 user data (DPL 3)
gdt_tss:
        .quad 0x0000890000000067        # 0x28 32-bit TSS, limit 103, base patched in
gdt_end:
gdtr:
        .word gdt_end - gdt - 1
        .long gdt
idtr:
        .word 256 * 8 - 1
        .long idt

        .bss
        .balign 4096
pd:     .skip 4096
pt0:    .skip 4096
idt:    .skip 256 * 8
tss:    .skip 104
        .balign 16
kstack: .skip 4096
kstack_top:
ustack: .skip 4096
ustack_top:
