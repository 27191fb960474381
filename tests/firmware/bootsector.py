"""A 512-byte MBR boot sector for the firmware tests, assembled with GNU as: it prints a marker through INT 10h
(the VGA BIOS teletype) and QEMU's debug port 0x402, then checks that the BIOS area the firmware locked is
read-only (a write to F000:FFF5, the BIOS date, must not stick) and says so, then halts."""
from __future__ import annotations

from tests.helpers.software_guest import assemble

MARKER = "vireo-mbr: booted from the boot sector"
ROM_LOCKED = "vireo-mbr: BIOS area read-only"
ROM_WRITABLE = "vireo-mbr: BIOS area WRITABLE"

SOURCE = f"""
    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    sti
    movw $marker, %si
    call print
    movw $0xf000, %ax
    movw %ax, %es
    movb %es:0xfff5, %bl
    movb %bl, %bh
    notb %bh
    movb %bh, %es:0xfff5
    movb %es:0xfff5, %cl
    movw $locked, %si
    cmpb %bl, %cl
    je 1f
    movw $writable, %si
1:  call print
2:  hlt
    jmp 2b

print:                      # %si: NUL-terminated text, to port 0x402 and the screen
    lodsb
    testb %al, %al
    jz 3f
    movw $0x402, %dx
    outb %al, %dx
    movb $0x0e, %ah
    movw $0x0007, %bx
    pushw %si
    int $0x10
    popw %si
    jmp print
3:  ret

marker:   .asciz "{MARKER}\\r\\n"
locked:   .asciz "{ROM_LOCKED}\\r\\n"
writable: .asciz "{ROM_WRITABLE}\\r\\n"
    .org 510
    .byte 0x55, 0xaa
"""


def boot_sector() -> bytes:
    code = assemble(SOURCE, 16, 0x7C00)
    assert len(code) == 512 and code[510:] == b"\x55\xaa", len(code)
    return code


def write_disk(path, size: int = 1 << 20) -> None:
    """A raw disk image whose first sector is the boot sector."""
    with open(path, "wb") as f:
        f.write(boot_sector())
        f.truncate(size)
