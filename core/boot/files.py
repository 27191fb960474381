"""What the boot loaders take from the host, checked before use (issue 18, defects 5 and 6).

Files (a kernel, initrd or option ROM) are opened without blocking, checked to be regular files and measured
before a byte is read, so a FIFO cannot hang the loader and a 40 GiB sparse file is refused in one line instead of
exhausting the host's memory. The command line is turned into the bytes the kernel gets (Linux boot.rst,
"cmd_line_ptr": a NUL-terminated byte string)."""
from __future__ import annotations

import fcntl
import os
import stat

from core.boot.errors import BootError, mib


def read_bounded(path: str, what: str, limit: int, fix: str = "give more --memory") -> bytes:
    """The whole of the regular file at `path`, at most `limit` bytes; BootError (one line naming `what` and
    `path`) for a missing, special or oversized file. `fix` ends the oversize message (what the user can do)."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer that never comes.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BootError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise BootError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise BootError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BootError(f"{what} {path} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise BootError(f"{what} {path} is not a regular file (a device, FIFO or socket); give a file")
        if st.st_size > limit:
            raise BootError(f"{what} {path} is {mib(st.st_size)}, more than the {mib(limit)} it may take; {fix}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        chunks = []
        total = 0
        # Read to EOF, but never past the limit: the file may grow between fstat and read.
        while True:
            chunk = os.read(fd, min(1 << 24, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise BootError(f"{what} {path} grew past {mib(limit)} while being read; {fix}")
        return b"".join(chunks)
    except OSError as exc:
        raise BootError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def cmdline_bytes(cmdline: str, name: str) -> bytes:
    """The kernel command line as the bytes the guest gets. A command line is bytes to Linux, as argv is to us:
    an argument that is not UTF-8 arrives here with its bytes as surrogate escapes (PEP 383) and goes to the
    guest unchanged, as QEMU passes -append; a lone surrogate from elsewhere (JSON's "\\ud800") has no byte
    form and is refused."""
    try:
        data = cmdline.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise BootError(f"{name}: the command line has a character with no byte form at position {exc.start} "
                        f"({cmdline[exc.start]!a}); remove it") from None
    if b"\0" in data:
        raise BootError(f"{name}: the command line contains a NUL byte")
    return data
