"""The VM console: shows the guest's screen and sends keyboard and mouse input to it.

ConsoleView polls a frame source (core.display.renderer.Renderer locally, or anything with the same
`render(force=False) -> Frame | None`) about 60 times a second and repaints only the dirty rectangles. The frame is
drawn by ConsoleView.scale_mode (SCALE_MODES): scaled to fit keeping its aspect ratio, letterboxed in black (the
default), stretched to fill the whole view, or shown 1:1 (the window then follows the guest's mode changes).

While the view has focus, keys go to the guest as PS/2 set-2 make/break bytes (core/keymap.py); host auto-repeat
is dropped because the guest keyboard repeats by itself (typematic). Mouse motion and buttons go to the guest
as relative PS/2 movement while the pointer is over the view; Ctrl+Alt (pressed and released alone) toggles a
grab that hides and confines the host pointer so the guest gets unbounded relative motion. Losing focus releases
every held key and the grab, so no key stays stuck in the guest.

ConsoleWindow wraps a view with a menu (View: keep aspect ratio / stretch / 1:1 / fullscreen, where a floating
app.widgets.fullscreen_bar.FullscreenBar gives the way back; Send key: Ctrl+Alt+Del,
Ctrl+Alt+Backspace, Ctrl+Alt+F1..F12; Save screenshot (PNG via Pillow); Type clipboard text) and a status line.
"""
from __future__ import annotations

import re
from collections import deque

import numpy as np
from PyQt6.QtCore import QEvent, QPoint, QRect, QSize, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QAction, QActionGroup, QCursor, QGuiApplication, QImage, QKeyEvent, QPainter
from PyQt6.QtWidgets import QFileDialog, QLabel, QMainWindow, QMessageBox, QSizePolicy, QWidget

from app.widgets.console_keys import GRAB_COMBOS, grab_label, key_family, key_name
from app.widgets.console_scale import KEEP, ONE_TO_ONE, SCALE_MODES, frame_target_rect
from app.widgets.fullscreen_bar import FullscreenBar
from app.widgets.text import as_sentence
from core.host import Frame, FrameSource, InputSink, break_code, combo_events, make_code, text_events

FRAME_INTERVAL_MS = 16
NOTE_MS = 4000               # how long a passing status note ("Typed N characters") stays
TYPE_INTERVAL_MS = 8          # between typed key events: the guest's keyboard buffer stays short
MOUSE_BUTTONS = {Qt.MouseButton.LeftButton: 1, Qt.MouseButton.RightButton: 2, Qt.MouseButton.MiddleButton: 4}


def blank_text_screen(frame: Frame) -> bool:
    """Whether a text-mode frame shows no character: every pixel has the top-left pixel's colour, except at most
    one character cell (the blinking cursor). False for a graphics mode. Well under 0.1 ms for 80x25 (720x400)."""
    match = re.fullmatch(r"text (\d+)x(\d+)", frame.mode)
    if match is None:
        return False
    other = frame.pixels != frame.pixels[0, 0]
    rows = np.flatnonzero(other.any(axis=1))
    if rows.size == 0:
        return True
    cols = np.flatnonzero(other[rows[0]:rows[-1] + 1].any(axis=0))
    cell_w, cell_h = max(1, frame.width // int(match[1])), max(1, frame.height // int(match[2]))
    return rows[0] // cell_h == rows[-1] // cell_h and cols[0] // cell_w == cols[-1] // cell_w


class ConsoleView(QWidget):
    grabChanged = pyqtSignal(bool)
    frameArrived = pyqtSignal(object)       # each new Frame, after it is drawn
    frameSizeChanged = pyqtSignal(int, int)
    modeChanged = pyqtSignal(str)
    fullscreenRequested = pyqtSignal()
    scaleModeChanged = pyqtSignal(str)      # one of SCALE_MODES' modes
    typingFinished = pyqtSignal()        # the last queued typed key event has gone to the guest

    def __init__(self, source: FrameSource | None, sink: InputSink | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source = source
        self.sink = sink
        self.frame: Frame | None = None
        self._image: QImage | None = None
        self.scale_mode = KEEP
        self.grabbed = False
        self.grab_keys = GRAB_COMBOS[0]             # pressed together and released alone: toggle the grab
        self._pressed: dict[str, bytes] = {}        # key name -> its make code, for releasing on focus loss
        self._combo_clean = False                    # Ctrl+Alt pressed with no other key since
        self._buttons = 0
        self._last_pos: QPoint | None = None
        self._typing: deque[bytes] = deque()
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 100)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(FRAME_INTERVAL_MS)
        self._type_timer = QTimer(self)
        self._type_timer.timeout.connect(self._type_next)

    # -- frames ---------------------------------------------------------------------------------------------
    def set_source(self, source: FrameSource | None, sink: InputSink | None = None) -> None:
        """Show another display (e.g. the new machine after a VM restarted); its first frame is drawn whole."""
        self.set_input(sink)
        self.source = source
        if source is not None:
            self.refresh(force=True)

    def set_input(self, sink: InputSink | None) -> None:
        """Send input somewhere else, or nowhere (None: the view only shows). Held keys are released first."""
        if sink is not self.sink:
            self.release_all_keys()
            self.sink = sink

    @property
    def polling(self) -> bool:
        return self._timer.isActive()

    def set_polling(self, on: bool) -> None:
        """Stop asking the source for frames (a stopped VM's picture cannot change) or start again."""
        if on and not self._timer.isActive():
            self._timer.start(FRAME_INTERVAL_MS)
        elif not on:
            self._timer.stop()

    def _tick(self) -> None:
        # A console in a hidden tab or a minimised window costs nothing; it catches up when shown.
        if self.isVisible():
            self.refresh()

    def refresh(self, force: bool = False) -> bool:
        """Fetch a frame from the source; repaint what changed. Returns True if a new frame arrived."""
        if self.source is None:
            return False
        frame = self.source.render(force=force)
        if frame is None:
            return False
        old = self.frame
        self.frame = frame
        self._image = QImage(frame.pixels.data, frame.width, frame.height, frame.width * 4,
                             QImage.Format.Format_RGB32)
        if old is None or (old.width, old.height) != (frame.width, frame.height):
            self.updateGeometry()
            self.frameSizeChanged.emit(frame.width, frame.height)
            self.update()
        else:
            for rect in frame.dirty:
                self.update(self._to_widget(QRect(*rect)))
        if old is None or old.mode != frame.mode:
            self.modeChanged.emit(frame.mode)
        self.frameArrived.emit(frame)
        return True

    def target_rect(self) -> QRect:
        """Where the frame is drawn inside the widget."""
        if self.frame is None:
            return QRect()
        return frame_target_rect(self.frame.width, self.frame.height, self.width(), self.height(), self.scale_mode)

    def _to_widget(self, rect: QRect) -> QRect:
        target = self.target_rect()
        sx, sy = target.width() / self.frame.width, target.height() / self.frame.height
        return QRect(target.x() + int(rect.x() * sx), target.y() + int(rect.y() * sy),
                     int(rect.width() * sx) + 2, int(rect.height() * sy) + 2)

    def sizeHint(self) -> QSize:
        if self.frame is None:
            return QSize(720, 400)
        return QSize(self.frame.width, self.frame.height)

    @property
    def scale_to_fit(self) -> bool:
        """Whether the frame follows the view's size (keep aspect ratio or stretch), not 1:1."""
        return self.scale_mode != ONE_TO_ONE

    def set_scale_to_fit(self, fit: bool) -> None:
        self.set_scale_mode(KEEP if fit else ONE_TO_ONE)

    def set_scale_mode(self, mode: str) -> None:
        """Draw the frame by `mode`, one of SCALE_MODES' modes; every Scale menu showing it follows."""
        if mode not in dict(SCALE_MODES):
            raise ValueError(f"unknown scale mode {mode!r}: use one of {', '.join(dict(SCALE_MODES))}")
        if mode == self.scale_mode:
            return
        self.scale_mode = mode
        self.updateGeometry()
        self.update()
        self.scaleModeChanged.emit(mode)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), Qt.GlobalColor.black)
        if self._image is not None:
            target = self.target_rect()
            if target.size() != QSize(self.frame.width, self.frame.height) and (
                    target.width() % self.frame.width or target.height() % self.frame.height):
                painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(target, self._image)
        painter.end()

    def grab_png(self, path: str) -> None:
        """Save the guest's frame (not the widget) as PNG, via Pillow."""
        if self.frame is None:
            self.refresh(force=True)
        if self.frame is None:
            raise RuntimeError("no frame to save yet")
        self.frame.save_png(path)

    # -- keyboard -------------------------------------------------------------------------------------------
    def event(self, event: QEvent) -> bool:
        # Tab / Backtab would move focus, and shortcuts would steal keys: the guest gets them instead.
        if event.type() == QEvent.Type.ShortcutOverride:
            event.accept()
            return True
        if event.type() == QEvent.Type.KeyPress and event.key() in (Qt.Key.Key_Tab, Qt.Key.Key_Backtab):
            self.keyPressEvent(event)
            return True
        return super().event(event)

    def _send(self, data: bytes) -> None:
        if self.sink is not None and data:
            self.sink.key_event(data)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        name = key_name(event)
        if name is None or event.isAutoRepeat():
            return
        held = set(self._pressed) | {name}
        ctrl_alt = any(n.startswith("ctrl") for n in held) and any(n.startswith("alt") for n in held)
        if name in ("enter", "kp_enter") and ctrl_alt:
            self._combo_clean = False
            self.fullscreenRequested.emit()        # the host's own shortcut: not sent to the guest
            return
        combo = set(self.grab_keys.split("+"))
        if key_family(name) in combo:
            self._combo_clean = self._combo_clean or combo <= {key_family(n) for n in held}
        else:
            self._combo_clean = False
        self._pressed[name] = make_code(name)
        self._send(make_code(name))

    def keyReleaseEvent(self, event: QKeyEvent) -> None:
        name = key_name(event)
        if name is None or event.isAutoRepeat():
            return
        if self._pressed.pop(name, None) is not None:
            self._send(break_code(name))
        combo = set(self.grab_keys.split("+"))
        if key_family(name) in combo and self._combo_clean:
            still_held = [n for n in self._pressed if key_family(n) in combo]
            if not still_held:
                self._combo_clean = False
                self.set_grab(not self.grabbed)

    def release_all_keys(self) -> None:
        for name in list(self._pressed):
            self._send(break_code(name))
        self._pressed.clear()
        self._combo_clean = False

    def send_combo(self, *names: str) -> None:
        for data in combo_events(*names):
            self._send(data)

    def type_text(self, text: str) -> tuple[int, int]:
        """Queue `text` to be typed (US layout), one key event every few ms. Returns (queued chars, skipped)."""
        events, skipped = text_events(text)
        self._typing.extend(events)
        if self._typing and not self._type_timer.isActive():
            self._type_timer.start(TYPE_INTERVAL_MS)
        return len(text) - skipped, skipped

    def _type_next(self) -> None:
        if self._typing:
            self._send(self._typing.popleft())
        if not self._typing:
            self._type_timer.stop()
            self.typingFinished.emit()

    @property
    def typing_pending(self) -> int:
        return len(self._typing)

    def focusOutEvent(self, event) -> None:
        self.release_all_keys()
        if self.grabbed:
            self.set_grab(False)
        super().focusOutEvent(event)

    # -- mouse ----------------------------------------------------------------------------------------------
    def set_grab(self, grab: bool) -> None:
        if grab == self.grabbed:
            return
        self.grabbed = grab
        if grab:
            self.setCursor(Qt.CursorShape.BlankCursor)
            self.grabMouse()
            self._last_pos = self._centre_global()
            QCursor.setPos(self._last_pos)
        else:
            self.releaseMouse()
            self.unsetCursor()
            self._last_pos = None
        self.grabChanged.emit(grab)

    def _centre_global(self) -> QPoint:
        return self.mapToGlobal(self.rect().center())

    def _mouse(self, dx: int, dy: int, dz: int = 0) -> None:
        if self.sink is not None:
            if dz:
                self.sink.mouse_event(dx, dy, self._buttons, dz)
            else:
                self.sink.mouse_event(dx, dy, self._buttons)

    def mouseMoveEvent(self, event) -> None:
        pos = event.globalPosition().toPoint()
        if self._last_pos is not None and self.hasFocus():
            delta = pos - self._last_pos
            if delta.x() or delta.y():
                self._mouse(delta.x(), delta.y())
        if self.grabbed:
            # Keep the hidden host pointer in the middle so motion never stops at a screen edge.
            centre = self._centre_global()
            if (pos - centre).manhattanLength() > 50:
                QCursor.setPos(centre)
                pos = centre
        self._last_pos = pos

    def mousePressEvent(self, event) -> None:
        self.setFocus()
        self._buttons |= MOUSE_BUTTONS.get(event.button(), 0)
        self._last_pos = event.globalPosition().toPoint()
        self._mouse(0, 0)

    def mouseReleaseEvent(self, event) -> None:
        self._buttons &= ~MOUSE_BUTTONS.get(event.button(), 0)
        self._mouse(0, 0)

    def wheelEvent(self, event) -> None:
        notches = event.angleDelta().y() // 120        # +1 per notch away from the user
        if notches and self.hasFocus():
            self._mouse(0, 0, notches)

    def leaveEvent(self, event) -> None:
        if not self.grabbed:
            self._last_pos = None
        super().leaveEvent(event)


SEND_KEYS: list[tuple[str, tuple[str, ...]]] = [
    ("Ctrl+Alt+Del", ("ctrl_l", "alt_l", "delete")),
    ("Ctrl+Alt+Backspace", ("ctrl_l", "alt_l", "backspace")),
] + [(f"Ctrl+Alt+F{i}", ("ctrl_l", "alt_l", f"f{i}")) for i in range(1, 13)]


class ConsoleWindow(QMainWindow):
    """A bare console window for one VM (the runner's `--display window`, and the VM window's console tab)."""

    def __init__(self, source: FrameSource, sink: InputSink | None = None, title: str = "Vireo console",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.view = ConsoleView(source, sink, self)
        self.setCentralWidget(self.view)
        self.status = QLabel()
        self.statusBar().addWidget(self.status, 1)
        self._mode = ""
        self._build_menus()
        self.fullscreen_bar = FullscreenBar(self, self.view, self.send_menu)
        self.fullscreen_bar.exitRequested.connect(lambda: self.set_fullscreen(False))
        self.view.scaleModeChanged.connect(self._scale_mode_changed)
        self.view.grabChanged.connect(lambda _grab: self._update_status())
        self.view.modeChanged.connect(self._mode_changed)
        self.view.frameSizeChanged.connect(self._frame_size_changed)
        self.view.fullscreenRequested.connect(lambda: self.set_fullscreen(not self.isFullScreen()))
        self.view.typingFinished.connect(self._typing_finished)
        self._typed = self._skipped = 0     # since the typing queue was last empty
        self._note_timer = QTimer(self)         # a passing note ("Typed N characters") gives way to the hint
        self._note_timer.setSingleShot(True)
        self._note_timer.timeout.connect(self._update_status)
        self._update_status()
        self.view.setFocus()

    def _build_menus(self) -> None:
        bar = self.menuBar()
        view_menu = bar.addMenu("&View")
        group = QActionGroup(self)
        self.scale_actions: dict[str, QAction] = {}
        for mode, label in SCALE_MODES:
            action = QAction(label, self, checkable=True, checked=mode == self.view.scale_mode)
            action.triggered.connect(lambda _checked=False, m=mode: self.view.set_scale_mode(m))
            group.addAction(action)
            view_menu.addAction(action)
            self.scale_actions[mode] = action
        self.fit_action, self.one_to_one_action = self.scale_actions[KEEP], self.scale_actions[ONE_TO_ONE]
        view_menu.addSeparator()
        self.fullscreen_action = QAction("F&ullscreen\tCtrl+Alt+Enter", self, checkable=True)
        self.fullscreen_action.triggered.connect(self.set_fullscreen)
        view_menu.addAction(self.fullscreen_action)
        view_menu.addSeparator()
        self.screenshot_action = QAction("&Save screenshot…", self)
        self.screenshot_action.triggered.connect(self._save_screenshot_dialog)
        view_menu.addAction(self.screenshot_action)

        send_menu = bar.addMenu("&Send key")
        self.send_menu = send_menu
        self.send_key_actions: dict[str, QAction] = {}
        for label, names in SEND_KEYS:
            action = QAction(label, self)
            action.triggered.connect(lambda _checked=False, n=names: self.view.send_combo(*n))
            send_menu.addAction(action)
            self.send_key_actions[label] = action
        send_menu.addSeparator()
        self.type_clipboard_action = QAction("&Type clipboard text", self)
        self.type_clipboard_action.triggered.connect(self.type_clipboard)
        send_menu.addAction(self.type_clipboard_action)

    # -- actions --------------------------------------------------------------------------------------------
    def set_scale_to_fit(self, fit: bool) -> None:
        self.view.set_scale_to_fit(fit)

    def _scale_mode_changed(self, mode: str) -> None:
        # From the View menu or the fullscreen bar's Scale menu alike.
        self.scale_actions[mode].setChecked(True)
        if mode == ONE_TO_ONE and self.view.frame is not None and not self.isFullScreen():
            self._resize_to_frame()

    def _resize_to_frame(self) -> None:
        extra = self.size() - self.view.size()
        self.resize(self.view.sizeHint() + extra)

    def set_fullscreen(self, on: bool) -> None:
        """Show the view alone on the whole screen, with the floating bar (Send key, Scale, Exit fullscreen) as the
        way back, or return to the window with its menus."""
        self.menuBar().setVisible(not on)
        self.statusBar().setVisible(not on)
        if on:
            self.showFullScreen()
            self.fullscreen_bar.start()
        else:
            self.fullscreen_bar.stop()
            self.showNormal()
        self.fullscreen_action.setChecked(on)
        self.view.setFocus()

    def save_screenshot(self, path: str) -> None:
        self.view.grab_png(path)
        self.status.setText(f"Saved {path}")

    def _save_screenshot_dialog(self) -> None:
        ask_and_save_screenshot(self, self.save_screenshot)

    def type_clipboard(self) -> None:
        text = QGuiApplication.clipboard().text()
        typed, skipped = self.view.type_text(text)
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

    # -- status ---------------------------------------------------------------------------------------------
    def _mode_changed(self, mode: str) -> None:
        self._mode = mode
        self._update_status()

    def _frame_size_changed(self, _w: int, _h: int) -> None:
        if self.view.scale_mode == ONE_TO_ONE and not self.isFullScreen():
            self._resize_to_frame()

    def _update_status(self) -> None:
        keys = grab_label(self.view.grab_keys)
        grab = (f"Input grabbed: press {keys} to release" if self.view.grabbed
                else f"Press {keys} to grab the pointer")
        self.status.setText(f"{self._mode}   ·   {grab}" if self._mode else grab)


def typing_note(verb: str, typed: int, skipped: int) -> str:
    """The status line's word on "Type clipboard text": "Typing 12 characters", "Typed 12 characters (1 not on a
    US keyboard skipped)"."""
    note = f"{verb} {typed} characters"
    return note + f" ({skipped} not on a US keyboard skipped)" if skipped else note


def ask_and_save_screenshot(parent: QWidget, save) -> None:
    """Ask where to save a PNG of the console and call save(path); a failure is shown as one line."""
    path, _ = QFileDialog.getSaveFileName(parent, "Save screenshot", "screenshot.png", "PNG images (*.png)")
    if path:
        try:
            save(path)
        except (OSError, RuntimeError) as exc:
            QMessageBox.warning(parent, "Save screenshot", as_sentence(str(exc)))
