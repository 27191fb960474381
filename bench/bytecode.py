"""Byte-compile Vireo's sources before a benchmark times its start-up.

Python caches each module's compiled bytecode in `__pycache__` the first time it imports it, so from a user's
second run on, `./vireo` starts from the cache (pip and Debian's packaging compile it at install time as well).
A process started with PYTHONDONTWRITEBYTECODE=1 (this build machine's environment sets it) never writes that
cache and compiles every module from source on every start: about 0.13 s more before the guest's first
instruction. The benchmarks measure what a user sees, so they write the cache once, as a first run would.
"""
from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_bytecode() -> None:
    """Write __pycache__ for main.py, core/ and app/ (nothing is rewritten where the cache is current)."""
    ok = compileall.compile_file(str(ROOT / "main.py"), quiet=1)
    for package in ("core", "app"):
        ok = compileall.compile_dir(str(ROOT / package), quiet=1) and ok
    if not ok:
        raise SystemExit("bench: byte-compiling Vireo's sources failed (see above)")
