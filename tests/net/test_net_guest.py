"""Networking seen from inside the guest (issue 13): Debian's kernel with the tests' busybox initramfs on the
software CPU, a virtio-net card on passt (Debian's) or on a TAP in a network namespace the test makes.

- udhcpc gets a lease from passt; the guest downloads several MiB from an HTTP server on the host's loopback
  (reached through the gateway address) and its sha256 matches;
- a host client fetches busybox httpd's page in the guest through a forwarded port;
- two VMs on user networking each answer on their own forward, and one's traffic never reaches the other;
- passt killed during a transfer: link down in the guest (carrier 0), the VM runs on, net_reconnect through the
  VM process's control channel brings the link back and the guest downloads again;
- a forward whose host port is taken: one line naming the port, the VM runs with its link down;
- TAP: a bridge in a fresh network namespace, the guest downloads from a server listening inside it.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers.initrd import initrd_with_current_init
from tests.helpers.runner import REPO_ROOT, run_vireo
from tests.helpers.vmproc import Spawner, guest_config

pytestmark = pytest.mark.skipif(shutil.which("passt") is None and os.environ.get("CI") != "true",
                                reason="passt is not installed (apt-get install passt)")
BLOB_BYTES = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def initrd(busybox_initramfs, tmp_path_factory) -> Path:
    return initrd_with_current_init(busybox_initramfs, tmp_path_factory.mktemp("initrd"))


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(BLOB_BYTES)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:                   # noqa: N802 (the stdlib's name)
        data = self.server.files.get(self.path)   # type: ignore[attr-defined]
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_server(blob):
    """An HTTP server on the host's loopback only: /blob (6 MiB of random bytes), /small."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files = {"/blob": blob, "/small": b"vireo small file\n" * 64}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _boot_args(kernel, initrd, append: str) -> list[str]:
    return ["--accel", "software", "--memory", "256", "--kernel", str(kernel), "--initrd", str(initrd),
            "--append", f"console=ttyS0 quiet {append}"]


def _fetch(url: str, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_lease_from_passt_and_a_download_from_host_loopback(debian_kernel, initrd, http_server, blob):
    port = http_server.server_address[1]
    code, out, err = run_vireo(_boot_args(debian_kernel, initrd, f"vireo.action=net-get "
                                          f"vireo.url=http://GATEWAY:{port}/blob") + ["--net", "user"], timeout=120)
    assert code == 0, err
    lease = re.search(r"VIREO-NET-LEASE=([\d.]+)", out)
    gw = re.search(r"VIREO-NET-GW=([\d.]+)", out)
    assert lease and gw, out
    assert re.search(r"VIREO-NET-MTU=65520", out), out                 # the card's MTU (passt's)
    assert f"VIREO-NET-BYTES={BLOB_BYTES}" in out, out
    assert f"VIREO-NET-SUM={hashlib.sha256(blob).hexdigest()}" in out, out


def test_a_taken_host_port_is_one_line_and_the_vm_runs_with_its_link_down(debian_kernel, initrd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_vireo(_boot_args(debian_kernel, initrd, "vireo.action=net vireo.then=poweroff") +
                                   ["--net", f"user,hostfwd=tcp:127.0.0.1:{port}-:22"], timeout=120)
    assert code == 0, err
    assert "VIREO-NET-NOLEASE" in out and "VIREO-POWEROFF" in out, out
    lines = [line for line in err.splitlines() if "link down" in line]
    assert len(lines) == 1 and f"tcp port 127.0.0.1:{port}" in lines[0], err


@pytest.fixture
def spawner(tmp_path):
    s = Spawner(str(tmp_path / "run"))
    yield s
    s.close()


def _web_vm(spawner, kernel, initrd, port: int, name: str):
    from core.config import NicConfig
    cfg = guest_config(kernel, initrd, "console=ttyS0 quiet vireo.action=net vireo.httpd=80", name=name,
                       nics=[NicConfig(forwards=[f"tcp:127.0.0.1:{port}-:80"])])
    process, rec = spawner(cfg)
    rec.expect(b"VIREO-HTTPD-READY", 60)
    mac = re.search(rb"VIREO-NET-MAC=([0-9a-f:]+)", rec.serial).group(1).decode()
    return process, rec, mac


def test_two_vms_each_answer_on_their_own_forward_and_do_not_see_each_other(spawner, debian_kernel, initrd):
    port_a, port_b = free_port(), free_port()
    a, rec_a, mac_a = _web_vm(spawner, debian_kernel, initrd, port_a, "net-a")
    b, rec_b, mac_b = _web_vm(spawner, debian_kernel, initrd, port_b, "net-b")
    assert mac_a != mac_b
    assert _fetch(f"http://127.0.0.1:{port_a}/").decode().strip() == f"VIREO-HTTPD-PAGE {mac_a}"
    assert _fetch(f"http://127.0.0.1:{port_b}/").decode().strip() == f"VIREO-HTTPD-PAGE {mac_b}"
    # B serves a file of 1 MiB ten times; none of it reaches A's card.
    rec_b.expect(re.compile(rb"# "), 10)
    b.serial_input(b"dd if=/dev/zero of=/www/zero bs=1k count=1024 2>/dev/null; echo MADE\n")
    rec_b.expect(b"MADE\r\n", 20)
    before = a.net_status()[0]
    for _ in range(10):
        assert len(_fetch(f"http://127.0.0.1:{port_b}/zero")) == 1 << 20
    after, status_b = a.net_status()[0], b.net_status()[0]
    assert status_b["tx_bytes"] > 10 << 20
    assert after["rx_bytes"] - before["rx_bytes"] < 4096, (before, after)
    assert (after["mac"], after["backend"], after["link_up"]) == (mac_a, "user", True)
    assert after["forwards"] == [f"tcp:127.0.0.1:{port_a}-:80"]


def _launchers(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            pass
    out = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as f:
                if b"core.vmproc.launcher" in f.read():
                    out.append(kid)
        except OSError:
            pass
    return out


def _passt_children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        # The VM process starts its first passt itself; a sandboxed one restarts passt through its launcher
        # (core/vmproc/launcher.py), so a later passt is the launcher's child.
        if int(fields[1]) in (pid, *_launchers(pid)) and comm.startswith("passt"):
            out.append(int(entry))
    return out


def test_killing_passt_mid_transfer_is_link_down_and_reconnect_restores_it(spawner, debian_kernel, initrd,
                                                                          http_server, blob):
    from core.config import NicConfig
    port = http_server.server_address[1]
    cfg = guest_config(debian_kernel, initrd, "console=ttyS0 quiet vireo.action=net", name="net-kill",
                       nics=[NicConfig()])
    process, rec = spawner(cfg)
    gw = rec.expect(re.compile(rb"VIREO-NET-GW=([\d.]+)"), 60).group(1).decode()
    rec.expect(re.compile(rb"# "), 20)
    # A slow endless download (the blob, over and over) while passt is killed.
    process.serial_input(f"(while wget -q -O /dev/null http://{gw}:{port}/blob; do :; done) & "
                         f"until [ \"$(cat /sys/class/net/eth0/carrier)\" = 0 ]; do sleep 0.1; done; "
                         f"echo CARRIER-DOWN\n".encode())
    deadline = time.monotonic() + 20
    while process.net_status()[0]["rx_bytes"] < 1 << 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    passt, = _passt_children(process.pid)
    os.kill(passt, signal.SIGKILL)
    rec.expect(b"CARRIER-DOWN\r\n", 20)
    status = process.net_status()[0]
    assert not status["link_up"] and "passt was killed by signal 9" in status["link_reason"], status
    assert process.state == "running" and process.wait(0) is False
    process.net_reconnect()
    assert process.net_status()[0]["link_up"]
    assert _passt_children(process.pid) and _passt_children(process.pid) != [passt]
    process.serial_input(f"kill %1; until [ \"$(cat /sys/class/net/eth0/carrier)\" = 1 ]; do sleep 0.1; done; "
                         f"echo CARRIER-UP; wget -q -O - http://{gw}:{port}/blob | sha256sum\n".encode())
    rec.expect(b"CARRIER-UP\r\n", 20)
    rec.expect(hashlib.sha256(blob).hexdigest().encode(), 60)
    process.power_off()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="TAP in a namespace needs root and ip")
def test_tap_on_a_bridge_in_a_network_namespace(debian_kernel, initrd, tmp_path, blob):
    ns = f"vireo-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        def in_ns(*cmd: str) -> None:
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        in_ns("ip", "link", "set", "lo", "up")
        in_ns("ip", "link", "add", "vbr0", "type", "bridge")
        in_ns("ip", "addr", "add", "10.99.0.1/24", "dev", "vbr0")
        in_ns("ip", "link", "set", "vbr0", "up")
        (tmp_path / "blob").write_bytes(blob)
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "8000",
                                   "--bind", "10.99.0.1", "--directory", str(tmp_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        args = _boot_args(debian_kernel, initrd, "vireo.action=net-get vireo.static=10.99.0.2/24 "
                          "vireo.url=http://10.99.0.1:8000/blob") + ["--net", "tap=vtap0,bridge=vbr0"]
        time.sleep(0.3)
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(REPO_ROOT / "main.py"), "run", *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "VIREO-NET-STATIC=10.99.0.2" in proc.stdout, proc.stdout
        assert f"VIREO-NET-SUM={hashlib.sha256(blob).hexdigest()}" in proc.stdout, proc.stdout
        # The host's own namespace has no such interface: the traffic stayed inside the test's namespace.
        assert subprocess.run(["ip", "link", "show", "vtap0"], capture_output=True).returncode != 0
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_tap_errors_are_one_line(debian_kernel, initrd):
    code, out, err = run_vireo(_boot_args(debian_kernel, initrd, "vireo.action=poweroff") +
                               ["--net", "tap=vtap9,bridge=nosuchbr0"], timeout=60)
    assert code == 0, err
    line, = [x for x in err.splitlines() if "link down" in x]
    assert "bridge nosuchbr0 does not exist" in line or "CAP_NET_ADMIN" in line, err
