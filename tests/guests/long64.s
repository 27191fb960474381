# Guest (c), 64-bit long mode, entered from Multiboot's 32-bit state the way a kernel does it: 4-level page
# tables identity-mapping 4 GiB with 2 MiB pages (user-accessible), CR4.PAE, EFER.LME|SCE, CR0.PG, a far jump
# to a 64-bit code segment. Then a 64-bit TSS with IST1, an IDT whose #PF gate uses IST1, SYSCALL/SYSRET via
# STAR/LSTAR/FMASK, and a ring-3 task that makes two system calls and writes to an unmapped address; the #PF
# handler checks it runs on the IST stack and prints the error code and CR2.
# SDM vol. 3: 9.8.5 (initializing IA-32e mode), 4.5 (4-level paging), 7.7 (64-bit TSS, IST), 6.14 (64-bit IDT
# gates, IST), vol. 2B SYSCALL/SYSRET; AMD APM vol. 2, 6.1.1 (STAR layout).
        .include "longmode.inc"
        .set KCODE, LM_KCODE
        .set KDATA, LM_KDATA
        .set UDATA, LM_UDATA            # SYSRET: SS = STAR[63:48] + 8, CS = STAR[63:48] + 16
        .set UCODE, LM_UCODE
        .set TSSSEL, LM_TSS
        .set MSR_STAR, 0xC0000081
        .set MSR_LSTAR, 0xC0000082
        .set MSR_FMASK, 0xC0000084

        .code64
main64:
        lea msg_long(%rip), %rsi
        call puts64

        # 64-bit TSS: RSP0 for ring-3 interrupts, IST1 for #PF; descriptor base patched in (16-byte entry).
        movq $kstack_top, tss+4
        movq $ist1_top, tss+36
        movw $104, tss+102
        mov $tss, %eax
        mov %ax, lm_gdt_tss+2
        shr $16, %eax
        mov %al, lm_gdt_tss+4
        mov %ah, lm_gdt_tss+7
        movl $0, lm_gdt_tss+8
        mov $TSSSEL, %ax
        ltr %ax

        xor %edi, %edi
1:      mov exc_stubs(,%rdi,8), %rsi
        xor %edx, %edx
        call set_gate64
        inc %edi
        cmp $32, %edi
        jb 1b
        mov $14, %edi
        lea pf_handler(%rip), %rsi
        mov $1, %edx                    # IST1
        call set_gate64
        lidt idtr

        mov $MSR_STAR, %ecx
        xor %eax, %eax
        mov $(0x10 << 16) | KCODE, %edx # SYSRET base 0x10, SYSCALL CS 0x08
        wrmsr
        mov $MSR_LSTAR, %ecx
        lea syscall_entry(%rip), %rax
        mov %rax, %rdx
        shr $32, %rdx
        wrmsr
        mov $MSR_FMASK, %ecx
        mov $0x700, %eax                # clear TF, IF, DF on entry
        xor %edx, %edx
        wrmsr
        lea msg_ready(%rip), %rsi
        call puts64

        push $UDATA | 3
        push $ustack_top
        push $0x002
        push $UCODE | 3
        lea user_main(%rip), %rax
        push %rax
        iretq

# set_gate64: EDI = vector, RSI = handler, EDX = IST index.
set_gate64:
        push %rax
        mov %edi, %eax
        shl $4, %eax
        lea idt(%rax), %rax
        mov %si, (%rax)
        movw $KCODE, 2(%rax)
        mov %dl, 4(%rax)
        movb $0x8E, 5(%rax)             # present, DPL 0, 64-bit interrupt gate
        push %rsi
        shr $16, %rsi
        mov %si, 6(%rax)
        shr $16, %rsi
        mov %esi, 8(%rax)
        movl $0, 12(%rax)
        pop %rsi
        pop %rax
        ret

user_main:                              # ring 3
        mov $1, %eax
        lea msg_user1(%rip), %rdi
        syscall
        mov $1, %eax
        lea msg_user2(%rip), %rdi
        syscall
        movabs $0x100000000, %rbx       # PML4[0] maps only PDPT[0..3]: 4 GiB is not present
        movq $0x5A, (%rbx)
        jmp .

syscall_entry:                          # RCX = user RIP, R11 = user RFLAGS; still on the user stack
        mov %rsp, user_rsp
        mov $kstack_top, %rsp
        push %rcx
        push %r11
        push %rsi
        lea msg_sys(%rip), %rsi
        call puts64
        mov %rdi, %rsi
        call puts64
        pop %rsi
        pop %r11
        pop %rcx
        mov user_rsp, %rsp
        sysretq

pf_handler:                             # IST1 stack: error code, RIP, CS, RFLAGS, RSP, SS
        lea msg_pf(%rip), %rsi
        call puts64
        mov (%rsp), %rax
        call puthex64
        lea msg_cr2(%rip), %rsi
        call puts64
        mov %cr2, %rax
        call puthex64
        lea msg_from(%rip), %rsi
        call puts64
        mov 16(%rsp), %rax
        and $3, %eax
        add $0x30, %al
        call putc64
        lea msg_ist_no(%rip), %rsi
        lea ist1_stack(%rip), %rax
        cmp %rax, %rsp
        jb 1f
        lea ist1_top(%rip), %rax
        cmp %rax, %rsp
        jae 1f
        lea msg_ist_yes(%rip), %rsi
1:      call puts64
        call acpi_poweroff64

exc_common:                             # [rsp] = vector
        lea msg_exc(%rip), %rsi
        call puts64
        pop %rax
        call puthex64
        lea msg_stack(%rip), %rsi       # error code and RIP, or RIP and CS, depending on the vector
        call puts64
        mov (%rsp), %rax
        call puthex64
        mov $0x20, %al
        call putc64
        mov 8(%rsp), %rax
        call puthex64
        mov $10, %al
        call putc64
        call acpi_poweroff64

        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_stub_\v:
        push $\v
        jmp exc_common
        .endr

        .include "common64.inc"

        .section .rodata
        .balign 8
exc_stubs:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad exc_stub_\v
        .endr
msg_long:   .asciz "long64: 64-bit mode\n"
msg_ready:  .asciz "long64: TSS with IST1, IDT and SYSCALL ready\n"
msg_user1:  .asciz "hello from ring 3\n"
msg_user2:  .asciz "back in ring 3 after SYSRET\n"
msg_sys:    .asciz "long64: syscall: "
msg_pf:     .asciz "long64: page fault, error code "
msg_cr2:    .asciz ", cr2 "
msg_from:   .asciz ", from ring "
msg_ist_yes: .asciz ", on the IST1 stack\n"
msg_ist_no: .asciz ", NOT on the IST1 stack\n"
msg_exc:    .asciz "long64: unexpected exception "
msg_stack:  .asciz ", stack: "

        .data
        .balign 8
idtr:
        .word 256 * 16 - 1
        .quad idt
user_rsp:
        .quad 0

        .bss
        .balign 16
idt:    .skip 256 * 16
tss:    .skip 104
        .balign 16
kstack: .skip 8192
kstack_top:
stack_top:
ist1_stack: .skip 4096
ist1_top:
ustack: .skip 4096
ustack_top:
