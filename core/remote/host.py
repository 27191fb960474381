"""RemoteHost: the Host API (core/host/api.py) for a machine reached over SSH, through the Vireo service (the agent
daemon) running there; everything past the stream is ServiceClient's (core/remote/service.py).

connect() does the slow part — SSH handshake and host-key check, authentication, probing and (first time, or
after an engine change) installing the agent (with unicorn, the software CPU's module, when the host lacks it:
copy_unicorn True, False, or None to ask the prompter once per host), then one channel running the stdio bridge
(core/agent/bridge.py), which reaches the user's service socket on that host and starts the service when none
listens.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.agent.install import InstallReport, bridge_command, ensure_agent
from core.host.api import HostError
from core.host.files import SftpFiles
from core.remote import choices
from core.remote.client import AgentClient, AgentGone
from core.remote.service import ServiceClient
from core.remote.ssh import Prompter, SshTarget, TerminalPrompter, open_transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectTiming:
    ssh: float = 0.0          # TCP + handshake + host key + authentication
    install: float = 0.0      # probe (+ upload)
    agent: float = 0.0        # bridge channel up and hellos exchanged (+ daemon start)
    total: float = 0.0


class RemoteHost(ServiceClient):
    def __init__(self, target: SshTarget, prompter: Prompter | None = None, copy_unicorn: bool | None = False,
                 name: str | None = None) -> None:
        super().__init__(name or target.label)
        self.target = target
        self.prompter = prompter or TerminalPrompter()
        self.copy_unicorn = copy_unicorn
        self.report: InstallReport | None = None
        self.timing = ConnectTiming()
        self._transport = None
        self._files: SftpFiles | None = None

    def _connect(self, progress: Callable[[str, int, int], None] | None) -> None:
        t0 = time.monotonic()
        self._transport = open_transport(self.target, self.prompter)
        t1 = time.monotonic()
        choice = self._ask_copy_unicorn if self.copy_unicorn is None else self.copy_unicorn
        self.report = ensure_agent(self._transport, self.target.python, choice, progress)
        t2 = time.monotonic()
        self._attach()
        t3 = time.monotonic()
        self.timing = ConnectTiming(t1 - t0, t2 - t1, t3 - t2, t3 - t0)

    def _ask_copy_unicorn(self, size: int) -> bool:
        """Whether to copy this computer's unicorn (`size` bytes) to a host that lacks it: the answer given for
        this host before, else the prompter's (yes when it cannot ask), kept for next time (core/remote/choices)."""
        label = self.target.label
        stored = choices.get(label, "copy_unicorn")
        if isinstance(stored, bool):
            return stored
        ask = getattr(self.prompter, "confirm_copy_unicorn", None)
        answer = True if ask is None else bool(ask(self.target, size))
        choices.put(label, "copy_unicorn", answer)
        return answer

    def files(self) -> SftpFiles:
        """The host's files over SFTP, on the SSH connection this host holds (opened on first use)."""
        if self._files is None:
            self._files = SftpFiles(self.name, self._open_sftp)
        return self._files

    def _open_sftp(self):
        transport = self._transport
        if transport is None or not transport.is_active():
            raise HostError(f"{self.name} is not connected: connect to it first")
        return transport.open_sftp_client()

    def _note(self, text: str) -> None:
        if self.report is not None:
            self.report.notes.append(text)

    def open_tcp_channel(self, host: str, port: int, timeout: float = 15.0):
        """A byte stream to host:port as the remote machine sees it (its loopback included), over this SSH
        connection: RFC 4254 7.2's "direct-tcpip", what `ssh -L` uses. A paramiko Channel (recv, sendall,
        fileno for select, close); HostError when the remote sshd refuses."""
        transport = self._transport
        if transport is None or not transport.is_active():
            raise HostError(f"not connected to {self.target.label}")
        try:
            return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except Exception as exc:          # paramiko's ChannelException, SSHException, EOFError
            raise HostError(f"{self.target.label} refused a forwarded connection to {host}:{port}: "
                            f"{exc or type(exc).__name__}") from None

    def _open_agent(self) -> AgentClient:
        chan = self._transport.open_session(timeout=30)
        chan.exec_command(bridge_command(self.target.python, self.report))
        client = self._new_client(chan.recv, chan.sendall, chan.close)
        try:
            client.start()
        except AgentGone as exc:
            stderr = bytearray()
            while chan.recv_stderr_ready():
                stderr += chan.recv_stderr(65536)
            detail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
            raise HostError(f"the agent on {self.target.label} did not start: {exc}"
                            + (f" ({detail[0]})" if detail else "")) from None
        return client

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                transport.close()
            except Exception:
                log.debug("closing the transport failed", exc_info=True)
