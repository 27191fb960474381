"""The block-device interface every image format implements, as seen by virtio-blk and the tools.

A BlockDevice is a byte-addressed virtual disk of fixed `size`: read/write at any offset and length (the
format does the cluster arithmetic), flush() makes every completed write durable (fsync of the host file, the
semantics of a virtio-blk VIRTIO_BLK_T_FLUSH), discard() is a hint that data is no longer needed, and
write_zeroes() makes a range read as zeros, using metadata instead of data where the format can.
Requests outside [0, size) raise ImageRangeError; write-type requests on a read-only device raise
ReadOnlyImageError; a failed request raises ImageIOError and leaves the device usable.
"""
from __future__ import annotations

import abc
import os

from core.storage.errors import ImageIOError, ImageRangeError, ReadOnlyImageError

# Cache modes as QEMU names them: writeback (host page cache, durable at flush), writethrough (every write is
# durable when it completes: O_DSYNC), none (O_DIRECT: data bypasses the host page cache, durable at flush),
# unsafe (flush is ignored: fast scratch disks).
CACHE_MODES = ("writeback", "writethrough", "none", "unsafe")


class BlockDevice(abc.ABC):
    """A virtual disk: byte-addressed reads and writes inside [0, size)."""

    path: str
    format_name: str
    read_only: bool

    @property
    def cache(self) -> str:
        """The cache mode the image was opened with (one of CACHE_MODES)."""
        file = getattr(self, "file", None)
        return file.cache if file is not None else "writeback"

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Virtual size in bytes."""

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Return `length` bytes of the virtual disk from `offset`."""

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        """Fill `buf` with disk contents from `offset` (formats override this to avoid a copy)."""
        data = self.read(offset, len(buf))
        memoryview(buf)[:] = data

    def readv(self, offset: int, bufs: list[memoryview]) -> None:
        """Fill the buffers in order with disk contents from `offset` (a scatter list, e.g. guest pages)."""
        for buf in bufs:
            self.readinto(offset, buf)
            offset += len(buf)

    @abc.abstractmethod
    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset`; when it returns, reads see the new data (durable only after flush)."""

    def writev(self, offset: int, bufs: list[memoryview]) -> None:
        """Write the buffers in order from `offset` as one request (a gather list)."""
        if len(bufs) == 1:
            self.write(offset, bufs[0])
        elif bufs:
            # One request, not one per piece: a format that allocates whole clusters copies less this way.
            self.write(offset, b"".join(bufs))

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every completed write durable on the host's storage (fsync)."""

    @abc.abstractmethod
    def discard(self, offset: int, length: int) -> None:
        """Hint that the range is unused; the format may free space. Contents afterwards are unspecified."""

    @abc.abstractmethod
    def write_zeroes(self, offset: int, length: int) -> None:
        """Make the range read as zeros."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file and its lock; further requests fail."""

    def __enter__(self) -> BlockDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers for implementations -----------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageRangeError(f"{self.path}: request at offset {offset} length {length} is outside the "
                                  f"{self.size}-byte disk")

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyImageError(f"{self.path}: the image is open read-only")


def pread_exact(fd: int, path: str, offset: int, length: int) -> bytes:
    """Read exactly `length` bytes at `offset` of a host file; short reads past EOF are an ImageIOError."""
    try:
        data = os.pread(fd, length, offset)
        while len(data) < length:
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                raise ImageIOError(f"{path}: unexpected end of file reading {length} bytes at offset {offset} "
                                   "(the image is truncated)")
            data += more
    except OSError as exc:
        raise ImageIOError(f"{path}: read of {length} bytes at offset {offset} failed: {exc.strerror}") from exc
    return data


def preadinto(fd: int, path: str, offset: int, buf: memoryview) -> int:
    """Fill `buf` from `offset`; return how many bytes the file had (the rest is left untouched at EOF)."""
    done = 0
    try:
        while done < len(buf):
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        raise ImageIOError(f"{path}: read of {len(buf)} bytes at offset {offset} failed: {exc.strerror}") from exc
    return done


def preadv_exact(fd: int, path: str, offset: int, bufs: list[memoryview]) -> int:
    """Fill a scatter list from `offset` with as few syscalls as the kernel allows; return the bytes the file
    had (short at EOF: the rest of the buffers is left untouched)."""
    total = sum(len(b) for b in bufs)
    done = 0
    pending = list(bufs)
    try:
        while pending:
            n = os.preadv(fd, pending[:_IOV_MAX], offset + done)
            if n == 0:
                break
            done += n
            pending = _advance(pending, n)
    except OSError as exc:
        raise ImageIOError(f"{path}: read of {total} bytes at offset {offset} failed: {exc.strerror}") from exc
    return done


def pwritev_all(fd: int, path: str, offset: int, bufs: list[memoryview]) -> None:
    """Write a gather list at `offset` (os.pwritev may write less than asked)."""
    total = sum(len(b) for b in bufs)
    done = 0
    pending = list(bufs)
    try:
        while pending:
            n = os.pwritev(fd, pending[:_IOV_MAX], offset + done)
            done += n
            pending = _advance(pending, n)
    except OSError as exc:
        raise ImageIOError(f"{path}: write of {total} bytes at offset {offset} failed: {exc.strerror}") from exc


_IOV_MAX = 1024


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    """The part of a scatter/gather list after its first `n` bytes."""
    i = 0
    while i < len(bufs) and n >= len(bufs[i]):
        n -= len(bufs[i])
        i += 1
    rest = bufs[i:]
    if rest and n:
        rest[0] = rest[0][n:]
    return rest


def pwrite_all(fd: int, path: str, offset: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` at `offset` of a host file (os.pwrite may write less than asked)."""
    view = memoryview(data)
    done = 0
    try:
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    except OSError as exc:
        raise ImageIOError(f"{path}: write of {len(view)} bytes at offset {offset} failed: {exc.strerror}") from exc
