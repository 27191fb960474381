"""The Internet checksum (RFC 1071), as virtio-net completes it for a transmitted frame whose driver left it to the
device (virtio 1.2, 5.1.6.2: VIRTIO_NET_HDR_F_NEEDS_CSUM, the sum from csum_start placed at csum_start +
csum_offset).

A 64 KiB TCP segment is the common case on passt's 65520-byte MTU, so this is on the transmit path of nearly every
byte the guest sends. Two ways to the same sum:
- up to SMALL bytes: the bytes read as one big-endian integer, taken modulo 0xFFFF (2**16 is 1 modulo 0xFFFF, so
  that is the ones' complement sum of the 16-bit words). Cheap for a short frame, but a division over a 64 KiB
  integer costs ~225 us.
- above: numpy sums the frame as little-endian 32-bit words into a 64-bit total (no overflow below 2**32 words),
  folded to 16 bits with end-around carry and byte-swapped. RFC 1071, 2(B) and 2(C): the ones' complement sum
  does not depend on byte order or word width, only the final fold does. ~8 us for 64 KiB.
"""
from __future__ import annotations

SMALL = 256               # bytes up to which the integer way is the faster
_np = None                # numpy, imported by load(): only a VM with a card pays its ~65 ms of start-up


def load() -> None:
    """Import numpy now. A card calls this as it is made: a sandboxed VM process (core/vmproc/sandbox.py) should
    not first import a library, with the files and threads that takes, at its first long frame."""
    global _np
    if _np is None:
        import numpy
        _np = numpy


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit ones' complement sum of `data` as big-endian words (an odd last byte padded with zero); 0 only
    when every byte is zero (a non-zero sum that wraps is 0xFFFF, "negative zero")."""
    view = memoryview(data).cast("B")
    n = len(view)
    if n <= SMALL:
        raw = bytes(view)
        if n % 2:
            raw += b"\0"
        value = int.from_bytes(raw, "big")
        total = value % 0xFFFF
        return 0xFFFF if total == 0 and value else total
    if _np is None:
        load()
    whole = n - n % 4
    total = int(_np.frombuffer(view[:whole], dtype="<u4").sum(dtype=_np.uint64))
    if whole < n:
        total += int.from_bytes(bytes(view[whole:]).ljust(4, b"\0"), "little")
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ((total & 0xFF) << 8) | (total >> 8)          # summed little-endian: swap to network order


def inet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum of `data`: its ones' complement sum, inverted."""
    return ~ones_sum(data) & 0xFFFF
