"""No Host call runs on the GUI thread (issue 11): the real widgets are driven through a whole VM life — the New VM
wizard with a new disk, Run, the graphical and serial consoles, typing, Details, Performance, Pause/Resume, Force
Off, Delete and quitting — over a Host that records the thread of every call, and none may come from the thread
running the Qt event loop. A call there would freeze the window for as long as the host takes: a remote host's
round trip, the local service's socket, a pause waiting for every vCPU to park.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings, Qt  # noqa: E402
from PyQt6.QtWidgets import QWizard  # noqa: E402

from core.connect import LocalServiceHost  # noqa: E402
from core.host import LocalHost  # noqa: E402
from tests.gui.test_gui import vm_rows, xdg  # noqa: E402,F401  (xdg: the fixture, reused)
from tests.gui.test_gui_journey import click, toolbar_button, type_into, wait_serial  # noqa: E402

TIMEOUT_MS = 120_000
CMDLINE = "console=tty0 console=ttyS0 vireo.action=shell"   # the shell on ttyS0, messages on the screen too


class ThreadRecordingHost:
    """Stands in for a Host: forwards everything to the real one and records (method, thread) for each public
    method called, before it runs."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls: list[tuple[str, threading.Thread]] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not callable(value):
            return value

        def recorded(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls.append((name, threading.current_thread()))
            return value(*args, **kwargs)

        return recorded

    def on_gui_thread(self) -> list[str]:
        with self._lock:
            return sorted({name for name, thread in self.calls if thread is threading.main_thread()})

    def methods(self) -> set[str]:
        with self._lock:
            return {name for name, _ in self.calls}


def test_no_host_call_runs_on_the_gui_thread(qtbot, xdg, debian_kernel, busybox_initramfs,  # noqa: F811
                                             monkeypatch) -> None:
    from app.ui.main_window import MainWindow, local_bridge

    assert threading.current_thread() is threading.main_thread()      # the thread Qt's event loop runs on
    inner = LocalServiceHost("Local", reread=True)          # the manager's client of the (sandboxed) Vireo service
    host = ThreadRecordingHost(inner)
    bridge = local_bridge(host)
    window = MainWindow([bridge], QSettings(str(xdg / "settings.ini"), QSettings.Format.IniFormat))
    closed = False
    try:
        window.show()
        qtbot.waitExposed(window)

        # The wizard, with a new qcow2 disk; Finish defines the VM, starts it and opens its window.
        click(qtbot, toolbar_button(window, window.new_action))
        qtbot.waitUntil(lambda: getattr(window, "wizard", None) is not None and window.wizard.isVisible(),
                        timeout=15_000)
        wizard = window.wizard
        next_button = wizard.button(QWizard.WizardButton.NextButton)
        click(qtbot, wizard.source_page.kernel)
        click(qtbot, next_button)
        type_into(qtbot, wizard.boot_page.kernel, str(debian_kernel))
        type_into(qtbot, wizard.boot_page.initrd, str(busybox_initramfs))
        type_into(qtbot, wizard.boot_page.cmdline, CMDLINE)
        click(qtbot, next_button)
        type_into(qtbot, wizard.resources_page.memory.lineEdit(), "256")
        click(qtbot, next_button)
        click(qtbot, wizard.storage_page.create)
        wizard.storage_page.size.setValue(0.1)
        wizard.storage_page.format.setCurrentIndex(wizard.storage_page.format.findData("qcow2"))
        click(qtbot, next_button)
        type_into(qtbot, wizard.finish_page.name, "threads")
        for accel in ("kvm", "software", "auto"):          # each choice explains what it resolves to here
            wizard.finish_page.accel.setCurrentIndex(wizard.finish_page.accel.findData(accel))
            assert wizard.finish_page.accel_note.text()
        with qtbot.waitSignal(wizard.created, timeout=30_000) as created:
            click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
        uuid = created.args[0]
        qtbot.waitUntil(lambda: vm_rows(window).get("threads") == "Running", timeout=TIMEOUT_MS)
        vm_window = window.vm_windows[uuid]

        # The graphical console (Host.console) and the serial console (subscribe, then typing).
        qtbot.waitUntil(lambda: vm_window.display is not None and vm_window.display.view.sink is not None,
                        timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: vm_window.display.view.frame is not None, timeout=TIMEOUT_MS)
        vm_window.show_tab("serial")
        term = vm_window.console.terminal
        wait_serial(qtbot, term, "vireo:~#", TIMEOUT_MS)
        term.setFocus()
        qtbot.keyClicks(term, "echo THREADS-ON''-SERIAL")
        qtbot.keyClick(term, Qt.Key.Key_Return)
        wait_serial(qtbot, term, "THREADS-ON-SERIAL", TIMEOUT_MS)

        # Details (accelerator explanations from the cache) and Performance (statistics sampled on a worker).
        vm_window.show_tab("details")
        details = vm_window.details
        for accel in ("software", "auto"):
            details.accel.setCurrentIndex(details.accel.findData(accel))
        details.name.setText("threads-renamed")                    # name may change while it runs: Apply saves
        click(qtbot, details.apply_button)
        qtbot.waitUntil(lambda: "threads-renamed" in vm_rows(window), timeout=TIMEOUT_MS)
        vm_window.show_tab("performance")
        qtbot.waitUntil(lambda: len(bridge.history(uuid)) >= 2, timeout=TIMEOUT_MS)

        # Pause, Resume, Force Off from the main window; then Delete, disk and all.
        window.select_vm(uuid)
        # The row shows the new name as soon as the host announces it; the Apply call itself may still be in
        # flight, and while it is the VM is busy and Pause stays disabled, as the user would see it.
        qtbot.waitUntil(lambda: window.vm_actions.pause.isEnabled(), timeout=TIMEOUT_MS)
        click(qtbot, toolbar_button(window, window.vm_actions.pause))
        qtbot.waitUntil(lambda: vm_rows(window)["threads-renamed"] == "Paused", timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: window.vm_actions.run.isEnabled(), timeout=15_000)
        click(qtbot, toolbar_button(window, window.vm_actions.run))
        qtbot.waitUntil(lambda: vm_rows(window)["threads-renamed"] == "Running", timeout=TIMEOUT_MS)
        import app.ui.actions as actions
        monkeypatch.setattr(actions, "confirm_force_off", lambda parent, info: True)   # answered: Force Off
        window.vm_actions.off.trigger()
        qtbot.waitUntil(lambda: vm_rows(window)["threads-renamed"] == "Shut off", timeout=TIMEOUT_MS)
        vm_window.close()
        import app.ui.main_window as main_window
        monkeypatch.setattr(main_window, "confirm_delete", lambda parent, info, used_by: (True, True))
        qtbot.waitUntil(lambda: window.vm_actions.delete.isEnabled(), timeout=15_000)
        click(qtbot, toolbar_button(window, window.vm_actions.delete))
        qtbot.waitUntil(lambda: "threads-renamed" not in vm_rows(window), timeout=TIMEOUT_MS)

        window.close()               # the bridge unsubscribes and closes its client on a worker
        closed = True
        assert not window.isVisible()
    finally:
        if not closed:
            window.close()
        inner.close()

    used = host.methods()
    expected = {"add_listener", "add_connection_listener", "connect",
                "info", "capabilities", "accel_preview", "list_vms", "load_errors", "create_disk",
                "define", "start", "get", "console", "subscribe_serial", "send_serial", "stats", "pause",
                "resume", "force_off", "unsubscribe_serial", "delete", "remove_listener", "close"}
    assert expected <= used, f"the journey did not reach {sorted(expected - used)}"
    assert host.on_gui_thread() == [], f"Host methods called on the GUI thread: {host.on_gui_thread()}"


def test_the_recorder_tells_the_gui_thread_from_a_worker(tmp_path, monkeypatch) -> None:
    """The check above can fail: a call from this (the GUI's) thread is reported, one from a worker is not."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    inner = LocalHost(runtime_dir=str(tmp_path / "runtime"))
    host = ThreadRecordingHost(inner)
    try:
        worker = threading.Thread(target=host.info)
        worker.start()
        worker.join()
        assert host.methods() == {"info"} and host.on_gui_thread() == []
        host.list_vms()
        assert host.on_gui_thread() == ["list_vms"]
    finally:
        inner.close()
