"""Icons: the app icon and VM-state icons drawn as SVG in resources/, toolbar actions from the Qt style's
standard pixmaps (so they follow the desktop theme where one is set)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from PyQt6.QtGui import QIcon
from PyQt6.QtWidgets import QApplication, QStyle

RESOURCES = Path(__file__).resolve().parent.parent / "resources"


@cache
def resource_icon(name: str) -> QIcon:
    """resources/icons/NAME.svg (or resources/NAME.svg for the app icon)."""
    for path in (RESOURCES / "icons" / f"{name}.svg", RESOURCES / f"{name}.svg"):
        if path.exists():
            return QIcon(str(path))
    return QIcon()


def app_icon() -> QIcon:
    return resource_icon("vireo")


def state_icon(state: str) -> QIcon:
    """Icon for a VmState value (running, paused, shutoff, crashed, starting)."""
    return resource_icon(f"state-{state}")


_STANDARD = {
    "new": ("document-new", QStyle.StandardPixmap.SP_FileDialogNewFolder),
    "open": ("window-new", QStyle.StandardPixmap.SP_DesktopIcon),
    "run": ("media-playback-start", QStyle.StandardPixmap.SP_MediaPlay),
    "pause": ("media-playback-pause", QStyle.StandardPixmap.SP_MediaPause),
    "shutdown": ("system-shutdown", QStyle.StandardPixmap.SP_MediaStop),
    "reboot": ("view-refresh", QStyle.StandardPixmap.SP_BrowserReload),
    "reset": ("view-refresh", QStyle.StandardPixmap.SP_BrowserReload),
    "off": ("process-stop", QStyle.StandardPixmap.SP_BrowserStop),
    "delete": ("edit-delete", QStyle.StandardPixmap.SP_TrashIcon),
    "details": ("document-properties", QStyle.StandardPixmap.SP_FileDialogDetailedView),
    "warning": ("dialog-warning", QStyle.StandardPixmap.SP_MessageBoxWarning),
    "quit": ("application-exit", QStyle.StandardPixmap.SP_DialogCloseButton),
    "about": ("help-about", QStyle.StandardPixmap.SP_MessageBoxInformation),
    "open-file": ("document-open", QStyle.StandardPixmap.SP_DialogOpenButton),
}


def action_icon(name: str) -> QIcon:
    theme, fallback = _STANDARD[name]
    if QIcon.hasThemeIcon(theme):
        return QIcon.fromTheme(theme)
    if name in ("new", "open"):
        return resource_icon("vm")
    style = QApplication.style()
    return style.standardIcon(fallback) if style else QIcon()
