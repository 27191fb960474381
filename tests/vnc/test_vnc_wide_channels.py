"""A client may ask for colour channels wider than 8 bits (RFC 6143 7.4 allows any max up to 65535 that fits the
pixel): the server scales the frame's 8-bit channels up, as QEMU's vnc_convert_pixel does.

Found by the vnc fuzz target (fuzz/corpus/vnc/regress-wide-channel): SetPixelFormat with a 10-bit max passed the
format check, then every update raised OverflowError (a negative shift) in core/vnc/pixels.py, and the server
dropped the client with an internal error."""
from __future__ import annotations

import numpy as np

from core.vnc.pixels import convert
from core.vnc.protocol import PixelFormat


def test_ten_bit_channels_scale_up() -> None:
    pf = PixelFormat(32, 30, False, True, 1023, 1023, 1023, 20, 10, 0)
    pf.check()
    pixels = np.array([[0xFFFFFFFF, 0xFF800001, 0xFF000000]], dtype=np.uint32)
    out = convert(pixels, pf).astype(np.uint32)
    assert out.tolist() == [[1020 << 20 | 1020 << 10 | 1020, 512 << 20 | 0 << 10 | 4, 0]]


def test_sixteen_bit_channel_in_a_32_bit_pixel() -> None:
    pf = PixelFormat(32, 32, True, True, 65535, 255, 255, 16, 8, 0)
    pf.check()
    out = convert(np.array([[0xFF_FF_01_02]], dtype=np.uint32), pf)
    assert int(out[0, 0]) == 0xFF00 << 16 | 0x01 << 8 | 0x02
