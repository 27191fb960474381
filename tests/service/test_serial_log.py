"""A VM's serial log (serial.log_file) through the service, in a sandbox (tests/helpers/service.py): the VM process
writes it, so it keeps growing while no service runs and after a new service adopts the process, with every line
once; and a log file that cannot be opened fails the start with one line naming it.

The guest is serialecho (tests/guests/serialecho.s): it boots at once on the software CPU, prints a tick a second
and echoes what it is sent."""
from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import pytest

from core.config import BootConfig, DisplayConfig, SerialConfig, VmConfig
from core.connect import LocalServiceHost
from core.host import HostError, VmState
from tests.guests.build import guest_path
from tests.helpers.service import ServiceSandbox
from tests.helpers.vmproc import holds_open, without_echo_ticks


def echo_vm(name: str, log_file: Path) -> VmConfig:
    return VmConfig(name=name, memory_mib=32, accel="software", display=DisplayConfig("none"),
                    boot=BootConfig(kernel=str(guest_path("serialecho"))), serial=SerialConfig(log_file=str(log_file)))


def wait_for_text(path: Path, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_bytes().decode(errors="replace") if path.exists() else ""
        if needle in text or needle in without_echo_ticks(text):
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{needle!r} not in {path} within {timeout} s; it holds:\n{text[-2000:]!r}", pytrace=False)
        time.sleep(0.05)


def ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"serialecho: tick (\d+)\r\n", text)]


def wait_running(host: LocalServiceHost, uuid: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while host.get(uuid).state != VmState.RUNNING:
        assert time.monotonic() < deadline, f"{host.get(uuid).state}, not running"
        time.sleep(0.05)


def test_the_serial_log_survives_a_service_restart_and_adoption(local_service: ServiceSandbox,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "logs" / "echo.log"
    path.parent.mkdir()
    host = local_service.connect()
    uuid = host.define(echo_vm("logged", path)).uuid
    host.start(uuid)
    wait_for_text(path, "serialecho: ready\r\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    host.send_serial(uuid, b"before-restart\n")
    wait_for_text(path, "before-restart\r\n")
    vm_pid = local_service.vm_pid(uuid)
    assert vm_pid is not None and holds_open(vm_pid, path)
    assert not holds_open(local_service.daemon_pid(), path)       # the service does not write it

    local_service.stop_daemon()
    assert local_service.processes() == [vm_pid]                  # no service at all now, only the VM process
    last = max(ticks(path.read_bytes().decode()), default=0)
    wait_for_text(path, f"serialecho: tick {last + 2}\r\n")       # two seconds of output with nobody connected

    host = local_service.connect()                                # a new service, which adopts the VM process
    assert local_service.vm_pid(uuid) == vm_pid
    wait_running(host, uuid)
    host.send_serial(uuid, b"after-restart\n")
    wait_for_text(path, "after-restart\r\n")
    host.force_off(uuid)
    assert host.get(uuid).state == VmState.SHUTOFF

    text = path.read_bytes().decode()
    # Each line once: the output the VM process replays to its adopter is not logged again.
    echoes = without_echo_ticks(text)
    assert echoes.count("serialecho: ready") == 1 and echoes.count("before-restart") == 1
    assert echoes.index("before-restart") < echoes.index("after-restart")
    got = ticks(text)
    assert got == list(range(1, len(got) + 1)) and len(got) >= last + 2, got    # none lost while away
    # And the log holds all the service relayed after adopting (it keeps the last 64 KiB of the serial output).
    history = host.subscribe_serial(uuid, lambda data: None)
    assert "after-restart" in without_echo_ticks(history.decode()) and text.encode().endswith(history)


def test_an_unopenable_serial_log_fails_the_start_with_one_line(local_service: ServiceSandbox,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "echo.log"
    host = local_service.connect()
    uuid = host.define(echo_vm("badlog", path)).uuid
    with pytest.raises(HostError) as exc:
        host.start(uuid)
    assert str(exc.value) == f"badlog failed to start: serial log {path}: No such file or directory"
    info = host.get(uuid)
    assert info.state == VmState.SHUTOFF and info.reason == f"failed to start: serial log {path}: " \
                                                           "No such file or directory"
    assert local_service.vm_pid(uuid) is None and not path.parent.exists()
