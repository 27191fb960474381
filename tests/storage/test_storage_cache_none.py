"""cache=none: aligned requests bypass the host page cache through an O_DIRECT descriptor, the rest (qcow2
metadata, odd sizes) use the ordinary one, and both see the same data."""
from __future__ import annotations

import mmap
import os

import pytest

from core.storage import ImageError, create_image, open_image
from core.storage.hostfile import DIRECT_ALIGN


def _aligned(data: bytes) -> memoryview:
    """Page-aligned writable memory holding `data` (like guest RAM)."""
    m = mmap.mmap(-1, max(len(data), mmap.PAGESIZE))
    m[:len(data)] = data
    return memoryview(m)[:len(data)]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_direct_and_buffered_requests_agree(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    create_image(str(path), fmt, 4 << 20)
    payload = os.urandom(64 * 1024)
    try:
        dev = open_image(str(path), cache="none")
    except ImageError as exc:
        pytest.skip(str(exc))               # a file system without O_DIRECT (tmpfs on older kernels)
    with dev:
        assert dev.cache == "none" and dev.file.direct_fd >= 0
        view = _aligned(payload)
        assert dev.file._direct(0, [view]) and not dev.file._direct(512, [view])
        dev.writev(1 << 20, [view])                         # aligned: O_DIRECT (raw; qcow2 allocates first)
        dev.write(1 << 20, payload)                          # again, in place now
        dev.write(3 * 4096 + 100, b"odd bytes")              # unaligned: the buffered descriptor
        dev.flush()
        back = _aligned(bytes(len(payload)))
        dev.readv(1 << 20, [back[:DIRECT_ALIGN], back[DIRECT_ALIGN:]])
        assert bytes(back) == payload
        assert dev.read(3 * 4096 + 100, 9) == b"odd bytes"
    with open_image(str(path)) as dev:                      # and a buffered open sees the same
        assert dev.read(1 << 20, len(payload)) == payload
    if fmt == "qcow2":
        from tests.helpers.storage import qemu_img
        qemu_img("check", path)
