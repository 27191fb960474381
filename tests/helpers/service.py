"""A private Vireo service for a test: the `local_service` fixture.

It points XDG_RUNTIME_DIR (mode 0700, as the XDG Base Directory Specification requires), XDG_CONFIG_HOME and
XDG_DATA_HOME into the test's tmp directory — inherited by every service and VM process the test starts, so none
of them touches the user's own service or definitions — and afterwards closes the clients it made and kills every
process still running with that runtime directory (the service, and each VM process it spawned), by pid.

    def test_x(local_service):
        host = local_service.connect()                  # core.host.connect_local() in the sandbox
        ... local_service.daemon_pid(), local_service.processes(), local_service.env (for a CLI subprocess)

Use it from any test folder with `from tests.helpers.service import local_service  # noqa: F401` in that folder's
conftest.py (or register the module in pytest_plugins).
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.connect import LocalServiceHost, connect_local

STOP_GRACE = 10.0


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class ServiceSandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        # A short path of its own: a UNIX socket's path must fit in 108 bytes (unix(7)), which a pytest tmp_path
        # named after a long test does not always leave room for.
        self.runtime = Path(tempfile.mkdtemp(prefix="vireo-rt-"))
        self.config_home = root / "config"
        self.data_home = root / "data"
        root.mkdir(parents=True)
        self.config_home.mkdir()
        self.data_home.mkdir()
        self.clients: list[LocalServiceHost] = []

    @property
    def env(self) -> dict[str, str]:
        """The variables that select this sandbox (for a subprocess such as the CLI)."""
        return {"XDG_RUNTIME_DIR": str(self.runtime), "XDG_CONFIG_HOME": str(self.config_home),
                "XDG_DATA_HOME": str(self.data_home)}

    @property
    def service_dir(self) -> Path:
        return self.runtime / "vireo"

    @property
    def vms_dir(self) -> Path:
        """Where the VM definitions live (core.config.vms_dir() in the sandbox)."""
        return self.config_home / "vireo" / "vms"

    def connect(self, idle_exit: float = 600.0) -> LocalServiceHost:
        """A client of the sandbox's service (started on demand), closed after the test."""
        host = connect_local(daemon_args=("--idle-exit", str(idle_exit)))
        self.clients.append(host)
        return host

    def daemon_pid(self) -> int | None:
        """The pid the serving daemon wrote into its lock file."""
        try:
            return int((self.service_dir / "agent.lock").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log(self) -> str:
        try:
            return (self.service_dir / "agent.log").read_text(errors="replace")
        except OSError:
            return ""

    def vm_pid(self, vm_uuid: str) -> int | None:
        """The pid of the live VM process running `vm_uuid` (its command line names the uuid), if any."""
        for pid in self.processes():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"core.vmproc" in argv and vm_uuid.encode() in argv:
                return pid
        return None

    def stop_daemon(self) -> None:
        """SIGTERM the service and wait for it to exit (its VM processes run on)."""
        pid = self.daemon_pid()
        if pid is None or not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid), f"the service {pid} did not exit on SIGTERM"

    def processes(self) -> list[int]:
        """Every live process of this user whose environment has this sandbox's runtime directory."""
        marker = f"XDG_RUNTIME_DIR={self.runtime}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if marker in environ and _alive(int(entry)):
                found.append(int(entry))
        return found

    def stop(self) -> None:
        for host in self.clients:
            host.close()
        self.clients.clear()
        try:
            self.stop_daemon()
        except (ProcessLookupError, AssertionError):
            pass        # killed below with the rest
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and self.processes():
            time.sleep(0.05)
        shutil.rmtree(self.runtime, ignore_errors=True)


@pytest.fixture
def local_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceSandbox]:
    """An isolated service sandbox; every service and VM process started in it is killed afterwards."""
    sandbox = ServiceSandbox(tmp_path / "service")
    for key, value in sandbox.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield sandbox
    finally:
        sandbox.stop()
