"""The Shut Down menu's Save (issue 15, "The GUI's Shut Down menu gets Save"; app/ui/actions.py) through the real
widgets (pytest-qt, offscreen) against the sandboxed Vireo service: a running VM whose guest (tests/guests/counter.s)
prints a counter on the serial port every 100 ms is saved from the main window's Shut Down ▾ menu; the row goes to
Shut off with the reason "saved to …" and the managed save file is there; the counter stops. Run then resumes it:
the counter goes on from the next number (no "counter: started", nothing skipped) and the managed save is used up."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QToolBar, QToolButton  # noqa: E402

from core.config import BootConfig, ConfigStore, DisplayConfig, SerialConfig, VmConfig  # noqa: E402
from core.host import VmState  # noqa: E402
from tests.guests.build import guest_path  # noqa: E402
from tests.gui.test_gui import app_parts, reload, vm_rows, xdg  # noqa: E402,F401  (fixtures, reused)
from tests.gui.test_gui_journey import click, toolbar_button  # noqa: E402
from tests.helpers.accel import require_guest  # noqa: E402
from tests.helpers.dialogs import choose_from_popup  # noqa: E402

STATE_MS = 30_000


def _counters(log: Path) -> list[int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [int(n) for n in re.findall(r"counter: (\d+)", text)]


def _last(log: Path) -> int:
    got = _counters(log)
    return got[-1] if got else 0


def test_shut_down_menu_save_then_run_resumes_the_counter(qtbot, app_parts, xdg) -> None:  # noqa: F811
    require_guest("software", "counter")
    host, bridge, window = app_parts
    log = xdg / "saver-serial.log"
    cfg = VmConfig(name="saver", memory_mib=32, accel="software", boot=BootConfig(kernel=str(guest_path("counter"))),
                   display=DisplayConfig(type="none"), serial=SerialConfig(log_file=str(log)))
    store = ConfigStore()
    store.save(cfg)
    managed = Path(store.directory) / "saved" / f"{cfg.uuid}.state"
    reload(qtbot, bridge)
    window.select_vm(cfg.uuid)
    actions = window.vm_actions
    qtbot.waitUntil(lambda: actions.run.isEnabled(), timeout=15_000)
    click(qtbot, toolbar_button(window, actions.run))
    qtbot.waitUntil(lambda: vm_rows(window)["saver"] == "Running", timeout=STATE_MS)
    qtbot.waitUntil(lambda: _last(log) >= 5, timeout=STATE_MS)
    qtbot.waitUntil(lambda: not bridge.busy(cfg.uuid), timeout=STATE_MS)

    # Shut Down ▾ > Save, clicked in the menu as a user does.
    button = window.findChild(QToolBar, "mainToolbar").findChild(QToolButton, "shutdownButton")
    assert button is not None
    offered: list[tuple[str, bool]] = []
    choose_from_popup(qtbot, actions.save, offered)
    # The button's default action (the graceful Shut Down) is on for a running VM: its arrow opens the menu.
    button.showMenu()
    qtbot.waitUntil(lambda: bool(offered), timeout=5000)
    assert ("Save", True) in offered, offered
    qtbot.waitUntil(lambda: vm_rows(window)["saver"] == "Shut off", timeout=STATE_MS)
    info = host.get(cfg.uuid)
    assert info.state == VmState.SHUTOFF and info.reason.startswith("saved to "), info.reason
    assert managed.is_file(), info.reason
    row = next(window.host_items[0].child(i) for i in range(window.host_items[0].childCount())
               if window.host_items[0].child(i).text(0) == "saver")
    assert "saved to" in row.toolTip(1), row.toolTip(1)
    saved_at = _last(log)
    time.sleep(0.5)
    assert _last(log) == saved_at                       # the guest is stopped, not paused and ticking
    qtbot.waitUntil(lambda: actions.run.isEnabled() and not bridge.busy(cfg.uuid), timeout=STATE_MS)

    # Run resumes it from the managed save: the counter carries on.
    click(qtbot, toolbar_button(window, actions.run))
    qtbot.waitUntil(lambda: vm_rows(window)["saver"] == "Running", timeout=STATE_MS)
    qtbot.waitUntil(lambda: _last(log) >= saved_at + 3, timeout=STATE_MS)
    after = _counters(log)
    resumed = after[after.index(saved_at) + 1:]
    assert resumed[:3] == [saved_at + 1, saved_at + 2, saved_at + 3], after[-12:]
    assert log.read_text().count("counter: started") == 1
    qtbot.waitUntil(lambda: not managed.exists(), timeout=STATE_MS)   # used up: the next start boots
    qtbot.waitUntil(lambda: actions.off.isEnabled() and not bridge.busy(cfg.uuid), timeout=STATE_MS)
    bridge.lifecycle("force_off", cfg.uuid)
    qtbot.waitUntil(lambda: vm_rows(window)["saver"] == "Shut off", timeout=STATE_MS)
