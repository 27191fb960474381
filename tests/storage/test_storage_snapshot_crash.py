"""Crash safety of snapshot create, apply and delete: a forked child runs the operation and is killed with
SIGKILL just before its N-th write, barrier, fsync, truncate or hole punch, for every N until the operation
completes. Afterwards:
- `qemu-img check` finds no corruption (exit 0, or 3: leaked clusters, which waste space only), or it finds only
  copied flags that disagree with a refcount (the window QEMU has too, between raising a refcount and clearing
  a flag), which `vireo img check -r all` repairs, after which `qemu-img check` exits 0;
- the data written and flushed before the operation is intact in the active disk and in every snapshot that
  is listed, and the snapshot being created or deleted is either there whole or gone.
"""
from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from core.storage import create_image, open_image
from core.storage.cli import main as img_cli
from core.storage.hostfile import HostFile
from tests.helpers.storage import need_qemu_img, qemu_img

KiB, MiB = 1 << 10, 1 << 20
HOOKED = ("pwrite", "pwritev", "barrier", "fsync", "truncate", "punch_hole")


def _run_killed(img: Path, op, kill_at: int) -> bool:
    """Run op(dev) in a child killed before its `kill_at`-th write-type call; True if the kill happened."""
    pid = os.fork()
    if pid == 0:                                            # the child: never returns into pytest
        try:
            calls = [0]

            def hook(real):
                def wrapped(self, *args, **kwargs):
                    calls[0] += 1
                    if calls[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(self, *args, **kwargs)
                return wrapped

            for name in HOOKED:
                setattr(HostFile, name, hook(getattr(HostFile, name)))
            with open_image(str(img)) as dev:
                op(dev)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the operation failed without a kill"
    return False


def _snapshot_data(img: Path, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / "snap.raw"
    qemu_img("convert", "-U", "-f", "qcow2", "-O", "raw", "-l", f"snapshot.name={name}", img, out)
    return out.read_bytes()


def _names(img: Path) -> list[str]:
    with open_image(str(img), read_only=True) as dev:
        return [s.name for s in dev.snapshots]


def _base(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """An image with snapshot 'old' and different active data, both flushed."""
    base = tmp_path / "base.qcow2"
    create_image(str(base), "qcow2", MiB, cluster_size=KiB)
    rng = random.Random(42)
    with open_image(str(base)) as dev:
        dev.write(0, rng.randbytes(600 * KiB))
        old = dev.read(0, dev.size)
        dev.snapshot_create("old")
        dev.write(100 * KiB, rng.randbytes(300 * KiB))
        dev.write(900 * KiB, rng.randbytes(50 * KiB))
        dev.flush()
        active = dev.read(0, dev.size)
    return base, old, active


STATE = random.Random(7).randbytes(5000)


def _create_with_state(dev) -> None:
    dev.write_vm_state(0, STATE)
    dev.snapshot_create("new", vm_state_size=len(STATE))


@pytest.mark.parametrize("operation", ["create", "create with VM state", "apply", "delete"])
def test_sigkill_at_every_step_of_a_snapshot_operation(tmp_path: Path, operation: str) -> None:
    need_qemu_img()
    base, old, active = _base(tmp_path)
    ops = {"create": lambda dev: dev.snapshot_create("new"), "apply": lambda dev: dev.snapshot_apply("old"),
           "delete": lambda dev: dev.snapshot_delete("old"), "create with VM state": _create_with_state}
    work = tmp_path / "work.qcow2"
    repaired, steps = [], 0
    for kill_at in range(1, 10_000):
        work.write_bytes(base.read_bytes())
        killed = _run_killed(work, ops[operation], kill_at)
        check = qemu_img("check", work, check=False)
        if check.returncode == 2:
            errors = [line for line in check.stdout.splitlines() + check.stderr.splitlines()
                      if line.startswith("ERROR")]
            assert errors and all("OFLAG_COPIED" in line for line in errors), check.stdout + check.stderr
            assert img_cli(["check", "-r", "all", str(work)]) == 0
            check = qemu_img("check", work, check=False)
            assert check.returncode == 0, check.stdout + check.stderr
            repaired.append(kill_at)
        assert check.returncode in (0, 3), f"kill before step {kill_at}: {check.stdout}{check.stderr}"
        names = _names(work)
        with open_image(str(work), read_only=True) as dev:
            now = dev.read(0, dev.size)
        if operation == "apply":
            assert now in (active, old), f"kill before step {kill_at}: the active disk is neither state"
            assert now == old or killed
        else:
            assert now == active, f"kill before step {kill_at}: the active disk changed"
        if "old" in names:
            assert _snapshot_data(work, "old", tmp_path) == old
        if "new" in names:
            assert _snapshot_data(work, "new", tmp_path) == active
            if operation == "create with VM state":
                with open_image(str(work), read_only=True) as dev:
                    assert dev.read_vm_state("new", 0, len(STATE)) == STATE
        if operation.startswith("create"):
            assert "old" in names and ("new" in names or killed)
        elif operation == "delete":
            assert "old" not in names or killed
        if not killed:
            steps = kill_at - 1
            break
    assert steps > 5
    print(f"{operation}: {steps} write steps; repaired copied flags after kills before steps {repaired}")
    # Without a kill the result is clean, not even a leak.
    assert qemu_img("check", work, check=False).returncode == 0
