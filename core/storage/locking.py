"""Image locks: one writer per disk image, across Vireo processes and QEMU alike.

Open-file-description locks (fcntl F_OFD_SETLK, Linux ≥ 3.15) on single bytes of the image, in the scheme QEMU's
file-posix driver uses, so a running QEMU and Vireo also exclude each other: a shared lock on byte 100+i says
"I use permission i", one on byte 200+i says "I do not let others use permission i" (i = 0 consistent read,
1 write, 3 resize). OFD locks belong to the open file, not the process, so two opens in one process conflict too,
and the kernel drops them when the file is closed or the process dies (kill -9 leaves no stale lock).
The holder's pid is found by scanning /proc/*/fdinfo (OFD locks show pid -1 in /proc/locks).
"""
from __future__ import annotations

import fcntl
import os
import struct

from core.storage.errors import ImageLockedError

PERM_CONSISTENT_READ = 0
PERM_WRITE = 1
PERM_RESIZE = 3
_PERM_BASE = 100
_SHARED_BASE = 200
_PERM_NAMES = {PERM_CONSISTENT_READ: "read", PERM_WRITE: "write", PERM_RESIZE: "resize"}
_FLOCK = "hhqqi4x"          # struct flock on Linux x86-64/aarch64: type, whence, start, len, pid


def _flock(kind: int, start: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, start, 1, 0)


class ImageLock:
    """The locks one open image holds: a writer uses read+write+resize, a reader read; both deny write+resize."""

    def __init__(self, fd: int, path: str, write: bool) -> None:
        self.fd = fd
        self.path = path
        self.write = write
        self.perms = [PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE] if write else [PERM_CONSISTENT_READ]
        self.denied = [PERM_WRITE, PERM_RESIZE]
        self._held: list[int] = []

    def acquire(self) -> None:
        """Take the locks or raise ImageLockedError naming the process that holds a conflicting one."""
        try:
            for byte in [_PERM_BASE + p for p in self.perms] + [_SHARED_BASE + p for p in self.denied]:
                self._setlk(fcntl.F_RDLCK, byte)
                self._held.append(byte)
            # Probing after taking our own locks closes the race of two openers: at worst both fail.
            for perm in self.perms:
                if self._conflict(_SHARED_BASE + perm):
                    self._fail(_SHARED_BASE + perm, f"does not allow others to {_PERM_NAMES[perm]}")
            for perm in self.denied:
                if self._conflict(_PERM_BASE + perm):
                    self._fail(_PERM_BASE + perm, f"has it open for {_PERM_NAMES[perm]}")
        except BlockingIOError as exc:
            self.release()
            raise ImageLockedError(f"{self.path}: cannot lock the image: {exc.strerror}") from exc
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for byte in self._held:
            try:
                fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, byte))
            except OSError:
                pass
        self._held = []

    def _setlk(self, kind: int, byte: int) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _flock(kind, byte))

    def _conflict(self, byte: int) -> bool:
        result = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, byte))
        return struct.unpack(_FLOCK, result)[0] != fcntl.F_UNLCK

    def _fail(self, byte: int, why: str) -> None:
        holder = find_lock_holder(self.fd, byte, exclude_fd=self.fd)
        who = holder or "another process"
        mode = "for writing" if self.write else "for reading"
        raise ImageLockedError(f"{self.path}: cannot open {mode}: the image is in use by {who}, which {why}; "
                               "stop that VM or tool first")


def find_lock_holder(fd: int, byte: int, exclude_fd: int | None = None) -> str | None:
    """Describe ('pid 1234 (qemu-system-x86)') a process with an OFD lock on `byte` of the file open as `fd`."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    me = os.getpid()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for name in fds:
            if int(pid) == me and exclude_fd is not None and name == str(exclude_fd):
                continue
            try:
                target = os.stat(f"{fd_dir}/{name}")
                if target.st_ino != st.st_ino or target.st_dev != st.st_dev:
                    continue
                with open(f"/proc/{pid}/fdinfo/{name}") as info:
                    lines = [ln for ln in info if ln.startswith("lock:") and key in ln]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                try:
                    start = int(fields[-2])
                    end = fields[-1]
                    covers = start <= byte and (end == "EOF" or byte <= int(end))
                except (ValueError, IndexError):
                    continue
                if covers:
                    return _describe(int(pid))
    return None


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = "?"
    if pid == os.getpid():
        comm += ", this process"
    return f"pid {pid} ({comm})"
