# Guest (i), SMP stress: what a lost update or a stale translation between vCPUs would break, checked by the
# guest itself. The BSP starts the APs as smp.s does (MADT count, INIT-SIPI-SIPI; SDM vol. 3, 8.4.4.1), then every
# CPU, released together by a start barrier, runs ITER iterations of each of:
#   - `lock xadd` on one counter;
#   - a `lock cmpxchg` retry loop on another;
#   - `lock cmpxchg8b` on a 64-bit counter that starts just below a carry into its high half;
#   - a plain `incl` inside a spinlock taken with `xchg` (implicitly locked: SDM vol. 3, 8.1.2.1);
# and the BSP checks each counter against CPUs x ITER (SDM vol. 3, 8.1.2.2: locked operations are atomic).
# Then cross-modifying code (SDM vol. 3, 8.1.3): the BSP rewrites the immediate of a function, alone on its page,
# that every AP keeps calling; after each write it publishes a generation number, and each AP that sees it
# executes CPUID (serializing) and must then get the new value from the function -- PATCHES times.
        .include "mbheader.inc"
        .set LAPIC_ID, 0x20
        .set LAPIC_SVR, 0xF0
        .set LAPIC_ICR_LO, 0x300
        .set LAPIC_ICR_HI, 0x310
        .set TRAMPOLINE, 0x8000         # SIPI vector 0x08
        .set MAX_APS, 31
        .set ICR_INIT_ALL_BUT_SELF, 0x000C4500
        .set ICR_SIPI_ALL_BUT_SELF, 0x000C4600 | (TRAMPOLINE >> 12)
        .set ITER, 100000
        .set PATCHES, 100
        .set CNT64_START, 0xFFFF0000    # low half of the 64-bit counter: CPUs x ITER > 0x10000 carries
        .set WAIT_LIMIT, 20000000       # BSP wait loops (pause + port 0x80): a bounded run when a CPU is lost

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
        mov $0x43495041, %eax           # "APIC": count the enabled processor local APICs in the MADT
        call acpi_find_table
        test %eax, %eax
        jz 3f
        mov 4(%eax), %ecx
        add %eax, %ecx
        lea 44(%eax), %esi
        xor %edx, %edx
1:      cmp %ecx, %esi
        jae 2f
        cmpb $0, (%esi)
        jne 4f
        testl $1, 4(%esi)
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
3:      mov $msg_prefix, %esi
        call puts
        mov ncpus, %eax
        call putdec
        mov $msg_cpus_end, %esi
        call puts
        cmpl $1, ncpus
        je 5f

        mov $tramp_start, %esi
        mov $TRAMPOLINE, %edi
        mov $tramp_end - tramp_start, %ecx
        rep movsb
        movl $0, LAPIC_ICR_HI(%ebx)
        movl $ICR_INIT_ALL_BUT_SELF, LAPIC_ICR_LO(%ebx)
        call icr_wait
        mov $1000, %ecx
        call io_delay
        movl $ICR_SIPI_ALL_BUT_SELF, LAPIC_ICR_LO(%ebx)
        call icr_wait
        mov $20, %ecx
        call io_delay
        movl $ICR_SIPI_ALL_BUT_SELF, LAPIC_ICR_LO(%ebx)
        call icr_wait

5:      lock incl arrived               # start barrier: everyone runs the loops at the same time
        mov $WAIT_LIMIT, %ecx
1:      mov arrived, %eax
        cmp ncpus, %eax
        jae 2f
        pause
        out %al, $0x80
        loop 1b
        mov $msg_lost, %esi
        jmp fail
2:      call atomics
        mov $WAIT_LIMIT, %ecx
1:      mov finished, %eax
        cmp ncpus, %eax
        jae 2f
        pause
        out %al, $0x80
        loop 1b
        mov $msg_lost, %esi
        jmp fail

2:      mov ncpus, %eax                 # every counter must be CPUs x ITER
        imul $ITER, %eax
        mov %eax, expected
        mov $msg_xadd, %esi
        mov cnt_xadd, %eax
        call report
        mov $msg_cmpxchg, %esi
        mov cnt_cmpxchg, %eax
        call report
        mov cnt64, %eax                 # the 64-bit counter, less where it started
        mov cnt64 + 4, %edx
        sub $CNT64_START, %eax
        sbb $0, %edx
        jz 3f
        mov $0xFFFFFFFF, %eax           # more than 32 bits: cannot be right
3:      mov $msg_cmpxchg8b, %esi
        call report
        mov $msg_xchg, %esi
        mov cnt_locked, %eax
        call report

        # Cross-modifying code: the APs are calling patched_fn in ap_xmc_loop by now.
        mov $1, %edi                    # generation
1:      mov %edi, patched_fn + 1        # the immediate of `mov $imm32, %eax`
        mov %edi, xmc_gen               # then publish it (stores are seen in program order: SDM 8.2.2)
        mov ncpus, %eax
        dec %eax
        imul %edi, %eax                 # APs x generations acknowledgements by now
        mov $WAIT_LIMIT, %ecx
2:      cmp xmc_acks, %eax
        jbe 3f
        pause
        out %al, $0x80
        loop 2b
        mov $msg_xmc_lost, %esi
        jmp fail
3:      inc %edi
        cmp $PATCHES, %edi
        jbe 1b
        movl $-1, xmc_gen               # done: the APs park
        mov $msg_xmc, %esi
        call puts
        mov $PATCHES, %eax
        call putdec
        mov $msg_xmc_seen, %esi
        call puts
        mov xmc_stale, %eax
        call putdec
        mov $10, %al
        call putc
        mov $msg_done, %esi
        call puts
        call acpi_poweroff

fail:   call puts
        call acpi_poweroff

# report: "smpstress: <the name at ESI>: counter EAX, expected <expected>".
report:
        push %eax
        push %esi
        mov $msg_prefix, %esi
        call puts
        pop %esi
        call puts
        mov $msg_counter, %esi
        call puts
        pop %eax
        call putdec
        mov $msg_expected, %esi
        call puts
        mov expected, %eax
        call putdec
        mov $10, %al
        call putc
        ret

icr_wait:
        testl $0x1000, LAPIC_ICR_LO(%ebx)
        jz 1f
        pause
        jmp icr_wait
1:      ret

io_delay:
        out %al, $0x80
        loop io_delay
        ret

# atomics: the four loops, then count this CPU as finished. Clobbers everything but ESP.
atomics:
        mov $ITER, %ecx
1:      mov $1, %edx
        lock xadd %edx, cnt_xadd
        loop 1b

        mov $ITER, %ecx
1:      mov cnt_cmpxchg, %eax
2:      lea 1(%eax), %edx
        lock cmpxchg %edx, cnt_cmpxchg  # on failure EAX is the current value: retry from it
        jnz 2b
        loop 1b

        mov $ITER, %esi
1:      mov cnt64, %eax
        mov cnt64 + 4, %edx
2:      mov %eax, %ebx
        mov %edx, %ecx
        add $1, %ebx
        adc $0, %ecx
        lock cmpxchg8b cnt64
        jnz 2b
        dec %esi
        jnz 1b

        mov $ITER, %ecx
1:      mov $1, %eax
        xchg %eax, slock
        test %eax, %eax
        jz 2f
        pause
        jmp 1b
2:      incl cnt_locked                 # not atomic by itself: only the lock makes it exact
        movl $0, slock
        loop 1b

        lock incl finished
        ret

# Real-mode trampoline, copied to TRAMPOLINE (CS = 0x0800 after the SIPI): addresses are offsets from tramp_start.
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
        lock xadd %eax, ap_started      # this AP's stack slot
        cmp $MAX_APS, %eax
        jae ap_park
        inc %eax
        shl $12, %eax
        add $ap_stacks, %eax
        mov %eax, %esp
        lock incl arrived
1:      mov arrived, %eax
        cmp ncpus, %eax
        jae 2f
        pause
        jmp 1b
2:      call atomics

        xor %edi, %edi                  # the last generation this AP acknowledged
ap_xmc_loop:
        call patched_fn                 # keep the code being rewritten hot in this CPU's translations
        mov xmc_gen, %edx
        cmp $-1, %edx
        je ap_park
        cmp %edi, %edx
        je ap_xmc_loop
        push %edx
        xor %eax, %eax
        cpuid                           # serializing: what follows is fetched after the new generation was seen
        pop %edx
        call patched_fn
        cmp %edx, %eax
        je 1f
        lock incl xmc_stale
1:      mov %edx, %edi
        lock incl xmc_acks
        jmp ap_xmc_loop

ap_park:
        cli
        hlt
        jmp ap_park

        .balign 4096                    # alone on its page: only the BSP's writes touch it
patched_fn:
        mov $0, %eax
        ret
        .balign 4096

        .include "common32.inc"

        .section .rodata
msg_cpus_end:  .asciz " CPUs\n"
msg_prefix:    .asciz "smpstress: "
msg_xadd:      .asciz "lock xadd"
msg_cmpxchg:   .asciz "lock cmpxchg"
msg_cmpxchg8b: .asciz "lock cmpxchg8b"
msg_xchg:      .asciz "xchg spinlock"
msg_counter:   .asciz ": counter "
msg_expected:  .asciz ", expected "
msg_xmc:       .asciz "smpstress: cross-modifying code: "
msg_xmc_seen:  .asciz " patches, stale code seen after serializing: "
msg_done:      .asciz "smpstress: done\n"
msg_lost:      .asciz "smpstress: timeout: a CPU never reached the barrier or never finished\n"
msg_xmc_lost:  .asciz "smpstress: timeout: an AP never acknowledged a patch\n"

        .data
        .balign 64                      # each shared word on its own cache line
lapic:       .long 0
ncpus:       .long 1
ap_started:  .long 0
expected:    .long 0
        .balign 64
arrived:     .long 0
        .balign 64
finished:    .long 0
        .balign 64
cnt_xadd:    .long 0
        .balign 64
cnt_cmpxchg: .long 0
        .balign 64
cnt64:       .long CNT64_START, 0
        .balign 64
slock:       .long 0
        .balign 64
cnt_locked:  .long 0
        .balign 64
xmc_gen:     .long 0
        .balign 64
xmc_acks:    .long 0
        .balign 64
xmc_stale:   .long 0

        .bss
        .balign 4096
ap_stacks:  .skip (MAX_APS + 1) * 4096
bsp_stack:  .skip 4096
bsp_stack_top:
