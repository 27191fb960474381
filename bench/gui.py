#!/usr/bin/env python3
"""GUI benchmark (issue 6): cold start of the manager to its main window shown (median of 5 runs), and the
resident memory of the idle app with 10 defined VMs. Targets: < 1.0 s and < 150 MiB.

Each run is a fresh `python` process that calls app.ui.main_window.launch([]) — the same path as `python main.py`
— with a zero-delay timer queued before the event loop starts: it fires once the window has been shown and
reports the process's RSS. Time is measured by this script from spawning the process to that report, so it
includes the interpreter, PyQt6 and Vireo imports. Runs offscreen unless a display is set.
Usage: .venv/bin/python bench/gui.py [--runs N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r"""
import sys
from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QApplication
app = QApplication(sys.argv[:1])

def report():
    import psutil
    from app.ui.main_window import MainWindow
    wins = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
    rows = sum(item.childCount() for item in wins[0].host_items.values()) if wins else -1
    print(f"SHOWN rss={psutil.Process().memory_info().rss} rows={rows}", flush=True)
    app.quit()

QTimer.singleShot(0, report)
from app.ui.main_window import launch
sys.exit(launch([]))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from core.config import BootConfig, ConfigStore, VmConfig

    with tempfile.TemporaryDirectory(prefix="vireo-bench-") as tmp:
        env = dict(os.environ, XDG_CONFIG_HOME=f"{tmp}/config", XDG_DATA_HOME=f"{tmp}/data",
                   PYTHONPATH=str(REPO))
        if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
            env["QT_QPA_PLATFORM"] = "offscreen"
        store = ConfigStore(Path(tmp) / "config" / "vireo" / "vms")
        for i in range(10):
            store.save(VmConfig(name=f"bench-{i:02d}", memory_mib=256 + 64 * i,
                                boot=BootConfig(kernel="/boot/vmlinuz", cmdline="console=ttyS0")))
        times, rss = [], []
        for _ in range(args.runs):
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            line = None
            for out in proc.stdout:            # time to the report, not to the process's teardown
                if out.startswith("SHOWN"):
                    line, shown = out, time.monotonic() - t0
                    break
            _, err = proc.communicate(timeout=60)
            if line is None:
                print(f"the app did not show its window (exit {proc.returncode}):\n{err[-2000:]}")
                return 1
            fields = dict(part.split("=") for part in line.split()[1:])
            if int(fields["rows"]) != 10:
                print(f"expected 10 VM rows, the window shows {fields['rows']}")
                return 1
            times.append(shown)
            rss.append(int(fields["rss"]) / 2 ** 20)
    start = statistics.median(times)
    memory = statistics.median(rss)
    print(f"cold start to main window shown: median {start:.3f} s over {args.runs} runs "
          f"(min {min(times):.3f}, max {max(times):.3f}); target < 1.0 s: {'ok' if start < 1.0 else 'MISSED'}")
    print(f"idle RSS with 10 defined VMs: median {memory:.1f} MiB; target < 150 MiB: "
          f"{'ok' if memory < 150 else 'MISSED'}")
    return 0 if start < 1.0 and memory < 150 else 1


if __name__ == "__main__":
    sys.exit(main())
