"""A notice strip across the top of a console: why the view is inert (the VM is not running) and a Run button."""
from __future__ import annotations

from PyQt6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget


class NoticeBanner(QWidget):
    def __init__(self, parent: QWidget | None = None, button_text: str = "Run") -> None:
        super().__init__(parent)
        self.setObjectName("noticeBanner")
        self.setStyleSheet("#noticeBanner { background: #fff4ce; border-bottom: 1px solid #e0c060; }")
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 10, 6)
        self.text = QLabel(self)
        row.addWidget(self.text, 1)
        self.button = QPushButton(button_text, self)
        row.addWidget(self.button)
