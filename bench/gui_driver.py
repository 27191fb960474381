#!/usr/bin/env python3
"""The child half of bench/gui.py's load measurements (issue 11): one Vireo manager process under load, of
whichever tree is given, so the same driver measures the manager before VMs moved into their own processes
(bb16176: app/main_window.py, VMs in the GUI process) and after (app/ui/main_window.py, a client of the
per-user service, each VM a core.vmproc process).

What it does, inside the manager's own process (the tree's real launch(), so its real bridge and windows):
1. defines `--vms` VMs (accel "software", Debian's vmlinuz-amd64 + the tests' busybox initramfs, 256 MiB, the
   guest's action `display` then `shell`, each with a serial log file the driver reads for markers);
2. event-loop latency: a precise 10 ms QTimer on the GUI thread records how late each tick fires
   (interval - 10 ms). Samples are kept for an idle baseline (`--idle` s before any VM starts) and for the boot:
   from the start requests until every VM's serial log has VIREO-BOOT-OK;
3. console: all VMs but the first are forced off; once the first's bochs framebuffer is up (VIREO-FB-MODE) and
   its shell prompts, the driver types a loop over the serial console that writes the whole 1024x768x32
   framebuffer alternately black and white (cat of 3 MiB files from tmpfs to /dev/fb0), opens the VM's window
   on its graphical console at 1:1, waits `--warmup` s, then for `--seconds` s counts the frames the
   ConsoleView received (its refresh() returned a new frame) and painted (paint events), and the CPU time of the
   whole GUI process (os.times) and of the GUI thread alone (/proc/self/task/<tid>/stat); the latency timer
   keeps running, so the console phase has its own p50/p99 too.
With --stalls MS (by hand, for finding causes), a watchdog thread prints to stderr the GUI thread's Python stack
whenever its timer is more than MS ms late (a stack ending in app.exec() means Qt's C++ code or no CPU at all:
the watchdog itself then also reports late).
It prints one line `RESULT <json>` and exits; the parent (bench/gui.py) owns the sandbox (XDG_* directories)
and kills whatever service or VM process is left.

    python bench/gui_driver.py --tree DIR --kernel K --initrd I --logs DIR [--vms 4] [--seconds 10] [--stalls MS]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path

TICK_MS = 10
_CLK_TCK = os.sysconf("SC_CLK_TCK")
FB_LOOP = (b"dd if=/dev/zero of=/tmp/a bs=4096 count=768 2>/dev/null; tr '\\000' '\\377' </tmp/a >/tmp/b; "
           b"while :; do cat /tmp/a >/dev/fb0; cat /tmp/b >/dev/fb0; done 2>/dev/null\n")


def thread_cpu(tid: int) -> float:
    """User + system CPU seconds of one thread of this process (proc(5): fields 14 and 15)."""
    with open(f"/proc/self/task/{tid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99/max of lateness samples, in milliseconds."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(ordered), "p50": statistics.median(ordered) * 1000, "p99": p99 * 1000,
            "max": ordered[-1] * 1000}


def watch_stalls(state: dict, limit: float) -> None:
    """Print the GUI thread's stack once per tick that is `limit` s overdue (state["last"]: the last tick)."""
    gui = threading.main_thread().ident
    reported = None
    while True:
        time.sleep(limit / 2)
        last = state["last"]
        late = time.perf_counter() - last
        if last and late > limit and reported != last:
            reported = last
            frame = sys._current_frames().get(gui)
            stack = [line for line in traceback.format_stack(frame) if "<frozen" not in line]
            sys.stderr.write(f"STALL in {state['phase']}: {late * 1000:.0f} ms since the last tick\n"
                             + "".join(stack) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", required=True, type=Path, help="the Vireo checkout whose manager to run")
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--vms", type=int, default=4)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on the boot after this many seconds")
    ap.add_argument("--stalls", type=float, metavar="MS", help="print the GUI thread's stack on stalls over MS")
    ap.add_argument("--logs", required=True, type=Path, help="a directory for the VMs' serial logs")
    args = ap.parse_args()
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    # The manager's module moved between the trees: app/main_window.py (before) -> app/ui/main_window.py.
    entry = "app.main_window" if (tree / "app" / "main_window.py").exists() else "app.ui.main_window"

    import importlib

    from PyQt6.QtCore import QEvent, QObject, Qt, QTimer
    from PyQt6.QtWidgets import QApplication

    from app.widgets.console import ConsoleView
    from core.config import BootConfig, ConfigStore, SerialConfig, VmConfig, vms_dir
    window_mod = importlib.import_module(entry)

    store = ConfigStore(vms_dir())
    logs: list[Path] = []
    uuids: list[str] = []
    for i in range(args.vms):
        log = args.logs / f"serial-{i}.log"
        logs.append(log)
        cfg = VmConfig(name=f"bench-{i}", memory_mib=256, accel="software",
                       boot=BootConfig(kernel=args.kernel, initrd=args.initrd,
                                       cmdline="console=ttyS0 vireo.action=display vireo.then=shell"),
                       serial=SerialConfig(log_file=str(log)))
        store.save(cfg)
        uuids.append(cfg.uuid)

    _app = QApplication(sys.argv[:1])   # launch() uses this instance
    gui_tid = threading.get_native_id()
    result: dict[str, object] = {"tree": str(tree), "entry": entry, "vms": args.vms}
    samples: dict[str, list[float]] = {"idle": [], "boot": [], "console": []}
    state = {"phase": "idle", "last": 0.0}

    def tick() -> None:
        now = time.perf_counter()
        if state["last"]:
            samples[state["phase"]].append(max(0.0, now - state["last"] - TICK_MS / 1000))
        state["last"] = now

    if args.stalls:
        threading.Thread(target=watch_stalls, args=(state, args.stalls / 1000), daemon=True).start()
    probe = QTimer()
    probe.setTimerType(Qt.TimerType.PreciseTimer)
    probe.timeout.connect(tick)

    def log_text(i: int) -> str:
        try:
            return logs[i].read_text(errors="replace")
        except OSError:
            return ""

    # Frames: count what every ConsoleView gets and paints (the class is the same in both trees).
    counts = {"frames": 0, "paints": 0, "area": 0.0}
    original_refresh = ConsoleView.refresh

    def counting_refresh(self, force: bool = False) -> bool:
        new = original_refresh(self, force)
        if new and self.frame is not None and (self.frame.width, self.frame.height) == (1024, 768):
            counts["frames"] += 1
            # A frame may be a cursor blink; the dirty area says how much of the screen it changed.
            counts["area"] += sum(r[2] * r[3] for r in self.frame.dirty) / (1024 * 768)
        return new
    ConsoleView.refresh = counting_refresh

    class PaintCounter(QObject):
        def eventFilter(self, obj, event) -> bool:   # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.Paint:
                counts["paints"] += 1
            return False
    painter_counter = PaintCounter()

    def fail(message: str) -> None:
        result["error"] = message
        finish()

    def finish() -> None:
        probe.stop()
        result["latency"] = {k: percentiles(v) for k, v in samples.items()}
        print("RESULT " + json.dumps(result), flush=True)
        for w in QApplication.topLevelWidgets():
            for bridge in getattr(w, "bridges", []):
                for uuid in uuids:
                    try:
                        bridge.host.force_off(uuid)
                    except Exception:   # already off, or the service is gone: the parent cleans up
                        pass
        os._exit(0)   # the parent kills the sandbox's processes; no need to wait for Qt's teardown

    def poll(until, then, deadline: float, what: str) -> None:
        def check() -> None:
            if until():
                then()
            elif time.monotonic() > deadline:
                fail(f"timed out waiting for {what}; serial tails: "
                     + " | ".join(log_text(i)[-300:] for i in range(args.vms)))
            else:
                QTimer.singleShot(200, check)
        check()

    def main_window():
        for w in QApplication.topLevelWidgets():
            if isinstance(w, window_mod.MainWindow):
                return w
        return None

    def begin() -> None:
        window = main_window()
        if window is None:
            fail("the manager did not open its main window")
            return
        bridge = window.bridges[0]
        ready = getattr(bridge, "when_ready", None)   # after: the first read runs on a worker
        if ready is not None:
            ready(lambda: idle(window, bridge))
        else:
            idle(window, bridge)

    def idle(window, bridge) -> None:
        probe.start(TICK_MS)
        QTimer.singleShot(int(args.idle * 1000), lambda: boot(window, bridge))

    def boot(window, bridge) -> None:
        missing = [u for u in uuids if bridge.info(u) is None]
        if missing:
            fail(f"the manager does not list the defined VMs {missing}")
            return
        state["phase"] = "boot"
        t0 = time.monotonic()
        cpu0 = process_cpu()
        for u in uuids:
            bridge.lifecycle("start", u)

        def booted() -> None:
            result["boot_seconds"] = time.monotonic() - t0
            result["boot_gui_cpu_s"] = process_cpu() - cpu0
            state["phase"] = "after-boot"
            samples["after-boot"] = []
            for u in uuids[1:]:
                bridge.lifecycle("force_off", u)
            poll(lambda: "VIREO-FB-MODE=1024x768" in log_text(0) and "~# " in log_text(0).rsplit("VIREO-FB", 1)[-1],
                 lambda: console(window, bridge), time.monotonic() + args.timeout, "the first VM's shell")
        poll(lambda: all("VIREO-BOOT-OK" in log_text(i) for i in range(args.vms)), booted,
             t0 + args.timeout, "the boot marker")

    def console(window, bridge) -> None:
        # A newline first: the shell's cursor-position query (ESC[6n) is answered by nobody on a serial log.
        bridge.send_serial(uuids[0], b"\n")
        QTimer.singleShot(1000, lambda: bridge.send_serial(uuids[0], FB_LOOP))
        window.select_vm(uuids[0])
        vm_window = window.open_vm((bridge, uuids[0]), "console")

        def view() -> ConsoleView | None:
            for v in vm_window.findChildren(ConsoleView):
                if v.frame is not None and (v.frame.width, v.frame.height) == (1024, 768) and v.isVisible():
                    return v
            return None

        def showing() -> None:
            v = view()
            v.set_scale_to_fit(False)               # 1:1: every pixel of the 1024x768 frame is drawn
            vm_window.resize(1024 + 80, 768 + 160)
            v.installEventFilter(painter_counter)
            QTimer.singleShot(int(args.warmup * 1000), lambda: measure(v))

        poll(lambda: view() is not None, showing, time.monotonic() + 120, "the 1024x768 console")

    def measure(v) -> None:
        result["view_size"] = [v.width(), v.height()]
        state["phase"] = "console"
        counts["frames"] = counts["paints"] = 0
        counts["area"] = 0.0
        t0, cpu0, thr0 = time.perf_counter(), process_cpu(), thread_cpu(gui_tid)

        def done() -> None:
            wall = time.perf_counter() - t0
            result["console"] = {"seconds": wall, "frames_per_s": counts["frames"] / wall,
                                 "paints_per_s": counts["paints"] / wall,
                                 "full_screens_per_s": counts["area"] / wall,
                                 "process_cpu_pct": (process_cpu() - cpu0) / wall * 100,
                                 "gui_thread_cpu_pct": (thread_cpu(gui_tid) - thr0) / wall * 100}
            finish()
        QTimer.singleShot(int(args.seconds * 1000), done)

    QTimer.singleShot(0, begin)
    return window_mod.launch([])


if __name__ == "__main__":
    sys.exit(main())
