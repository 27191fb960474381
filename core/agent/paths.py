"""Where the agent's socket lives: a directory only its user can enter.

$XDG_RUNTIME_DIR/vireo when the session has a runtime directory (XDG Base Directory Specification 0.8: owned by
the user, mode 0700), else a private fallback $TMPDIR/vireo-<uid> (default /tmp). Either is created with mode
0700 and, when it exists already, accepted only if it is a real directory (not a symlink) owned by this user with
no access for group or others — the check tmux and OpenSSH's agent make, so another user cannot pre-create the
directory and read or hijack the socket. The socket itself is made 0600 as well (peer credentials are checked
too: see daemon.py). Standard library only.
"""
from __future__ import annotations

import os
import stat
import tempfile

SOCKET_NAME = "agent.sock"
LOCK_NAME = "agent.lock"
LOG_NAME = "agent.log"
START_LOCK_NAME = "start.lock"    # held by the client that is starting the daemon (bridge.py)


class UnsafeDirectory(Exception):
    """The runtime directory exists but another user could reach into it."""


def runtime_dir(create: bool = True) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base) and _owned_dir(base):
        path = os.path.join(base, "vireo")
    else:
        path = os.path.join(tempfile.gettempdir(), f"vireo-{os.getuid()}")
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    check_private(path)
    return path


def _owned_dir(path: str) -> bool:
    # A runtime directory that is not ours (a variable inherited across su, say) is not used, as the spec asks.
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def check_private(path: str) -> None:
    """Raise UnsafeDirectory unless `path` is a directory of ours that nobody else can use."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UnsafeDirectory(f"{path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory (a symlink or a file): remove it")
    if st.st_uid != os.getuid():
        raise UnsafeDirectory(f"{path} belongs to uid {st.st_uid}, not to this user ({os.getuid()}): remove it")
    if st.st_mode & 0o077:
        raise UnsafeDirectory(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: group and others must have no "
                              "access (chmod 700 it)")


def socket_path() -> str:
    return os.path.join(runtime_dir(), SOCKET_NAME)


def start_lock_path() -> str:
    return os.path.join(runtime_dir(), START_LOCK_NAME)


def log_path() -> str:
    return os.path.join(runtime_dir(), LOG_NAME)
