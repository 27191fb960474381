"""A terminal view for a guest's serial port (ttyS0): VT100/xterm control sequences are interpreted by pyte
(ECMA-48 / DEC VT100 behaviour), this widget paints pyte's character grid and turns key presses into the bytes
a VT100-style terminal sends (xterm's ctlseqs for cursor and function keys).

The guest cannot learn the window size over a plain serial line, so the grid follows the widget but never drops
below 80x24, the size serial getty and the kernel assume.

Text is selected by dragging with the left button (a stream selection, from the press to the release cell, as
xterm's); Copy (Ctrl+Shift+C, the context menu) copies the selection, or the whole screen when there is none.
Output from the guest ends the selection, since the text under it moves.
"""
from __future__ import annotations

import pyte
from PyQt6.QtCore import QEvent, QPoint, QRect, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QFontDatabase, QFontMetrics, QGuiApplication, QKeyEvent, QPainter, QPalette
from PyQt6.QtWidgets import QMenu, QWidget

MIN_COLUMNS, MIN_ROWS = 80, 24
HISTORY_LINES = 5000

# The Tango palette (as GNOME Terminal): readable on the dark background.
_COLORS = {
    "black": "#2e3436", "red": "#cc0000", "green": "#4e9a06", "brown": "#c4a000", "yellow": "#c4a000",
    "blue": "#3465a4", "magenta": "#75507b", "cyan": "#06989a", "white": "#d3d7cf",
    "brightblack": "#555753", "brightred": "#ef2929", "brightgreen": "#8ae234", "brightbrown": "#fce94f",
    "brightyellow": "#fce94f", "brightblue": "#729fcf", "brightmagenta": "#ad7fa8", "brightcyan": "#34e2e2",
    "brightwhite": "#eeeeec",
}
FOREGROUND = QColor("#e6e6e6")
BACKGROUND = QColor("#1c1f22")
CURSOR = QColor("#9fd356")
SELECTION = QColor("#3d5a80")

_KEYS = {
    Qt.Key.Key_Return: b"\r", Qt.Key.Key_Enter: b"\r", Qt.Key.Key_Backspace: b"\x7f", Qt.Key.Key_Tab: b"\t",
    Qt.Key.Key_Backtab: b"\x1b[Z", Qt.Key.Key_Escape: b"\x1b",
    Qt.Key.Key_Up: b"\x1b[A", Qt.Key.Key_Down: b"\x1b[B", Qt.Key.Key_Right: b"\x1b[C", Qt.Key.Key_Left: b"\x1b[D",
    Qt.Key.Key_Home: b"\x1b[H", Qt.Key.Key_End: b"\x1b[F", Qt.Key.Key_Insert: b"\x1b[2~",
    Qt.Key.Key_Delete: b"\x1b[3~", Qt.Key.Key_PageUp: b"\x1b[5~", Qt.Key.Key_PageDown: b"\x1b[6~",
    Qt.Key.Key_F1: b"\x1bOP", Qt.Key.Key_F2: b"\x1bOQ", Qt.Key.Key_F3: b"\x1bOR", Qt.Key.Key_F4: b"\x1bOS",
    Qt.Key.Key_F5: b"\x1b[15~", Qt.Key.Key_F6: b"\x1b[17~", Qt.Key.Key_F7: b"\x1b[18~", Qt.Key.Key_F8: b"\x1b[19~",
    Qt.Key.Key_F9: b"\x1b[20~", Qt.Key.Key_F10: b"\x1b[21~", Qt.Key.Key_F11: b"\x1b[23~",
    Qt.Key.Key_F12: b"\x1b[24~",
}
# In application cursor-key mode (DECCKM, set by e.g. vi and less) arrows send SS3 instead of CSI.
_APP_CURSOR = {Qt.Key.Key_Up: b"\x1bOA", Qt.Key.Key_Down: b"\x1bOB", Qt.Key.Key_Right: b"\x1bOC",
               Qt.Key.Key_Left: b"\x1bOD", Qt.Key.Key_Home: b"\x1bOH", Qt.Key.Key_End: b"\x1bOF"}
_DECCKM = 1 << 5   # DEC private mode 1 as pyte stores private modes (shifted left by 5)


def _color(name: str, default: QColor, bold: bool = False) -> QColor:
    if name == "default":
        return default
    if bold and not name.startswith("bright") and "bright" + name in _COLORS:
        name = "bright" + name
    if name in _COLORS:
        return QColor(_COLORS[name])
    if len(name) == 6:   # pyte gives 256-colour and true-colour attributes as rrggbb
        color = QColor("#" + name)
        if color.isValid():
            return color
    return default


class SerialTerminal(QWidget):
    """Shows what the guest writes (feed()) and emits what the user types (inputData)."""

    inputData = pyqtSignal(bytes)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.screen = pyte.HistoryScreen(MIN_COLUMNS, MIN_ROWS, history=HISTORY_LINES, ratio=0.5)
        self.screen.set_mode(pyte.modes.LNM)   # a lone LF from the guest still starts a new line, as a tty does
        self.screen.write_process_input = self._reply   # answers to DSR/DA queries go back to the guest
        self.stream = pyte.ByteStream(self.screen)
        self.read_only = False
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setPointSize(max(font.pointSize(), 10))
        font.setStyleHint(QFont.StyleHint.TypeWriter)
        self.setFont(font)
        self._metrics()
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setAttribute(Qt.WidgetAttribute.WA_InputMethodEnabled)
        pal = self.palette()
        pal.setColor(QPalette.ColorRole.Window, BACKGROUND)
        self.setPalette(pal)
        self.setAutoFillBackground(True)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self._anchor: tuple[int, int] | None = None     # (row, column) where the drag began
        self._selection: tuple[tuple[int, int], tuple[int, int]] | None = None   # first, last cell (inclusive)

    def _metrics(self) -> None:
        fm = QFontMetrics(self.font())
        self.cell_w = max(1, fm.horizontalAdvance("M"))
        self.cell_h = max(1, fm.height())
        self.ascent = fm.ascent()

    # -- output ----------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._selection = self._anchor = None
        if self.screen.history.position < self.screen.history.size:
            # Scrolled back: new output snaps the view to the bottom again, as terminals do.
            while self.screen.history.position < self.screen.history.size and self.screen.history.bottom:
                self.screen.next_page()
        self.stream.feed(data)
        self.update()

    def clear(self) -> None:
        self._selection = self._anchor = None
        self.screen.reset()
        self.update()

    def text(self) -> str:
        """The visible screen as text, trailing spaces trimmed (for copy and tests)."""
        return "\n".join(line.rstrip() for line in self.screen.display).rstrip("\n")

    def _reply(self, data: str) -> None:
        if not self.read_only:
            self.inputData.emit(data.encode())

    # -- geometry --------------------------------------------------------------------------------------------
    def sizeHint(self) -> QSize:
        return QSize(self.cell_w * MIN_COLUMNS + 8, self.cell_h * MIN_ROWS + 8)

    def minimumSizeHint(self) -> QSize:
        return QSize(self.cell_w * 20, self.cell_h * 5)

    def resizeEvent(self, event) -> None:
        cols = max(MIN_COLUMNS, (self.width() - 8) // self.cell_w)
        rows = max(MIN_ROWS, (self.height() - 8) // self.cell_h)
        if (rows, cols) != (self.screen.lines, self.screen.columns):
            self.screen.resize(rows, cols)
        super().resizeEvent(event)

    # -- painting --------------------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), BACKGROUND)
        font = self.font()
        bold_font = QFont(font)
        bold_font.setBold(True)
        screen = self.screen
        x0, y0 = 4, 4
        for y in range(screen.lines):
            line = screen.buffer[y]
            top = y0 + y * self.cell_h
            if top > event.rect().bottom() or top + self.cell_h < event.rect().top():
                continue
            x = 0
            while x < screen.columns:
                ch = line[x]
                run_start = x
                chars = [ch.data]
                x += 1
                while x < screen.columns:
                    nxt = line[x]
                    if (nxt.fg, nxt.bg, nxt.bold, nxt.reverse, nxt.underscore) != (
                            ch.fg, ch.bg, ch.bold, ch.reverse, ch.underscore):
                        break
                    chars.append(nxt.data)
                    x += 1
                fg = _color(ch.fg, FOREGROUND, ch.bold)
                bg = _color(ch.bg, BACKGROUND)
                if ch.reverse:
                    fg, bg = bg, fg
                rect = QRect(x0 + run_start * self.cell_w, top, (x - run_start) * self.cell_w, self.cell_h)
                if bg != BACKGROUND:
                    p.fillRect(rect, bg)
                text = "".join(chars)
                if text.strip():
                    p.setFont(bold_font if ch.bold else font)
                    p.setPen(fg)
                    # Draw cell by cell so wide glyphs or fallback fonts cannot push the grid out of line.
                    for i, c in enumerate(text):
                        if c != " ":
                            p.drawText(rect.left() + i * self.cell_w, top + self.ascent, c)
                if ch.underscore:
                    p.fillRect(rect.left(), top + self.cell_h - 2, rect.width(), 1, fg)
        if self._selection is not None:
            p.setCompositionMode(QPainter.CompositionMode.CompositionMode_Screen)
            for row, first, last in self._selected_spans():
                p.fillRect(QRect(x0 + first * self.cell_w, y0 + row * self.cell_h,
                                 (last - first + 1) * self.cell_w, self.cell_h), SELECTION)
            p.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceOver)
        cursor = screen.cursor
        at_bottom = screen.history.position >= screen.history.size or not screen.history.bottom
        if not cursor.hidden and at_bottom:
            rect = QRect(x0 + cursor.x * self.cell_w, y0 + cursor.y * self.cell_h, self.cell_w, self.cell_h)
            if self.hasFocus():
                p.fillRect(rect, CURSOR)
                under = screen.buffer[cursor.y][cursor.x].data if cursor.x < screen.columns else " "
                if under.strip():
                    p.setPen(BACKGROUND)
                    p.drawText(rect.left(), rect.top() + self.ascent, under)
            else:
                p.setPen(CURSOR)
                p.drawRect(rect.adjusted(0, 0, -1, -1))
        p.end()

    # -- input -----------------------------------------------------------------------------------------------
    def event(self, event: QEvent) -> bool:
        # Tab and Backtab belong to the guest's shell (completion), not to Qt's focus chain.
        if event.type() == QEvent.Type.KeyPress and event.key() in (Qt.Key.Key_Tab, Qt.Key.Key_Backtab):
            self.keyPressEvent(event)
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        data = self.key_bytes(event)
        if data is None:
            super().keyPressEvent(event)
            return
        if not self.read_only:
            self.inputData.emit(data)

    def key_bytes(self, event: QKeyEvent) -> bytes | None:
        mods = event.modifiers()
        key = event.key()
        ctrl = bool(mods & Qt.KeyboardModifier.ControlModifier)
        shift = bool(mods & Qt.KeyboardModifier.ShiftModifier)
        if ctrl and shift and key == Qt.Key.Key_V:
            self.paste()
            return b""
        if ctrl and shift and key == Qt.Key.Key_C:
            self.copy()
            return b""
        if shift and key in (Qt.Key.Key_PageUp, Qt.Key.Key_PageDown):
            self.screen.prev_page() if key == Qt.Key.Key_PageUp else self.screen.next_page()
            self.update()
            return b""
        if _DECCKM in self.screen.mode and key in _APP_CURSOR:
            return _APP_CURSOR[key]
        if key in _KEYS:
            return _KEYS[key]
        if ctrl and Qt.Key.Key_A <= key <= Qt.Key.Key_Z:
            return bytes([key - Qt.Key.Key_A + 1])
        if ctrl and key in (Qt.Key.Key_BracketLeft, Qt.Key.Key_Backslash, Qt.Key.Key_BracketRight):
            return bytes([0x1B + (key - Qt.Key.Key_BracketLeft)])
        if ctrl and key == Qt.Key.Key_Space:
            return b"\x00"
        text = event.text()
        if text:
            prefix = b"\x1b" if mods & Qt.KeyboardModifier.AltModifier else b""
            return prefix + text.encode("utf-8")
        return None

    def inputMethodEvent(self, event) -> None:
        if event.commitString() and not self.read_only:
            self.inputData.emit(event.commitString().encode("utf-8"))

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() // 120
        for _ in range(abs(steps)):
            self.screen.prev_page() if steps > 0 else self.screen.next_page()
        self.update()

    def focusInEvent(self, event) -> None:
        self.update()
        super().focusInEvent(event)

    def focusOutEvent(self, event) -> None:
        self.update()
        super().focusOutEvent(event)

    # -- selection -------------------------------------------------------------------------------------------
    def cell_at(self, pos: QPoint) -> tuple[int, int]:
        """The (row, column) of the grid cell under a widget position, clamped to the grid."""
        row = min(max((pos.y() - 4) // self.cell_h, 0), self.screen.lines - 1)
        col = min(max((pos.x() - 4) // self.cell_w, 0), self.screen.columns - 1)
        return row, col

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._anchor = self.cell_at(event.position().toPoint())
            self._selection = None
            self.update()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        if self._anchor is not None and event.buttons() & Qt.MouseButton.LeftButton:
            self._selection = tuple(sorted((self._anchor, self.cell_at(event.position().toPoint()))))
            self.update()
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._anchor = None
        super().mouseReleaseEvent(event)

    def _selected_spans(self) -> list[tuple[int, int, int]]:
        """(row, first column, last column) of each row the selection covers."""
        if self._selection is None:
            return []
        (r0, c0), (r1, c1) = self._selection
        last = self.screen.columns - 1
        return [(r, c0 if r == r0 else 0, c1 if r == r1 else last) for r in range(r0, r1 + 1)]

    def selected_text(self) -> str:
        """The selected characters, rows joined by newlines, each row's trailing blanks trimmed."""
        rows = []
        for row, first, last in self._selected_spans():
            line = self.screen.buffer[row]
            rows.append("".join(line[x].data for x in range(first, last + 1)).rstrip())
        return "\n".join(rows)

    # -- clipboard -------------------------------------------------------------------------------------------
    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.selected_text() if self._selection is not None else self.text())

    def paste(self) -> None:
        text = QGuiApplication.clipboard().text()
        if text and not self.read_only:
            self.inputData.emit(text.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8"))

    def _menu(self, pos) -> None:
        menu = QMenu(self)
        menu.addAction("Copy" if self._selection is not None else "Copy Screen Text", self.copy)
        paste = menu.addAction("Paste", self.paste)
        paste.setEnabled(not self.read_only)
        menu.addSeparator()
        menu.addAction("Clear", self.clear)
        menu.exec(self.mapToGlobal(pos))
