# Exit-cost benchmark guest (bench/exits.py): N port writes, N port reads, N MMIO reads and N MMIO writes, each
# loop between two marker lines on COM1 so the host can time it. N comes from the Multiboot command line
# ("n=NUMBER", default 100000). The port (0x3E0) and the MMIO address (0xD0000000, in the PCI hole) are unused on
# a PC, so each access is a VM exit handled by the VMM (Vireo's bench device, or QEMU's unassigned-access path).
        .include "mbheader.inc"
        .set BENCH_PORT, 0x3E0
        .set BENCH_MMIO, 0xD0000000

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $stack_top, %esp
        call flat_gdt_load
        mov $100000, %edi
        testl $4, (%ebx)
        jz 3f
        mov 16(%ebx), %esi              # find "n=" and parse the decimal after it
1:      mov (%esi), %al
        test %al, %al
        jz 3f
        cmpb $0x6E, %al                 # 'n'
        jne 2f
        cmpb $0x3D, 1(%esi)             # '='
        jne 2f
        add $2, %esi
        xor %edi, %edi
4:      movzbl (%esi), %eax
        sub $0x30, %eax
        cmp $9, %eax
        ja 3f
        imul $10, %edi
        add %eax, %edi
        inc %esi
        jmp 4b
2:      inc %esi
        jmp 1b
3:      mov %edi, count
        mov $msg_n, %esi
        call puts
        mov count, %eax
        call putdec
        mov $10, %al
        call putc

        mov $msg_start, %esi
        call puts
        mov count, %ecx
        mov $BENCH_PORT, %dx
1:      out %al, %dx
        loop 1b
        mov $msg_out, %esi
        call puts
        mov count, %ecx
        mov $BENCH_PORT, %dx
1:      in %dx, %al
        loop 1b
        mov $msg_in, %esi
        call puts
        mov count, %ecx
1:      mov BENCH_MMIO, %eax
        loop 1b
        mov $msg_mmio_read, %esi
        call puts
        mov count, %ecx
1:      mov %eax, BENCH_MMIO
        loop 1b
        mov $msg_mmio_write, %esi
        call puts
        call acpi_poweroff

        .include "common32.inc"

        .section .rodata
msg_n:          .asciz "bench: n="
msg_start:      .asciz "bench: start\n"
msg_out:        .asciz "bench: out done\n"
msg_in:         .asciz "bench: in done\n"
msg_mmio_read:  .asciz "bench: mmio-read done\n"
msg_mmio_write: .asciz "bench: mmio-write done\n"

        .data
count:  .long 0

        .bss
        .balign 16
stack:  .skip 4096
stack_top:
