"""Prunes the engine versions no client uses any more, on the remote host: `python3 - DATA_DIR VERSION DAYS` with
this file's source on stdin, run by the client after the agent of VERSION is in place (install.py).

Self-contained (standard library only), like unpack.py. Engines are kept side by side per version so clients of
other versions keep working (install.py); each connection marks its version used (agent/VERSION/.last-used), and
a version is removed only when it was last used more than DAYS days ago (the folder's time stands in for an
engine installed before the mark existed) and no process of this user runs it — the service and its VM
processes carry the engine's folder in PYTHONPATH (bridge_command), which /proc/PID/environ shows. Prints one
JSON object: {"pruned": [versions removed], "kept_running": [old versions still running]}.
"""
import json
import os
import shutil
import sys
import time

MARK = ".last-used"


def last_used(folder):
    for path in (os.path.join(folder, MARK), folder):
        try:
            return os.stat(path).st_mtime
        except OSError:
            continue
    return time.time()


def running_folders():
    """Every agent folder named in the environment of a process this user can read."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue        # another user's process, or gone
        for entry in env:
            if entry.startswith(b"PYTHONPATH="):
                found.update(os.path.normpath(p.decode(errors="replace")) for p in entry[11:].split(b":") if p)
    return found


def prune(data_dir, version, days):
    root = os.path.join(data_dir, "agent")
    current = os.path.join(root, version)
    if os.path.isdir(current):
        with open(os.path.join(current, MARK), "w"):
            pass        # its mtime is the mark
    cutoff = time.time() - days * 86400
    running = running_folders()
    pruned, kept = [], []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if name == version or not os.path.isfile(os.path.join(folder, "core", "agent", "version.py")):
            continue        # this client's engine, or not an engine (an unpack in progress, a stray file)
        if last_used(folder) > cutoff:
            continue
        if os.path.normpath(folder) in running:
            kept.append(name)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        pruned.append(name)
    return {"pruned": pruned, "kept_running": kept}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(prune(sys.argv[1], sys.argv[2], float(sys.argv[3]))) + "\n")
