"""qcow2 parser and allocator (core/storage/qcow2*.py, per QEMU's docs/interop/qcow2.txt) and `img check`:
a hostile image file may only give a one-line ImageError, and no guest write may change the header's identity
(magic, version, backing file name's offset and size, cluster bits) — the write that turns a disk into one naming
a host file as its backing file (issue #18, defect 1)."""
from __future__ import annotations

import os

from core.storage import ImageError, create_image, open_image
from core.storage.check import check_image
from fuzz.harness import Allow, scratch_dir, target

_dir = scratch_dir("qcow2")
_path = os.path.join(_dir, "fuzz.qcow2")
CS = 512


def _seeds() -> list[bytes]:
    out = []
    for size, snap, v2 in ((64 << 10, False, False), (64 << 10, True, False), (1 << 20, True, True)):
        p = os.path.join(_dir, "seed.qcow2")
        if os.path.exists(p):
            os.unlink(p)
        create_image(p, "qcow2", size, cluster_size=CS, compat="0.10" if v2 else "1.1")
        with open_image(p) as dev:
            dev.write(0, b"A" * 3 * CS)
            dev.write(size // 2 + 100, b"B" * 700)
            if snap:
                dev.snapshot_create("one")
                dev.write(CS, b"C" * CS)
            dev.write_zeroes(size - 4 * CS, 2 * CS)
        with open(p, "rb") as f:
            out.append(f.read())
    return out


def _identity(data: bytes) -> bytes:
    # magic, version, backing_file_offset/size, cluster_bits: what a guest write must never change
    return data[:24]


@target("qcow2", allowed=(ImageError,), seeds=_seeds, max_len=64 << 10)
def fuzz_qcow2(data: bytes) -> None:
    """Open a hostile qcow2, run guest writes/reads/zeroes/discards/snapshots on it, then `img check --repair`."""
    with open(_path, "wb") as f:
        f.write(data)
    with Allow(ImageError):
        dev = open_image(_path, fmt="qcow2")
        try:
            size = dev.size
            ops = [("write", 0, 700), ("read", 0, 4 * CS), ("write", size // 3, 3 * CS), ("zero", CS, 2 * CS),
                   ("discard", 2 * CS, 3 * CS), ("snapshot", "create", 0), ("write", size - CS, CS),
                   ("read", size // 2, 2 * CS), ("snapshot", "apply", 0), ("snapshot", "delete", 0), ("flush", 0, 0)]
            for kind, off, n in ops:
                with Allow(ImageError):
                    if kind == "write":
                        dev.write(off, bytes([0x5A]) * max(0, min(n, size - off)))
                    elif kind == "read":
                        dev.read(off, max(0, min(n, size - off)))
                    elif kind == "zero":
                        dev.write_zeroes(off, max(0, min(n, size - off)))
                    elif kind == "discard":
                        dev.discard(off, max(0, min(n, size - off)))
                    elif kind == "flush":
                        dev.flush()
                    else:
                        names = [s.name for s in dev.snapshots]
                        if off == "create":
                            dev.snapshot_create(f"s{len(names)}")
                        elif names:
                            (dev.snapshot_apply if off == "apply" else dev.snapshot_delete)(names[0])
        finally:
            dev.close()
    with open(_path, "rb") as f:
        after = f.read(24)
    if after != _identity(data) and len(data) >= 24:
        raise AssertionError(f"a guest write changed the header: {_identity(data).hex()} -> {after.hex()}")
    with Allow(ImageError):
        check_image(_path, repair="all")
    with Allow(ImageError):
        check_image(_path)
