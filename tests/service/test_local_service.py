"""The local Vireo service and its client (core/remote/local.py, core/agent/daemon.py), each test in a sandbox of
its own (tests/helpers/service.py): started on demand once however many clients race, VMs that outlive their
client, serial through the client, and the Host API's refusals arriving as one line."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from core.config import BootConfig, DiskConfig, VmConfig
from core.connect import LocalServiceHost
from core.host import HostError, VmState
from tests.helpers.service import ServiceSandbox

SHELL_CMDLINE = "console=ttyS0 vireo.action=shell"
PROMPT = re.compile(r"vireo:[^\n#]*# ")
# The test guest's kernel has the virtio drivers as modules; the disk appears shortly after they load.
LOAD_VIRTIO_BLK = ("modprobe virtio_pci; modprobe virtio_blk; "
                   "for i in $(seq 50); do [ -e /dev/vda ] && break; sleep 0.1; done; ")


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
    assert hosts[0].capabilities().disks and hosts[0].capabilities().network


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


def test_delete_over_the_service_keeps_shared_disks_for_new_and_old_clients(local_service: ServiceSandbox,
                                                                           tmp_path: Path) -> None:
    host = local_service.connect()
    shared, own = tmp_path / "shared.img", tmp_path / "own.img"
    for disk in (shared, own):
        disk.write_bytes(b"\0" * 4096)

    def define(name: str, *disks: Path) -> str:
        cfg = VmConfig(name=name, boot=BootConfig(kernel="/k"), disks=[DiskConfig(path=str(d)) for d in disks])
        return host.define(cfg).uuid

    define("web", shared)
    result = host.delete(define("new-client", shared, own), [str(shared), str(own)])
    assert list(result)[1:] == [str(own)] and not own.exists()
    assert [(k.path, k.reason) for k in result.kept] == [(str(shared), "used by VM 'web'")]
    # A client from before `disks`/`report` sends delete_disks alone and reads back the plain list of removed
    # files; the service keeps the shared disk for it too.
    old = define("old-client", shared)
    value, _ = host._agent().call("delete", uuid=old, delete_disks=True)
    assert value == [str(local_service.vms_dir / f"{old}.json")] and shared.exists()


def test_delete_broken_definition_over_the_service(local_service: ServiceSandbox, tmp_path: Path) -> None:
    host, other = local_service.connect(), local_service.connect()
    local_service.vms_dir.mkdir(parents=True, exist_ok=True)
    broken = local_service.vms_dir / "77777777-7777-4777-8777-777777777777.json"
    broken.write_text("{nope")
    victim = tmp_path / "victim.json"
    victim.write_text("{nope")
    host.reload()
    other.reload()
    assert [e.path for e in other.load_errors()] == [broken]
    # A client naming any other file gets a one-line refusal from the service, and the file stays.
    with pytest.raises(HostError, match="is not a definition file that failed to load") as exc:
        host._agent().call("delete_broken_definition", path=str(victim))
    assert str(victim) in str(exc.value) and victim.exists()
    host.delete_broken_definition(str(broken))
    assert not broken.exists() and host.load_errors() == []
    # The other client hears of it (an UPDATED event) and its mirror drops the load error too.
    deadline = time.monotonic() + 10
    while other.load_errors() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.load_errors() == []


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


def boot_to_shell(host: LocalServiceHost, cfg: VmConfig) -> tuple[str, SerialLog]:
    """Define and start `cfg`; return its uuid and a serial log that has seen the shell prompt."""
    info = host.define(cfg)
    serial = SerialLog()
    host.subscribe_serial(info.uuid, serial)
    host.start(info.uuid)
    serial.expect("VIREO-BOOT-OK", 240)
    serial.expect(PROMPT, 120)
    return info.uuid, serial


def run(host: LocalServiceHost, uuid: str, serial: SerialLog, command: str, answer: str, timeout: float = 30) -> None:
    host.send_serial(uuid, command.encode() + b"\n")
    serial.expect(answer, timeout)


def test_a_killed_vm_process_crashes_alone(local_service: ServiceSandbox, debian_kernel: Path,
                                           busybox_initramfs: Path) -> None:
    host = local_service.connect()
    victim, _ = boot_to_shell(host, shell_vm("victim", debian_kernel, busybox_initramfs))
    other, other_serial = boot_to_shell(host, shell_vm("bystander", debian_kernel, busybox_initramfs))
    pid = host.stats(victim) and local_service.vm_pid(victim)
    assert pid and pid != local_service.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    wait_state(host, victim, VmState.CRASHED, 30)
    reason = host.get(victim).reason
    assert "SIGKILL" in reason and "\n" not in reason, reason
    assert host.get(other).state == VmState.RUNNING
    run(host, other, other_serial, "echo still-$((40+2))", "still-42")
    assert host.agent_status()["pid"] == local_service.daemon_pid()
    # A crashed VM starts again.
    host.start(victim)
    assert host.get(victim).state == VmState.RUNNING


def test_pause_resume_and_force_off_a_paused_vm(local_service: ServiceSandbox, debian_kernel: Path,
                                                busybox_initramfs: Path) -> None:
    host = local_service.connect()
    uuid, serial = boot_to_shell(host, shell_vm("pausable", debian_kernel, busybox_initramfs))
    host.pause(uuid)
    assert host.get(uuid).state == VmState.PAUSED
    with pytest.raises(HostError, match="is paused"):
        host.send_serial(uuid, b"x")
    host.resume(uuid)
    run(host, uuid, serial, "echo resumed-$((6*7))", "resumed-42")
    host.pause(uuid)
    host.force_off(uuid)
    assert host.get(uuid).state == VmState.SHUTOFF and host.get(uuid).reason == "forced off"
    assert local_service.vm_pid(uuid) is None


def test_autostart_vms_start_with_the_service(local_service: ServiceSandbox, debian_kernel: Path,
                                              busybox_initramfs: Path) -> None:
    host = local_service.connect()
    auto = host.define(shell_vm("auto", debian_kernel, busybox_initramfs, autostart=True))
    manual = host.define(shell_vm("manual", debian_kernel, busybox_initramfs))
    assert host.get(auto.uuid).state == VmState.SHUTOFF      # defining does not start it
    local_service.stop_daemon()
    host = local_service.connect()                            # a new service, started on demand
    wait_state(host, auto.uuid, VmState.RUNNING, 120)
    assert host.get(manual.uuid).state == VmState.SHUTOFF
    serial = SerialLog()
    host.subscribe_serial(auto.uuid, serial)
    serial.expect(PROMPT, 240)


def test_a_new_service_adopts_the_running_vms(local_service: ServiceSandbox, debian_kernel: Path,
                                              busybox_initramfs: Path) -> None:
    host = local_service.connect()
    uuid, serial = boot_to_shell(host, shell_vm("survivor", debian_kernel, busybox_initramfs))
    run(host, uuid, serial, "echo before-$((6*7))", "before-42")
    pid = local_service.vm_pid(uuid)
    old_daemon = local_service.daemon_pid()
    os.kill(old_daemon, signal.SIGKILL)                       # the service dies; its VM does not
    host = local_service.connect()
    assert local_service.daemon_pid() != old_daemon
    assert host.get(uuid).state == VmState.RUNNING and local_service.vm_pid(uuid) == pid
    again = SerialLog()
    assert b"before-42" in host.subscribe_serial(uuid, again)   # the output the VM process kept
    run(host, uuid, again, "echo after-$((7*6))", "after-42")
    host.force_off(uuid)
    assert host.get(uuid).state == VmState.SHUTOFF


def test_a_disk_in_the_definition_is_dev_vda(local_service: ServiceSandbox, debian_kernel: Path,
                                            busybox_initramfs: Path) -> None:
    host = local_service.connect()
    image = local_service.data_home / "vireo" / "images" / "data.qcow2"
    host.create_disk(str(image), 64 << 20, fmt="qcow2")
    cfg = shell_vm("withdisk", debian_kernel, busybox_initramfs,
                   disks=[DiskConfig(path=str(image), format="qcow2")])
    uuid, serial = boot_to_shell(host, cfg)
    # /sys/block/vda/size counts 512-byte sectors: 64 MiB is 131072.
    run(host, uuid, serial, LOAD_VIRTIO_BLK + "cat /sys/block/vda/size", "131072")
    run(host, uuid, serial, "echo written > /tmp/f && dd if=/tmp/f of=/dev/vda bs=512 count=1 conv=fsync "
                            "2>/dev/null && echo dd-$?", "dd-0")
    host.force_off(uuid)
    uuid2, serial2 = uuid, SerialLog()
    host.subscribe_serial(uuid2, serial2)
    host.start(uuid2)
    serial2.expect(PROMPT, 240)
    run(host, uuid2, serial2, LOAD_VIRTIO_BLK + "head -c 7 /dev/vda; echo", "written")


def test_the_local_console_is_shared_memory(local_service: ServiceSandbox, debian_kernel: Path,
                                           busybox_initramfs: Path) -> None:
    from core.vmproc.shared_console import SharedConsoleReader

    host = local_service.connect()
    uuid, serial = boot_to_shell(host, shell_vm("screen", debian_kernel, busybox_initramfs))
    console = host.console(uuid)
    assert isinstance(console.frames, SharedConsoleReader)
    deadline = time.monotonic() + 30
    frame = None
    while frame is None and time.monotonic() < deadline:
        frame = console.frames.render(force=True)
        time.sleep(0.05)
    assert frame is not None and frame.width > 0 and frame.height > 0
    assert frame.pixels.any()                        # the text console is not blank
    # Typing goes to the VM as set-2 key events: "1" is make 0x16, break F0 16, then Enter (5A / F0 5A).
    for code in (b"\x16", b"\xf0\x16", b"\x5a", b"\xf0\x5a"):
        console.input.key_event(code)
    assert console.session == host.console(uuid).session
    host.force_off(uuid)
    with pytest.raises(HostError, match="shut off"):
        host.console(uuid)


def test_the_systemd_unit_runs_the_service_with_its_autostart_vms(local_service: ServiceSandbox, debian_kernel: Path,
                                                                  busybox_initramfs: Path) -> None:
    """resources/vireo.service as install-service.sh writes it, its ExecStart run the way systemd would (no
    systemd user manager here): the service serves the socket, starts the autostart VM, and clients find it."""
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "resources" / "vireo.service").read_text().replace("@REPO@", str(repo))
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    env_key, env_value = settings["Environment"].split("=", 1)
    assert settings["KillMode"] == "process" and settings["WantedBy"] == "default.target"
    argv = shlex.split(settings["ExecStart"])
    assert "--no-idle-exit" in argv and Path(argv[0]).is_file()
    from core.config import ConfigStore
    auto = shell_vm("at-login", debian_kernel, busybox_initramfs, autostart=True)
    ConfigStore(local_service.vms_dir).save(auto)
    daemon = subprocess.Popen(argv, cwd=settings["WorkingDirectory"], env={**os.environ, env_key: env_value},
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while local_service.daemon_pid() != daemon.pid:
            assert daemon.poll() is None and time.monotonic() < deadline, local_service.log()
            time.sleep(0.05)
        host = local_service.connect()
        assert host.agent_status()["pid"] == daemon.pid
        wait_state(host, auto.uuid, VmState.RUNNING, 120)
        serial = SerialLog()
        host.subscribe_serial(auto.uuid, serial)
        serial.expect(PROMPT, 240)
    finally:
        daemon.terminate()
        daemon.wait(15)
