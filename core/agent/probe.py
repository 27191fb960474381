"""What a client learns about a remote host before it talks to the agent: the Python there, the per-user
directories (XDG Base Directory Specification 0.8), which engine versions are installed, and which of the
engine's third-party modules the interpreter can import.

This file is self-contained (standard library only, no imports from core): the client sends its source to the
remote `python3 -c`, so it works on a host where nothing of Vireo exists yet, and prints one JSON object. The
agent's own modules import the directory functions from here so both agree on where things live.
"""
from __future__ import annotations

import json
import os
import platform
import sys

# The engine's third-party imports: numpy for the display and devices, unicorn for the software CPU, psutil
# for host facts (the agent falls back to /proc without it).
MODULES = ("numpy", "unicorn", "psutil")


def _xdg(var: str, default: str) -> str:
    value = os.environ.get(var, "")
    # The spec: a relative path in these variables is invalid and must be ignored.
    return value if value and os.path.isabs(value) else os.path.join(os.path.expanduser("~"), default)


def data_dir() -> str:
    """$XDG_DATA_HOME/vireo (default ~/.local/share/vireo): installed engines and their modules."""
    return os.path.join(_xdg("XDG_DATA_HOME", ".local/share"), "vireo")


def agent_dir(version: str) -> str:
    return os.path.join(data_dir(), "agent", version)


def abi_tag() -> str:
    """Names the interpreter ABI binary modules are built for: cpython-311-x86_64."""
    return f"{sys.implementation.cache_tag}-{platform.machine()}"


def deps_dir() -> str:
    """Uploaded third-party modules for this interpreter (binary modules only load in a matching one)."""
    return os.path.join(data_dir(), "deps", abi_tag())


def installed_agents() -> list[str]:
    root = os.path.join(data_dir(), "agent")
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n, "core", "agent", "version.py")))


def module_versions(extra_path: str) -> dict[str, str | None]:
    """The installed distribution version of each engine module (None when absent), searching `extra_path`
    first as the agent will. Read from package metadata: importing numpy here would cost a tenth of a second."""
    from importlib import metadata

    path = [extra_path, *sys.path]
    out: dict[str, str | None] = {}
    for name in MODULES:
        dists = list(metadata.distributions(name=name, path=path))
        out[name] = dists[0].version if dists else None
    return out


def kvm_access() -> str:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    os.close(fd)
    return "ok"


def probe() -> dict:
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else ""
    return {
        "python": platform.python_version(), "executable": sys.executable, "abi": abi_tag(),
        "libc": libc or "", "system": f"{platform.system()} {platform.release()}",
        "uid": os.getuid(), "data_dir": data_dir(), "deps_dir": deps_dir(),
        "agents": installed_agents(), "modules": module_versions(deps_dir()), "kvm": kvm_access(),
    }


if __name__ == "__main__":
    sys.stdout.write(json.dumps(probe()) + "\n")
