"""Raw disk images: the file's bytes are the disk's bytes, byte for byte.

A raw file has no header, so it is what remains when no format signature matches. When the format was probed
rather than stated, a guest must not be able to turn its disk into something the next probe reads as another
format (a qcow2 header naming a host file as its backing file would expose that file to the guest), so writes
that would put a known signature at offset 0 are refused, as QEMU does for probed raw images.
"""
from __future__ import annotations

from core.storage.device import BlockDevice
from core.storage.errors import ImageIOError
from core.storage.hostfile import HostFile

_ZERO_CHUNK = 1 << 20
_SIGNATURES = (b"QFI\xfb",)


class RawImage(BlockDevice):
    """A raw image file: size is the file size rounded up to 512 bytes."""

    format_name = "raw"

    def __init__(self, path: str, read_only: bool = False, cache: str = "writeback", lock: bool = True,
                 probed: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.probed = probed
        self.file = HostFile(path, read_only, cache, lock)
        # As QEMU: the disk is whole 512-byte sectors; a file's odd tail is rounded up (reads as zeros past EOF).
        self._size = -(-self.file.size // 512) * 512

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        view = memoryview(buf).cast("B")
        self._check_range(offset, len(view))
        got = self.file.preadinto(offset, view)
        if got < len(view):
            view[got:] = bytes(len(view) - got)   # the file shrank under us: what is gone reads as zeros

    def readv(self, offset: int, bufs: list[memoryview]) -> None:
        total = sum(len(b) for b in bufs)
        self._check_range(offset, total)
        got = self.file.preadv(offset, bufs)
        if got < total:
            pos = 0
            for b in bufs:                       # the file shrank under us: what is gone reads as zeros
                if pos + len(b) > got:
                    start = max(0, got - pos)
                    b[start:] = bytes(len(b) - start)
                pos += len(b)

    def writev(self, offset: int, bufs: list[memoryview]) -> None:
        if self.probed and offset < 4:
            super().writev(offset, bufs)          # the signature check wants the data in one piece
            return
        self._check_writable()
        self._check_range(offset, sum(len(b) for b in bufs))
        self.file.pwritev(offset, bufs)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        data = memoryview(data).cast("B")
        self._check_range(offset, len(data))
        if self.probed and offset < 4 and len(data):
            head = bytearray(self.file.pread(0, 4)) if self.file.size >= 4 else bytearray(4)
            head[offset:offset + len(data)] = data[:4 - offset]
            if bytes(head).startswith(_SIGNATURES):
                raise ImageIOError(f"{self.path}: refused a write that would make this raw image look like a "
                                   "qcow2 image; open it with format=raw to allow it")
        self.file.pwrite(offset, data)

    def flush(self) -> None:
        self.file.fsync()

    def discard(self, offset: int, length: int) -> None:
        self._check_writable()
        self._check_range(offset, length)
        self.file.punch_hole(offset, length)    # advisory: a filesystem without holes keeps the data

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check_writable()
        self._check_range(offset, length)
        if self.probed and offset < 4:
            self.write(offset, bytes(min(length, 4 - offset)))
        if self.file.zero_range(offset, length):
            return
        zeros = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            self.file.pwrite(offset, zeros[:n])
            offset += n

    def resize(self, new_size: int) -> None:
        """Grow or shrink the file (shrinking loses the data past `new_size`)."""
        self._check_writable()
        self.file.truncate(new_size)
        self._size = new_size

    def allocated_bytes(self) -> int:
        return self.file.allocated_bytes()

    def close(self) -> None:
        self.file.close()
