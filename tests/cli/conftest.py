"""The CLI tests' hosts: `vireo`, parametrised over "local" (a sandboxed Vireo service of this user,
tests/helpers/service.py, reached over its UNIX socket) and "remote" (the same commands with `--connect` through a
real sshd on localhost, tests/helpers/remote.py). Both are shared by every test of the session, which therefore
give their VMs names of their own.

    def test_x(vireo):
        result = vireo.cli("list", "--all")               # main.py as a subprocess: returncode, stdout, stderr
        with vireo.terminal("console", "web") as term:    # the same on a pty: term.expect(b"..."), term.send(b"...")
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.remote import REPO_PYTHON, SshServer
from tests.helpers.runner import REPO_ROOT
from tests.helpers.service import ServiceSandbox

# console=tty0 as well as ttyS0: the kernel's messages are on the VGA text screen too (screendump sees text); the
# last console= is /dev/console, so the shell runs on the serial port.
SHELL_CMDLINE = "console=tty0 console=ttyS0 vireo.action=shell"
PROMPT = re.compile(rb"vireo:[^\n#]*# ")


class Terminal:
    """A CLI subprocess on a pseudo-terminal, as a user at a terminal runs it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.chdir(REPO_ROOT)
                os.execve(sys.executable, [sys.executable, *argv], env)
            finally:
                os._exit(127)
        self.data = bytearray()
        self.pos = 0
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:       # EIO: the child has gone and closed its side
            return False
        self.data += chunk
        return bool(chunk)

    def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float = 30) -> None:
        """Wait until `pattern` appears after what was matched before."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.data, self.pos)
            if match:
                self.pos = match.end()
                return
            if time.monotonic() > deadline or not self._read(min(0.2, max(0.0, deadline - time.monotonic()))):
                pytest.fail(f"{regex.pattern!r} not seen on the terminal within {timeout} s:\n"
                            f"{self.data.decode(errors='replace')[-2000:]}", pytrace=False)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 20) -> int:
        """The exit status, reading what the program still prints."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"the CLI did not exit within {timeout} s:\n{self.text()[-2000:]}", pytrace=False)
            self._read(0.1)
        while self._read(0.05) and select.select([self.fd], [], [], 0)[0]:
            pass
        return self.status

    def text(self) -> str:
        return self.data.decode(errors="replace")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.status = -9
        os.close(self.fd)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Vireo:
    """main.py against one host: the local sandboxed service or, with --connect, the sshd one."""

    def __init__(self, kind: str, env: dict[str, str], connect: list[str]) -> None:
        self.kind, self.env, self.connect = kind, env, connect

    def argv(self, *args: str) -> list[str]:
        return [str(REPO_ROOT / "main.py"), *args, *self.connect]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *self.argv(*args)], cwd=REPO_ROOT, env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        """Run a command that must succeed, silently on stderr; its stdout."""
        result = self.cli(*args)
        assert result.returncode == 0 and result.stderr == "", (args, result.returncode, result.stderr)
        return result.stdout

    def terminal(self, *args: str) -> Terminal:
        return Terminal(self.argv(*args), self.env)

    def states(self, all_vms: bool = True) -> dict[str, str]:
        """Name -> state from `list [--all]`, parsed as a user reads the table."""
        out = self.ok("list", *(["--all"] if all_vms else []))
        lines = out.splitlines()
        assert lines[0].split() == ["Id", "Name", "State", "Accel"] and set(lines[1]) == {"-"}
        states = {}
        for line in lines[2:]:
            m = re.match(r"^ ([0-9a-f]{8})   (\S+)\s+(shut off|running|paused|crashed|starting)\s+(\S+)$", line)
            assert m, line
            states[m.group(2)] = m.group(3)
        return states

    def wait_state(self, name: str, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (now := self.states().get(name)) != state:
            assert time.monotonic() < deadline, f"{name} is {now}, not {state}, after {timeout} s"
            time.sleep(0.2)

    def write_definition(self, folder: Path, name: str, kernel: Path, initrd: Path, **extra: object) -> Path:
        """A definition file of a small shell guest named `name`."""
        data = {"name": name, "memory_mib": 128,
                "boot": {"kernel": str(kernel), "initrd": str(initrd), "cmdline": SHELL_CMDLINE}, **extra}
        path = folder / f"{name}.json"
        path.write_text(json.dumps(data))
        return path


def one_error_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Assert the exit status and that stderr is one line starting `vireo:` naming `words`; return it."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vireo: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def _local_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceSandbox]:
    sandbox = ServiceSandbox(tmp_path_factory.mktemp("cli-local") / "service")
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def _ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = SshServer(tmp_path_factory.mktemp("cli-ssh")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_vireo(_local_sandbox: ServiceSandbox) -> Vireo:
    """The local host alone, for the finer cases (over SSH each call costs a connection)."""
    return Vireo("local", dict(os.environ, **_local_sandbox.env), [])


@pytest.fixture(scope="session")
def remote_vireo(_ssh_server: SshServer) -> Vireo:
    """The SSH host, once per session (not per parameter switch: pytest may set `vireo[remote]` up again)."""
    server = _ssh_server
    vireo = Vireo("remote", server.client_env(), ["--connect", server.uri(python=REPO_PYTHON), "--identity",
                                                  str(server.user_key)])
    # The first connection trusts the new host key (and says so); every later one finds it in known_hosts.
    first = vireo.cli("list", "--accept-new-host-key")
    assert first.returncode == 0 and "accepted (--accept-new-host-key)" in first.stderr, first.stderr
    return vireo


@pytest.fixture(scope="session", params=["local", "remote"])
def vireo(request: pytest.FixtureRequest) -> Vireo:
    return request.getfixturevalue("local_vireo" if request.param == "local" else "remote_vireo")
