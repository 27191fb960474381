#!/usr/bin/env python3
"""Disk-image throughput of core/storage against qemu-img bench on the same image format, host side (no guest).

Sequential 1 MiB writes then reads over a fresh image, and 4 KiB random writes then reads (the pattern of a
filesystem in a guest), on qcow2 and raw, flushed at the end. qemu-img bench runs the same sizes with its
default queue depth 1 and cache=writeback, so the ratio compares the storage layers, not virtio.
Usage: .venv/bin/python bench/storage.py [--size 256M] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.storage import create_image, open_image  # noqa: E402
from core.storage.sizes import parse_size  # noqa: E402


def vireo(path: str, fmt: str, size: int, pattern: str, write: bool, bs: int, count: int) -> float:
    rng = random.Random(1)
    buf = os.urandom(bs)
    # Reads land in one reused buffer, as virtio-blk reads land in guest RAM (readv), not in new bytes objects.
    into = [memoryview(bytearray(bs))]
    with open_image(path, fmt=fmt) as dev:
        offsets = [i * bs for i in range(count)] if pattern == "seq" else \
            [rng.randrange(size // bs) * bs for _ in range(count)]
        t = time.perf_counter()
        for off in offsets:
            if write:
                dev.write(off, buf)
            else:
                dev.readv(off, into)
        dev.flush()
        return bs * count / (time.perf_counter() - t) / 1e6


def qemu(path: str, fmt: str, size: int, pattern: str, write: bool, bs: int, count: int) -> float:
    args = ["qemu-img", "bench", "-f", fmt, "-c", str(count), "-s", str(bs), "-d", "1", "-t", "writeback"]
    if write:
        args += ["-w", "--flush-interval", str(count), "--no-drain"]
    if pattern == "rand":
        # qemu-img bench has no random mode; a large step with wrap-around scatters requests across the disk.
        args += ["-S", str(bs * 7919)]
    out = subprocess.run(args + [path], capture_output=True, text=True, check=True).stdout
    secs = float(re.search(r"Run completed in ([\d.]+) seconds", out).group(1))
    return bs * count / secs / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    size = parse_size(args.size)[1]
    cases = [("seq", 1 << 20, size >> 20), ("rand", 4096, 8192)]
    print(f"{'format':6} {'test':14} {'vireo MB/s':>11} {'qemu MB/s':>10} {'ratio':>6}")
    for fmt in ("qcow2", "raw"):
        for pattern, bs, count in cases:
            for write in (True, False):
                results = []
                for tool in (vireo, qemu):          # alternate, each on a fresh image for writes
                    path = os.path.join(args.dir, f"bench-{tool.__name__}.{fmt}")
                    if write or not os.path.exists(path):
                        if os.path.exists(path):
                            os.unlink(path)
                        create_image(path, fmt, size)
                    results.append(tool(path, fmt, size, pattern, write, bs, count))
                name = f"{pattern} {'write' if write else 'read'} {bs // 1024}k"
                print(f"{fmt:6} {name:14} {results[0]:11.1f} {results[1]:10.1f} {results[0] / results[1]:6.2f}",
                      flush=True)
        for tool in ("vireo", "qemu"):
            os.unlink(os.path.join(args.dir, f"bench-{tool}.{fmt}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
