"""How a console frame fills its view: the scale modes a user picks from a Scale menu, and the rectangle a frame
is drawn into for each (app.widgets.console.ConsoleView paints with it; tests check it without painting)."""
from __future__ import annotations

from PyQt6.QtCore import QRect

# How the frame fills the view: (mode, menu label). "keep" is the default: a guest's 4:3 or 9:5 screen stretched to
# a 16:9 monitor distorts every glyph, so stretching is only on request.
KEEP, STRETCH, ONE_TO_ONE = "keep", "stretch", "1:1"
SCALE_MODES: list[tuple[str, str]] = [(KEEP, "Keep aspect ratio"), (STRETCH, "Stretch to fill"), (ONE_TO_ONE, "1:1")]


def frame_target_rect(frame_w: int, frame_h: int, view_w: int, view_h: int, mode: str) -> QRect:
    """Where a frame_w x frame_h frame is drawn in a view_w x view_h widget, by scale mode: "keep" scales it to fit
    with its aspect ratio kept and centres it (black bars on the two other sides), "stretch" covers the whole
    widget, "1:1" centres it unscaled (cropped if larger)."""
    if mode == STRETCH:
        return QRect(0, 0, view_w, view_h)
    scale = min(view_w / frame_w, view_h / frame_h) if mode == KEEP else 1.0
    w, h = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
    return QRect((view_w - w) // 2, (view_h - h) // 2, w, h)

