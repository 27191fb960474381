"""Answers a user gave once about a remote host, kept on this computer so the question is not asked again: for
now whether to copy this computer's unicorn there (the software CPU's module, issue 17: copied by default, asking
once). One JSON object per host label (USER@HOST[:PORT]) in $XDG_CONFIG_HOME/vireo/remote-hosts.json, written
through a temporary file, fsync and rename, so a crash never leaves half a file."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from core.config import config_dir

_lock = threading.Lock()


def _path() -> Path:
    return config_dir() / "remote-hosts.json"


def _read() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}      # none yet, or unreadable: the questions are asked again
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def get(label: str, key: str) -> Any:
    """The answer stored for `label`'s `key`, or None."""
    with _lock:
        return _read().get(label, {}).get(key)


def put(label: str, key: str, value: Any) -> None:
    with _lock:
        data = _read()
        data.setdefault(label, {})[key] = value
        path = _path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".remote-hosts-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
