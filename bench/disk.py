#!/usr/bin/env python3
"""In-guest disk throughput: Vireo's virtio-blk against QEMU's on the same image format (issue 8's benchmark).

Debian's kernel and the tests' busybox initramfs run `vireo.action=disk-bench` (tests/fixtures/init.sh): busybox
dd writes then reads /dev/vda sequentially in 1 MiB blocks with O_DIRECT, then bench/randio.c (built here with
gcc -static and appended to the initramfs as a second cpio archive, /bin/vireo-randio) does 4 KiB random writes
and reads, also O_DIRECT at queue depth 1. Each guest reports MB/s from its own clock. Vireo runs with
`--accel software`, QEMU with `-accel tcg` (or both on KVM with --kvm), each with a virtio-blk disk on a fresh
image of the same format and cache=writeback; the runs alternate. Prints the median MB/s of each and the ratio
Vireo/QEMU (issue 8's target: >= 0.5).

    .venv/bin/python bench/disk.py [--runs 3] [--formats raw,qcow2] [--mib 64] [--rand-ops 2000] [--kvm]
"""
from __future__ import annotations

import argparse
import gzip
import re
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

import newc  # noqa: E402

from core.storage import create_image  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "out"
TESTS = ("seq-write", "seq-read", "rand-write", "rand-read")
DISK_SIZE = 256 << 20


def build_initrd(base: Path, work: Path) -> Path:
    """The fixture initramfs plus a second archive holding the static random-I/O tool."""
    exe = work / "vireo-randio"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(exe), str(ROOT / "bench" / "randio.c")], check=True)
    extra = newc.write([newc.Entry("bin", stat.S_IFDIR | 0o755),
                        newc.Entry("bin/vireo-randio", stat.S_IFREG | 0o755, exe.read_bytes())])
    initrd = work / "initramfs-bench.cpio.gz"
    # The kernel unpacks concatenated archives, each compressed on its own (buffer-format.rst).
    initrd.write_bytes(base.read_bytes() + gzip.compress(extra, mtime=0))
    return initrd


def cmdline(args: argparse.Namespace) -> str:
    return (f"console=ttyS0 quiet vireo.action=disk-bench vireo.bench_mib={args.mib} "
            f"vireo.bench_rand_ops={args.rand_ops}")


def vireo_cmd(kernel: Path, initrd: Path, image: Path, fmt: str, args: argparse.Namespace) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "run", "--kernel", str(kernel), "--initrd", str(initrd),
            "--accel", "kvm" if args.kvm else "software", "--memory", "256", "--serial", "stdio",
            "--timeout", "600", "--disk", f"{image},format={fmt},cache=writeback", "--append", cmdline(args)]


def qemu_cmd(kernel: Path, initrd: Path, image: Path, fmt: str, args: argparse.Namespace) -> list[str]:
    return ["qemu-system-x86_64", "-accel", "kvm" if args.kvm else "tcg", "-M", "pc", "-m", "256", "-nographic",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline(args),
            "-drive", f"file={image},format={fmt},if=none,id=d0,cache=writeback",
            "-device", "virtio-blk-pci,drive=d0"]


def run_once(cmd: list[str]) -> dict[str, float]:
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
    out = done.stdout.decode(errors="replace")
    results = {m.group(1): float(m.group(2)) for m in re.finditer(r"VIREO-BENCH-([\w-]+)=([0-9.]+)", out)}
    if "VIREO-BENCH-DONE" not in out or set(TESTS) - set(results):
        raise RuntimeError(f"{cmd[0]}: incomplete benchmark output after {time.monotonic() - start:.0f} s:\n"
                           f"{out[-2000:]}\n{done.stderr.decode(errors='replace')[-2000:]}")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default="raw,qcow2")
    ap.add_argument("--mib", type=int, default=192, help="sequential test size in MiB (default 192)")
    ap.add_argument("--rand-ops", type=int, default=2000, help="4 KiB random operations each way (default 2000)")
    ap.add_argument("--kvm", action="store_true", help="KVM for both instead of software CPU against TCG")
    ap.add_argument("--dir", default=None, help="where the images go (default: a temporary directory)")
    args = ap.parse_args()
    kernel, base = OUT / "vmlinuz-amd64", OUT / "initramfs-amd64.cpio.gz"
    if not kernel.exists() or not base.exists():
        print(f"fixtures missing in {OUT}: build them with .venv/bin/python tests/fixtures/build.py")
        return 2
    for tool in ("gcc", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed for this benchmark")
            return 2
    with tempfile.TemporaryDirectory(prefix="vireo-diskbench-", dir=args.dir) as tmp:
        work = Path(tmp)
        initrd = build_initrd(base, work)
        rows = []
        for fmt in args.formats.split(","):
            results: dict[str, dict[str, list[float]]] = {"vireo": {}, "qemu": {}}
            for run in range(args.runs):
                for name, make in (("vireo", vireo_cmd), ("qemu", qemu_cmd)):
                    image = work / f"bench-{name}.{fmt}"
                    image.unlink(missing_ok=True)
                    create_image(str(image), fmt, DISK_SIZE)      # fresh each run: writes allocate again
                    r = run_once(make(kernel, initrd, image, fmt, args))
                    for test in TESTS:
                        results[name].setdefault(test, []).append(r[test])
                    print(f"{fmt} run {run + 1} {name:5}: " + "  ".join(f"{t} {r[t]:.1f}" for t in TESTS),
                          flush=True)
            for test in TESTS:
                v = statistics.median(results["vireo"][test])
                q = statistics.median(results["qemu"][test])
                rows.append((fmt, test, v, q))
    accel = "kvm vs kvm" if args.kvm else "software vs tcg"
    print(f"\nmedian MB/s over {args.runs} alternating runs ({accel}; seq {args.mib} MiB in 1 MiB blocks, "
          f"random {args.rand_ops} x 4 KiB; O_DIRECT in the guest)")
    print(f"{'format':7}{'test':12}{'vireo':>10}{'qemu':>10}{'vireo/qemu':>12}")
    for fmt, test, v, q in rows:
        print(f"{fmt:7}{test:12}{v:10.1f}{q:10.1f}{v / q:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
