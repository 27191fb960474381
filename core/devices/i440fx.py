"""The i440FX host bridge at 00:00.0 (Intel 82441FX PMC datasheet, 290549: PCI 8086:1237) and its Programmable
Attribute Map (PAM) registers.

What firmware needs from it:

* The identity QEMU gives it -- revision 2, class 0600, subsystem 1AF4:1100 -- which SeaBIOS's QEMU build checks
  before it trusts fw_cfg and the rest of QEMU's platform (src/fw/paravirt.c, qemu_detect).
* PAM0-PAM6 at configuration offsets 0x59-0x5F (datasheet 3.2.18). PAM0 bits 5:4 govern 0xF0000-0xFFFFF (64 KiB);
  each of PAM1-PAM6 governs two 16 KiB segments of 0xC0000-0xEFFFF, bits 1:0 the lower and bits 5:4 the upper.
  In each field bit 0 is RE (reads come from DRAM, else from the PCI/ISA side -- the BIOS ROM) and bit 1 is WE
  (writes go to DRAM, else to the PCI/ISA side, where nothing accepts them). SeaBIOS writes 0x30/0x33 to make
  the shadow RAM read/write and copy itself there, then 0x10/0x11 (and 0x31 for a segment it keeps writable
  for upper memory) to lock it (src/fw/shadow.c).

The registers themselves are all this module keeps; what they do to the memory map is the board's
(core/boot/shadow.py): `on_pam_change(pam)` is called with the seven PAM bytes after every write that changes
them, and after a reset (all zero: the BIOS ROM answers at 0xC0000-0xFFFFF, as at power-on).
"""
from __future__ import annotations

from collections.abc import Callable

from core.devices.pci import PciDevice

VENDOR_INTEL, DEVICE_82441 = 0x8086, 0x1237
SUBSYSTEM_VENDOR_QEMU, SUBSYSTEM_QEMU = 0x1AF4, 0x1100
PAM0 = 0x59
PAM_COUNT = 7
PAM_RE, PAM_WE = 0x1, 0x2

# (start, size, PAM register, shift) of every range the PAM registers govern, lowest first.
PAM_SEGMENTS: tuple[tuple[int, int, int, int], ...] = tuple(
    (0xC0000 + i * 0x4000, 0x4000, PAM0 + 1 + i // 2, 4 * (i % 2)) for i in range(12)
) + ((0xF0000, 0x10000, PAM0, 4),)
SHADOW_START, SHADOW_END = 0xC0000, 0x100000


def segment_mode(pam: bytes, index: int) -> int:
    """The RE/WE bits (PAM_RE | PAM_WE) governing PAM_SEGMENTS[index], from the seven PAM bytes."""
    _, _, reg, shift = PAM_SEGMENTS[index]
    return (pam[reg - PAM0] >> shift) & 0x3


class I440fxHostBridge(PciDevice):
    """00:00.0. `on_pam_change(pam: bytes)` hears every change of the PAM registers (seven bytes, PAM0 first)."""

    def __init__(self, on_pam_change: Callable[[bytes], None] | None = None) -> None:
        super().__init__(VENDOR_INTEL, DEVICE_82441, 0x060000, revision=0x02,
                         subsystem_vendor_id=SUBSYSTEM_VENDOR_QEMU, subsystem_id=SUBSYSTEM_QEMU)
        self.on_pam_change = on_pam_change
        # The host bridge decodes memory and I/O and masters the bus whatever the guest writes (as QEMU's).
        self.config[0x04] = 0x06
        self.wmask[0x04:0x06] = b"\0\0"
        self.wmask[PAM0] = 0x30                # PAM0's low nibble is reserved
        for reg in range(PAM0 + 1, PAM0 + PAM_COUNT):
            self.wmask[reg] = 0x33

    @property
    def pam(self) -> bytes:
        return bytes(self.config[PAM0:PAM0 + PAM_COUNT])

    def config_write(self, offset: int, size: int, value: int) -> None:
        before = self.pam
        super().config_write(offset, size, value)
        if self.pam != before and self.on_pam_change is not None:
            self.on_pam_change(self.pam)

    def reset(self) -> None:
        super().reset()
        self.config[0x04] = 0x06
        self.config[PAM0:PAM0 + PAM_COUNT] = bytes(PAM_COUNT)
        if self.on_pam_change is not None:
            self.on_pam_change(self.pam)
