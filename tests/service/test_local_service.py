"""The local Vireo service and its client (core/remote/local.py, core/agent/daemon.py), each test in a sandbox of
its own (tests/helpers/service.py): started on demand once however many clients race, VMs that outlive their
client, serial through the client, and the Host API's refusals arriving as one line."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from core.config import BootConfig, VmConfig
from core.host import HostError, LocalServiceHost, VmState
from tests.helpers.service import ServiceSandbox

SHELL_CMDLINE = "console=ttyS0 vireo.action=shell"
PROMPT = re.compile(r"vireo:[^\n#]*# ")


class SerialLog:
    """Everything a VM's ttyS0 printed to one subscription, with expect() for what a test waits for."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()
        self.pos = 0

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.data += data
            self.cond.notify_all()

    def text(self) -> str:
        with self.cond:
            return self.data.decode(errors="replace")

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> None:
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                match = regex.search(self.data.decode(errors="replace"), self.pos)
                if match:
                    self.pos = match.end()
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{regex.pattern!r} not seen within {timeout} s; serial:\n"
                                f"{self.data.decode(errors='replace')[-2000:]}", pytrace=False)
                self.cond.wait(left)


def shell_vm(name: str, kernel: Path, initrd: Path, **kw) -> VmConfig:
    return VmConfig(name=name, memory_mib=128, accel="software",
                    boot=BootConfig(kernel=str(kernel), initrd=str(initrd), cmdline=SHELL_CMDLINE), **kw)


def wait_state(host: LocalServiceHost, uuid: str, state: VmState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while host.get(uuid).state != state:
        assert time.monotonic() < deadline, f"{host.get(uuid).name}: {host.get(uuid).state}, not {state}"
        time.sleep(0.05)


def test_racing_clients_start_one_service(local_service: ServiceSandbox) -> None:
    hosts: list[LocalServiceHost | None] = [None] * 3
    errors: list[BaseException] = []
    go = threading.Barrier(len(hosts))

    def connect(i: int) -> None:
        go.wait()
        try:
            hosts[i] = local_service.connect()
        except BaseException as exc:  # reported below with the others
            errors.append(exc)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    pids = {h.agent_status()["pid"] for h in hosts}
    assert pids == {local_service.daemon_pid()}
    # One daemon was started, not one per client that lost the race: one "serving" line, no "another agent".
    log = local_service.log()
    assert log.count(" serving ") == 1 and "another agent" not in log, log
    assert local_service.processes() == [local_service.daemon_pid()]
    assert all(h.remote and h.connected for h in hosts)
    assert hosts[0].capabilities().disks and not hosts[0].capabilities().network


def test_refusals_are_one_line(local_service: ServiceSandbox, tmp_path: Path) -> None:
    host = local_service.connect()
    info = host.define(VmConfig(name="nokernel", boot=BootConfig(kernel=str(tmp_path / "missing"))))
    with pytest.raises(HostError, match="no such file") as exc:
        host.start(info.uuid)
    assert "\n" not in str(exc.value)
    assert host.get(info.uuid).state == VmState.SHUTOFF
    with pytest.raises(HostError, match="already exists"):
        host.define(VmConfig(name="NOKERNEL", boot=BootConfig(kernel="/x")))
    with pytest.raises(HostError, match="no VM with uuid"):
        host.start("00000000-0000-4000-8000-000000000000")
    assert (local_service.vms_dir / f"{info.uuid}.json").is_file()


def test_vm_outlives_its_client_and_serial_works_through_it(local_service: ServiceSandbox, debian_kernel: Path,
                                                            busybox_initramfs: Path) -> None:
    first = local_service.connect()
    info = first.define(shell_vm("outlives", debian_kernel, busybox_initramfs))
    serial = SerialLog()
    first.subscribe_serial(info.uuid, serial)
    first.start(info.uuid)
    assert first.get(info.uuid).state == VmState.RUNNING
    serial.expect("VIREO-BOOT-OK", 240)
    serial.expect(PROMPT, 120)
    first.send_serial(info.uuid, b"echo first-$((6*7))\n")
    serial.expect("first-42", 30)
    first.close()
    assert not first.connected

    second = local_service.connect()
    assert second.get(info.uuid).state == VmState.RUNNING
    again = SerialLog()
    history = second.subscribe_serial(info.uuid, again)
    assert b"first-42" in history                       # what the guest printed before this client came
    second.send_serial(info.uuid, b"echo second-$((7*6))\n")
    again.expect("second-42", 30)
    stats = second.stats(info.uuid)
    assert stats is not None and stats.cpu_seconds > 0
    second.force_off(info.uuid)
    wait_state(second, info.uuid, VmState.SHUTOFF, 30)
