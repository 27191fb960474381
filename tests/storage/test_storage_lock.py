"""Image locking: one writer per image, in this process, in another Vireo process, and against QEMU itself
(the same OFD byte locks QEMU's file-posix driver uses)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.storage import ImageLockedError, create_image, open_image  # noqa: E402
from core.storage.locking import find_lock_holder  # noqa: E402
from tests.helpers.storage import need_qemu_img, qemu_img  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_second_writer_in_same_process_is_refused(tmp_path: Path, fmt: str) -> None:
    img = tmp_path / f"d.{fmt}"
    create_image(str(img), fmt, 1 << 20)
    first = open_image(str(img))
    try:
        with pytest.raises(ImageLockedError) as info:
            open_image(str(img))
        message = str(info.value)
        assert str(img) in message and f"pid {os.getpid()}" in message and "\n" not in message
        with pytest.raises(ImageLockedError):
            open_image(str(img), read_only=True)    # a reader wants a consistent disk: a writer prevents it
        with pytest.raises(ImageLockedError):
            create_image(str(img), fmt, 2 << 20)    # creating over a disk in use must not truncate it
        assert first.size == 1 << 20
    finally:
        first.close()
    open_image(str(img)).close()                    # released on close


def test_readers_share_and_keep_writers_out(tmp_path: Path) -> None:
    img = tmp_path / "base.qcow2"
    create_image(str(img), "qcow2", 1 << 20)
    r1 = open_image(str(img), read_only=True)
    r2 = open_image(str(img), read_only=True)       # two clones over one backing file: both read it
    try:
        with pytest.raises(ImageLockedError, match="does not allow others to write"):
            open_image(str(img))
    finally:
        r1.close()
        r2.close()


def test_holder_in_another_process_is_named_and_lock_dies_with_it(tmp_path: Path) -> None:
    img = tmp_path / "held.qcow2"
    create_image(str(img), "qcow2", 1 << 20)
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from core.storage import open_image; "
            "d = open_image(sys.argv[2]); print('open', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(img)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(ImageLockedError) as info:
            open_image(str(img))
        assert f"pid {proc.pid}" in str(info.value)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.05)
    open_image(str(img)).close()                    # kill -9 leaves no stale lock


def test_qemu_and_vireo_exclude_each_other(tmp_path: Path) -> None:
    need_qemu_img()
    img = tmp_path / "shared.qcow2"
    create_image(str(img), "qcow2", 1 << 20)
    with open_image(str(img)):
        proc = qemu_img("info", img, check=False)
        assert proc.returncode != 0 and "lock" in proc.stderr.lower()
        assert qemu_img("info", "-U", img).returncode == 0      # -U (force share) still looks
    # and the other way round: qemu-io holding the image for writing keeps Vireo out
    qio = subprocess.Popen(["qemu-io", "-f", "qcow2", str(img)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        # Wait for qemu-io's locks without taking ours (opening in a loop could make qemu-io fail instead).
        fd = os.open(img, os.O_RDONLY)
        try:
            deadline = time.monotonic() + 10
            while find_lock_holder(fd, 201) is None:
                assert time.monotonic() < deadline, "qemu-io never locked the image"
                time.sleep(0.02)
        finally:
            os.close(fd)
        with pytest.raises(ImageLockedError, match="qemu-io"):
            open_image(str(img))
    finally:
        qio.communicate("quit\n", timeout=10)
