"""The VM process's sandbox (core/vmproc/sandbox.py, docs/security.md; issue 18): after start-up it may not execve,
fork or open new sockets it has no use for, and a VM with a disk, a passt card and a VNC server still works.

The forbidden call is made through the test-only `sandbox_probe` control call (VIREO_TEST_HOOKS=1), which tries
execve("/bin/true") from inside the running VM process: refused, it answers with the refusal and the VM runs on;
unconfined, the VM process would become /bin/true and die as a VM."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

import pytest

from core.config import DiskConfig, NicConfig
from core.storage import create_image
from core.vmproc.handle import VmProcessError
from tests.helpers.vmproc import PROMPT, Spawner, guest_config
from tests.net.test_net_guest import free_port


@pytest.fixture
def spawn(tmp_path, monkeypatch):
    monkeypatch.setenv("VIREO_TEST_HOOKS", "1")
    monkeypatch.delenv("VIREO_SANDBOX", raising=False)
    spawner = Spawner(str(tmp_path / "run"))
    yield spawner
    spawner.close()


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_execve_after_start_up_is_refused_and_the_vm_runs_on(spawn, tmp_path, debian_kernel, busybox_initramfs):
    disk = tmp_path / "d.qcow2"
    create_image(str(disk), "qcow2", 32 << 20)
    port = free_port()
    vm, rec = spawn(guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=net "
                                 "vireo.httpd=80", disks=[DiskConfig(str(disk), format="qcow2")],
                                 nics=[NicConfig(forwards=[f"tcp:127.0.0.1:{port}-:80"])]))
    rec.expect(b"VIREO-HTTPD-READY", 120)
    status = _status(vm.pid)
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"                 # filter mode, on every thread (TSYNC)
    for tid in os.listdir(f"/proc/{vm.pid}/task"):
        with open(f"/proc/{vm.pid}/task/{tid}/status") as f:
            assert "Seccomp:\t2" in f.read()
    with pytest.raises(VmProcessError) as refused:
        vm._call("sandbox_probe")
    assert "execve refused by the sandbox: Operation not permitted" in str(refused.value)
    # Still the same VM: the guest answers on its serial console and through its forward, its disk is there.
    vm.serial_input(b"modprobe virtio_blk; sleep 1; cat /sys/block/vda/size; "
                    b"dd if=/dev/urandom of=/dev/vda bs=4k count=64 conv=fsync 2>/dev/null && echo still-$((6*7))\n")
    rec.expect(re.compile(rb"\nstill-42\r?\n"), 60)
    assert b"\n65536\r" in rec.serial
    assert b"VIREO-HTTPD-PAGE" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
    # A new forward restarts passt: the sandboxed process cannot exec it, its launcher does.
    port2 = free_port()
    vm.net_set(0, forwards=[f"tcp:127.0.0.1:{port2}-:80"])
    assert b"VIREO-HTTPD-PAGE" in urllib.request.urlopen(f"http://127.0.0.1:{port2}/", timeout=30).read()
    assert vm.net_status()[0]["link_up"]
    vm.power_off()
    assert rec.state("shutoff")


def test_the_sandbox_can_be_turned_off_for_debugging(spawn, monkeypatch, debian_kernel, busybox_initramfs):
    monkeypatch.setenv("VIREO_SANDBOX", "0")
    vm, rec = spawn(guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=shell"))
    rec.expect(PROMPT, 120)
    assert _status(vm.pid)["Seccomp"].strip() == "0"
    vm.power_off()


def test_the_filter_refuses_fork_and_exec_but_not_threads():
    """The filter alone, in a fresh interpreter: threads still start; fork, vfork (subprocess) and execve fail
    with EPERM; clone3 says ENOSYS so glibc falls back to clone, whose flags the filter checks."""
    code = ("import os, subprocess, threading\n"
            "from core.vmproc import sandbox\n"
            "print(sandbox.apply())\n"
            "t = threading.Thread(target=print, args=('thread-ok',)); t.start(); t.join()\n"
            "for name, call in (('fork', os.fork), ('spawn', lambda: subprocess.run(['/bin/true'])),\n"
            "                   ('exec', lambda: os.execv('/bin/true', ['true']))):\n"
            "    try:\n"
            "        call(); print(name, 'ALLOWED')\n"
            "    except OSError as exc:\n"
            "        print(name, 'refused', exc.errno)\n")
    env = {k: v for k, v in os.environ.items() if k != "VIREO_SANDBOX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), env=env)
    assert out.returncode == 0, out.stderr
    assert "thread-ok" in out.stdout
    assert "fork refused 1" in out.stdout and "spawn refused 1" in out.stdout and "exec refused 1" in out.stdout, \
        out.stdout


@pytest.mark.parametrize("accel", ["software", "kvm"])
def test_a_sandboxed_small_guest_runs_saves_and_restores(accel, tmp_path, monkeypatch):
    """The counter test guest on each accelerator, sandboxed: it counts, is saved to a state file (a file the
    process creates after start-up), and a new sandboxed VM process restored from it counts on."""
    from core.config import BootConfig, DisplayConfig, VmConfig
    from core.vmproc.handle import VmProcess
    from tests.guests.build import guest_path
    from tests.helpers.accel import require_guest
    require_guest(accel, "counter")
    monkeypatch.delenv("VIREO_SANDBOX", raising=False)
    cfg = VmConfig(name="sandbox-counter", memory_mib=32, accel=accel,
                   boot=BootConfig(kernel=str(guest_path("counter"))), display=DisplayConfig("none"))
    spawner = Spawner(str(tmp_path / "run"))
    state = str(tmp_path / "counter.state")
    try:
        vm, rec = spawner(cfg)
        rec.expect(re.compile(rb"counter: 5\r?\n"), 30)
        assert _status(vm.pid)["Seccomp"].strip() == "2"
        assert vm.accel == accel
        vm.save(state)
        assert vm.reason == f"saved to {state}"
        last = max(int(n) for n in re.findall(rb"counter: (\d+)\r?\n", rec.serial))
        again = VmProcess.spawn(cfg, str(tmp_path / "run"), rec.on_state, rec.on_serial, restore=state)
        spawner.processes.append(again)
        rec.expect(re.compile(rb"counter: %d\r?\n" % (last + 3)), 30)
        assert _status(again.pid)["Seccomp"].strip() == "2"
        again.power_off()
    finally:
        spawner.close()
