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


# -- a boot sector that resets the machine once (a CMOS byte, which survives resets, counts the boots) ------------
RESET_CMOS_INDEX = 0x48          # unused by SeaBIOS and QEMU's CMOS layout
AGAIN = "vireo-mbr: booted again after the reset"
RESET_CODE = {
    "cf9": "movw $0xcf9, %dx\n    movb $0x06, %al\n    outb %al, %dx",            # PIIX reset control: hard
    "i8042": "movb $0xfe, %al\n    outb %al, $0x64",                               # pulse the reset line
    "port92": "movb $0x03, %al\n    outb %al, $0x92",                              # fast reset
    "triple": "lidt zero_idt\n    int3",                                           # no IDT: triple fault
}


def reset_sector(method: str) -> bytes:
    """Prints MARKER; on the first boot also "resetting: METHOD" and resets by METHOD; after that prints AGAIN."""
    source = f"""
    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    movw $marker, %si
    call print
    movb ${RESET_CMOS_INDEX}, %al
    outb %al, $0x70
    inb $0x71, %al
    testb %al, %al
    jnz again
    movb ${RESET_CMOS_INDEX}, %al
    outb %al, $0x70
    movb $1, %al
    outb %al, $0x71
    movw $resetting, %si
    call print
    {RESET_CODE[method]}
1:  hlt
    jmp 1b
again:
    movw $again_text, %si
    call print
2:  hlt
    jmp 2b

print:
    lodsb
    testb %al, %al
    jz 3f
    movw $0x402, %dx
    outb %al, %dx
    jmp print
3:  ret

zero_idt:   .word 0
            .long 0
marker:     .asciz "{MARKER}\\n"
resetting:  .asciz "vireo-mbr: resetting: {method}\\n"
again_text: .asciz "{AGAIN}\\n"
    .org 510
    .byte 0x55, 0xaa
"""
    code = assemble(source, 16, 0x7C00)
    assert len(code) == 512
    return code


def write_reset_disk(path, method: str, size: int = 1 << 20) -> None:
    with open(path, "wb") as f:
        f.write(reset_sector(method))
        f.truncate(size)
