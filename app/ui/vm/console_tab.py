"""The VM window's graphical console tab: the guest's VGA screen (app.widgets.console.ConsoleView) fed by
Host.console(), with a toolbar (Scale: keep aspect ratio / stretch to fill / 1:1, fullscreen, Send key, Type
clipboard text, Save screenshot) and a banner saying why nothing can be typed when the VM is not running. In
fullscreen a floating bar (app.widgets.fullscreen_bar) offers Send key (the toolbar's own menu), Scale and Exit
fullscreen at the top of the screen.

It follows the VM's lifecycle: each time the VM runs (a start builds a new machine, with a new VmConsole
session) the tab asks the host for the console on a bridge worker, never on the event loop, and switches the view
to it; while paused the picture stays and input is off; once shut off or crashed the last picture stays (useful
after a panic) and polling stops. A text screen still blank (at most the cursor) BLANK_HINT_MS after the VM runs,
as with a kernel booted with only console=ttyS0, gets a banner pointing at the Serial Console tab. Frames are
read on the GUI thread: the Renderer only reads device state, and costs ~1 ms per changed text frame and ~0.6 ms
per 1024x768 frame (bench/console.py).
"""
from __future__ import annotations

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtGui import QAction, QGuiApplication
from PyQt6.QtWidgets import (
    QLabel,
    QMenu,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.host_bridge import HostBridge
from app.ui import preferences
from app.ui.vm.vnc_menu import VncMenu
from app.widgets.banner import NoticeBanner
from app.widgets.console import (
    NOTE_MS,
    SEND_KEYS,
    ConsoleView,
    ask_and_save_screenshot,
    blank_text_screen,
    typing_note,
)
from app.widgets.console_keys import grab_label
from app.widgets.fullscreen_bar import EXIT_SHORTCUT, FullscreenBar, scale_menu
from core.host import Frame, VmConsole, VmInfo, VmState

# A kernel booted with only console=ttyS0 never draws on the screen: after this long with a blank text screen the
# banner says where the output went (a booting kernel's first line takes well under a second on the software CPU).
BLANK_HINT_MS = 5000
# After a failed console request while the VM runs, the next try (the state that would prompt one has come).
RETRY_MS = 1000
BLANK_HINT = ("Nothing on the screen yet: the guest may be writing to its serial console "
              "(see the Serial Console tab).")


class VmConsoleTab(QWidget):
    def __init__(self, bridge: HostBridge, uuid: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.uuid = bridge, uuid
        self.vm_console: VmConsole | None = None
        self.state: VmState | None = None
        self._stale = True              # the console we hold (if any) belongs to a machine that has stopped
        self._requesting = False
        self._epoch = 0                 # counts the VM's stops, to drop a console reply that arrives too late
        self._mode = ""
        self._fullscreen: QWidget | None = None
        self.fullscreen_bar: FullscreenBar | None = None      # while fullscreen
        self.blank_hint = False         # the banner says the screen stayed blank while the VM ran
        self._blank_timer = QTimer(self)
        self._blank_timer.setSingleShot(True)
        self._blank_timer.setInterval(BLANK_HINT_MS)
        self._blank_timer.timeout.connect(lambda: self._set_blank_hint(True))

        self.banner = NoticeBanner(self)
        self.banner_text, self.run_button = self.banner.text, self.banner.button

        self.view = ConsoleView(None, None, self)
        self.view.setObjectName("displayConsole")
        prefs = preferences.current()
        self.view.grab_keys = prefs.grab_keys
        self.view.set_scale_mode(prefs.console_scale)
        self.toolbar = self._build_toolbar()
        self.status = QLabel(self)
        self.status.setContentsMargins(8, 2, 8, 2)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.banner)
        lay.addWidget(self.toolbar)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.status)
        self.view.grabChanged.connect(lambda _grab: self._update_status())
        self.view.modeChanged.connect(self._mode_changed)
        self.view.frameArrived.connect(self._frame_arrived)
        self.view.fullscreenRequested.connect(lambda: self.set_fullscreen(self._fullscreen is None))
        self.view.typingFinished.connect(self._typing_finished)
        self._typed = self._skipped = 0     # since the typing queue was last empty
        self._note_timer = QTimer(self)         # a passing note ("Typed N characters") gives way to the hint
        self._note_timer.setSingleShot(True)
        self._note_timer.timeout.connect(self._update_status)
        self.view.set_polling(False)
        self._update_status()

    def _build_toolbar(self) -> QToolBar:
        bar = QToolBar("Console", self)
        bar.setObjectName("displayToolbar")
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        scale = QToolButton(self)
        scale.setText("Scale")
        scale.setToolTip("How the screen fills the window: keep its aspect ratio (default), stretch, or 1:1 pixels")
        scale.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.scale_menu = scale_menu(self.view, scale)
        scale.setMenu(self.scale_menu)
        self.scale_button = scale
        bar.addWidget(scale)
        self.fullscreen_action = QAction("Fullscreen", self)
        self.fullscreen_action.setToolTip(f"Show the screen alone on the whole display ({EXIT_SHORTCUT} to leave)")
        self.fullscreen_action.triggered.connect(lambda: self.set_fullscreen(True))
        bar.addAction(self.fullscreen_action)
        send = QToolButton(self)
        send.setText("Send key")
        send.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(send)
        self.send_key_actions: dict[str, QAction] = {}
        for label, names in SEND_KEYS:
            action = menu.addAction(label)
            action.triggered.connect(lambda _checked=False, n=names: self._send_combo(n))
            self.send_key_actions[label] = action
        send.setMenu(menu)
        self.send_key_button = send
        bar.addWidget(send)
        self.type_clipboard_action = QAction("Type clipboard text", self)
        self.type_clipboard_action.setToolTip("Type the host clipboard's text into the guest (US keyboard layout)")
        self.type_clipboard_action.triggered.connect(self.type_clipboard)
        bar.addAction(self.type_clipboard_action)
        self.screenshot_action = QAction("Save screenshot…", self)
        self.screenshot_action.triggered.connect(self._save_screenshot_dialog)
        bar.addAction(self.screenshot_action)
        self.vnc_menu = VncMenu(self)
        bar.addWidget(self.vnc_menu.button)
        return bar

    # -- lifecycle -----------------------------------------------------------------------------------------
    def update_state(self, info: VmInfo) -> None:
        self.state = info.state
        self.vnc_menu.update(info)
        running = info.state == VmState.RUNNING
        active = info.state in (VmState.RUNNING, VmState.PAUSED)
        if not active:
            self._stale = True
            self._epoch += 1
        elif self._stale and not self._requesting:
            self._request_console()
        current = self.vm_console is not None and not self._stale
        self.view.set_input(self.vm_console.input if running and current else None)
        self.view.set_polling(active and current)
        for action in (*self.send_key_actions.values(), self.type_clipboard_action):
            action.setEnabled(running and current)
        self.send_key_button.setEnabled(running and current)
        if not running:
            self._blank_timer.stop()
            self.blank_hint = False
        self.banner.setVisible(not running or self.blank_hint)
        self.run_button.setVisible(info.state in (VmState.SHUTOFF, VmState.CRASHED, VmState.PAUSED))
        self.run_button.setText("Resume" if info.state == VmState.PAUSED else "Run")
        kept = " The last picture it showed is kept." if self.view.frame is not None else ""
        text = {
            VmState.SHUTOFF: f"The virtual machine is shut off.{kept}",
            VmState.STARTING: "Starting…",
            VmState.PAUSED: "The virtual machine is paused: it does not read keys or the mouse.",
            VmState.CRASHED: f"The virtual machine crashed: {info.reason}.{kept}",
        }.get(info.state, BLANK_HINT if self.blank_hint else "")
        if info.state == VmState.SHUTOFF and info.reason:
            text = f"The virtual machine is shut off ({info.reason}).{kept}"
        self.banner_text.setText(text)

    def _frame_arrived(self, frame: Frame) -> None:
        # Checked only when a new frame arrives and only in text mode: a graphics screen counts as drawn.
        if self.state != VmState.RUNNING:
            return
        if not frame.mode.startswith("text") or not blank_text_screen(frame):
            self._blank_timer.stop()
            self._set_blank_hint(False)
        elif not self.blank_hint and not self._blank_timer.isActive():
            self._blank_timer.start()

    def _set_blank_hint(self, on: bool) -> None:
        if on == self.blank_hint or (on and self.state != VmState.RUNNING):
            return
        self.blank_hint = on
        self.banner.setVisible(on)
        self.run_button.setVisible(False)
        self.banner_text.setText(BLANK_HINT if on else "")

    def _request_console(self) -> None:
        self._requesting = True
        host, epoch = self.bridge.host, self._epoch
        self.bridge.call("Opening the console", lambda: host.console(self.uuid),
                         lambda vm_console: self._got_console(vm_console, epoch), self._console_failed)

    def _got_console(self, vm_console: VmConsole, epoch: int) -> None:
        self._requesting = False
        info = self.bridge.info(self.uuid)
        if epoch != self._epoch:
            # The VM stopped (and maybe started again) while we asked: this console may be the old machine's.
            if info is not None:
                self.update_state(info)
            return
        if self.vm_console is None or vm_console.session != self.vm_console.session:
            self.vm_console = vm_console
            self.view.set_source(vm_console.frames, None)
        self._stale = False
        if info is not None:
            self.update_state(info)

    def _console_failed(self, message: str) -> None:
        # Usually a race with the VM stopping, and the next state change asks again. If the VM still runs (its
        # process had not yet published the console, or a worker hiccup), no state change will come: ask again
        # shortly, as long as it runs. Say why meanwhile.
        self._requesting = False
        self.status.setText(f"No console: {message}")
        QTimer.singleShot(RETRY_MS, self._retry_console)

    def _retry_console(self) -> None:
        info = self.bridge.info(self.uuid)
        if info is not None and info.state in (VmState.RUNNING, VmState.PAUSED) and self._stale \
                and not self._requesting:
            self._request_console()

    # -- actions -------------------------------------------------------------------------------------------
    def _send_combo(self, names: tuple[str, ...]) -> None:
        self.view.send_combo(*names)
        self.view.setFocus()

    def type_clipboard(self) -> None:
        typed, skipped = self.view.type_text(QGuiApplication.clipboard().text())
        self._typed += typed
        self._skipped += skipped
        self._note_timer.stop()
        self.status.setText(typing_note("Typing", self._typed, self._skipped))
        self.view.setFocus()
        if not self.view.typing_pending:        # nothing to type: no typingFinished will come
            self._typing_finished()

    def _typing_finished(self) -> None:
        self.status.setText(typing_note("Typed", self._typed, self._skipped))
        self._typed = self._skipped = 0
        self._note_timer.start(NOTE_MS)

    def save_screenshot(self, path: str) -> None:
        self.view.grab_png(path)
        self.status.setText(f"Saved {path}")

    def _save_screenshot_dialog(self) -> None:
        ask_and_save_screenshot(self, self.save_screenshot)

    def set_fullscreen(self, on: bool) -> None:
        """Move the view into a window of its own covering the screen, and back."""
        lay = self.layout()
        if on and self._fullscreen is None:
            full = QWidget(None, Qt.WindowType.Window)
            full.setWindowTitle(self.window().windowTitle())
            # Scoped to the window itself: a bare "background: black" would cascade to the floating bar's buttons.
            full.setObjectName("consoleFullscreen")
            full.setStyleSheet("#consoleFullscreen { background: black; }")
            inner = QVBoxLayout(full)
            inner.setContentsMargins(0, 0, 0, 0)
            inner.addWidget(self.view)
            self._fullscreen = full
            # The way back on screen; Send key is the toolbar's own menu, so the key list stays in one place.
            self.fullscreen_bar = FullscreenBar(full, self.view, self.send_key_button.menu())
            self.fullscreen_bar.exitRequested.connect(lambda: self.set_fullscreen(False))
            full.showFullScreen()
            self.fullscreen_bar.start()
            self.view.setFocus()
        elif not on and self._fullscreen is not None:
            self.fullscreen_bar.stop()
            self.view.removeEventFilter(self.fullscreen_bar)
            self.fullscreen_bar = None
            lay.insertWidget(lay.indexOf(self.toolbar) + 1, self.view, 1)
            self._fullscreen.close()
            self._fullscreen.deleteLater()
            self._fullscreen = None
            self.view.setFocus()

    # -- status --------------------------------------------------------------------------------------------
    def _mode_changed(self, mode: str) -> None:
        self._mode = mode
        self._update_status()

    def _update_status(self) -> None:
        keys = grab_label(self.view.grab_keys)
        grab = (f"Input grabbed: press {keys} to release" if self.view.grabbed
                else f"Click to type into the guest; {keys} grabs the pointer")
        self.status.setText(f"{self._mode}   ·   {grab}" if self._mode else grab)

    def close_console(self) -> None:
        self.set_fullscreen(False)
        self.view.set_polling(False)
        self.view.set_input(None)
        if self.vm_console is not None:
            self.bridge.close_console(self.uuid)
