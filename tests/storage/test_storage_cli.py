"""`img create|info|check|resize` (core/storage/cli.py): qemu-img's words and size suffixes, exit status 0/1/2
and one-line errors naming the file."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from core.storage import open_image  # noqa: E402
from core.storage.cli import main  # noqa: E402
from core.storage.sizes import SizeError, parse_size  # noqa: E402
from tests.helpers.storage import need_qemu_img, qemu_img  # noqa: E402


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_size() -> None:
    assert parse_size("4096") == ("", 4096)
    assert parse_size("64k") == parse_size("64K") == ("", 65536)
    assert parse_size("1.5G") == ("", 3 << 29)
    assert parse_size("2T") == ("", 2 << 40)
    assert parse_size("+1M", allow_relative=True) == ("+", 1 << 20)
    for bad in ("", "ten", "1Q", "0.3", "-1G", "512b"):
        with pytest.raises(SizeError):
            parse_size(bad)


def test_create_info_check_resize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_qemu_img()
    base, clone = tmp_path / "base.qcow2", tmp_path / "clone.qcow2"
    assert run(capsys, "create", "-f", "qcow2", base, "1G")[0] == 0
    code, out, _ = run(capsys, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", clone)
    assert code == 0 and "size=1073741824" in out
    code, out, _ = run(capsys, "info", clone)
    assert code == 0
    assert "file format: qcow2" in out and "virtual size: 1 GiB (1073741824 bytes)" in out
    assert "cluster_size: 65536" in out and "backing file: base.qcow2" in out and "backing file format: qcow2" in out
    ours = json.loads(run(capsys, "info", "--output", "json", clone)[1])
    theirs = json.loads(qemu_img("info", "--output=json", clone).stdout)
    for key in ("virtual-size", "format", "cluster-size", "backing-filename", "backing-filename-format"):
        assert ours[key] == theirs[key], key
    code, out, _ = run(capsys, "check", clone)
    assert code == 0 and "No errors were found" in out
    assert run(capsys, "resize", clone, "+1G")[0] == 0
    assert run(capsys, "resize", base, "2G")[0] == 0
    assert json.loads(qemu_img("info", "--output=json", clone).stdout)["virtual-size"] == 2 << 30
    qemu_img("check", clone)
    code, _, err = run(capsys, "resize", clone, "1G")
    assert code == 2 and "--shrink" in err and str(clone) in err
    code, _, err = run(capsys, "resize", "--shrink", clone, "1G")
    assert code == 2 and "not supported" in err


def test_raw_create_and_shrink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    assert run(capsys, "create", img, "10M")[0] == 0
    assert img.stat().st_size == 10 << 20
    assert run(capsys, "resize", img, "-4M")[0] == 2
    assert run(capsys, "resize", "--shrink", img, "-4M")[0] == 0
    assert img.stat().st_size == 6 << 20
    code, out, _ = run(capsys, "info", img)
    assert code == 0 and "file format: raw" in out and "(6291456 bytes)" in out
    assert run(capsys, "check", img)[0] == 0


def test_check_reports_corruption_and_leak_and_repairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_qemu_img()
    img = tmp_path / "c.qcow2"
    run(capsys, "create", "-f", "qcow2", img, "16M")
    with open_image(str(img)) as dev:
        dev.write(0, b"x" * (1 << 20))
    raw = img.read_bytes()
    block = struct.unpack(">Q", raw[65536:65544])[0]          # the first refcount block
    with open(img, "r+b") as f:
        f.seek(block + 2 * 5)
        f.write(struct.pack(">H", 0))                            # a data cluster's refcount drops to 0: corruption
        f.seek(block + 2 * 30)
        f.write(struct.pack(">H", 1))                            # a cluster nobody uses gets one: leak
    code, out, _ = run(capsys, "check", img)
    assert code == 1 and "ERROR cluster 5 refcount=0 reference=1" in out and "errors were found" in out
    assert qemu_img("check", img, check=False).returncode == 2    # qemu-img agrees: corruption
    code, out, _ = run(capsys, "check", "-r", "all", img)
    assert code == 0 and "No errors were found" in out
    qemu_img("check", img)


def test_bad_input_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.qcow2"
    code, _, err = run(capsys, "info", missing)
    assert code == 2 and str(missing) in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "create", "-f", "qcow2", tmp_path / "x.qcow2", "10Q")
    assert code == 2 and "invalid size" in err
    code, _, err = run(capsys, "create", "-f", "qcow2", tmp_path / "x.qcow2", "1000")
    assert code == 2 and "multiple of 512" in err
    code, _, err = run(capsys, "create", "-f", "qcow2", tmp_path / "x.qcow2")
    assert code == 2 and "size" in err
    code, _, err = run(capsys, "create", "-f", "qcow2", "-o", "cluster_size=3k", tmp_path / "x.qcow2", "1M")
    assert code == 2 and "power of two" in err
    assert run(capsys, "bogus")[0] == 2
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + bytes(60))
    code, _, err = run(capsys, "check", bad)
    assert code == 2 and str(bad) in err


def test_locked_image_is_an_operation_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "busy.qcow2"
    run(capsys, "create", "-f", "qcow2", img, "1M")
    with open_image(str(img)):
        code, _, err = run(capsys, "resize", img, "2M")
        assert code == 1 and "in use by pid" in err
        assert run(capsys, "info", "-U", img)[0] == 0
