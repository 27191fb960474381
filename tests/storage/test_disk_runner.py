"""Bad disks at the runner: `main.py run --disk ...` exits 2 with one line naming the file, and writes nothing.

No guest boots here: the images are opened (and refused) while the machine is built, before the kernel runs.
"""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.storage import create_image, open_image
from tests.helpers.runner import REPO_ROOT, run_vireo


def _qcow(tmp_path: Path, name: str = "d.qcow2") -> Path:
    img = tmp_path / name
    create_image(str(img), "qcow2", 8 << 20)
    with open_image(str(img)) as dev:
        dev.write(0, b"DATA" * 16384)
    return img


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _run_refused(kernel: Path, disk_arg: str, *needles: str) -> str:
    code, out, err = run_vireo(["--kernel", kernel, "--accel", "software", "--disk", disk_arg, "--timeout", "30"],
                               timeout=60)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, f"exit {code}\n{out[-2000:]}\n{err[-2000:]}"
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _truncated(tmp_path: Path) -> Path:
    img = _qcow(tmp_path)
    img.write_bytes(img.read_bytes()[:65536 + 100])      # the header survives; the tables after it do not
    return img


def _impossible_sizes(tmp_path: Path) -> Path:
    img = _qcow(tmp_path)
    _patch(img, 36, struct.pack(">I", 0x4000_0000))       # l1_size: a 8 GiB L1 table in a small file
    return img


def _bad_cluster_bits(tmp_path: Path) -> Path:
    img = _qcow(tmp_path)
    _patch(img, 20, struct.pack(">I", 40))                # cluster_bits 40: a 1 TiB cluster
    return img


def _unknown_incompatible(tmp_path: Path) -> Path:
    img = _qcow(tmp_path)
    _patch(img, 72, struct.pack(">Q", 1 << 40))           # incompatible_features: a bit nobody defines
    return img


def _short_header(tmp_path: Path) -> Path:
    img = _qcow(tmp_path)
    img.write_bytes(img.read_bytes()[:30])
    return img


@pytest.mark.parametrize("make,fmt,needles", [
    (_truncated, "", ["truncated"]),
    (_short_header, ",format=qcow2", ["truncated"]),
    (_impossible_sizes, "", ["L1"]),
    (_bad_cluster_bits, "", ["cluster"]),
    (_unknown_incompatible, "", ["incompatible"]),
])
def test_broken_images_are_refused_and_left_alone(debian_kernel, tmp_path, make, fmt, needles):
    img = make(tmp_path)
    before = _digest(img)
    line = _run_refused(debian_kernel, f"{img}{fmt}", str(img), *needles)
    assert line.startswith("vireo: ")
    assert _digest(img) == before


def test_missing_image(debian_kernel, tmp_path):
    _run_refused(debian_kernel, str(tmp_path / "nope.qcow2"), "nope.qcow2", "no such file")
    assert not (tmp_path / "nope.qcow2").exists()


def test_bad_disk_option(debian_kernel, tmp_path):
    img = _qcow(tmp_path)
    _run_refused(debian_kernel, f"{img},cache=sometimes", str(img), "cache=")


def test_qcow2_stated_as_format_of_a_raw_file(debian_kernel, tmp_path):
    img = tmp_path / "plain.raw"
    img.write_bytes(os.urandom(1 << 20))
    before = _digest(img)
    _run_refused(debian_kernel, f"{img},format=qcow2", str(img), "not a qcow2")
    assert _digest(img) == before


def test_disk_locked_by_another_process(debian_kernel, tmp_path):
    img = _qcow(tmp_path)
    before = _digest(img)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from core.storage import open_image; "
         "d = open_image(sys.argv[1]); print('open', flush=True); time.sleep(60)", str(img)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        line = _run_refused(debian_kernel, str(img), str(img), f"pid {holder.pid}", "in use")
        assert "python" in line
    finally:
        holder.kill()
        holder.wait()
    assert _digest(img) == before
    # Once the holder is gone (even killed), the lock goes with it.
    deadline = time.monotonic() + 5
    while True:
        try:
            open_image(str(img)).close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_same_disk_twice_in_one_vm(debian_kernel, tmp_path):
    img = _qcow(tmp_path)
    code, _, err = run_vireo(["--kernel", debian_kernel, "--accel", "software", "--disk", str(img),
                              "--disk", str(img)], timeout=60)
    assert code == 2 and str(img) in err and len(err.strip().splitlines()) == 1, err


def test_read_only_disk_may_be_shared_with_a_reader(debian_kernel, busybox_initramfs, tmp_path):
    """Two readers do not conflict (QEMU's rule too); the runner gets past opening the disk."""
    img = _qcow(tmp_path)
    with open_image(str(img), read_only=True):
        code, out, err = run_vireo(["--kernel", debian_kernel, "--accel", "software", "--disk",
                                    f"{img},readonly=on", "--append", "console=ttyS0 quiet vireo.action=poweroff",
                                    "--initrd", busybox_initramfs,
                                    "--timeout", "60"], timeout=90)
    assert code == 0, err
