"""Files on a host, as a client sees them when it chooses a kernel, ISO or disk image there, and when the New VM
wizard picks a free name for a new disk image (and takes back one it made for a definition the host refused).

LocalFiles reads this machine: the local service runs as this user, here, so its files are the client's. SftpFiles
reads an SSH host over SFTP (draft-ietf-secsh-filexfer-02, served by OpenSSH's sftp-server or internal-sftp) on
the SSH connection the host already holds, so browsing needs no second login. Both raise HostError with one line
naming the path and why.
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.host.api import HostError


@dataclass(frozen=True)
class FileEntry:
    name: str
    is_dir: bool
    size: int         # bytes (0 for a folder)


def _sorted(entries: list[FileEntry]) -> list[FileEntry]:
    """Folders first, then files, each by name as file managers sort them (case folded)."""
    return sorted(entries, key=lambda e: (not e.is_dir, e.name.casefold(), e.name))


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "it does not exist"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "it is not a folder"
    return exc.strerror or str(exc) or type(exc).__name__


class HostFiles(ABC):
    """One host's file system, for browsing. Thread-safe; every call may block (SFTP): call off the GUI thread."""

    local: bool = False     # this machine's files: a client may use its own file dialogs

    @abstractmethod
    def home(self) -> str:
        """The user's home folder on the host (where a file dialog starts)."""

    @abstractmethod
    def listdir(self, path: str) -> list[FileEntry]:
        """The entries of the folder `path`, folders first; symbolic links are followed."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove the file `path` (not a folder)."""


class LocalFiles(HostFiles):
    local = True

    def home(self) -> str:
        return os.path.expanduser("~")

    def listdir(self, path: str) -> list[FileEntry]:
        entries = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        is_dir = entry.is_dir()
                        size = 0 if is_dir else entry.stat().st_size
                    except OSError:      # a dangling link: listed, as ls lists it
                        is_dir, size = False, 0
                    entries.append(FileEntry(entry.name, is_dir, size))
        except OSError as exc:
            raise HostError(f"cannot list {path}: {_why(exc)}") from None
        return _sorted(entries)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError as exc:
            raise HostError(f"cannot remove {path}: {_why(exc)}") from None


class SftpFiles(HostFiles):
    """An SSH host's files over SFTP. `open_sftp` opens a paramiko SFTPClient on the host's connection; it is
    called on first use and again after the channel closed (the connection was re-established)."""

    def __init__(self, label: str, open_sftp: Callable[[], Any]) -> None:
        self.label = label
        self._open_sftp = open_sftp
        self._sftp: Any = None
        self._lock = threading.Lock()   # one SFTPClient; paramiko's requests on it are not meant to interleave

    def _run(self, fn: Callable[[Any], Any], what: str) -> Any:
        with self._lock:
            for attempt in (1, 2):
                if self._sftp is None or self._sftp.get_channel().closed:
                    try:
                        self._sftp = self._open_sftp()
                    except HostError:
                        raise
                    except Exception as exc:
                        raise HostError(f"{self.label}: cannot open SFTP to browse files: {exc}") from None
                try:
                    return fn(self._sftp)
                except OSError as exc:   # paramiko maps SFTP status codes to IOError with an errno
                    raise HostError(f"{what} on {self.label}: {_why(exc)}") from None
                except EOFError:
                    self._sftp = None
                    if attempt == 2:
                        raise HostError(f"{what} on {self.label}: the SFTP channel closed") from None
        raise AssertionError("unreachable")

    def home(self) -> str:
        return self._run(lambda s: s.normalize("."), "cannot find the home folder")

    def listdir(self, path: str) -> list[FileEntry]:
        def read(sftp: Any) -> list[FileEntry]:
            entries = []
            for attr in sftp.listdir_attr(path):
                mode = attr.st_mode or 0
                if stat.S_ISLNK(mode):   # READDIR gives the link's own attributes: follow it, as ls -L
                    try:
                        mode = sftp.stat(posixpath.join(path, attr.filename)).st_mode or 0
                    except OSError:
                        mode = 0
                is_dir = stat.S_ISDIR(mode)
                entries.append(FileEntry(attr.filename, is_dir, 0 if is_dir else int(attr.st_size or 0)))
            return _sorted(entries)

        return self._run(read, f"cannot list {path}")

    def exists(self, path: str) -> bool:
        def check(sftp: Any) -> bool:
            try:
                sftp.lstat(path)
                return True
            except FileNotFoundError:
                return False

        return self._run(check, f"cannot look for {path}")

    def remove(self, path: str) -> None:
        self._run(lambda s: s.remove(path), f"cannot remove {path}")
