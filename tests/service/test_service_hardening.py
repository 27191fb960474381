"""Issue 18, defects 8-11 and 13: the service under hostile or careless clients, and the files it keeps.

The service (core/agent/daemon.py's Agent over a real AgentHost) runs in this process on its own socket, so a
test can exhaust this process's descriptors, count them, and see the service's own state; clients speak the
agent protocol over real UNIX sockets."""
from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.agent import connection as connection_mod
from core.agent import daemon as daemon_mod
from core.agent.agenthost import AgentHost
from core.agent.daemon import Agent
from core.config import ConfigStore, VmConfig
from core.host.api import HostError
from core.host.disks import create_disk_image
from core.protocol import encode, exact_reader, hello, read_message


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Service:
    def __init__(self, root: Path, idle_exit: float = 600.0) -> None:
        self.runtime = tempfile.mkdtemp(prefix="vireo-h-")     # short: a socket path fits in 108 bytes
        self.store_dir = root / "vms"
        self.host = AgentHost(ConfigStore(self.store_dir), name="test", runtime_dir=self.runtime)
        self.agent = Agent(self.host, os.path.join(self.runtime, "agent.sock"), idle_exit)
        self.agent.bind()
        self.thread = threading.Thread(target=self.agent.serve_forever, name="test-agent", daemon=True)
        self.thread.start()

    def client(self) -> Client:
        return Client(self.agent.socket_path)

    def close(self) -> None:
        self.agent.stop()
        self.thread.join(15)
        shutil.rmtree(self.runtime, ignore_errors=True)


class Client:
    def __init__(self, path: str, greet: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.recv = exact_reader(self.sock.recv)
        self.first, _ = read_message(self.recv)
        if greet and self.first.get("t") == "hello":
            self.sock.sendall(encode(hello("test")))

    def call(self, method: str, call_id: object = 1, **args: object) -> dict:
        self.sock.sendall(encode({"t": "call", "id": call_id, "m": method, "a": args}))
        while True:
            header, _ = read_message(self.recv)
            if header.get("t") in ("ret", "err", "fatal"):
                return header

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    yield svc
    svc.close()


# -- defect 8: accept failures, the connection limit, a peer that resets -------------------------------------

def test_emfile_on_accept_does_not_end_the_service(service: Service) -> None:
    ok = service.client()
    assert ok.call("ping")["v"] is True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # made now: connecting needs no new descriptor
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, _fds() + 64), hard))
    try:
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        waiting.connect(service.agent.socket_path)      # queued; the service's accept() now fails with EMFILE
        time.sleep(0.5)
        assert service.thread.is_alive(), "the service ended on EMFILE"
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Descriptors are free again: the queued client is served, and the old one still is.
    waiting.settimeout(10)
    header, _ = read_message(exact_reader(waiting.recv))
    assert header["t"] == "hello"
    waiting.close()
    assert ok.call("ping", call_id=2)["v"] is True
    ok.close()


def test_connections_past_the_limit_are_refused_in_one_line(service: Service,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_mod, "MAX_CONNECTIONS", 3)
    clients = [service.client() for _ in range(3)]
    refused = Client(service.agent.socket_path, greet=False)
    assert refused.first["t"] == "fatal"
    assert "3 connections" in refused.first["e"] and "close another client" in refused.first["e"]
    assert "\n" not in refused.first["e"]
    refused.close()
    clients.pop().close()
    assert _until(lambda: service.agent.connection_count() == 2)
    again = service.client()                            # room again
    assert again.first["t"] == "hello" and again.call("ping")["v"] is True
    for c in [*clients, again]:
        c.close()


def test_a_peer_that_resets_is_forgotten_and_the_idle_exit_fires(tmp_path: Path) -> None:
    svc = Service(tmp_path, idle_exit=1.0)
    try:
        before = _fds()
        c = svc.client()
        c.call("ping")
        # The peer stops reading: the service's next write fails (EPIPE), in its writer thread.
        c.sock.shutdown(socket.SHUT_RD)
        c.sock.sendall(encode({"t": "call", "id": 2, "m": "ping", "a": {}}))
        assert _until(lambda: svc.agent.connection_count() == 0), "the connection was never forgotten"
        c.close()
        assert _until(lambda: _fds() <= before), f"descriptors leaked: {before} before, {_fds()} after"
        svc.thread.join(10)
        assert not svc.thread.is_alive(), "the idle exit never fired"
    finally:
        svc.close()


# -- defect 9: a client that calls and never reads -----------------------------------------------------------

def test_a_client_that_never_reads_is_dropped(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_mod, "MAX_BACKLOG_BYTES", 256 * 1024)
    c = service.client()
    flood = encode({"t": "call", "id": 7, "m": "ping", "a": {}}) * 1000
    sent = 0

    def send() -> None:
        nonlocal sent
        try:
            for _ in range(200):      # 200k calls, as in the probe; their replies are never read
                c.sock.sendall(flood)
                sent += 1000
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert _until(lambda: service.agent.connection_count() == 0, timeout=60), "the non-reading client was kept"
    sender.join(10)
    assert not sender.is_alive()
    assert sent < 200_000, "the service kept reading calls it could not answer"
    c.close()


# -- defect 10: create_disk's arguments --------------------------------------------------------------------

@pytest.mark.parametrize("size", [1 << 63, (1 << 64) + 512, 1 << 200])
def test_create_disk_of_2_63_bytes_or_more_is_refused_cleanly(service: Service, tmp_path: Path, size: int) -> None:
    c = service.client()
    target = tmp_path / "disks" / "huge.raw"
    before = _fds()
    reply = c.call("create_disk", path=str(target), size_bytes=size, fmt="raw")
    assert reply["t"] == "err" and "2^63" in reply["e"] and "\n" not in reply["e"]
    assert not target.exists()
    assert _fds() == before
    c.close()


def test_create_disk_image_that_fails_leaves_no_file_and_no_descriptor(tmp_path: Path) -> None:
    target = tmp_path / "too-big.raw"
    before = _fds()
    with pytest.raises(HostError) as info:
        create_disk_image(str(target), (1 << 63) - 512)     # allowed by us, too big for the file system
    assert "\n" not in str(info.value)
    assert not target.exists() and _fds() == before


@pytest.mark.parametrize("args,needle", [
    ({"path": "rel/disk.raw", "size_bytes": 1 << 20}, "relative"),
    ({"path": "/tmp/x.raw", "size_bytes": True}, "integer"),
    ({"path": "/tmp/x.raw", "size_bytes": 1 << 20, "preallocate": "yes"}, "preallocate"),
])
def test_create_disk_refuses_bad_arguments(service: Service, args: dict, needle: str) -> None:
    c = service.client()
    cwd_file = Path.cwd() / "rel" / "disk.raw"
    reply = c.call("create_disk", **args)
    assert reply["t"] == "err" and needle in reply["e"], reply
    assert not cwd_file.exists()
    c.close()


def test_a_boolean_call_id_is_a_protocol_error(service: Service) -> None:
    c = service.client()
    reply = c.call("ping", call_id=True)
    assert reply["t"] == "fatal" and "integer id" in reply["e"]
    c.close()


# -- defect 11: private folders ------------------------------------------------------------------------------

def test_config_vms_and_images_folders_are_created_0700(tmp_path: Path) -> None:
    os.umask(old := os.umask(0o022))
    try:
        store = ConfigStore(tmp_path / "config" / "vireo" / "vms")
        store.save(VmConfig(name="private"))
        create_disk_image(str(tmp_path / "data" / "vireo" / "images" / "a.raw"), 1 << 20)
    finally:
        os.umask(old)
    for folder in ("config", "config/vireo", "config/vireo/vms", "data", "data/vireo", "data/vireo/images"):
        mode = stat.S_IMODE((tmp_path / folder).stat().st_mode)
        assert mode == 0o700, f"{folder} is {mode:o}"


# -- defect 13: definitions that are not definitions ---------------------------------------------------------

def test_hostile_definition_files_become_error_rows_and_the_rest_load(tmp_path: Path) -> None:
    folder = tmp_path / "vms"
    store = ConfigStore(folder)
    good = VmConfig(name="good")
    store.save(good)
    (folder / "00000000-0000-0000-0000-00000000000a.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "00000000-0000-0000-0000-00000000000b.json").write_text('{"memory_mib": ' + "9" * 5000 + "}")
    (folder / "00000000-0000-0000-0000-00000000000c.json").symlink_to("/dev/zero")
    os.mkfifo(folder / "00000000-0000-0000-0000-00000000000d.json")
    (folder / "00000000-0000-0000-0000-00000000000e.json").write_bytes(b" " * (2 << 20))
    (folder / "00000000-0000-0000-0000-00000000000f.json").write_text(json.dumps({"name": 5, "cpus": {}}))
    result: list = []
    t = threading.Thread(target=lambda: result.append(store.load_all()), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "loading the definitions blocked"
    configs, errors = result[0]
    assert [c.name for c in configs] == ["good"]
    by_name = {e.path.name[-7:-5]: e.message for e in errors}
    assert set(by_name) == {"0a", "0b", "0c", "0d", "0e", "0f"}, errors
    assert "nested too deeply" in by_name["0a"]
    assert "digits" in by_name["0b"] or "integer" in by_name["0b"]
    assert "not a regular file" in by_name["0c"] and "not a regular file" in by_name["0d"]
    assert "larger than a definition" in by_name["0e"]
    assert all("\n" not in m for m in by_name.values())
