"""One SSH connection to a remote host with paramiko (RFC 4253 transport, RFC 4252 authentication): the host
key checked against known_hosts first, then the user authenticated as ssh(1) would try.

Order of authentication: "none" to learn what the server allows; then public keys — the key file given, else the
keys of a running ssh-agent and the default ~/.ssh/id_ed25519, id_ecdsa, id_rsa — asking for a key's passphrase
when it is encrypted; then keyboard-interactive (RFC 4256, each server prompt shown to the user); then password.
`auth` narrows this to one kind. Every question (host key, passphrase, password) goes to a Prompter: the GUI
shows dialogs, the command line a terminal prompt or a refusal. Nothing typed is stored: it lives only for the
attempt that needs it.

Errors are SshError with one line saying what failed and what to do.
"""
from __future__ import annotations

import getpass
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from core.host.api import HostError
from core.remote.known_hosts import Check, KnownHosts, Verdict, fingerprint, host_name

AUTH_KINDS = ("auto", "agent", "key", "password")
CONNECT_TIMEOUT = 15.0
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
SECRET_TRIES = 3


class SshError(HostError):
    """The connection or authentication failed; one line."""


@dataclass
class SshTarget:
    host: str
    user: str = ""
    port: int = 22
    identity: str = ""                   # key file; empty: agent and default keys
    auth: str = "auto"                   # auto / agent / key / password
    python: str = "python3"              # the remote interpreter the agent runs on
    known_hosts: Path | None = None      # default ~/.ssh/known_hosts
    options: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        port = "" if self.port == 22 else f":{self.port}"
        return f"{self.user}@{self.host}{port}" if self.user else f"{self.host}{port}"

    @property
    def uri(self) -> str:
        return f"ssh://{self.label}"


def parse_uri(uri: str) -> SshTarget:
    """ssh://[USER@]HOST[:PORT][?python=PATH] — IPv6 literals in brackets. Raises SshError."""
    if "://" not in uri:
        uri = "ssh://" + uri
    parts = urlsplit(uri)
    if parts.scheme != "ssh":
        raise SshError(f"{uri}: only ssh:// connections are supported")
    try:
        port = parts.port or 22
    except ValueError:
        raise SshError(f"{uri}: the port must be a number 1..65535") from None
    host = parts.hostname or ""
    if not host:
        raise SshError(f"{uri}: no host name")
    user = unquote(parts.username or "") or getpass.getuser()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    target = SshTarget(host=host, user=user, port=port)
    if "python" in query:
        target.python = query.pop("python")
    target.options = query
    return target


class Prompter(Protocol):
    def confirm_host_key(self, target: SshTarget, check: Check, key_type: str, key_fingerprint: str) -> bool:
        """An unknown host key: True to trust it (it is then written to known_hosts)."""

    def secret(self, target: SshTarget, prompt: str, echo: bool = False) -> str | None:
        """A passphrase, password or keyboard-interactive answer; None when the user cancels."""

    def confirm_copy_unicorn(self, target: SshTarget, size: int) -> bool:
        """The host lacks unicorn (the software CPU): True to copy this computer's (`size` bytes) there. Asked
        once per host; the answer is kept (core/remote/choices.py)."""


class TerminalPrompter:
    """The command line's questions: secrets read from the terminal (never echoed); an unknown host key accepted
    only with --accept-new-host-key (a script must not hang on a question)."""

    def __init__(self, accept_new_host_key: bool = False, interactive: bool | None = None) -> None:
        self.accept_new_host_key = accept_new_host_key
        self.interactive = sys.stdin.isatty() if interactive is None else interactive

    def confirm_host_key(self, target: SshTarget, check: Check, key_type: str, key_fingerprint: str) -> bool:
        if self.accept_new_host_key:
            print(f"vireo: {check.describe(target.host, target.port, key_type, key_fingerprint)}; "
                  "accepted (--accept-new-host-key)", file=sys.stderr)
        return self.accept_new_host_key

    def confirm_copy_unicorn(self, target: SshTarget, size: int) -> bool:
        question = (f"{target.label} has no unicorn, which the software CPU needs; this computer's "
                    f"({size / 1e6:.0f} MB) runs there")
        if not self.interactive:
            # The default is to copy; a script that wants KVM only says --no-copy-unicorn.
            print(f"vireo: {question}: copying it (--no-copy-unicorn refuses; the answer is kept for this host)",
                  file=sys.stderr)
            return True
        try:
            answer = input(f"vireo: {question}. Copy it? [Y/n] ")
        except EOFError:
            return True
        return answer.strip().lower() not in ("n", "no")

    def secret(self, target: SshTarget, prompt: str, echo: bool = False) -> str | None:
        if not self.interactive:
            return None
        try:
            return input(prompt) if echo else getpass.getpass(prompt)
        except (EOFError, KeyboardInterrupt):
            return None


def _paramiko():
    try:
        import paramiko
    except ImportError:
        raise SshError("remote hosts need the Python module paramiko (pip install paramiko)") from None
    return paramiko


def open_transport(target: SshTarget, prompter: Prompter, timeout: float = CONNECT_TIMEOUT):
    """A connected, host-verified, authenticated paramiko Transport."""
    paramiko = _paramiko()
    known = KnownHosts(target.known_hosts)
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except socket.gaierror as exc:
        raise SshError(f"{target.host}: cannot resolve the name ({exc.strerror})") from None
    except OSError as exc:
        raise SshError(f"cannot connect to {host_name(target.host, target.port)}: "
                       f"{exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.auth_timeout = timeout
        _prefer_known_key_types(transport, known.known_types(target.host, target.port))
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(f"SSH handshake with {target.label} failed: {exc or type(exc).__name__}") from None
        _verify_host_key(transport, target, known, prompter)
        _authenticate(transport, target, prompter)
    except BaseException:
        transport.close()
        raise
    transport.set_keepalive(30)
    return transport


def _prefer_known_key_types(transport, known_types: list[str]) -> None:
    """Offer first the key types known_hosts has for this host, as ssh(1) orders HostKeyAlgorithms, so a host
    with several keys is checked against the one on record."""
    if not known_types:
        return
    options = transport.get_security_options()
    offered = list(options.key_types)
    wanted = set(known_types)
    if "ssh-rsa" in wanted:
        wanted |= {"rsa-sha2-512", "rsa-sha2-256"}
    first = [t for t in offered if t in wanted]
    if first:
        options.key_types = first + [t for t in offered if t not in wanted]


def _verify_host_key(transport, target: SshTarget, known: KnownHosts, prompter: Prompter) -> None:
    key = transport.get_remote_server_key()
    key_type, blob = key.get_name(), key.asbytes()
    key_fp = fingerprint(blob)
    check = known.check(target.host, target.port, key_type, blob)
    if check.verdict == Verdict.KNOWN:
        return
    if check.verdict in (Verdict.CHANGED, Verdict.REVOKED):
        raise SshError(check.describe(target.host, target.port, key_type, key_fp))
    if not prompter.confirm_host_key(target, check, key_type, key_fp):
        raise SshError(f"{check.describe(target.host, target.port, key_type, key_fp)}; not trusted "
                       "(headless: add --accept-new-host-key, or connect once with ssh to record it)")
    try:
        known.add(target.host, target.port, key_type, blob)
    except OSError as exc:
        raise SshError(f"cannot record the host key in {known.path}: {exc.strerror or exc}") from None


def _authenticate(transport, target: SshTarget, prompter: Prompter) -> None:
    paramiko = _paramiko()
    user = target.user
    try:
        transport.auth_none(user)
        return
    except paramiko.BadAuthenticationType as exc:
        allowed = list(exc.allowed_types)
    except paramiko.AuthenticationException:
        allowed = ["publickey", "keyboard-interactive", "password"]
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SshError(f"{target.label}: authentication failed: {exc}") from None
    tried: list[str] = []
    wants = target.auth
    if "publickey" in allowed and wants in ("auto", "agent", "key"):
        for key, origin in _candidate_keys(target, prompter):
            tried.append(origin)
            if _try(lambda k=key: transport.auth_publickey(user, k), paramiko) and transport.is_authenticated():
                return
            if not transport.is_active():
                raise SshError(f"{target.label} closed the connection during authentication")
    if wants in ("auto", "password"):
        # "password" asks for the password method first; "auto" follows ssh's default order
        # (keyboard-interactive, then password).
        methods = ["password", "keyboard-interactive"] if wants == "password" else ["keyboard-interactive",
                                                                                    "password"]
        for method in methods:
            if method not in allowed or not transport.is_active():
                continue
            tried.append(method)
            if method == "password" and _password(transport, target, prompter, paramiko):
                return
            if method == "keyboard-interactive" and _interactive(transport, target, prompter, paramiko):
                return
    what = ", ".join(tried) if tried else "nothing this client can offer"
    raise SshError(f"{target.label}: permission denied (the server allows {', '.join(allowed)}; tried {what})")


def _interactive(transport, target: SshTarget, prompter: Prompter, paramiko) -> bool:
    cancelled = False

    def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        nonlocal cancelled
        answers = []
        for text, echo in prompts:
            answer = prompter.secret(target, f"({target.label}) {text}", echo)
            if answer is None:
                cancelled = True
                raise paramiko.AuthenticationException("cancelled")
            answers.append(answer)
        return answers

    for _ in range(SECRET_TRIES):
        if _try(lambda: transport.auth_interactive(target.user, handler), paramiko):
            return True
        if cancelled or not transport.is_active():
            break
    return False


def _password(transport, target: SshTarget, prompter: Prompter, paramiko) -> bool:
    for _ in range(SECRET_TRIES):
        password = prompter.secret(target, f"{target.label}'s password: ")
        if password is None:
            break
        if _try(lambda p=password: transport.auth_password(target.user, p, fallback=False), paramiko):
            return True
        if not transport.is_active():
            break
    return False


def _try(attempt, paramiko) -> bool:
    try:
        attempt()
    except paramiko.AuthenticationException:
        return False
    except paramiko.SSHException:
        return False
    return True


def _candidate_keys(target: SshTarget, prompter: Prompter):
    """(key, description) in the order to offer them."""
    paramiko = _paramiko()
    if target.identity:
        yield _load_key(target, Path(os.path.expanduser(target.identity)), prompter, explicit=True), target.identity
        return
    if target.auth in ("auto", "agent") and os.environ.get("SSH_AUTH_SOCK"):
        try:
            for key in paramiko.Agent().get_keys():
                yield key, f"agent key {fingerprint(key.asbytes())}"
        except paramiko.SSHException:
            pass
    if target.auth in ("auto", "key"):
        ssh_dir = Path(os.path.expanduser("~")) / ".ssh"
        for name in DEFAULT_KEYS:
            path = ssh_dir / name
            if path.is_file():
                key = _load_key(target, path, prompter, explicit=False)
                if key is not None:
                    yield key, str(path)


def _load_key(target: SshTarget, path: Path, prompter: Prompter, explicit: bool):
    paramiko = _paramiko()
    passphrase = None
    for _ in range(SECRET_TRIES + 1):
        try:
            return paramiko.PKey.from_path(path, passphrase.encode() if passphrase is not None else None)
        except FileNotFoundError:
            raise SshError(f"identity {path}: no such file") from None
        except PermissionError:
            raise SshError(f"identity {path}: not readable") from None
        except (paramiko.PasswordRequiredException, TypeError):
            pass        # encrypted (cryptography says so with a TypeError): ask
        except (paramiko.SSHException, ValueError) as exc:
            if passphrase is None:      # not a key we can read at all
                if explicit:
                    raise SshError(f"identity {path}: {exc}") from None
                return None
            # a wrong passphrase decrypts to garbage (a checksum error): ask again
        passphrase = prompter.secret(target, f"Enter passphrase for key '{path}': ")
        if passphrase is None:
            if explicit:
                raise SshError(f"identity {path} is encrypted and no passphrase was given")
            return None
    raise SshError(f"identity {path}: wrong passphrase")
