"""What a chosen file is (core/host/probe.py probe_file for each role: bzImage and Multiboot headers, initrd, raw or
qcow2 disk, ISO 9660 primary volume descriptor and El Torito boot record) and `img info` with format detection
(core/storage/info.py, probe.py): a hostile file may only give a FileProbe that refuses it, a one-line HostError,
or a one-line ImageError."""
from __future__ import annotations

import os

from core.host.api import PROBE_ROLES, HostError
from core.storage import ImageError
from fuzz.harness import Allow, scratch_dir, target

_dir = scratch_dir("probe")
PVD = 0x8000


def _seeds() -> list[bytes]:
    pvd = bytearray(2048)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[0x28:0x48] = b"DEBIAN 12 AMD64".ljust(32)
    boot = bytearray(2048)
    boot[0:7] = b"\x00CD001\x01"
    boot[7:7 + 23] = b"EL TORITO SPECIFICATION"
    from fuzz.targets.boot import _seeds_kernel
    from fuzz.targets.qcow2 import _seeds as qcow2_seeds
    return [b"\x01" + bytes(pvd) + bytes(boot), b"\x01" + bytes(pvd), b"\x00" + b"#!/bin/sh\necho hi\n",
            b"\x00" + b"\x07\x07\x07070701" + bytes(100), b"\x00" + _seeds_kernel()[0][:2048],
            b"\x00" + qcow2_seeds()[0][:1024]]


@target("probe", allowed=(), seeds=_seeds, max_len=6144)
def fuzz_probe(data: bytes) -> None:
    """Probe a hostile file in every role, then `img info` it (byte 0 odd: the rest is placed at the ISO's
    primary volume descriptor, 0x8000)."""
    from core.host.probe import probe_file
    from core.storage.info import image_info
    path = os.path.join(_dir, "file")
    with open(path, "wb") as f:
        if data[:1] and data[0] & 1:
            f.truncate(PVD)
            f.seek(PVD)
        f.write(data[1:])
    for role in PROBE_ROLES:
        with Allow(HostError):
            probe = probe_file(path, role)
            if "\n" in probe.message or "\n" in probe.kind:
                raise AssertionError(f"a {role} probe's message spans lines: {probe.kind!r} {probe.message!r}")
    with Allow(ImageError):
        image_info(path)
