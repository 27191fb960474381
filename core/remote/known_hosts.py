"""OpenSSH's known_hosts file, read and appended the way ssh(1) does (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT").

Each line: an optional marker (@cert-authority, @revoked), host patterns, key type, base64 key, optional comment.
Patterns are comma-separated, may use * and ? wildcards and ! negation, and name a non-standard port as
`[host]:port` (the brackets are literal there, not a character class); a hashed entry (`HashKnownHosts yes`) is
|1|base64(salt)|base64(HMAC-SHA1(salt, name)). A host matches a line when some pattern matches and no negated
one does.

check() gives the verdict ssh(1) would: the key is known; it is unknown (ask the user, showing its SHA256
fingerprint — base64 of SHA-256 over the key blob without padding, as ssh-keygen -l prints it); it differs from
the key recorded for this host (refuse, naming the file and line to remove, as ssh's "Offending key in ...:N");
or it is @revoked (refuse). add() appends an accepted key in the same format, creating ~/.ssh (0700) and the file
(0600) when needed.
"""
from __future__ import annotations

import base64
import binascii
import enum
import fcntl
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path


def default_path() -> Path:
    return Path(os.path.expanduser("~")) / ".ssh" / "known_hosts"


def host_name(host: str, port: int) -> str:
    """The name a host is recorded under: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(blob: bytes) -> str:
    """SHA256:... as ssh-keygen -lf and ssh's host-key prompt show it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class Verdict(enum.Enum):
    KNOWN = "known"
    UNKNOWN = "unknown"
    CHANGED = "changed"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Entry:
    line: int                  # 1-based line number in the file
    marker: str                # "", "@cert-authority" or "@revoked"
    key_type: str
    blob: bytes


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    path: Path
    entry: Entry | None = None          # the matching line (KNOWN), the offending one (CHANGED/REVOKED)
    other_types: tuple[str, ...] = ()   # key types recorded for the host when the offered type is not

    def describe(self, host: str, port: int, key_type: str, key_fp: str) -> str:
        """One line for an error or a prompt."""
        name = host_name(host, port)
        if self.verdict == Verdict.CHANGED and self.entry is not None:
            return (f"the host key of {name} has changed ({key_type} {key_fp}) — someone may be intercepting the "
                    f"connection, or the host was reinstalled; if you are sure, remove line {self.entry.line} of "
                    f"{self.path} (ssh-keygen -R '{name}')")
        if self.verdict == Verdict.CHANGED:
            return (f"{name} offered a {key_type} key, but {self.path} records only "
                    f"{', '.join(self.other_types)} keys for it: refusing; remove its lines from {self.path} if the "
                    "host really changed")
        if self.verdict == Verdict.REVOKED and self.entry is not None:
            return f"the host key of {name} ({key_fp}) is marked @revoked at line {self.entry.line} of {self.path}"
        if self.verdict == Verdict.UNKNOWN:
            return f"the authenticity of {name} can't be established: {key_type} key fingerprint is {key_fp}"
        return f"{name} is known ({key_type} {key_fp})"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Only * and ? are special (match_pattern in OpenSSH's match.c); everything else, brackets included, is literal.
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts) + r"\Z", re.IGNORECASE)


def _hashed_match(pattern: str, name: str) -> bool:
    fields = pattern.split("|")
    if len(fields) != 4 or fields[1] != "1":
        return False
    try:
        salt = base64.b64decode(fields[2], validate=True)
        digest = base64.b64decode(fields[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def hosts_match(patterns: str, name: str) -> bool:
    if patterns.startswith("|"):
        return _hashed_match(patterns, name)
    matched = False
    for pattern in patterns.split(","):
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:]
        if pattern and _pattern_regex(pattern).match(name):
            if negate:
                return False
            matched = True
    return matched


class KnownHosts:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    def entries_for(self, host: str, port: int) -> list[Entry]:
        """Every line naming this host, in file order. An unreadable line is skipped, as ssh does."""
        name = host_name(host, port)
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out: list[Entry] = []
        for number, raw in enumerate(text.splitlines(), 1):
            fields = raw.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = ""
            if fields[0].startswith("@"):
                marker, fields = fields[0], fields[1:]
            if len(fields) < 3 or not hosts_match(fields[0], name):
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except (binascii.Error, ValueError):
                continue
            out.append(Entry(number, marker, fields[1], blob))
        return out

    def known_types(self, host: str, port: int) -> list[str]:
        return [e.key_type for e in self.entries_for(host, port) if not e.marker]

    def check(self, host: str, port: int, key_type: str, blob: bytes) -> Check:
        entries = self.entries_for(host, port)
        for e in entries:
            if e.marker == "@revoked" and e.blob == blob:
                return Check(Verdict.REVOKED, self.path, e)
        plain = [e for e in entries if not e.marker]
        for e in plain:
            if e.key_type == key_type and e.blob == blob:
                return Check(Verdict.KNOWN, self.path, e)
        for e in plain:
            if e.key_type == key_type:
                return Check(Verdict.CHANGED, self.path, e)
        if plain:
            return Check(Verdict.CHANGED, self.path, None, tuple(sorted({e.key_type for e in plain})))
        return Check(Verdict.UNKNOWN, self.path)

    def add(self, host: str, port: int, key_type: str, blob: bytes) -> int:
        """Append the key; returns its line number."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = f"{host_name(host, port)} {key_type} {base64.b64encode(blob).decode()}\n"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)   # two clients accepting at once must not interleave lines
            f.seek(0)
            existing = f.read()
            if existing and not existing.endswith(b"\n"):
                f.write(b"\n")
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        return existing.count(b"\n") + (1 if existing and not existing.endswith(b"\n") else 0) + 1
