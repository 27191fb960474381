"""Snapshot benchmark (issue 15), disk part: qcow2 internal snapshot create, apply and delete on a 4 GiB image,
Vireo next to `qemu-img snapshot -c/-a/-d` on identical copies of the same image.

Two images: "metadata" (qemu-img create -o preallocation=metadata: every one of the 65,536 clusters mapped, so
a snapshot raises and drops 65,536 data refcounts and rewrites all 8 L2 tables) and "1 GiB written" (a quarter
of the disk holds data, the rest unallocated). Each operation is timed as a command (`vireo img snapshot`,
including interpreter start-up and the final fsync, against `qemu-img snapshot`, which also fsyncs on close)
and, for Vireo, inside one process (open, operation, flush, close) — what a VM snapshot taken by the engine
costs. Medians of --rounds rounds; ratio = QEMU time / Vireo time (above 1.0: Vireo is faster).

The command is mostly Python's own start-up: an interpreter starts in ~10 ms, Vireo's modules import in ~5 ms
(numpy, argparse, dataclasses, ctypes and threading are left out of that path; tests/storage/
test_storage_snapshot_fast.py), the operation takes ~4 ms of which fsync about half. --breakdown prints those
parts. Modules import that fast only from their bytecode cache (__pycache__, written at the first run of an
installed Vireo); where PYTHONDONTWRITEBYTECODE is set (CI, some sandboxes) every run would compile Vireo's
storage modules again (~30 ms), so the command then runs with a cache in the temporary directory, warmed
once, and the benchmark says so.

The machine-state part of issue 15's benchmark is bench/save_restore.py (save/restore against QEMU's migrate), and
VM snapshots of a running VM (disks + machine state, against QEMU's savevm/loadvm) are bench/vm_snapshot.py.

Run: .venv/bin/python bench/snapshot.py [--rounds N] [--dir DIR] [--breakdown]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.storage import open_image  # noqa: E402

GiB = 1 << 30


_ENV: dict[str, str] | None = None        # the command's environment (None: this one)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return took


def _vireo_cli(verb: str, name: str, image: Path) -> float:
    return _run([sys.executable, str(REPO / "main.py"), "img", "snapshot", verb, name, str(image)], _ENV)


def _qemu_cli(verb: str, name: str, image: Path) -> float:
    return _run(["qemu-img", "snapshot", verb, name, str(image)])


def _vireo_in_process(verb: str, name: str, image: Path) -> float:
    t0 = time.perf_counter()
    with open_image(str(image)) as dev:
        {"-c": dev.snapshot_create, "-a": dev.snapshot_apply, "-d": dev.snapshot_delete}[verb](name)
        dev.flush()
    return time.perf_counter() - t0


def _bytecode_cache(work: Path) -> None:
    """Where PYTHONDONTWRITEBYTECODE is set, give the command a bytecode cache of its own (see the docstring)."""
    global _ENV
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return
    _ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    _ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    scratch = work / "warm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", scratch, "64M"], check=True)
    _run([sys.executable, str(REPO / "main.py"), "img", "snapshot", "-l", str(scratch)], _ENV)
    print("PYTHONDONTWRITEBYTECODE is set here: `vireo img` runs with a bytecode cache in the temporary directory "
          "(as an installed Vireo has its __pycache__)")


def _median_ms(cmd: list[str], rounds: int) -> float:
    return statistics.median(_run(cmd, _ENV) for _ in range(rounds)) * 1000


def _breakdown(source: Path, work: Path, rounds: int) -> None:
    """Where the command's time goes: the interpreter's start, importing what `img snapshot` imports, and the
    operation itself (create, then delete, in this process), with the time spent in fsync/fdatasync."""
    py = [sys.executable, "-c"]
    start = _median_ms([*py, "pass"], rounds)
    imports = _median_ms([*py, f"import sys; sys.path.insert(0, {str(REPO)!r}); import main, core.storage.cli, "
                               "core.storage.snapshot_argv"], rounds)
    image = work / "breakdown.qcow2"
    subprocess.run(["cp", "--sparse=always", source, image], check=True)
    synced = [0.0]
    real = os.fsync, os.fdatasync

    def timed(fn):
        def call(fd: int) -> None:
            t0 = time.perf_counter()
            fn(fd)
            synced[0] += time.perf_counter() - t0
        return call
    os.fsync, os.fdatasync = timed(real[0]), timed(real[1])
    try:
        ops, syncs = [], []
        for _ in range(rounds):
            for verb in ("-c", "-d"):
                synced[0] = 0.0
                ops.append(_vireo_in_process(verb, "bench", image))
                syncs.append(synced[0])
    finally:
        os.fsync, os.fdatasync = real
    op, sync = statistics.median(ops) * 1000, statistics.median(syncs) * 1000
    whole = statistics.median(_vireo_cli(v, "bench", image) for _ in range(rounds) for v in ("-c", "-d")) * 1000
    print(f"breakdown of `vireo img snapshot -c/-d` on the metadata image (medians of {rounds}):")
    print(f"  interpreter start (python -c pass)   {start:6.1f} ms")
    print(f"  + Vireo's imports                    {imports - start:6.1f} ms")
    print(f"  + the operation in-process           {op:6.1f} ms   (of which fsync/fdatasync {sync:.1f} ms)")
    print(f"  = the command, measured              {whole:6.1f} ms")


def _make_images(work: Path) -> dict[str, Path]:
    images = {"metadata": work / "prealloc.qcow2", "1 GiB written": work / "written.qcow2"}
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
                    images["metadata"], "4G"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", images["1 GiB written"], "4G"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 512M", "-c", "write -P 0xa5 2G 512M",
                    images["1 GiB written"]], check=True, capture_output=True)
    return images


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", help="where to put the 4 GiB images (sparse; default: a temporary directory)")
    ap.add_argument("--breakdown", action="store_true", help="also print where the command's time goes")
    args = ap.parse_args()
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        raise SystemExit("qemu-img and qemu-io (Debian package qemu-utils) are needed")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        images = _make_images(work)
        _bytecode_cache(work)
        if args.breakdown:
            _breakdown(images["metadata"], work, args.rounds)
        print(f"internal snapshots of a 4 GiB qcow2 image (64 KiB clusters), median of {args.rounds} rounds")
        print(f"{'image':<15}{'operation':<10}{'qemu-img':>11}{'vireo img':>11}{'ratio':>8}"
              f"{'vireo in-proc':>15}{'ratio':>8}")
        for label, source in images.items():
            ours, theirs, inproc = work / "ours.qcow2", work / "theirs.qcow2", work / "inproc.qcow2"
            for copy in (ours, theirs, inproc):
                subprocess.run(["cp", "--sparse=always", source, copy], check=True)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for verb in ("-c", "-a", "-d"):
                    times.setdefault((verb, "qemu"), []).append(_qemu_cli(verb, "bench", theirs))
                    times.setdefault((verb, "cli"), []).append(_vireo_cli(verb, "bench", ours))
                    times.setdefault((verb, "in"), []).append(_vireo_in_process(verb, "bench", inproc))
            for verb, what in (("-c", "create"), ("-a", "apply"), ("-d", "delete")):
                q, c, i = (statistics.median(times[(verb, k)]) for k in ("qemu", "cli", "in"))
                print(f"{label:<15}{what:<10}{q * 1000:>9.1f}ms{c * 1000:>9.1f}ms{q / c:>8.2f}"
                      f"{i * 1000:>13.1f}ms{q / i:>8.2f}")
            for copy in (ours, theirs):
                check = subprocess.run(["qemu-img", "check", copy], capture_output=True, text=True)
                if check.returncode:
                    raise SystemExit(f"qemu-img check {copy} failed after the benchmark:\n{check.stdout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
