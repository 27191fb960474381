"""Remote hosts against a real OpenSSH server (tests/helpers/remote.py): host-key checks, authentication, the
agent's installation and reuse, `main.py list/run --connect`, a Debian VM that outlives its connection, and
malformed frames on the agent connection.

The remote user is the one running the tests; its XDG directories live in the test's temporary directory. Most
tests run the agent on this checkout's .venv python (numpy and unicorn present); the installation test uses the
system python3, which (on Debian without python3-numpy) gets numpy copied over.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.agent.install import bridge_command, run_command
from core.agent.version import engine_version
from core.config import BootConfig, VmConfig
from core.host import EventKind, HostError, VmState
from core.protocol import MAX_FRAME, encode, exact_reader, hello, read_message
from core.remote.host import RemoteHost
from core.remote.ssh import SshError, SshTarget, open_transport, parse_uri
from tests.guests.build import GUESTS, guest_path
from tests.helpers.remote import REPO_PYTHON, SshServer
from tests.helpers.runner import REPO_ROOT


class Answers:
    """A Prompter that answers from a script and records what it was asked."""

    def __init__(self, trust: bool = True, secrets: list[str] | None = None) -> None:
        self.trust = trust
        self.secrets = list(secrets or [])
        self.asked: list[str] = []

    def confirm_host_key(self, target, check, key_type, key_fingerprint) -> bool:
        self.asked.append(f"hostkey {key_type} {key_fingerprint}")
        return self.trust

    def secret(self, target, prompt, echo=False):
        self.asked.append(prompt)
        return self.secrets.pop(0) if self.secrets else None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = SshServer(tmp_path_factory.mktemp("ssh")).start()
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(srv.root / "client-cache")     # where bundles are packed
    yield srv
    srv.stop()
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


def target(server: SshServer, python: str = REPO_PYTHON, **changes) -> SshTarget:
    t = parse_uri(server.uri(python=python))
    t.identity = str(server.user_key)
    t.known_hosts = server.known_hosts
    for key, value in changes.items():
        setattr(t, key, value)
    return t


def remote(server: SshServer, **changes) -> RemoteHost:
    host = RemoteHost(target(server, **changes), Answers())
    host.connect()
    return host


def cli(server: SshServer, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *args], cwd=REPO_ROOT, env=server.client_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def host_fingerprint(server: SshServer) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", f"{server.host_key}.pub"], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


# -- host keys -----------------------------------------------------------------------------------------------

def test_unknown_host_key_is_refused_headless_and_shows_the_fingerprint(server):
    server.known_hosts.unlink(missing_ok=True)
    result = cli(server, "list", "--connect", server.uri(python=REPO_PYTHON), "--identity", str(server.user_key))
    assert result.returncode == 2, result.stderr
    assert "can't be established" in result.stderr
    assert host_fingerprint(server) in result.stderr          # the same SHA256 fingerprint ssh-keygen shows
    assert "--accept-new-host-key" in result.stderr
    assert not server.known_hosts.exists()


def test_accepted_host_key_is_recorded_in_openssh_format_and_list_works(server):
    server.known_hosts.unlink(missing_ok=True)
    result = cli(server, "list", "--connect", server.uri(python=REPO_PYTHON), "--identity", str(server.user_key),
                 "--accept-new-host-key")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:4] == ["Id", "Name", "State", "Accel"]      # virsh's columns
    name = f"[127.0.0.1]:{server.port}"
    # OpenSSH itself finds the line we wrote.
    found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(server.known_hosts)], capture_output=True, text=True)
    assert found.returncode == 0 and server.host_public_key() in found.stdout
    # And the next connection needs no flag.
    again = cli(server, "list", "--connect", server.uri(python=REPO_PYTHON), "--identity", str(server.user_key))
    assert again.returncode == 0, again.stderr
    assert server.known_hosts.read_text().count(server.host_public_key()) == 1


def test_changed_host_key_is_refused_naming_the_line(server, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    impostor = Path(f"{other}.pub").read_text().split()[1]
    known.write_text("# comment line\n"
                     f"example.org ssh-ed25519 {server.host_public_key()}\n"
                     f"[127.0.0.1]:{server.port} ssh-ed25519 {impostor}\n")
    answers = Answers(trust=True)
    with pytest.raises(SshError) as caught:
        open_transport(target(server, known_hosts=known), answers)
    message = str(caught.value)
    assert "has changed" in message and f"line 3 of {known}" in message
    assert answers.asked == []        # never offered to trust it


# -- authentication ------------------------------------------------------------------------------------------

def test_encrypted_key_asks_for_its_passphrase(server):
    answers = Answers(secrets=["wrong passphrase", server.passphrase])
    t = target(server, identity=str(server.encrypted_key))
    transport = open_transport(t, answers)
    try:
        assert transport.is_authenticated()
        assert sum("passphrase" in a for a in answers.asked) == 2
    finally:
        transport.close()


def test_password_and_keyboard_interactive_authentication(server):
    user, password = server.add_password_user()
    t = SshTarget(host="127.0.0.1", port=server.port, user=user, known_hosts=server.known_hosts, auth="password")
    transport = open_transport(t, Answers(secrets=[password]))
    try:
        status, out, _ = run_command(transport, "id -un")
        assert status == 0 and out.decode().strip() == user
    finally:
        transport.close()
    t.auth = "auto"
    answers = Answers(secrets=[password])
    transport = open_transport(t, answers)
    transport.close()
    assert any("Password" in a for a in answers.asked)
    _wait(lambda: f"Accepted keyboard-interactive/pam for {user}" in server.log.read_text(), 5, "sshd's log")
    assert f"Accepted password for {user}" in server.log.read_text()
    t.auth = "password"
    with pytest.raises(SshError, match="permission denied"):
        open_transport(t, Answers(secrets=["not it"]))       # PAM delays each failure: one is enough


def test_another_users_agent_socket_is_not_reachable(server):
    host = remote(server)                       # our agent is running
    try:
        socket_path = server.runtime_dir / "vireo" / "agent.sock"
        assert socket_path.exists() and (socket_path.stat().st_mode & 0o777) == 0o600
        assert ((server.runtime_dir / "vireo").stat().st_mode & 0o777) == 0o700
        user, password = server.add_password_user()
        t = SshTarget(host="127.0.0.1", port=server.port, user=user, known_hosts=server.known_hosts,
                      auth="password")
        transport = open_transport(t, Answers(secrets=[password]))
        try:
            probe = f"import socket; socket.socket(socket.AF_UNIX).connect('{socket_path}')"
            status, _, err = run_command(transport, f"/usr/bin/python3 -c \"{probe}\"")
        finally:
            transport.close()
        assert status != 0 and b"PermissionError" in err
        assert host.ping() < 5.0                # and ours still answers
    finally:
        host.close()


# -- the agent -----------------------------------------------------------------------------------------------

def test_agent_is_uploaded_on_first_connect_and_reused_on_the_second(server):
    python = "/usr/bin/python3"
    if not os.path.exists(python):
        pytest.skip("no system python3")
    server.stop_agent()
    shutil.rmtree(server.data_home / "vireo", ignore_errors=True)     # a host that never saw Vireo
    version_dir = server.data_home / "vireo" / "agent" / engine_version()
    first = RemoteHost(target(server, python=python), Answers())
    try:
        first.connect()
        assert first.report is not None
        assert f"engine {engine_version()}" in first.report.uploaded
        assert (version_dir / "core" / "agent" / "daemon.py").is_file()
        assert first.agent_version == engine_version()
        status = first.agent_status()
        if not status["software_cpu"]:
            # The promise: a host without unicorn says so and offers KVM only.
            assert "unicorn" in first.report.software_cpu_reason and "KVM" in first.report.software_cpu_reason
            with pytest.raises(HostError, match="unicorn"):
                first.accel_preview("software")
    finally:
        first.close()
    second = RemoteHost(target(server, python=python), Answers())
    try:
        second.connect()
        assert second.report.uploaded == []
        assert second.ping() < 5.0
        print(f"\nfirst connect {first.timing.total:.2f} s (upload {first.report.upload_bytes / 1e6:.1f} MB: "
              f"{', '.join(first.report.uploaded)}), second {second.timing.total:.2f} s")
    finally:
        second.close()
        server.stop_agent()      # the other tests want the agent on the .venv python (with unicorn)


def test_run_connect_boots_a_guest_and_exits_with_its_status(server):
    from core.hypervisor.hostcaps import kvm_status
    if not kvm_status().usable:
        pytest.skip("KVM not usable here")
    guest = GUESTS["apictimer"]
    result = cli(server, "run", "--connect", server.uri(python=REPO_PYTHON), "--identity", str(server.user_key),
                 "--accept-new-host-key", "--kernel", str(guest_path("apictimer")), "--accel", "kvm",
                 "--serial", "stdio", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.replace("\r\n", "\n").split("\n") if line]
    assert lines == list(guest.expected)
    # The transient definition is gone, and bad input is refused with status 2.
    listing = cli(server, "list", "--all", "--connect", server.uri(python=REPO_PYTHON), "--identity",
                  str(server.user_key))
    assert listing.returncode == 0 and "run-" not in listing.stdout
    bad = cli(server, "run", "--connect", server.uri(python=REPO_PYTHON), "--identity", str(server.user_key),
              "--kernel", "/no/such/kernel", "--serial", "none")
    assert bad.returncode == 2 and "/no/such/kernel" in bad.stderr


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_debian_vm_keeps_running_across_a_disconnect(server, debian_kernel, busybox_initramfs):
    host = remote(server)
    out = bytearray()
    lock = threading.Lock()

    def on_serial(data: bytes) -> None:
        with lock:
            out.extend(data)

    def text() -> str:
        with lock:
            return out.decode(errors="replace")

    cfg = VmConfig(name="survivor", memory_mib=256, accel="auto",
                   boot=BootConfig(str(debian_kernel), str(busybox_initramfs),
                                   "console=ttyS0 quiet vireo.action=shell"))
    info = host.define(cfg)
    try:
        host.subscribe_serial(info.uuid, on_serial)
        host.start(info.uuid)
        _wait(lambda: re.search(r"vireo:[^\n#]*# ", text()), 120, "the guest's shell prompt")
        host.close()                                  # the connection drops ...
        assert not host.connected
        again = remote(server)                         # ... and a new one finds the VM still running
        host = again
        assert host.get(info.uuid).state == VmState.RUNNING
        with lock:
            out.clear()
        history = host.subscribe_serial(info.uuid, on_serial)
        assert b"vireo:" in history                    # what it printed while we were away is kept
        # Its screen comes over the same connection: a complete first frame of the VGA's picture.
        console = host.console(info.uuid)
        frames = []
        _wait(lambda: frames.append(console.frames.render()) or frames[-1] is not None, 10, "a console frame")
        frame = frames[-1]
        assert (frame.width, frame.height) in ((720, 400), (640, 400), (640, 480)) and frame.pixels.any()
        assert frame.dirty == [(0, 0, frame.width, frame.height)]
        console.input.key_event(b"\x1c")                       # 'a' pressed: delivered without an answer
        console.input.key_event(b"\xf0\x1c")
        host.send_serial(info.uuid, b"echo $((6*7))\n")
        _wait(lambda: "\n42" in text().replace("\r", ""), 30, "the guest's answer")
        stopped = threading.Event()
        host.add_listener(lambda e: e.kind == EventKind.STATE and e.state == VmState.SHUTOFF and stopped.set())
        host.force_off(info.uuid)
        assert stopped.wait(15)
        assert host.get(info.uuid).state == VmState.SHUTOFF
    finally:
        try:
            if host.connected and host.get(info.uuid).state.active:
                host.force_off(info.uuid)
            host.delete(info.uuid)
        finally:
            host.close()


def _raw_agent_channel(server: SshServer):
    """A second channel running the bridge, spoken to by hand."""
    host = RemoteHost(target(server), Answers())
    transport = open_transport(host.target, host.prompter)
    from core.agent.install import ensure_agent
    report = ensure_agent(transport, host.target.python)
    chan = transport.open_session()
    chan.exec_command(bridge_command(host.target.python, report))
    return transport, chan, exact_reader(chan.recv)


@pytest.mark.parametrize("garbage", [
    (MAX_FRAME + 1).to_bytes(4, "big"),                               # oversized length
    (12).to_bytes(4, "big") + (8).to_bytes(4, "big") + b"notjson!",   # header that is not JSON
    (8).to_bytes(4, "big") + (100).to_bytes(4, "big") + b"{}{}",      # header longer than the frame
    encode({"t": "launch-missiles"}),                                 # unknown message type
], ids=["oversized", "not-json", "bad-header-length", "unknown-type"])
def test_malformed_frame_closes_only_that_connection(server, garbage):
    host = remote(server)
    transport, chan, recv = _raw_agent_channel(server)
    try:
        header, _ = read_message(recv)
        assert header["t"] == "hello"
        chan.sendall(encode(hello("client")))
        chan.sendall(garbage)
        header, _ = read_message(recv)
        assert header["t"] == "fatal" and "protocol error" in header["e"]
        assert recv(4) == b""                               # and the agent closed that connection
        assert host.ping() < 5.0                             # the daemon and other connections carry on
        assert host.agent_status()["version"] == engine_version()
    finally:
        transport.close()
        host.close()
