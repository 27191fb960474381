"""The floating toolbar of a fullscreen console (issue 17, defect 7: fullscreen had no way out on screen).

Modelled on virt-manager's fullscreen toolbar: a small bar at the top centre of the screen, raised over the console
view as a child of the fullscreen window (no extra top-level window, so no window manager placement or stacking to
fight). It shows for REVEAL_MS when fullscreen starts and again whenever the pointer reaches the top edge (not while the
pointer is grabbed: Ctrl+Alt releases it first), stays while the pointer or one of its menus is on it, then slides
up out of sight. It holds:

- "Send key": the very menu of the normal toolbar (or menu bar), handed in, so the key list lives in one place;
- "Scale": scale_menu(), the view's scale modes (keep aspect ratio, stretch to fill, 1:1), kept in step with the view;
- "Exit fullscreen": emits exitRequested; its tooltip names the keyboard way out (Ctrl+Alt+Enter). Esc is not
  taken: it belongs to the guest.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from PyQt6.QtCore import QAbstractAnimation, QEvent, QObject, QPoint, QPropertyAnimation, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QAction, QActionGroup
from PyQt6.QtWidgets import QFrame, QHBoxLayout, QMenu, QToolButton, QWidget

from app.widgets.console_scale import SCALE_MODES

if TYPE_CHECKING:       # console.py's ConsoleWindow builds this bar: importing it at run time would be a cycle
    from app.widgets.console import ConsoleView

REVEAL_MS = 2000        # how long the bar stays after fullscreen starts or the pointer leaves it
SLIDE_MS = 150          # the bar slides up out of sight rather than vanishing
EDGE_PX = 2             # the pointer this close to the screen's top edge brings the bar back
EXIT_SHORTCUT = "Ctrl+Alt+Enter"


class ScaleMenu(QMenu):
    """A menu of the view's scale modes, one checked: choosing one sets the view's mode, and the checks follow a
    mode set elsewhere (another Scale menu, the window's View menu)."""

    def __init__(self, view: ConsoleView, parent: QWidget) -> None:
        super().__init__("Scale", parent)
        group = QActionGroup(self)
        self.mode_actions: dict[str, QAction] = {}
        for mode, label in SCALE_MODES:
            action = QAction(label, self, checkable=True, checked=mode == view.scale_mode)
            action.triggered.connect(lambda _checked=False, m=mode: view.set_scale_mode(m))
            group.addAction(action)
            self.addAction(action)
            self.mode_actions[mode] = action
        # A bound method, not a lambda: the connection goes with this menu (the fullscreen bar's is deleted with
        # its window, while the view lives on).
        view.scaleModeChanged.connect(self._follow)

    def _follow(self, mode: str) -> None:
        self.mode_actions[mode].setChecked(True)


def scale_menu(view: ConsoleView, parent: QWidget) -> ScaleMenu:
    """The Scale menu for `view` (keep aspect ratio / stretch to fill / 1:1), owned by `parent`."""
    return ScaleMenu(view, parent)


class FullscreenBar(QFrame):
    """The floating bar over a fullscreen console; `window` is the fullscreen window the view sits in."""

    exitRequested = pyqtSignal()

    def __init__(self, window: QWidget, view: ConsoleView, send_menu: QMenu) -> None:
        super().__init__(window)
        self.setObjectName("fullscreenBar")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAutoFillBackground(True)
        self.setStyleSheet("#fullscreenBar { background: palette(window); border: 1px solid palette(mid);"
                           " border-top: none; border-bottom-left-radius: 6px; border-bottom-right-radius: 6px; }")
        self.view = view
        lay = QHBoxLayout(self)
        lay.setContentsMargins(6, 2, 6, 4)
        lay.setSpacing(4)
        self.send_key_button = self._menu_button("Send key", send_menu)
        self.send_key_button.setToolTip("Send a key combination the host would otherwise take")
        self.scale_menu = scale_menu(view, self)
        self.scale_button = self._menu_button("Scale", self.scale_menu)
        self.scale_button.setToolTip("How the screen fills the display")
        self.exit_button = QToolButton(self)
        self.exit_button.setText("Exit fullscreen")
        self.exit_button.setToolTip(f"Leave fullscreen ({EXIT_SHORTCUT})")
        self.exit_button.clicked.connect(self.exitRequested)
        for button in (self.send_key_button, self.scale_button, self.exit_button):
            # The guest keeps the keyboard: clicking the bar must not move focus off the view.
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            lay.addWidget(button)
        self._hide_timer = QTimer(self)
        self._hide_timer.setSingleShot(True)
        self._hide_timer.setInterval(REVEAL_MS)
        self._hide_timer.timeout.connect(self._hide_unless_used)
        self._slide = QPropertyAnimation(self, b"pos", self)
        self._slide.setDuration(SLIDE_MS)
        self._slide.finished.connect(self.hide)
        # The view tracks the pointer (for the guest's mouse); its moves, and the window's resizes, reach us here.
        view.installEventFilter(self)
        window.installEventFilter(self)
        self.active = False         # fullscreen is on: the top edge brings the bar back
        self.hide()

    def _menu_button(self, text: str, menu: QMenu) -> QToolButton:
        button = QToolButton(self)
        button.setText(text)
        button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        button.setMenu(menu)
        return button

    def start(self) -> None:
        """Fullscreen has begun: show the bar for a moment, and again whenever the pointer reaches the top edge."""
        self.active = True
        self.reveal()

    def stop(self) -> None:
        """Fullscreen has ended: hide the bar and ignore the top edge."""
        self.active = False
        self._hide_timer.stop()
        self._slide.stop()
        self.hide()

    def reveal(self) -> None:
        """Show the bar at the top centre, raised over the view, for REVEAL_MS (longer while the pointer is on it)."""
        self._slide.stop()
        self.adjustSize()
        self._place()
        self.show()
        self.raise_()
        self._hide_timer.start()

    def _place(self) -> None:
        parent = self.parentWidget()
        self.move((parent.width() - self.width()) // 2, 0)

    def _hide_unless_used(self) -> None:
        menus = (self.send_key_button.menu(), self.scale_menu)
        if self.underMouse() or any(menu.isVisible() for menu in menus):
            self._hide_timer.start()
        else:
            self._slide.setStartValue(self.pos())
            self._slide.setEndValue(QPoint(self.x(), -self.height()))
            self._slide.start()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if not self.active:
            return False
        if watched is self.view and event.type() == QEvent.Type.MouseMove and not self.view.grabbed:
            top = self.view.mapTo(self.parentWidget(), event.position().toPoint()).y()
            sliding = self._slide.state() == QAbstractAnimation.State.Running
            if top <= EDGE_PX and (sliding or not self.isVisible()):
                self.reveal()
        elif (watched is self.parentWidget() and event.type() == QEvent.Type.Resize and self.isVisible()
              and self._slide.state() != QAbstractAnimation.State.Running):
            self._place()
        return False
