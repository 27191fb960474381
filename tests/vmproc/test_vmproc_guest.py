"""VM processes running Debian's kernel on the software CPU (the busybox initramfs of tests/fixtures, driven by
vireo.action=): disks reach the guest, the lifecycle calls work across the process boundary, the serial console
goes both ways, the screen is readable through the shared console, and a killed process is reported as crashed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import DiskConfig, DisplayConfig
from core.keymap import text_events
from core.storage import create_image
from core.vmproc.handle import VmProcess, VmProcessError
from core.vmproc.shared_console import SharedConsoleReader
from tests.helpers.vmproc import PROMPT, Recorder, Spawner, guest_config, screen_lines

DISK_SIZE = 64 << 20


@pytest.fixture
def spawn(tmp_path):
    spawner = Spawner(str(tmp_path / "run"))
    yield spawner
    spawner.close()


def test_a_new_qcow2_disk_is_the_guests_vda_with_its_size(spawn, tmp_path, debian_kernel, busybox_initramfs):
    disk = tmp_path / "new.qcow2"
    create_image(str(disk), "qcow2", DISK_SIZE)
    cfg = guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=disk-write",
                       disks=[DiskConfig(str(disk), format="qcow2")], display=DisplayConfig("none"))
    vm, rec = spawn(cfg)
    assert vm.console_path is None                 # display none: no shared console, no VGA in the machine
    assert (vm.accel, vm.accel_reason) == ("software", "requested")
    rec.expect(f"VIREO-DISK-SIZE=vda:{DISK_SIZE}".encode())
    rec.expect(b"VIREO-DISK-OK")
    assert rec.state("shutoff") == "guest powered off"
    assert vm.wait(10)
    assert "VIREO-ERROR" not in rec.text()
    assert not os.path.exists(vm.paths.socket)


def test_pause_resume_serial_input_and_acpi_shutdown(spawn, debian_kernel, busybox_initramfs):
    vm, rec = spawn(guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=shell"))
    rec.expect(PROMPT)
    vm.serial_input(b"echo $((6*7))\n")
    rec.expect(re.compile(rb"\n42\r?\n"))
    rec.expect(PROMPT)

    vm.pause()
    assert rec.states[-1] == ("paused", "")
    cpu = vm.stats()["cpu_seconds"]
    vm.serial_input(b"echo $((7*8))\n")
    time.sleep(1.0)
    assert b"56" not in rec.serial                   # a paused guest neither echoes nor answers
    assert vm.stats()["cpu_seconds"] - cpu < 0.2     # and its vCPU thread does not run
    vm.resume()
    assert rec.states[-1] == ("running", "")
    rec.expect(re.compile(rb"\n56\r?\n"))            # the bytes typed during the pause were kept
    rec.expect(PROMPT)
    stats = vm.stats()
    assert stats["cpu_seconds"] > cpu and stats["resident_bytes"] > 64 << 20 and stats["vcpu_threads"] == 1

    vm.shutdown()
    rec.expect(b"VIREO-POWER-BUTTON")
    assert rec.state("shutoff") == "guest powered off"
    assert vm.wait(10)
    with pytest.raises(VmProcessError, match="ended"):
        vm.pause()


def test_power_off_returns_once_the_process_is_gone(spawn, debian_kernel, busybox_initramfs):
    vm, rec = spawn(guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=shell"))
    rec.expect(b"VIREO-BOOT-OK")
    vm.power_off()
    assert vm.wait(0)
    assert rec.states == [("shutoff", "forced power-off")]
    assert not os.path.exists(vm.paths.socket) and not os.path.exists(vm.paths.console)
    assert "exiting with 0" in open(vm.paths.log).read()


def test_a_vm_process_killed_with_sigkill_is_reported_as_crashed(spawn, debian_kernel, busybox_initramfs):
    vm, rec = spawn(guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=shell"))
    rec.expect(b"VIREO-BOOT-OK")
    os.kill(vm.pid, signal.SIGKILL)
    reason = rec.state("crashed")
    assert "killed by signal 9 (SIGKILL)" in reason
    assert "last log lines:" in reason and "running on software" in reason
    assert vm.wait(0) and len(rec.states) == 1
    assert not os.path.exists(vm.paths.socket) and not os.path.exists(vm.paths.console)


def test_a_bad_definition_fails_the_spawn_with_one_line(tmp_path, debian_kernel, busybox_initramfs):
    cfg = guest_config(tmp_path / "no-such-kernel", busybox_initramfs, "console=ttyS0")
    rec = Recorder()
    with pytest.raises(VmProcessError) as info:
        VmProcess.spawn(cfg, str(tmp_path / "run"), rec.on_state, rec.on_serial)
    assert str(info.value) == f"kernel {tmp_path / 'no-such-kernel'}: no such file"
    assert rec.states == []
    assert os.listdir(tmp_path / "run" / "vms") == [f"{cfg.uuid}.log"]      # no socket, no console left


def test_a_locked_disk_fails_the_spawn_with_one_line(spawn, tmp_path, debian_kernel, busybox_initramfs):
    disk = tmp_path / "shared.qcow2"
    create_image(str(disk), "qcow2", DISK_SIZE)
    cmdline = "console=ttyS0 quiet vireo.action=shell"
    first, rec = spawn(guest_config(debian_kernel, busybox_initramfs, cmdline, disks=[DiskConfig(str(disk), "qcow2")],
                                    display=DisplayConfig("none")))
    with pytest.raises(VmProcessError) as info:
        spawn(guest_config(debian_kernel, busybox_initramfs, cmdline, disks=[DiskConfig(str(disk), "qcow2")],
                           display=DisplayConfig("none")))
    assert str(disk) in str(info.value) and "\n" not in str(info.value)
    first.power_off()


def test_the_screen_and_the_keyboard_through_the_shared_console(spawn, debian_kernel, busybox_initramfs):
    # quiet: a late kernel notice (a mouse probed, the RNG ready) printed on tty0 while the test types would
    # split the echoed command line across two screen lines, as it would for a person typing.
    cfg = guest_config(debian_kernel, busybox_initramfs,
                       "console=ttyS0 console=tty0 quiet vireo.action=shell vireo.console=tty1")
    vm, rec = spawn(cfg)
    assert vm.console_path and os.stat(vm.console_path).st_mode & 0o777 == 0o600
    reader = SharedConsoleReader(vm.console_path)

    def screen_shows(predicate, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            frame = reader.render()
            if frame is not None and frame.mode == "text 80x25":
                lines = screen_lines(frame)
                if predicate(lines):
                    return lines
            time.sleep(1 / 60)
        pytest.fail("the shared console never showed it; last screen:\n" + "\n".join(lines), pytrace=False)

    screen_shows(lambda lines: "VIREO-BOOT-OK" in lines, 120)
    screen_shows(lambda lines: any(line.endswith("vireo:~#") for line in lines), 60)
    events, skipped = text_events("echo $((6*7))\n")
    assert skipped == 0
    for event in events:
        vm.key_event(event)
    lines = screen_shows(lambda lines: "42" in lines, 30)
    assert lines[lines.index("42") - 1].endswith("# echo $((6*7))")
    vm.power_off()
    assert not os.path.exists(vm.console_path)
    last = reader.render(force=True)                    # the reader keeps the unlinked file: the last picture
    assert last is not None and "42" in screen_lines(last)
    reader.close()


def test_a_restarted_service_adopts_the_running_vm_process(spawn, debian_kernel, busybox_initramfs):
    cfg = guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=shell")
    vm, rec = spawn(cfg)
    rec.expect(PROMPT)
    adopter = Recorder()
    again = VmProcess.adopt(cfg.uuid, spawn.runtime_dir, adopter.on_state, adopter.on_serial)
    assert (again.pid, again.accel, again.console_path, again.state) == (vm.pid, "software", vm.console_path,
                                                                         "running")
    adopter.expect(b"VIREO-BOOT-OK", timeout=10)          # the history the process kept
    again.serial_input(b"echo $((6*7))\n")
    adopter.expect(re.compile(rb"\n42\r?\n"), timeout=30)
    with pytest.raises(VmProcessError, match="another controller"):
        vm.pause()                                        # the first handle was told it is not in charge now
    assert rec.states == []                               # ... and reports nothing for a VM it no longer watches
    again.pause()
    assert adopter.states[-1] == ("paused", "")
    again.resume()
    # Not its parent, the adopter still notices the death (pidfd), without an exit status to tell.
    os.kill(again.pid, signal.SIGKILL)
    reason = adopter.state("crashed")
    assert f"(pid {again.pid}) ended without reporting its state" in reason
    assert vm.wait(10) and again.wait(10)


SPAWNER = """
import sys, time
from core.config import VmConfig
from core.vmproc.handle import VmProcess
cfg = VmConfig.from_dict(__import__("json").loads(sys.argv[1]))
vm = VmProcess.spawn(cfg, sys.argv[2], lambda *a: None, lambda data: None)
print(vm.pid, flush=True)
time.sleep(600)
"""


def test_the_vm_process_outlives_its_spawner_and_a_hangup(tmp_path, debian_kernel, busybox_initramfs):
    """The service (here a stand-in script in a session of its own, like a terminal's) gets SIGHUP and SIGKILL
    with its whole process group: the VM process, in a session of its own, runs on and can be adopted."""
    import json
    cfg = guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=shell")
    runtime_dir = str(tmp_path / "run")
    service = subprocess.Popen([sys.executable, "-c", SPAWNER, json.dumps(cfg.to_dict()), runtime_dir],
                               stdout=subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]),
                               start_new_session=True)
    pid = int(service.stdout.readline() or 0)
    assert pid > 0, "the stand-in service did not start its VM"
    os.killpg(service.pid, signal.SIGHUP)
    os.killpg(service.pid, signal.SIGKILL)
    service.wait(10)
    rec = Recorder()
    vm = VmProcess.adopt(cfg.uuid, runtime_dir, rec.on_state, rec.on_serial)
    try:
        assert vm.pid == pid and vm.state == "running"
        rec.expect(PROMPT, timeout=120)
        vm.serial_input(b"echo $((6*7))\n")
        rec.expect(re.compile(rb"\n42\r?\n"), timeout=30)
        vm.power_off()
        assert rec.states == [("shutoff", "forced power-off")]
    finally:
        if not vm.wait(0):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_powers_the_machine_off(spawn, debian_kernel, busybox_initramfs):
    vm, rec = spawn(guest_config(debian_kernel, busybox_initramfs, "console=ttyS0 quiet vireo.action=shell",
                                 display=DisplayConfig("none")))
    rec.expect(b"VIREO-BOOT-OK")
    os.kill(vm.pid, signal.SIGTERM)
    assert rec.state("shutoff") == "forced power-off"
    assert vm.wait(10) and "exiting with 0" in open(vm.paths.log).read()


def test_a_machine_crash_is_reported_as_crashed_and_the_process_exits(spawn):
    from core.config import BootConfig, VmConfig
    from tests.guests.build import guest_path

    cfg = VmConfig(name="triple", memory_mib=32, accel="software", display=DisplayConfig("none"),
                   boot=BootConfig(kernel=str(guest_path("triplefault"))))
    vm, rec = spawn(cfg)
    reason = rec.state("crashed", timeout=60)
    assert "triple fault" in reason and "\n" not in reason
    assert b"triplefault: loading an empty IDT" in rec.serial
    assert vm.wait(10) and "exiting with 1" in open(vm.paths.log).read()
