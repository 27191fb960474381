"""The runner's bad-input contract: exit status 2 and one clear line on stderr naming the thing and the fix."""
import os

import pytest

from tests.helpers.runner import run_vireo


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]


def test_missing_kernel_file(tmp_path):
    code, out, err = run_vireo(["--kernel", tmp_path / "nope", "--accel", "software"], timeout=60)
    assert code == 2
    line = _one_line_error(err)
    assert "--kernel" in line and "nope" in line and "no such file" in line


def test_missing_initrd_file(tmp_path):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\0" * 4096)
    code, _, err = run_vireo(["--kernel", kernel, "--initrd", tmp_path / "missing.img"], timeout=60)
    assert code == 2
    assert "--initrd" in _one_line_error(err)


def test_kernel_that_is_neither_bzimage_nor_multiboot(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    code, _, err = run_vireo(["--kernel", junk, "--accel", "software"], timeout=60)
    assert code == 2
    line = _one_line_error(err)
    assert "junk.bin" in line and "neither" in line


@pytest.mark.parametrize("args,needle", [
    (["--memory", "1"], "memory"),
    (["--memory", "99999999"], "memory"),
    (["--cpus", "0"], "cpus"),
    (["--cpus", "1000"], "cpus"),
    (["--memory", "lots"], "--memory"),
    (["--serial", "tcp:1234"], "--serial"),
    (["--timeout", "-3"], "--timeout"),
])
def test_out_of_range_and_malformed_options(tmp_path, args, needle):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\0" * 4096)
    code, _, err = run_vireo(["--kernel", kernel, "--accel", "software", *args], timeout=60)
    assert code == 2
    assert needle in err.strip().splitlines()[-1]


def test_initrd_larger_than_memory(debian_kernel, tmp_path):
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    code, _, err = run_vireo(["--kernel", debian_kernel, "--initrd", big, "--memory", "32",
                              "--accel", "software"], timeout=60)
    assert code == 2
    line = _one_line_error(err)
    assert "big.img" in line and "memory" in line


def test_accel_kvm_without_a_usable_kvm_device(tmp_path):
    import subprocess
    import sys

    from tests.helpers.runner import REPO_ROOT
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\0" * 4096)
    proc = subprocess.run([sys.executable, "main.py", "run", "--kernel", str(kernel), "--accel", "kvm"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "VIREO_KVM_DEVICE": str(tmp_path / "no-kvm")})
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "--accel kvm" in line and "no-kvm" in line
