"""Which engine a host runs: a content hash of the engine's source (the protocol number is core/protocol.py's).

The version is derived from the code rather than typed by hand, so a client can tell whether the agent on a host
is the very engine it carries (same hash), and any change to core/ makes it upload a fresh copy. Standard library
only: the bridge and the probe import this before anything else.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

RELEASE = "0.1.0"
# What the engine package ships to a remote host: core/ minus the client-only SSH side (paramiko lives there),
# and the data files the engine reads (the VGA font, core/devices/vga_font.py).
EXCLUDED_PACKAGES = ("remote",)
ENGINE_DATA = ("resources/fonts",)


def engine_root() -> str:
    """The directory holding the `core` package this process imported."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def engine_files(root: str | None = None) -> list[str]:
    """Paths (relative to the parent of core/, with '/' separators) of every engine source and data file, sorted."""
    root = root or engine_root()
    parent = os.path.dirname(root)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith(".")
                             and not (rel_dir == "." and d in EXCLUDED_PACKAGES))
        for name in sorted(filenames):
            if name.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, name), parent).replace(os.sep, "/"))
    for data in ENGINE_DATA:
        folder = os.path.join(parent, *data.split("/"))
        if os.path.isdir(folder):
            out += [f"{data}/{name}" for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))]
    return sorted(out)


@lru_cache(maxsize=4)
def engine_version(root: str | None = None) -> str:
    """RELEASE+<first 12 hex digits of SHA-256 over every engine file's path and content>."""
    root = root or engine_root()
    parent = os.path.dirname(root)
    digest = hashlib.sha256()
    for rel in engine_files(root):
        with open(os.path.join(parent, rel), "rb") as f:
            data = f.read()
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return f"{RELEASE}+{digest.hexdigest()[:12]}"
