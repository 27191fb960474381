"""Engine versions no client uses are pruned on the remote host (issue 17, remote parity; core/agent/prune.py),
against a real sshd: a version last used more than 30 days ago is removed at the next connection, unless a process
(a service still running it) has it in its PYTHONPATH; a version used recently stays, and so does this client's."""
from __future__ import annotations

import os
import subprocess
import time

from core.agent.version import engine_version
from core.remote.host import RemoteHost
from core.remote.ssh import parse_uri
from tests.gui.test_remote_gui import _Trusting, server  # noqa: F401
from tests.helpers.remote import REPO_PYTHON

DAY = 86400


def _engine(root, name: str, age_days: float):
    folder = root / name
    (folder / "core" / "agent").mkdir(parents=True)
    (folder / "core" / "agent" / "version.py").write_text("VERSION = 'old'\n")
    when = time.time() - age_days * DAY
    os.utime(folder, (when, when))
    return folder


def _connect(server):  # noqa: F811
    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    host = RemoteHost(target, _Trusting())
    host.connect()
    return host


def test_old_unused_engines_are_pruned_and_running_or_recent_ones_kept(server) -> None:  # noqa: F811
    host = _connect(server)
    host.close()
    root = server.data_home / "vireo" / "agent"
    current = root / engine_version()
    assert (current / ".last-used").is_file()
    old = _engine(root, "0.0.1+old", 60)
    recent = _engine(root, "0.0.2+recent", 3)
    running = _engine(root, "0.0.3+running", 90)
    stray = root / "0.0.4.part-123"         # an unpack in progress: not an engine yet, never touched
    stray.mkdir()
    os.utime(stray, (time.time() - 90 * DAY,) * 2)
    # A process of this user running the old engine, as its service would (PYTHONPATH names the folder).
    proc = subprocess.Popen(["sleep", "60"], env=dict(os.environ, PYTHONPATH=f"{running}:/elsewhere"))
    try:
        host = _connect(server)
        try:
            assert host.report.pruned == ["0.0.1+old"]
            assert "removed engine versions unused for 30 days: 0.0.1+old" in host.report.notes
            assert host.ping() < 5        # the current engine runs on
        finally:
            host.close()
    finally:
        proc.kill()
        proc.wait()
    assert not old.exists()
    assert recent.is_dir() and running.is_dir() and stray.is_dir() and current.is_dir()
