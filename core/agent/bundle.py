"""Packing what the remote host needs, on the client: the engine (core/ without the client-only SSH code) and,
for an interpreter that lacks them, the engine's third-party modules copied from this one.

Bundles are gzip'd tar files built once per content and kept in $XDG_CACHE_HOME/vireo/bundles, so reconnecting or
connecting to a second host costs no packing. Binary modules are only offered to a host whose interpreter ABI
(cache tag and machine) matches this one and whose C library is at least as new (a manylinux binary needs the
glibc it was built against or newer).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import os
import platform
import sys
import tarfile
from pathlib import Path

from core.agent.probe import abi_tag
from core.agent.version import engine_files, engine_root, engine_version


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "vireo" / "bundles"


def _add_tree(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    for dirpath, dirnames, filenames in os.walk(source):
        rel = os.path.relpath(dirpath, source)
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "tests"))
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            path = os.path.join(dirpath, name)
            tar.add(path, arcname=os.path.normpath(os.path.join(arcname, rel, name)), recursive=False)


def _write_atomic(path: Path, build) -> Path:
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w:gz", compresslevel=6) as tar:
            build(tar)
    os.replace(tmp, path)
    return path


def engine_bundle() -> Path:
    """core/ as core/... in an archive named after the engine version."""
    root = Path(engine_root())
    parent = root.parent

    def build(tar: tarfile.TarFile) -> None:
        for rel in engine_files(str(root)):
            tar.add(parent / rel, arcname=rel, recursive=False)
        stamp = engine_version().encode()
        info = tarfile.TarInfo("VERSION")
        info.size = len(stamp)
        tar.addfile(info, io.BytesIO(stamp))
    return _write_atomic(cache_dir() / f"engine-{engine_version()}.tar.gz", build)


def local_module(name: str) -> tuple[str, list[Path]] | None:
    """(version, paths to pack) of an installed distribution: the package, its .libs directory of vendored
    shared libraries (auditwheel's layout) and its .dist-info (so the remote can see the version)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = [package]
    libs = package.with_name(f"{name}.libs")
    if libs.is_dir():
        parts.append(libs)
    info = Path(str(dist._path)) if hasattr(dist, "_path") else None   # the .dist-info directory
    if info is not None and info.is_dir():
        parts.append(info)
    return dist.version, parts


def modules_bundle(names: list[str]) -> Path:
    found = {n: local_module(n) for n in sorted(names)}
    missing = [n for n, v in found.items() if v is None]
    if missing:
        raise LookupError(f"this computer has no {', '.join(missing)} to copy")
    key = hashlib.sha256(repr([(n, v[0]) for n, v in found.items()]).encode() + abi_tag().encode()).hexdigest()[:12]

    def build(tar: tarfile.TarFile) -> None:
        for _version, parts in found.values():
            for part in parts:
                _add_tree(tar, part, part.name)
    return _write_atomic(cache_dir() / f"modules-{abi_tag()}-{key}.tar.gz", build)


def libc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    try:
        return tuple(int(x) for x in version.split(".")) if name == "glibc" else ()
    except ValueError:
        return ()


def can_copy_modules_to(remote_abi: str, remote_libc: str) -> tuple[bool, str]:
    """Whether binary modules from this interpreter load in the remote one; (False, why) if not."""
    if remote_abi != abi_tag():
        return False, f"the remote python is {remote_abi}, this one {abi_tag()}"
    mine = libc_version()
    theirs: tuple[int, ...] = ()
    if remote_libc.startswith("glibc "):
        try:
            theirs = tuple(int(x) for x in remote_libc.split()[1].split("."))
        except ValueError:
            theirs = ()
    if not mine or not theirs:
        return False, "only glibc systems can share binary modules"
    if theirs < mine:
        return False, f"the remote glibc {'.'.join(map(str, theirs))} is older than this one's"
    return True, ""


def python_version() -> str:
    return sys.version.split()[0]
