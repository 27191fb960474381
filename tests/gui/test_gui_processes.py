"""VMs live in their own processes under the Vireo service, not in the manager (issue 11's "done means"):

- a manager in a process of its own starts two VMs (Debian's kernel and the busybox initramfs, software CPU) and
  is killed with SIGKILL: both VM processes keep running;
- a new manager finds both running, with working consoles (a command typed into each VGA console shows its answer
  on that screen) and statistics for their graphs;
- one VM's process is killed with SIGKILL: that VM shows as crashed, with the signal in its reason, while the
  other VM's console keeps answering and the manager's event loop keeps turning.
`vireo list --all` (the CLI, another client of the same service) agrees at each step.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings  # noqa: E402

from core.config import BootConfig, ConfigStore, VmConfig  # noqa: E402
from tests.gui.test_gui import vm_rows  # noqa: E402
from tests.helpers.console_view import event_loop_stall, type_keys, view_lines  # noqa: E402
from tests.helpers.runner import REPO_ROOT  # noqa: E402

TIMEOUT_S = 120
# The shell on the first virtual terminal (the VGA screen), kernel messages on the serial port.
CMDLINE = "console=ttyS0 console=tty0 quiet vireo.action=shell vireo.console=tty1"

# A manager of its own: the real main window over a client of the (sandboxed) service; it starts every VM, opens
# each one's window on its console and says so on stdout once every console shows a picture.
MANAGER = r"""
import sys
from PyQt6.QtCore import QSettings, QTimer
from PyQt6.QtWidgets import QApplication
app = QApplication(["vireo"])
from app.ui.main_window import MainWindow, local_bridge
bridge = local_bridge()
window = MainWindow([bridge], QSettings(sys.argv[1], QSettings.Format.IniFormat))
window.show()
def start_all():
    for info in bridge.vms():
        bridge.lifecycle("start", info.uuid)
        window.open_vm((bridge, info.uuid), "console")
bridge.when_ready(start_all)
def poll():
    shown = [w for w in window.vm_windows.values() if w.display is not None and w.display.view.frame is not None]
    if len(bridge.running()) == 2 and len(shown) == 2:
        print("MANAGER-BOTH-SHOWN", flush=True)
        timer.stop()
timer = QTimer()
timer.timeout.connect(poll)
timer.start(100)
app.exec()
"""


def _define(name: str, kernel: Path, initrd: Path) -> VmConfig:
    cfg = VmConfig(name=name, memory_mib=192, accel="software",
                   boot=BootConfig(kernel=str(kernel), initrd=str(initrd), cmdline=CMDLINE))
    ConfigStore().save(cfg)
    return cfg


def _cli_states(env: dict[str, str]) -> dict[str, str]:
    """Name -> state, as `vireo list --all` prints them."""
    out = subprocess.run([sys.executable, "main.py", "list", "--all"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    states = {}
    for line in out.stdout.splitlines()[2:]:
        fields = line.split(None, 2)
        if len(fields) == 3:
            states[fields[1]] = fields[2].rsplit(None, 1)[0]
    return states


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _screen(vm_window) -> list[str]:
    return view_lines(vm_window.display.view if vm_window.display is not None else None)


def _answers(qtbot, vm_window, word: str) -> None:
    """Type `echo <word>` into the VM's VGA console and wait for the shell's answer on that screen."""
    qtbot.waitUntil(lambda: any(line.endswith("#") for line in _screen(vm_window)), timeout=TIMEOUT_S * 1000)
    type_keys(vm_window.display.view, f"echo {word}\n")
    qtbot.waitUntil(lambda: word in _screen(vm_window), timeout=30_000)


def test_vms_outlive_a_killed_manager_and_a_killed_vm_crashes_alone(qtbot, local_service, debian_kernel,
                                                                    busybox_initramfs) -> None:
    from app.ui.main_window import MainWindow, local_bridge

    alpha = _define("alpha", debian_kernel, busybox_initramfs)
    beta = _define("beta", debian_kernel, busybox_initramfs)
    settings = str(local_service.root / "settings.ini")

    # 1. A manager process starts both VMs and shows their consoles; then it is killed outright.
    manager = subprocess.Popen([sys.executable, "-c", MANAGER, settings], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and manager.poll() is None:
            line = manager.stdout.readline()
            if "MANAGER-BOTH-SHOWN" in line:
                break
        assert "MANAGER-BOTH-SHOWN" in line, f"the manager did not show both VMs: {manager.stderr.read()[-2000:]}"
        pids = {cfg.name: local_service.vm_pid(cfg.uuid) for cfg in (alpha, beta)}
        assert all(pids.values()), pids
        manager.send_signal(signal.SIGKILL)
        manager.wait(10)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(10)
    time.sleep(0.5)
    assert all(_alive(pid) for pid in pids.values()), "a VM process died with the manager"
    assert _cli_states(local_service.env) == {"alpha": "running", "beta": "running"}

    # 2. A new manager finds both running; each console answers what is typed into it; statistics come in.
    bridge = local_bridge()
    window = MainWindow([bridge], QSettings(settings, QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    try:
        window.show()
        qtbot.waitUntil(lambda: vm_rows(window) == {"alpha": "Running", "beta": "Running"}, timeout=30_000)
        windows = {cfg.name: window.open_vm((bridge, cfg.uuid), "console") for cfg in (alpha, beta)}
        for name, vm_window in windows.items():
            qtbot.waitUntil(lambda w=vm_window: w.display is not None and w.display.view.sink is not None,
                            timeout=30_000)
            _answers(qtbot, vm_window, f"still-{name}")
        qtbot.waitUntil(lambda: all(len(bridge.history(c.uuid)) >= 2 for c in (alpha, beta)), timeout=30_000)

        # 3. alpha's process is killed: alpha crashed (the reason names the signal); beta and the GUI go on.
        os.kill(pids["alpha"], signal.SIGKILL)
        qtbot.waitUntil(lambda: vm_rows(window).get("alpha") == "Crashed", timeout=30_000)
        reason = window.vm_items[alpha.uuid].toolTip(1)
        assert "SIGKILL" in reason, reason
        assert vm_rows(window)["beta"] == "Running" and _alive(pids["beta"])
        assert _cli_states(local_service.env) == {"alpha": "crashed", "beta": "running"}
        _answers(qtbot, windows["beta"], "beta-carries-on")
        stall = event_loop_stall(qtbot, rounds=10)
        assert stall < 0.25, f"the manager's event loop stalled {stall * 1000:.0f} ms"
    finally:
        for w in list(window.vm_windows.values()):
            w.close()
        bridge.shutdown(close_host=True)
