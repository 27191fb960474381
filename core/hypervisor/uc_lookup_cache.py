"""An on-disk cache of what uc_patch looks up in libunicorn's ELF file: where the dynamic linker stored an exported
helper's address (relocation slots) and where local functions lie, as offsets from the library's load address.

The lookups search the library's relocation and symbol tables (hundreds of kilobytes) at every start of a software
CPU, about a tenth of `main.py run`'s start-up; the answers depend only on the library file. They are kept in
$XDG_CACHE_HOME/vireo/unicorn-lookups.json (or $VIREO_CACHE_DIR), valid for the file with the same path, size,
modification time and inode, and written whole (temporary file, then rename). Anything wrong with the cache
(missing, unreadable, unwritable, for another file) only costs the search again; uc_patch also checks that each
cached slot still holds the helper's address before it is used, as it does for slots it searched itself.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

VERSION = 1
_lock = threading.Lock()
_loaded: dict[str, dict] = {}        # library path -> its entries as read from (or to be written to) the cache


def cache_file() -> Path:
    explicit = os.environ.get("VIREO_CACHE_DIR")
    if explicit:
        return Path(explicit) / "unicorn-lookups.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vireo" / "unicorn-lookups.json"


def _identity(lib_path: str) -> list:
    st = os.stat(lib_path)
    return [os.path.realpath(lib_path), st.st_size, st.st_mtime_ns, st.st_ino]


def _entries(lib_path: str) -> dict:
    """The cached entries for this library file ({} if none or the cache is for another file)."""
    found = _loaded.get(lib_path)
    if found is not None:
        return found
    entries: dict = {}
    try:
        identity = _identity(lib_path)
        with open(cache_file(), encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("version") == VERSION and data.get("lib") == identity \
                and isinstance(data.get("entries"), dict):
            entries = data["entries"]
    except (OSError, ValueError):
        pass
    _loaded[lib_path] = entries
    return entries


def get(lib_path: str, key: str):
    """The value cached under `key` for this library file, or None."""
    with _lock:
        return _entries(lib_path).get(key)


def put(lib_path: str, key: str, value) -> None:
    """Remember `value` (JSON-able) under `key` for this library file; a failure to write is ignored."""
    with _lock:
        entries = _entries(lib_path)
        entries[key] = value
        try:
            path = cache_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"version": VERSION, "lib": _identity(lib_path), "entries": entries}, f)
            os.replace(tmp, path)
        except OSError:
            pass
