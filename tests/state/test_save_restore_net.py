"""Saving a machine while its virtio-net card is busy (docs/machine-state.md, "Network cards"): Debian's kernel with
the tests' busybox initramfs on the software CPU, a card on passt, the guest downloading an endless stream from an
HTTP server on the host's loopback while the machine is saved, and the host sending UDP datagrams to a forwarded
port at a steady pace throughout the save (TCP stops at the guest's window once its vCPU is paused; these keep
arriving while the state is written, as any traffic the guest does not pace would).

The card's receive thread must not write guest RAM, the used ring or an interrupt while the state is captured: a
state file whose transport record says one used index while the RAM saved after it holds a later one gives the
restored card and driver different ideas of the rings (the device publishes a used index behind the one the driver
already saw, and pops buffers again): before the fix the restored guest's download never completed. After the fix
the restored guest downloads again (checksum compared) and its kernel logged nothing about the card; a live save
(the machine runs on) leaves the running guest's network working as well. The same through the Vireo service: a VM
snapshot of the busy VM (its VM process pauses, captures and lets the card go again), the VM's network working on
after it, and after a revert to it.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import socket
import threading
import time

import pytest

from core.config import BootConfig, DiskConfig, NicConfig, SerialConfig, VmConfig
from core.host import VmState
from core.machine import MachineConfig, MachineState
from core.net.nic import NicSpec, parse_forward
from tests.helpers.accel import require_accel
from tests.helpers.initrd import initrd_with_current_init
from tests.helpers.service import ServiceSandbox, local_service  # noqa: F401  (the fixture)
from tests.state.helpers import Running

pytestmark = pytest.mark.skipif(shutil.which("passt") is None and os.environ.get("CI") != "true",
                                reason="passt is not installed (apt-get install passt)")
BLOB = os.urandom(3 << 20)
CHUNK = os.urandom(64 << 10)
# What the guest's kernel says when a virtqueue or the card goes wrong (virtio_ring.c's BAD_RING: "input.0:id 5
# is not a head!", "used index ... out of range"; virtio_net.c's rx errors).
KERNEL_COMPLAINT = r"input\.\d|output\.\d|not a head|out of range|rx error|virtio_net.*(error|fail)"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:                   # noqa: N802 (the stdlib's name)
        if self.path == "/blob":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            self.wfile.write(BLOB)
        elif self.path == "/stream":           # endless: the guest reads until the connection goes
            self.send_response(200)
            self.end_headers()
            try:
                while not self.server.stopping:     # type: ignore[attr-defined]
                    self.wfile.write(CHUNK)
            except OSError:
                pass
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.stopping = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.stopping = True
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def initrd(busybox_initramfs, tmp_path_factory):
    return initrd_with_current_init(busybox_initramfs, tmp_path_factory.mktemp("initrd"))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UdpPacer:
    """Datagrams to the forwarded port, one every 0.2 ms, until stopped (nobody listens in the guest: its kernel
    takes each frame off the ring all the same)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not self._stop.wait(0.0002):
                s.sendto(self.sent.to_bytes(4, "big") * 64, ("127.0.0.1", self.port))
                self.sent += 1

    def __enter__(self) -> UdpPacer:
        self._thread.start()
        return self

    def flowing(self, count: int = 1000, timeout: float = 30) -> None:
        """Wait until count datagrams are out: how long that takes depends on the host's load, not the test."""
        deadline = time.monotonic() + timeout
        while self.sent < count:
            assert time.monotonic() < deadline, f"only {self.sent} datagrams sent in {timeout} s"
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def _rx_bytes(run: Running) -> int:
    return run.machine.nic_status()[0]["rx_bytes"]


def _streaming(run: Running, gw: str, port: int) -> None:
    """Start the endless download in the guest's background and wait until megabytes are flowing."""
    run.machine.serial_input(f"wget -q -O /dev/null http://{gw}:{port}/stream &\n".encode())
    start = _rx_bytes(run)
    deadline = time.monotonic() + 30
    while _rx_bytes(run) < start + (4 << 20):
        assert time.monotonic() < deadline, run.output[-2000:]
        time.sleep(0.05)


def _check_command(gw: str, port: int, tag: str) -> bytes:
    """Stop the stream, download the blob afresh and print its checksum, then what the kernel said about the
    card (its log as the guest has it, from boot, through the save, to now)."""
    return (f"kill %1 2>/dev/null; echo {tag}-SUM=$(wget -q -O - http://{gw}:{port}/blob | sha256sum | cut -d' ' "
            f"-f1); echo {tag}-LOG; dmesg | grep -ciE '{KERNEL_COMPLAINT}'; dmesg | grep -iE '{KERNEL_COMPLAINT}'; "
            f"echo {tag}-END\n").encode()


def _check_network(run: Running, gw: str, port: int, tag: str) -> None:
    run.machine.serial_input(_check_command(gw, port, tag))
    try:
        got = run.expect(rf"\n{tag}-SUM=(\w*)\n", 60).group(1)
    except AssertionError as exc:
        # What the card did meanwhile tells a stalled ring (rx/tx counters flat) from a slow host (still moving).
        raise AssertionError(f"{exc}\ncard: {run.machine.nic_status()}\nstate: {run.machine.state}") from None
    log = run.expect(rf"\n{tag}-LOG\n(\d+)\n(.*?){tag}-END\n", 30)
    assert (log.group(1), log.group(2)) == ("0", ""), log.group(0)
    assert got == hashlib.sha256(BLOB).hexdigest(), run.output[-3000:]


@pytest.mark.parametrize("live", [False, True], ids=["save-stop", "save-live"])
def test_save_during_a_download_restores_a_working_card(debian_kernel, initrd, http_port, tmp_path, live):
    """The stream runs while the machine is saved; the restored machine (and, for a live save, the original that
    ran on) downloads the blob with the right checksum, and no virtio-net complaint is in the kernel log."""
    require_accel("software")
    state = tmp_path / "vm.state"
    udp = _free_udp_port()
    config = MachineConfig(kernel=str(debian_kernel), initrd=str(initrd), memory_mib=256, accel="software",
                           display="none", cmdline="console=ttyS0 quiet vireo.action=net",
                           nics=[NicSpec(mac="52:54:00:5a:7e:01", forwards=[parse_forward(f"udp::{udp}-:9999")])])
    first = Running(config)
    try:
        gw = first.expect(r"VIREO-NET-GW=([\d.]+)\n", 120).group(1)
        first.expect(r"vireo:[^\n#]*# ", 30)
        _streaming(first, gw, http_port)
        with UdpPacer(udp) as pacer:
            pacer.flowing()
            first.machine.save(str(state), stop=not live)
        if live:
            assert first.machine.state == MachineState.RUNNING, first.machine.reason
            moved = _rx_bytes(first)
            deadline = time.monotonic() + 20
            while _rx_bytes(first) < moved + (2 << 20):          # the stream goes on after the save
                assert time.monotonic() < deadline, first.output[-2000:]
                time.sleep(0.05)
            _check_network(first, gw, http_port, "LIVE")
        else:
            assert first.machine.wait(20) == MachineState.SHUTOFF
            assert first.machine.reason == f"saved to {state}"
    finally:
        first.close()
    second = Running(state_file=str(state))
    try:
        assert second.machine.state == MachineState.RUNNING
        _check_network(second, gw, http_port, "RESTORED")
    finally:
        second.close()


def _wait_file(path, pattern: str, after: int = 0, timeout: float = 120) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace").replace("\r\n", "\n") if path.exists() else ""
        m = re.compile(pattern, re.S).search(text, after)
        if m:
            return m
        assert time.monotonic() < deadline, f"no {pattern!r} in the serial log:\n{text[-3000:]}"
        time.sleep(0.05)


def _network_works(host, uuid: str, log, gw: str, port: int, tag: str) -> None:
    after = len(log.read_text(errors="replace").replace("\r\n", "\n"))
    host.send_serial(uuid, _check_command(gw, port, tag))
    got = _wait_file(log, rf"\n{tag}-SUM=(\w*)\n", after, 60).group(1)
    complaints = _wait_file(log, rf"\n{tag}-LOG\n(\d+)\n(.*?){tag}-END\n", after, 30)
    assert (complaints.group(1), complaints.group(2)) == ("0", ""), complaints.group(0)
    assert got == hashlib.sha256(BLOB).hexdigest(), log.read_text(errors="replace")[-3000:]


def test_live_snapshot_and_revert_of_a_vm_with_traffic(local_service: ServiceSandbox, debian_kernel, initrd,  # noqa: F811
                                                       http_port) -> None:
    """The same through the Vireo service and the VM process (core/vmproc/snapshot_call.py): a VM snapshot taken
    while the guest downloads and UDP arrives; the VM runs on and its network works (the card was let go after
    the capture); revert starts a new VM process from the snapshot's state, whose network works too."""
    from tests.service.test_local_service import PROMPT
    require_accel("software")
    host = local_service.connect()
    image = local_service.data_home / "vireo" / "images" / "snapnet.qcow2"
    log = local_service.data_home / "snapnet-serial.log"
    host.create_disk(str(image), 16 << 20, fmt="qcow2")
    udp = _free_udp_port()
    cfg = host.define(VmConfig(name="snapnet", memory_mib=256, accel="software",
                               boot=BootConfig(kernel=str(debian_kernel), initrd=str(initrd),
                                               cmdline="console=ttyS0 quiet vireo.action=net"),
                               disks=[DiskConfig(path=str(image), format="qcow2")],
                               nics=[NicConfig(forwards=[f"udp:127.0.0.1:{udp}-:9999"])],
                               serial=SerialConfig(log_file=str(log)))).config
    host.start(cfg.uuid)
    try:
        gw = _wait_file(log, r"VIREO-NET-GW=([\d.]+)\n").group(1)
        _wait_file(log, PROMPT.pattern)
        host.send_serial(cfg.uuid, f"wget -q -O /dev/null http://{gw}:{http_port}/stream &\n".encode())
        deadline = time.monotonic() + 30
        while host.net_status(cfg.uuid)[0]["rx_bytes"] < 4 << 20:
            assert time.monotonic() < deadline, host.net_status(cfg.uuid)
            time.sleep(0.05)
        with UdpPacer(udp) as pacer:
            pacer.flowing()
            snap = host.snapshot_create(cfg.uuid, "busy")
        assert snap.state == "running", snap
        assert host.get(cfg.uuid).state == VmState.RUNNING
        moved = host.net_status(cfg.uuid)[0]["rx_bytes"]
        deadline = time.monotonic() + 20
        while host.net_status(cfg.uuid)[0]["rx_bytes"] < moved + (2 << 20):      # the stream goes on
            assert time.monotonic() < deadline, host.net_status(cfg.uuid)
            time.sleep(0.05)
        _network_works(host, cfg.uuid, log, gw, http_port, "LIVE")
        host.snapshot_revert(cfg.uuid, "busy")
        assert host.get(cfg.uuid).state == VmState.RUNNING
        _network_works(host, cfg.uuid, log, gw, http_port, "REVERTED")
    finally:
        if host.get(cfg.uuid).state.active:
            host.force_off(cfg.uuid)
