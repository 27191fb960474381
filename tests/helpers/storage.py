"""Helpers shared by the tests/storage/test_storage_*.py files: qemu-img / qemu-io runners and a seeded workload."""
from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.runner import in_ci


def need_qemu_img() -> None:
    for tool in ("qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            reason = f"{tool} (Debian package qemu-utils) is not installed"
            if in_ci():
                pytest.fail(f"CI: {reason}", pytrace=False)
            pytest.skip(reason)


def qemu_img(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"qemu-img {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def qemu_io(image: Path, fmt: str, *commands: str) -> None:
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    proc = subprocess.run([*args, str(image)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr


def random_workload(dev, ref: bytearray, seed: int, ops: int = 150) -> None:
    """Random writes, write-zeroes and discards on `dev`, mirrored into `ref` (discarded data is read back)."""
    rng = random.Random(seed)
    size = len(ref)
    for _ in range(ops):
        op = rng.random()
        off = rng.randrange(size)
        length = min(size - off, rng.choice([1, 511, 512, 4096, 65536, 200_000, 1 << 20]))
        if op < 0.6:
            data = rng.randbytes(length)
            dev.write(off, data)
            ref[off:off + length] = data
        elif op < 0.75:
            dev.write_zeroes(off, length)
            ref[off:off + length] = bytes(length)
        elif op < 0.85:
            dev.discard(off, length)
            ref[off:off + length] = dev.read(off, length)
        else:
            assert dev.read(off, length) == ref[off:off + length]
        if rng.random() < 0.05:
            dev.flush()
