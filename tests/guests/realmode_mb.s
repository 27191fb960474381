# Guest (a) as a Multiboot v1 kernel: copy the real-mode image (realmode16.bin, built first) to 0x7C00, load a
# GDT with 16-bit segments and the real-mode IVT's IDTR, and jump to its pm16_entry in 16-bit protected mode,
# which switches to real mode (SDM vol. 3, 9.9.2).
        .include "mbheader.inc"
        .set BLOB_ADDR, 0x7C00
        .set PM16_ENTRY, BLOB_ADDR + 8

        .text
        .code32
        .globl _start
_start:
        cli
        cld
        mov $blob, %esi
        mov $BLOB_ADDR, %edi
        mov $blob_end - blob, %ecx
        rep movsb
        lgdt gdtr16
        lidt ivt_idtr
        ljmp $0x08, $PM16_ENTRY

        .data
        .balign 8
gdt16:
        .quad 0
        .quad 0x00009B000000FFFF        # 0x08: 16-bit code, base 0, limit 64 KiB
        .quad 0x000093000000FFFF        # 0x10: 16-bit data, base 0, limit 64 KiB
gdt16_end:
gdtr16:
        .word gdt16_end - gdt16 - 1
        .long gdt16
ivt_idtr:
        .word 0x3FF
        .long 0
blob:
        .incbin "realmode16.bin"
blob_end:
