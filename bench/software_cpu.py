"""Software CPU vs QEMU's TCG on Debian's amd64 kernel and the tests' busybox initramfs (issue 4's benchmark).

Alternating runs of `main.py run --accel software` and `qemu-system-x86_64 -accel tcg -M pc` (bzImage via
-kernel, i.e. SeaBIOS + in-guest decompression, QEMU's usual path): time to the VIREO-BOOT-OK marker, time to
exit after power-off, and the in-guest sha256-of-256-MiB workload time the guest itself reports. Prints medians
and the ratio QEMU-time / Vireo-time (1.0 = as fast as QEMU).

    .venv/bin/python bench/software_cpu.py [--runs 3] [--no-workload]
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "out"
MARKER = b"VIREO-BOOT-OK"


def timed(cmd: list[str], timeout: float) -> tuple[float | None, float, bytes]:
    """Run cmd; return (seconds to the marker, seconds to exit, output)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = bytearray()
    marker_at = None
    assert proc.stdout is not None
    while True:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        out += chunk
        if marker_at is None and MARKER in out:
            marker_at = time.monotonic() - start
        if time.monotonic() - start > timeout:
            proc.kill()
            break
    proc.wait()
    return marker_at, time.monotonic() - start, bytes(out)


def vireo(kernel: Path, initrd: Path, action: str) -> list[str]:
    return [sys.executable, "main.py", "run", "--kernel", str(kernel), "--initrd", str(initrd), "--append",
            f"console=ttyS0 vireo.action={action}", "--accel", "software", "--serial", "stdio", "--timeout", "300"]


def qemu(kernel: Path, initrd: Path, action: str) -> list[str]:
    return ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", f"console=ttyS0 vireo.action={action}"]


def workload_seconds(out: bytes) -> float | None:
    m = re.search(rb"VIREO-WORKLOAD-SECONDS=([0-9.]+)", out)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-workload", action="store_true")
    args = ap.parse_args()
    kernel, initrd = OUT / "vmlinuz-amd64", OUT / "initramfs-amd64.cpio.gz"
    if not kernel.exists() or not initrd.exists():
        print(f"fixtures missing in {OUT}: build them with .venv/bin/python tests/fixtures/build.py")
        return 2
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    results: dict[str, dict[str, list[float]]] = {"vireo": {}, "qemu": {}}
    for run in range(args.runs):
        for name, make in (("vireo", vireo), ("qemu", qemu)):
            if name == "qemu" and not have_qemu:
                continue
            marker, total, out = timed(make(kernel, initrd, "poweroff"), 300)
            r = results[name]
            if marker is not None:
                r.setdefault("marker", []).append(marker)
            r.setdefault("exit", []).append(total)
            if not args.no_workload:
                _, _, out = timed(make(kernel, initrd, "sha256"), 600)
                w = workload_seconds(out)
                if w is not None:
                    r.setdefault("sha256", []).append(w)
            print(f"run {run + 1} {name}: marker {marker and round(marker, 2)} s, exit {total:.2f} s"
                  + (f", sha256 {r['sha256'][-1]:.2f} s" if r.get("sha256") else ""), flush=True)
    print()
    print(f"{'metric':<10}{'vireo (median s)':>18}{'qemu tcg (median s)':>22}{'qemu/vireo':>12}")
    for metric in ("marker", "exit", "sha256"):
        v = results["vireo"].get(metric)
        q = results["qemu"].get(metric)
        if not v:
            continue
        vm = statistics.median(v)
        qm = statistics.median(q) if q else None
        ratio = f"{qm / vm:.2f}" if qm else "-"
        print(f"{metric:<10}{vm:>18.2f}{(qm or float('nan')):>22.2f}{ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
