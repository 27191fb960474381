"""The host file under an image: open with the cache mode's flags, lock, positional I/O, hole punching.

Opening order matters for the lock: the file is opened, then locked, and only then read (so a writer never sees
a header half-rewritten by another writer). fallocate() is reached through libc because the os module has only
posix_fallocate, which cannot punch holes.

cache=none opens the file a second time with O_DIRECT (open(2)): requests whose offset, length and memory are
all aligned to DIRECT_ALIGN (guest pages, whole clusters) go through it and bypass the host page cache; the
rest (qcow2 metadata, odd sizes) use the ordinary descriptor. Linux keeps the two coherent: a direct read first
writes back cached dirty pages of its range, a direct write drops them. A flush is still an fsync, because
O_DIRECT does not empty the disk's own write cache.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from core.storage.device import CACHE_MODES, pread_exact, preadv_exact, pwrite_all, pwritev_all
from core.storage.errors import ImageError, ImageIOError
from core.storage.locking import ImageLock

DIRECT_ALIGN = 4096          # covers the logical block size of any common disk (512 or 4096)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_fallocate_fn = None


def _libc_fallocate():
    """fallocate(2) from the C library the interpreter is linked with, by name (find_library("c") runs
    `ldconfig -p`, a process). ctypes is loaded at the first call: `img snapshot` often makes none, and its
    start-up is timed against qemu-img's (bench/snapshot.py)."""
    global _fallocate_fn
    if _fallocate_fn is None:
        import ctypes
        fn = ctypes.CDLL("libc.so.6", use_errno=True).fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        _fallocate_fn = fn
    return _fallocate_fn


def check_file_kind(fd: int, path: str) -> bool:
    """Refuse what cannot be a disk (a FIFO, socket or character device such as /dev/zero: reads never end or
    block forever); return whether it is a block device (whose size is not in st_size)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return False
    if stat.S_ISBLK(mode):
        return True
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file")
    raise ImageError(f"{path}: is {kind}, not a disk image; use a regular file or a block device")


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
            # O_NONBLOCK: opening a FIFO would otherwise wait for a peer forever; it is refused below anyway.
            self.fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
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
        self.direct_fd = -1
        try:
            self.is_block = check_file_kind(self.fd, path)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            if lock:
                self._lock = ImageLock(self.fd, path, write=not read_only)
                self._lock.acquire()
            self.size = os.lseek(self.fd, 0, os.SEEK_END) if self.is_block else os.fstat(self.fd).st_size
            if cache == "none":
                self.direct_fd = self._open_direct(flags)
        except BaseException:
            os.close(self.fd)
            raise

    def _open_direct(self, flags: int) -> int:
        try:
            return os.open(self.path, flags | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise ImageError(f"{self.path}: cache=none needs O_DIRECT, which this file system does not "
                                 "support; use cache=writeback") from exc
            raise ImageError(f"{self.path}: cannot open for cache=none: {exc.strerror}") from exc

    def _direct(self, offset: int, bufs: list) -> bool:
        """Whether a request can go through the O_DIRECT descriptor (everything aligned, memory writable so its
        address can be known)."""
        if self.direct_fd < 0 or offset % DIRECT_ALIGN:
            return False
        for b in bufs:
            if len(b) % DIRECT_ALIGN or not isinstance(b, memoryview) or b.readonly or not b.contiguous:
                return False
            import ctypes  # a dict lookup after the first time (module-level import would slow every start-up)
            if len(b) and ctypes.addressof(ctypes.c_char.from_buffer(b)) % DIRECT_ALIGN:
                return False
        return True

    def pread(self, offset: int, length: int) -> bytes:
        return pread_exact(self.fd, self.path, offset, length)

    def preadinto(self, offset: int, buf: memoryview) -> int:
        return self.preadv(offset, [buf])

    def preadv(self, offset: int, bufs: list[memoryview]) -> int:
        fd = self.direct_fd if self._direct(offset, bufs) else self.fd
        return preadv_exact(fd, self.path, offset, bufs)

    def pwritev(self, offset: int, bufs: list[memoryview]) -> None:
        fd = self.direct_fd if self._direct(offset, bufs) else self.fd
        pwritev_all(fd, self.path, offset, bufs)
        end = offset + sum(len(b) for b in bufs)
        if end > self.size:
            self.size = end

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.direct_fd >= 0 and isinstance(data, memoryview):
            self.pwritev(offset, [data])
            return
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
        if _libc_fallocate()(self.fd, mode, offset, length) == 0:
            return True
        import ctypes
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
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        os.close(self.fd)
        self.fd = -1
