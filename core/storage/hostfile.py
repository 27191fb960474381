"""The host file under an image: open with the cache mode's flags, lock, positional I/O, hole punching.

Opening order matters for the lock: the file is opened, then locked, and only then read (so a writer never sees
a header half-rewritten by another writer). fallocate() is reached through libc because the os module has only
posix_fallocate, which cannot punch holes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from core.storage.device import CACHE_MODES, pread_exact, preadinto, preadv_exact, pwrite_all, pwritev_all
from core.storage.errors import ImageError, ImageIOError
from core.storage.locking import ImageLock

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


class HostFile:
    """An open, locked host file with exact positional reads/writes that raise ImageIOError on failure."""

    def __init__(self, path: str, read_only: bool, cache: str = "writeback", lock: bool = True) -> None:
        if cache not in CACHE_MODES:
            raise ImageError(f"{path}: unknown cache mode {cache!r}; use one of {', '.join(CACHE_MODES)}")
        self.path = path
        self.read_only = read_only
        self.cache = cache
        flags = os.O_RDONLY if read_only else os.O_RDWR
        if cache == "writethrough" and not read_only:
            flags |= os.O_DSYNC
        try:
            self.fd = os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ImageError(f"{path}: no such file; check the path or create it with `img create`") from exc
        except IsADirectoryError as exc:
            raise ImageError(f"{path}: is a directory, not a disk image") from exc
        except PermissionError as exc:
            hint = " (open it read-only, or fix the file's permissions)" if not read_only else ""
            raise ImageError(f"{path}: permission denied{hint}") from exc
        except OSError as exc:
            raise ImageError(f"{path}: cannot open: {exc.strerror}") from exc
        self._lock: ImageLock | None = None
        try:
            if lock:
                self._lock = ImageLock(self.fd, path, write=not read_only)
                self._lock.acquire()
            self.size = os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise

    def pread(self, offset: int, length: int) -> bytes:
        return pread_exact(self.fd, self.path, offset, length)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        return preadinto(self.fd, self.path, offset, buf)

    def preadv(self, offset: int, bufs: list[memoryview]) -> int:
        return preadv_exact(self.fd, self.path, offset, bufs)

    def pwritev(self, offset: int, bufs: list[memoryview]) -> None:
        pwritev_all(self.fd, self.path, offset, bufs)
        end = offset + sum(len(b) for b in bufs)
        if end > self.size:
            self.size = end

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        pwrite_all(self.fd, self.path, offset, data)
        end = offset + len(data)
        if end > self.size:
            self.size = end

    def fsync(self) -> None:
        if self.cache == "unsafe":
            return
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise ImageIOError(f"{self.path}: flush (fsync) failed: {exc.strerror}") from exc

    def barrier(self) -> None:
        """Order two groups of metadata writes on the disk itself (not needed for kill -9; matters on power loss)."""
        if self.cache != "unsafe":
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                raise ImageIOError(f"{self.path}: flush (fdatasync) failed: {exc.strerror}") from exc

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise ImageIOError(f"{self.path}: cannot resize the file to {size} bytes: {exc.strerror}") from exc
        self.size = size

    def punch_hole(self, offset: int, length: int) -> bool:
        """Free the host blocks of a range (it then reads as zeros); False if the filesystem cannot."""
        return self._fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def zero_range(self, offset: int, length: int) -> bool:
        """Make a range read as zeros without writing data; False if the filesystem cannot."""
        if self._fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length):
            return True
        return self.punch_hole(offset, length)

    def _fallocate(self, mode: int, offset: int, length: int) -> bool:
        if length <= 0:
            return True
        if _libc.fallocate(self.fd, mode, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise ImageIOError(f"{self.path}: fallocate at offset {offset} length {length} failed: {os.strerror(err)}")

    def allocated_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._lock:
            self._lock.release()
        os.close(self.fd)
        self.fd = -1
