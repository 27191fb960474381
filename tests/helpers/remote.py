"""A real OpenSSH server for the remote-host tests: Debian's sshd on 127.0.0.1 at a free port, with a generated
host key, a generated user key (and a passphrase-protected one) authorized for the user running the tests, and the
remote side's XDG directories (data, config, runtime) pointed into a temporary directory with sshd_config's
SetEnv, so the agent installs and runs there and nothing touches the real home.

`SshServer.start()` skips the test when sshd is not installed (fails under CI=true, like require_fixture), and
stop() ends the server and any agent daemon it led to (by the pid the daemon writes in its lock file).
Password users (for password/keyboard-interactive tests) can be added when the tests run as root.
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.runner import in_ci

SSHD = "/usr/sbin/sshd"
REPO_PYTHON = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, passphrase: str = "", kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "vireo-test", "-f", str(path)],
                   check=True)
    return path


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class SshServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.proc: subprocess.Popen | None = None
        self.remote = root / "remote"            # the remote user's XDG directories
        self.data_home = self.remote / "data"
        self.config_home = self.remote / "config"
        # Short and outside the test's directory: the agent's UNIX sockets live here, and sun_path holds 107 bytes
        # (pytest-xdist's per-worker tmp_path alone is near half of that), as /run/user/UID would be on a host.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="vrt-"))
        self.client_home = root / "client"        # the client's HOME (~/.ssh/known_hosts ...)
        self.known_hosts = self.client_home / ".ssh" / "known_hosts"
        self.password_users: list[str] = []

    # -- set-up ----------------------------------------------------------------------------------------------
    def start(self, host_key_kind: str = "ed25519") -> SshServer:
        _require(os.path.exists(SSHD), f"{SSHD} not found: install Debian's openssh-server (./run-tests does)")
        _require(shutil.which("ssh-keygen") is not None, "ssh-keygen not found (openssh-client)")
        for d in (self.data_home, self.config_home, self.client_home / ".ssh"):
            d.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = self.root / "keys"
        keys.mkdir(exist_ok=True)
        self.host_key = keygen(keys / f"host_{host_key_kind}", kind=host_key_kind)
        self.user_key = keygen(keys / "user")
        self.passphrase = "correct horse battery"
        self.encrypted_key = keygen(keys / "user_encrypted", self.passphrase)
        self.authorized = keys / "authorized_keys"
        self.authorized.write_text(Path(f"{self.user_key}.pub").read_text()
                                   + Path(f"{self.encrypted_key}.pub").read_text())
        self.authorized.chmod(0o644)
        if os.getuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # privilege separation directory
        self.port = _free_port()
        self.config = self.root / "sshd_config"
        self._write_config()
        self.log = self.root / "sshd.log"
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited: {self.log.read_text()[-2000:]}", pytrace=False)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        pytest.fail("sshd did not listen within 10 s", pytrace=False)

    def _write_config(self) -> None:
        root_login = "prohibit-password" if os.getuid() == 0 else "no"
        self.config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
AuthorizedKeysFile {self.authorized}
PermitRootLogin {root_login}
PasswordAuthentication yes
KbdInteractiveAuthentication yes
UsePAM {"yes" if os.getuid() == 0 else "no"}
StrictModes no
PidFile none
LogLevel VERBOSE
Subsystem sftp internal-sftp
Match User {self.user}
    SetEnv XDG_DATA_HOME={self.data_home} XDG_CONFIG_HOME={self.config_home} XDG_RUNTIME_DIR={self.runtime_dir}
""")

    def replace_host_key(self, kind: str = "ed25519") -> None:
        """Restart with a new host key (a reinstalled or impersonated host)."""
        self.stop_server()
        self.host_key.unlink()
        Path(f"{self.host_key}.pub").unlink()
        keygen(self.host_key, kind=kind)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)

    def add_password_user(self) -> tuple[str, str]:
        """A throw-away local account with a password (root only); removed by stop()."""
        _require(os.getuid() == 0, "password authentication tests need root (to create a test account)")
        name = f"vireo{secrets.token_hex(3)}"
        home = self.root / f"home-{name}"
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", name], check=True)
        self.password_users.append(name)
        home.mkdir()
        shutil.chown(home, name)
        password = secrets.token_urlsafe(12)
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
        return name, password

    # -- addresses -------------------------------------------------------------------------------------------
    def uri(self, user: str | None = None, python: str | None = None) -> str:
        query = f"?python={python}" if python else ""
        return f"ssh://{user or self.user}@127.0.0.1:{self.port}{query}"

    def host_public_key(self) -> str:
        return Path(f"{self.host_key}.pub").read_text().split()[1]

    def client_env(self) -> dict[str, str]:
        """Environment for a client process: HOME (known_hosts) and the bundle cache in the test directory."""
        env = dict(os.environ, HOME=str(self.client_home), XDG_CACHE_HOME=str(self.root / "client-cache"))
        env.pop("SSH_AUTH_SOCK", None)
        return env

    # -- tear-down -------------------------------------------------------------------------------------------
    def agent_pid(self) -> int | None:
        try:
            return int((self.runtime_dir / "vireo" / "agent.lock").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop_agent(self) -> None:
        pid = self.agent_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def stop_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def stop(self) -> None:
        self.stop_agent()
        self.stop_server()
        for name in self.password_users:
            subprocess.run(["userdel", name], check=False, stderr=subprocess.DEVNULL)
        self.password_users.clear()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
