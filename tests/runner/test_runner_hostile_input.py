"""Issue 18, defect 5 at the command line: inputs a hostile probe gave the runner that ended in tracebacks (or, for
`--timeout nan`, in a timeout that never fires) now give one line, or work as QEMU's would."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.runner import REPO_ROOT, run_vireo


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]


def test_bzimage_cut_to_518_bytes(debian_kernel, tmp_path):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(debian_kernel.read_bytes()[:518])
    code, _, err = run_vireo(["--kernel", cut, "--accel", "software"], timeout=60)
    assert code == 2
    line = _one_line_error(err)
    assert "cut.bin" in line and "truncated" in line


@pytest.mark.parametrize("value", ["1e309", "inf", "nan", "-0"])
def test_timeout_that_is_not_a_finite_positive_number(tmp_path, value):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\0" * 4096)
    code, _, err = run_vireo(["--kernel", kernel, "--accel", "software", "--timeout", value], timeout=60)
    assert code == 2
    assert "--timeout" in _one_line_error(err)


def test_40_gib_sparse_kernel(tmp_path):
    sparse = tmp_path / "huge.bin"
    with open(sparse, "wb") as f:
        f.truncate(40 << 30)
    code, _, err = run_vireo(["--kernel", sparse, "--accel", "software"], timeout=60)
    assert code == 2
    line = _one_line_error(err)
    assert "huge.bin" in line and "--memory" in line


def test_non_utf8_append_reaches_the_guest_unchanged(debian_kernel, busybox_initramfs):
    """Linux takes its command line as bytes; argv bytes that are not UTF-8 go to it as they are (QEMU's -append
    does the same), and the kernel echoes them in its "Command line:" line."""
    append = os.fsdecode(b"console=ttyS0 vireo.action=poweroff x=\xff\xfe")
    proc = subprocess.run([sys.executable, "main.py", "run", "--kernel", str(debian_kernel), "--initrd",
                           str(busybox_initramfs), "--accel", "software", "--append", append, "--timeout", "60"],
                          cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert b"Command line: console=ttyS0 vireo.action=poweroff x=\xff\xfe" in proc.stdout
    assert b"VIREO-POWEROFF" in proc.stdout


def test_serial_file_that_fails_to_write_does_not_crash_the_guest(debian_kernel, busybox_initramfs):
    """--serial file:/dev/full: every write fails with ENOSPC. The log is lost (said once, in one line), the VM is
    not: it runs to its power-off."""
    code, out, err = run_vireo(["--kernel", debian_kernel, "--initrd", busybox_initramfs, "--accel", "software",
                                "--append", "console=ttyS0 vireo.action=poweroff", "--serial", "file:/dev/full",
                                "--timeout", "60"], timeout=120)
    assert code == 0, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "/dev/full" in lines[0] and "discarded" in lines[0], err
