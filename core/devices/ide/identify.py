"""The 512-byte answers to IDENTIFY DEVICE (ATA/ATAPI-6 8.15, table 27) and IDENTIFY PACKET DEVICE (8.16, table 31).

What guests read from them:
- Linux's libata: word 0 (ATA or ATAPI, the packet size, how DRQ follows PACKET), 49 (LBA, DMA), 53 (which later
  words are valid), 59 and 47 (multiple mode), 60-61 and 100-103 with 83 bit 10 (capacity, LBA48), 63/64/88 (the
  multiword DMA, PIO and Ultra DMA modes), 80 (major version), 82-87 (write cache, FLUSH CACHE (EXT), 48-bit), and
  the checksum in word 255.
- SeaBIOS: 1/3/6 (the physical geometry), 27-46 (the model), 80, 83 bit 10 with 60-61 or 100-103, and word 93:
  when device 0 says it answers for an absent device 1, SeaBIOS does not probe device 1.
Strings are ASCII, space padded, two characters a word with the first in the high byte (ATA-6 3.2.9).
"""
from __future__ import annotations

import struct

from core.devices.ide.defs import XFER_MWDMA, XFER_UDMA

MAX_MULTIPLE = 16               # sectors per DRQ block READ/WRITE MULTIPLE accept (word 47)
LBA28_MAX = 0x0FFF_FFFF


def ata_string(text: str, nbytes: int) -> list[int]:
    """`text` as IDENTIFY words: ASCII, space padded to `nbytes`, byte-swapped within each word."""
    raw = text.encode("ascii", "replace")[:nbytes].ljust(nbytes, b" ")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, nbytes, 2)]


def _mode_words(xfer_mode: int) -> tuple[int, int]:
    """Words 63 and 88: multiword DMA 0-2 and Ultra DMA 0-5 supported, and the one selected (SET FEATURES 03h)."""
    mwdma, udma = 0x0007, 0x003F
    if xfer_mode & 0xF8 == XFER_MWDMA and xfer_mode & 7 <= 2:
        mwdma |= 0x100 << (xfer_mode & 7)
    elif xfer_mode & 0xF8 == XFER_UDMA and xfer_mode & 7 <= 5:
        udma |= 0x100 << (xfer_mode & 7)
    return mwdma, udma


def _finish(words: list[int]) -> bytes:
    """Pack the words, with the integrity word 255: signature A5h and a checksum making the bytes sum to 0."""
    words[255] = 0x00A5
    data = struct.pack("<256H", *words)
    checksum = (-sum(data[:511])) & 0xFF
    return data[:511] + bytes((checksum,))


def _common(words: list[int], model: str, serial: str, firmware: str, xfer_mode: int, reset_result: int) -> None:
    words[10:20] = ata_string(serial, 20)
    words[23:27] = ata_string(firmware, 8)
    words[27:47] = ata_string(model, 40)
    words[50] = 0x4000
    words[51] = words[52] = 0x0200                   # PIO/DMA timing mode 2 (obsolete fields, still read)
    words[63], words[88] = _mode_words(xfer_mode)
    words[64] = 0x0003                               # PIO modes 3 and 4
    words[65] = words[66] = words[67] = words[68] = 120    # minimum cycle times, ns
    words[80] = 0x007E                               # ATA-1 .. ATA/ATAPI-6
    words[93] = reset_result


def ata_identify(*, sectors: int, model: str, serial: str, firmware: str, multiple: int, write_cache: bool,
                 xfer_mode: int, geometry: tuple[int, int, int], current: tuple[int, int, int],
                 reset_result: int) -> bytes:
    """IDENTIFY DEVICE of an ATA disk of `sectors` 512-byte sectors. `geometry` is the default (cylinders, heads,
    sectors per track), `current` the one INITIALIZE DEVICE PARAMETERS set; `multiple` the READ/WRITE MULTIPLE
    block (0: not set); `xfer_mode` the mode SET FEATURES selected."""
    w = [0] * 256
    w[0] = 0x0040                                    # ATA, fixed device
    w[1], w[3], w[6] = geometry
    _common(w, model, serial, firmware, xfer_mode, reset_result)
    w[47] = 0x8000 | MAX_MULTIPLE
    w[49] = 0x0F00                                   # IORDY (can be disabled), LBA, DMA
    w[53] = 0x0007                                   # words 54-58, 64-70 and 88 are valid
    cyl, heads, spt = current
    chs_capacity = cyl * heads * spt
    w[54], w[55], w[56] = cyl, heads, spt
    w[57], w[58] = chs_capacity & 0xFFFF, chs_capacity >> 16
    w[59] = 0x0100 | multiple if multiple else 0
    lba28 = min(sectors, LBA28_MAX)
    w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
    # Command sets: power management and write cache (82/85), FLUSH CACHE, FLUSH CACHE EXT and 48-bit addresses
    # (83/86); bit 14 of 83/84/87 marks the words valid.
    w[82] = 0x0028
    w[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400
    w[84] = 0x4000
    w[85] = 0x0008 | (0x0020 if write_cache else 0)
    w[86] = 0x2000 | 0x1000 | 0x0400
    w[87] = 0x4000
    w[100], w[101], w[102], w[103] = (sectors >> s & 0xFFFF for s in (0, 16, 32, 48))
    return _finish(w)


def atapi_identify(*, model: str, serial: str, firmware: str, xfer_mode: int, reset_result: int) -> bytes:
    """IDENTIFY PACKET DEVICE of a removable CD-ROM: 12-byte packets, DRQ within 50 us of PACKET (no interrupt
    before the packet, word 0 bits 6:5 = 10b)."""
    w = [0] * 256
    w[0] = 0x8000 | 0x05 << 8 | 0x0080 | 0x0040     # ATAPI, CD-ROM, removable, accelerated DRQ, 12-byte packets
    _common(w, model, serial, firmware, xfer_mode, reset_result)
    w[49] = 0x0B00                                   # IORDY, LBA, DMA
    w[53] = 0x0006                                   # words 64-70 and 88 are valid
    w[82] = 0x0210 | 0x0008                          # PACKET, DEVICE RESET, power management
    w[83] = w[84] = w[87] = 0x4000
    w[85] = w[82]
    return _finish(w)
