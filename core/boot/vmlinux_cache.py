"""An on-disk cache of kernels unpacked on the host (the vmlinux inside a bzImage, see core/boot/linux.py).

Unpacking Debian's xz-compressed kernel takes ~0.6 s, a third of a software-CPU boot; the result depends only on
the compressed payload, so it is kept under $XDG_CACHE_HOME/vireo/vmlinux/ (or $VIREO_CACHE_DIR) named by the
payload's SHA-256. Files are written whole (temporary file, then rename), so a reader sees a complete file or none;
anything wrong with the cache (unwritable, full, a damaged entry) only costs the unpacking again.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

KEEP_ENTRIES = 8


def cache_dir() -> Path:
    explicit = os.environ.get("VIREO_CACHE_DIR")
    if explicit:
        return Path(explicit) / "vmlinux"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vireo" / "vmlinux"


def _path(key: str, fmt: str) -> Path:
    return cache_dir() / f"{key}.{fmt}.elf"


def load(key: str, fmt: str) -> bytes | None:
    """The unpacked kernel for payload digest `key` (hex) compressed with `fmt`, or None."""
    path = _path(key, fmt)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data.startswith(b"\x7fELF"):
        log.warning("discarding a damaged cache entry %s", path)
        discard(key, fmt)
        return None
    try:
        os.utime(path)          # most recently used: kept longest
    except OSError:
        pass
    return data


def store(key: str, fmt: str, data: bytes) -> None:
    import tempfile  # here: every start imports this module, few store a kernel
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".elf")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, _path(key, fmt))
        except BaseException:
            os.unlink(tmp)
            raise
        _evict(folder)
    except OSError as exc:
        log.info("not caching the unpacked kernel in %s: %s", folder, exc)


def discard(key: str, fmt: str) -> None:
    try:
        _path(key, fmt).unlink()
    except OSError:
        pass


def _evict(folder: Path) -> None:
    entries = sorted(folder.glob("*.elf"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP_ENTRIES:]:
        try:
            old.unlink()
        except OSError:
            pass
