"""Crash safety: a writer that flushes in a loop is killed with SIGKILL at an arbitrary moment; afterwards
`qemu-img check` finds no corruption (leaked clusters are allowed) and every write whose flush returned is there."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.storage import create_image, open_image  # noqa: E402
from core.storage.check import check_image  # noqa: E402
from tests.helpers.storage import need_qemu_img, qemu_img  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SLOT = 70_001           # writes never overlap: write i goes to slot i (unaligned, so clusters are shared)

WRITER = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from core.storage import open_image
SLOT = int(sys.argv[3])
dev = open_image(sys.argv[2])
i = 0
while (i + 1) * SLOT <= dev.size:
    length = 1 + (i * 7919) % (SLOT - 1)
    data = (hashlib.sha256(str(i).encode()).digest() * (length // 32 + 1))[:length]
    dev.write(i * SLOT, data)
    if i % 5 == 4:
        dev.write_zeroes(i * SLOT + length // 2, length // 4)
    dev.flush()
    print(i, flush=True)
    i += 1
"""


def _expected(i: int) -> bytes:
    length = 1 + (i * 7919) % (SLOT - 1)
    data = bytearray((hashlib.sha256(str(i).encode()).digest() * (length // 32 + 1))[:length])
    if i % 5 == 4:
        data[length // 2:length // 2 + length // 4] = bytes(length // 4)
    return bytes(data)


@pytest.mark.parametrize("cluster_size,kill_after", [(65536, 0.4), (4096, 0.7), (512, 1.0)])
def test_sigkill_during_flushing_writes(tmp_path: Path, cluster_size: int, kill_after: float) -> None:
    need_qemu_img()
    img = tmp_path / "crash.qcow2"
    create_image(str(img), "qcow2", 512 << 20, cluster_size=cluster_size)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(REPO), str(img), str(SLOT)],
                            stdout=subprocess.PIPE, text=True)
    done: list[int] = []
    assert proc.stdout is not None
    # The clock starts at the first flushed write (interpreter start-up varies a lot on a loaded machine), and
    # the kill waits for enough writes to make the test meaningful, within a generous bound.
    give_up = time.monotonic() + 60
    deadline = None
    while time.monotonic() < give_up:
        if deadline is not None and time.monotonic() >= deadline and len(done) > 10:
            break
        line = proc.stdout.readline()
        if not line:
            break
        done.append(int(line))
        if deadline is None:
            deadline = time.monotonic() + kill_after
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(done) > 10, "the writer made too little progress to test anything"
    print(f"{len(done)} flushed writes before SIGKILL")
    check = qemu_img("check", img, check=False)
    assert check.returncode in (0, 3), f"qemu-img check found corruption:\n{check.stdout}\n{check.stderr}"
    assert check_image(str(img)).clean
    with open_image(str(img), read_only=True) as dev:
        for i in done:
            assert dev.read(i * SLOT, len(_expected(i))) == _expected(i), f"flushed write {i} lost"
    # the image is usable afterwards: write again and check once more
    with open_image(str(img)) as dev:
        dev.write(0, b"again" * 1000)
    assert qemu_img("check", img, check=False).returncode in (0, 3)


class _Crash(Exception):
    pass


def _ops(size: int) -> list[tuple[str, int, int]]:
    return [("write", 0, 100_000), ("zero", 50_000, 10_000), ("discard", 70_000, 20_000), ("write", 33, 700),
            ("resize", 0, 64 << 20), ("write", 40 << 20, 400_000), ("write", 20_000, 90_000),
            ("zero", 40 << 20, 1 << 20), ("write", (64 << 20) - 3000, 3000)]


def _apply(dev, ref: bytearray, op: tuple[str, int, int], seed: int) -> None:
    kind, off, n = op
    if kind == "write":
        data = hashlib.sha256(f"{seed}".encode()).digest() * (n // 32 + 1)
        dev.write(off, data[:n])
        ref[off:off + n] = data[:n]
    elif kind == "zero":
        dev.write_zeroes(off, n)
        ref[off:off + n] = bytes(n)
    elif kind == "discard":
        dev.discard(off, n)
        ref[off:off + n] = dev.read(off, n)
    elif kind == "resize":
        dev.resize(n)
        ref.extend(bytes(n - len(ref)))


def test_crash_at_every_metadata_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the process's writes before the N-th pwrite, for every N of a workload that allocates L2 tables,
    refcount blocks, grows the L1 and refcount tables and frees clusters: the image must always check clean
    and hold every completed operation's data (what kill -9 leaves: all issued writes, nothing after)."""
    need_qemu_img()
    from core.storage import hostfile

    base = tmp_path / "base.qcow2"
    create_image(str(base), "qcow2", 8 << 20, cluster_size=512)     # one refcount table cluster covers 8 MiB
    with open_image(str(base)) as dev:
        dev.write(0, bytes(range(256)) * (31 << 10))                # ~7.75 MiB: the next writes grow the table
        start = bytearray(dev.read(0, dev.size))
    real_pwrite = hostfile.HostFile.pwrite
    calls = {"n": 0, "limit": -1}

    def pwrite(self, offset, data):
        if calls["n"] == calls["limit"]:
            raise _Crash()
        calls["n"] += 1
        real_pwrite(self, offset, data)

    monkeypatch.setattr(hostfile.HostFile, "pwrite", pwrite)
    ops = _ops(len(start))
    windows = ((0, 256 << 10), (40 << 20, (41 << 20) + 400_000), ((64 << 20) - 4096, 64 << 20))

    def snapshot(ref: bytearray) -> list[bytes]:
        return [bytes(ref[lo:hi]) if hi <= len(ref) else b"" for lo, hi in windows]

    work = tmp_path / "work.qcow2"
    work.write_bytes(base.read_bytes())
    ref = bytearray(start)
    states = [snapshot(ref)]                         # expected windows after 0, 1, 2 … completed operations
    with open_image(str(work)) as dev:
        for k, op in enumerate(ops):
            _apply(dev, ref, op, k)
            states.append(snapshot(ref))
        assert dev.refcounts.table_clusters > 1 and len(dev.l1) > 1   # both tables moved during the workload
    total = calls["n"]
    assert total > 50
    points = sorted(set(range(0, total, max(1, total // 50))) | {total - 1})
    for limit in points:
        work.write_bytes(base.read_bytes())
        calls["n"], calls["limit"] = 0, limit
        completed, ref = 0, bytearray(start)
        dev = open_image(str(work))
        try:
            for k, op in enumerate(ops):
                _apply(dev, ref, op, k)
                completed += 1
        except _Crash:
            pass
        finally:
            calls["limit"] = -1
            dev.close()
        check = qemu_img("check", work, check=False)
        assert check.returncode in (0, 3), f"crash before pwrite {limit}/{total}: {check.stdout}{check.stderr}"
        inflight = ops[completed] if completed < len(ops) else None
        with open_image(str(work), read_only=True) as img:
            for (lo, hi), want in zip(windows, states[completed], strict=True):
                if not want:
                    continue                          # past the disk's end before the resize
                got = img.read(lo, hi - lo)
                expect = bytearray(want)
                if inflight and inflight[0] != "resize":
                    _, off, n = inflight             # the interrupted request may be half done
                    a, b = max(off, lo), min(off + n, hi)
                    if a < b:
                        expect[a - lo:b - lo] = got[a - lo:b - lo]
                assert got == bytes(expect), f"crash before pwrite {limit}/{total}: completed data lost"
