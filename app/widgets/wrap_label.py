"""A word-wrapped QLabel exactly as tall as its lines at its width.

Qt's own QLabel with word wrap reports a height-for-width that layouts which size by size hints (a QScrollArea's
content, a QWizardPage's QFormLayout at its first layout) evaluate at a guessed, narrower width: the label gets more
lines' height than it shows, which reads as a gap under it, or, in a scroll area, is squeezed to one clipped line.
This one measures its plain text (markup stripped) at its real width whenever the text or the width changes and
fixes its height to that.
"""
from __future__ import annotations

import re

from PyQt6.QtCore import QRect, Qt
from PyQt6.QtWidgets import QLabel, QSizePolicy, QWidget


class WrapLabel(QLabel):
    """A word-wrapped label that asks for the height its lines take at its width: in a scroll area (which sizes
    its content by size hints, not height-for-width) a plain one is squeezed to one clipped line."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def _fit(self) -> None:
        # Exactly the lines' height at this width, measured on the text without its markup: a wrapped label's own
        # hint guesses a narrower width, and so more lines, which the form would show as a gap.
        width = self.contentsRect().width()
        if width <= 0:
            return
        plain = re.sub(r"<[^>]+>", "", self.text())
        lines = self.fontMetrics().boundingRect(QRect(0, 0, width, 1 << 20), Qt.TextFlag.TextWordWrap, plain)
        margins = self.contentsMargins()
        height = max(lines.height(), self.fontMetrics().lineSpacing()) + margins.top() + margins.bottom()
        if height != self.minimumHeight() or height != self.maximumHeight():
            self.setFixedHeight(height)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._fit()
