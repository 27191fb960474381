"""The fast path of qcow2 internal snapshots (bench/snapshot.py, issue 15): `vireo img snapshot` runs without
numpy (whose import alone took longer than `qemu-img snapshot`), and the whole-table arithmetic that replaced it
(core/storage/qcow2_lanes.py) gives what entry-by-entry arithmetic gives, refusing the same bad counts."""
from __future__ import annotations

import ast
import random
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from core.storage.errors import ImageCorruptError
from core.storage.qcow2 import Qcow2Image
from core.storage.qcow2_lanes import sequential_run
from tests.helpers.storage import need_qemu_img, qemu_img, qemu_io

REPO = Path(__file__).resolve().parents[2]
# What `img snapshot` must not load: numpy (~50 ms), argparse (its plain forms are read without it) and
# dataclasses (with inspect and ast: ~8 ms), and the other commands' modules.
NOT_FOR_SNAPSHOTS = ("numpy", "argparse", "dataclasses", "core.storage.check", "core.storage.info",
                     "core.cli.table", "core.host.api", "core.runner")


def _img_snapshot(*argv: str) -> set[str]:
    """Run `main.py img snapshot ARGV...` in a fresh interpreter (as the command runs); the modules it loaded."""
    code = f"""
import sys, main
status = main.main(["img", "snapshot", *{list(argv)!r}])
print(repr([status, sorted(sys.modules)]))
"""
    probe = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    status, modules = ast.literal_eval(probe.stdout.strip().splitlines()[-1])
    assert status == 0, (argv, probe.stdout, probe.stderr)
    return set(modules)


def test_img_snapshot_create_apply_delete_list_without_numpy(tmp_path: Path) -> None:
    need_qemu_img()
    img = tmp_path / "disk.qcow2"
    # Preallocated metadata: L2 tables of consecutive clusters; after the snapshot, writes copy clusters and
    # leave tables that are not.
    qemu_img("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", img, "768M")
    qemu_io(img, "qcow2", "write -P 0x11 0 1M", "write -P 0x22 600M 64k")
    loaded = _img_snapshot("-c", "first", str(img))
    assert not loaded & set(NOT_FOR_SNAPSHOTS), sorted(loaded & set(NOT_FOR_SNAPSHOTS))
    assert "core.storage.qcow2_snapshot" in loaded
    assert "first" in qemu_img("snapshot", "-l", img).stdout
    qemu_io(img, "qcow2", "write -P 0x33 0 64k", "write -P 0x44 300M 2M")
    for argv in (("-a", "first"), ("-d", "first"), ("-l",)):
        loaded = _img_snapshot(*argv, str(img))
        assert not loaded & set(NOT_FOR_SNAPSHOTS), (argv, sorted(loaded & set(NOT_FOR_SNAPSHOTS)))
    assert "first" not in qemu_img("snapshot", "-l", img).stdout
    assert qemu_img("check", img, check=False).returncode == 0
    out = tmp_path / "out.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", img, out)
    with out.open("rb") as f:
        assert f.read(65536) == b"\x11" * 65536           # the revert undid the 0x33 write
        f.seek(300 << 20)
        assert f.read(65536) == bytes(65536)
        f.seek(600 << 20)
        assert f.read(65536) == b"\x22" * 65536


@pytest.mark.parametrize("refcount_bits", [4, 8, 16, 64])
def test_refcount_run_updates_match_entry_by_entry(tmp_path: Path, refcount_bits: int) -> None:
    need_qemu_img()
    img = tmp_path / "rc.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"refcount_bits={refcount_bits},cluster_size=4096", img, "64M")
    qemu_io(img, "qcow2", "write -P 1 0 8M")       # ~2,000 clusters in use, over several refcount blocks
    rng = random.Random(refcount_bits)
    with Qcow2Image(str(img)) as q:
        rc = q.refcounts
        in_use = [c for c in range(-(-q.file.size // q.cs)) if rc.get(c)]
        for overlapping in (False, True):
            runs, taken = [], set()
            while len(runs) < 40:
                first = rng.choice(in_use)
                n = rng.randint(1, 300)
                span = set(range(first, first + n))
                if not span <= set(in_use) or (taken & span and not overlapping):
                    continue
                taken |= span
                runs.append((first, n))
            before = {c: rc.get(c) for c in in_use}
            expect = dict(before)
            for first, n in runs:
                for c in range(first, first + n):
                    expect[c] += 1
            assert rc.update_runs(runs, +1) == []
            rc._blocks.clear()                                  # read back what was written
            assert {c: rc.get(c) for c in in_use} == expect
            for first, n in runs:
                for c in range(first, first + n):
                    expect[c] -= 1
            zeros = rc.update_runs(runs, -1)
            rc._blocks.clear()
            assert {c: rc.get(c) for c in in_use} == expect == before
            assert zeros == []
        # Dropping the last reference: those clusters come back, ascending, as freed.
        first = in_use[-50]
        zeros = rc.update_runs([(first, 50)], -1)
        assert zeros == list(range(first, first + 50))
        assert all(rc.get(c) == 0 for c in zeros)
        # A count that would leave 0..max fails the whole update, nothing written (the first bad cluster named).
        rc.update_runs([(first, 50)], +1)
        snapshot = {c: rc.get(c) for c in in_use}
        with pytest.raises(ImageCorruptError, match=f"refcount of cluster {first + 50} would become -1"):
            rc.update_runs([(in_use[0], 10), (first, 60)], -1)
        rc._blocks.clear()
        assert {c: rc.get(c) for c in in_use} == snapshot
        rc.set(in_use[5], rc.max_refcount)
        with pytest.raises(ImageCorruptError, match=f"refcount of cluster {in_use[5]} would become "
                                                    f"{rc.max_refcount + 1}"):
            rc.update_runs([(in_use[0], 10)], +1)
        rc._blocks.clear()
        assert rc.get(in_use[4]) == snapshot[in_use[4]]
        rc.set(in_use[5], snapshot[in_use[5]])


def test_sequential_l2_tables_are_recognised_exactly() -> None:
    cs, n = 65536, 8192

    def table(entries: list[int]) -> bytes:
        a = array("Q", entries)
        if sys.byteorder == "little":
            a.byteswap()
        return a.tobytes()

    flags = 1 << 63
    seq = [flags | (0x50000 + i * cs) for i in range(n)]
    assert sequential_run(table(seq), cs) == seq[0]
    for i in (0, 1, n // 2, n - 1):
        for change in (cs, -cs, 1 << 63, 1, 1 << 62):
            bad = list(seq)
            bad[i] = (bad[i] + change) % (1 << 64)
            assert sequential_run(table(bad), cs) is None, (i, change)
    # A lane off by one step, its neighbour off the other way: the sum is unchanged, the table is not a run.
    bad = list(seq)
    bad[10] += cs
    bad[11] -= cs
    assert sequential_run(table(bad), cs) is None
    top = (1 << 64) - n * cs // 2
    assert sequential_run(table([(top + i * cs) % (1 << 64) for i in range(n)]), cs) is None
    assert sequential_run(table([0] * n), cs) is None
    assert sequential_run(table([5]), cs) == 5


@pytest.mark.parametrize("argv", [
    ["-l", "d.qcow2"], ["d.qcow2"], ["-U", "-l", "d.qcow2"], ["d.qcow2", "--force-share"], ["-c", "x", "d.qcow2"],
    ["-a", "1", "d.qcow2"], ["d.qcow2", "-d", "name with spaces"], ["-c", "", "d.qcow2"], ["-U", "-c", "x", "d"],
])
def test_plain_snapshot_arguments_read_as_argparse_reads_them(argv: list[str]) -> None:
    import argparse

    import main
    from core.storage.snapshot_argv import parse_snapshot_argv
    parser = argparse.ArgumentParser()
    main._add_img(parser.add_subparsers(dest="command").add_parser("img"))
    expected = vars(parser.parse_args(["img", "snapshot", *argv]))
    quick = parse_snapshot_argv(argv)
    assert quick is not None and vars(quick) == expected


@pytest.mark.parametrize("argv", [
    ["-h"], ["-l"], [], ["-c", "x"], ["-cx", "d.qcow2"], ["-c", "-x", "d.qcow2"], ["-c", "x", "-d", "y", "d"],
    ["-l", "-c", "x", "d"], ["d", "e"], ["d", "--connect", "ssh://u@h"], ["--", "d"], ["--force", "d"],
])
def test_other_snapshot_arguments_are_left_to_argparse(argv: list[str]) -> None:
    from core.storage.snapshot_argv import parse_snapshot_argv
    assert parse_snapshot_argv(argv) is None
