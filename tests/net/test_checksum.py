"""core/net/checksum.py against RFC 1071 done the slow, obvious way: 16-bit big-endian words added one by one
with end-around carry, inverted. Both of its ways (the integer one for short data, numpy's for long) and every
length class (odd, not a multiple of 4) are compared; all-zero and all-0xFF data are the edge cases of the fold."""
from __future__ import annotations

import os
import struct

import pytest

from core.net.checksum import SMALL, inet_checksum


def reference(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack(">H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


LENGTHS = [0, 1, 2, 3, 13, 14, SMALL - 1, SMALL, SMALL + 1, SMALL + 2, SMALL + 3, 1500, 4097, 65535, 65536 + 18]


@pytest.mark.parametrize("n", LENGTHS)
def test_random_data_matches_the_reference(n):
    for _ in range(20):
        data = os.urandom(n)
        assert inet_checksum(data) == reference(data), n


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("byte", [0x00, 0xFF, 0x80, 0x01])
def test_uniform_data_matches_the_reference(n, byte):
    data = bytes([byte]) * n
    assert inet_checksum(data) == reference(data)


def test_a_slice_of_a_bytearray_is_summed_in_place():
    frame = bytearray(os.urandom(9000))
    assert inet_checksum(memoryview(frame)[34:]) == reference(bytes(frame[34:]))


def test_a_sum_that_wraps_to_negative_zero():
    # 0xFFFF + 0x0000 ... in ones' complement is 0xFFFF (not 0), so the checksum is 0x0000, both ways.
    for n in (4, SMALL + 4, 4096):
        data = b"\xff\xff" + b"\0" * (n - 2)
        assert inet_checksum(data) == reference(data) == 0
