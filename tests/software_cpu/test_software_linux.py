"""Debian's kernels with the busybox initramfs on the software CPU (issues 3 and 4's done-means).

amd64: the sha256 workload's checksum is right, the virtio and bochs modules load, and with 2 vCPUs parallel hashing
jobs and a fork/exec storm run for a bounded time without a wrong checksum, soft lockup, RCU stall or oops.
i386 (686): boots, answers on the serial shell and powers off. Booting the amd64 kernel (1 and 2 CPUs, the VGA
text screen) and its serial shell are in tests/accel/test_linux.py, for both accelerators."""
from __future__ import annotations

import hashlib
import re

import pytest

from tests.helpers.initrd import initrd_with_current_init
from tests.helpers.runner import run_vireo, run_vireo_interactive


def _run(kernel, initrd, action: str, *extra: str, timeout: float = 120,
         console: str = "console=ttyS0") -> tuple[int, str, str]:
    return run_vireo(["--kernel", str(kernel), "--initrd", str(initrd), "--append",
                      f"{console} vireo.action={action}", "--accel", "software", "--serial", "stdio",
                      "--timeout", str(int(timeout - 10)), *extra], timeout=timeout)


def test_sha256_workload(debian_kernel, busybox_initramfs):
    status, out, err = _run(debian_kernel, busybox_initramfs, "sha256", timeout=240)
    assert status == 0, err + out[-3000:]
    expected = hashlib.sha256(bytes(256 << 20)).hexdigest()
    assert f"VIREO-SHA256={expected}" in out


@pytest.mark.parametrize("parallel", [False, True], ids=["time-shared", "parallel"])
def test_two_vcpus_hash_and_fork_exec_storm_without_lockups_or_wrong_sums(debian_kernel, busybox_initramfs,
                                                                         tmp_path, parallel, monkeypatch):
    """8 s of one sha256 job per vCPU over and over plus a fork/exec storm, then the kernel's own detectors are
    read (issue 14): the soft-lockup and RCU-stall thresholds are lowered (4 s, 5 s) so that a vCPU starved
    within the run is reported within it. `parallel`: one unicorn instance per vCPU (VIREO_PARALLEL_VCPUS=1)."""
    monkeypatch.setenv("VIREO_PARALLEL_VCPUS", "1" if parallel else "0")
    initrd = initrd_with_current_init(busybox_initramfs, tmp_path)
    status, out, err = _run(debian_kernel, initrd, "smp-stress vireo.seconds=8 watchdog_thresh=2 "
                            "rcupdate.rcu_cpu_stall_timeout=5", "--cpus", "2", "--memory", "256", timeout=120)
    assert status == 0, err + out[-3000:]
    assert ("2 vCPUs in parallel" in err) == parallel, err
    assert "VIREO-STRESS-KERNEL-OK" in out, out[-3000:]
    sums = re.findall(r"VIREO-STRESS-SUM=(\d+):(\w+)", out)
    expected = hashlib.sha256(bytes(16 << 20)).hexdigest()
    assert [s for _, s in sums] == [expected], out[-3000:]
    assert int(sums[0][0]) >= 2, out[-3000:]                # both jobs finished at least one sum
    assert int(re.search(r"VIREO-STRESS-EXECS=(\d+)", out).group(1)) >= 50, out[-3000:]
    # CPUID leaf 4: an L3 shared by both vCPUs, so Linux wakes a task on the other vCPU without an IPI each time
    assert "VIREO-STRESS-LLC=L3:0-1" in out, out[-3000:]


def _shell(kernel, initrd, *extra: str, timeout: float = 120) -> tuple[int, str, str]:
    """Boot to the initramfs shell, compute 6*7 in it, power off from it."""
    return run_vireo_interactive(
        ["--kernel", str(kernel), "--initrd", str(initrd), "--append", "console=ttyS0 vireo.action=shell",
         "--accel", "software", "--serial", "stdio", "--memory", "256", "--timeout", str(int(timeout - 10)),
         *extra], ["echo $((6*7))", "poweroff"], timeout=timeout)


def test_amd64_loads_the_virtio_and_bochs_modules(debian_kernel, busybox_initramfs):
    status, out, err = _run(debian_kernel, busybox_initramfs, "modules", "--memory", "256")
    assert status == 0, err + out[-3000:]
    assert "VIREO-MODULES-OK" in out, out[-3000:]
    assert "Initialized bochs-drm" in out            # the driver found and drove our VGA's PCI function


def test_i386_kernel_boots_and_its_shell_answers(debian_kernel_686, initramfs_686):
    """Debian's 32-bit (686) kernel, entered in flat 32-bit protected mode, decompresses itself in the guest,
    boots to the marker, answers on its serial shell and powers off (issue 3)."""
    status, out, err = _shell(debian_kernel_686, initramfs_686)
    assert status == 0, err + out[-3000:]
    assert "Linux version" in out and "-686" in out
    assert "VIREO-BOOT-OK" in out
    assert re.search(r"^42\r?$", out, re.MULTILINE), out[-2000:]
    assert "VIREO-POWEROFF" in out
