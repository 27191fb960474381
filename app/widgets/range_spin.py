"""Spin boxes that show out-of-range input instead of clamping it (issue 17, defect 10: "Spin boxes clamp silently.
Out-of-range input is shown as an error with the valid range").

A plain QSpinBox refuses or clamps a typed value outside [minimum, maximum] without a word, so a user who types
999999 MiB silently gets the host's maximum. RangeSpinBox and RangeDoubleSpinBox keep what was typed: the Qt range
is wide, the allowed range is separate, and while the text is outside it the field turns red, its `error`
label (placed under the field by the page) says what is wrong and what the range is, and `problem()` is non-empty
so the page can keep Next / Apply disabled. The arrows and PageUp/PageDown still stay inside the allowed range.
"""
from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QAbstractSpinBox, QDoubleSpinBox, QLabel, QSpinBox, QWidget

ERROR_STYLE = "color: #b3261e;"
# The marking goes on the line edit: a style sheet set on the spin box itself makes QAbstractSpinBox reset its
# text to the last value (its StyleChange handling), which would undo what the user is typing.
INVALID_STYLE = "QLineEdit { color: #b3261e; background: #fde7e9; }"
_WIDE_INT = 2**31 - 1
_WIDE_FLOAT = 1e12


class _RangeMixin:
    """What both spin boxes share; the concrete class supplies the Qt base."""

    problemChanged = pyqtSignal(str)   # the new problem() ("" once the text is in range again)

    def _setup(self, what: str, countable: bool) -> None:
        self.what = what
        self.countable = countable          # "fewer than 1" (CPUs) vs "less than 16 MiB" (an amount)
        self.limit_text = ""                # e.g. "this host's 23.5 GiB": what the maximum is, in words
        self.low = self.high = 0
        self._problem = ""
        self.error = QLabel(self.parentWidget())
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.setWordWrap(True)
        self.error.hide()
        # setValue() updates the line edit with its signals blocked, so the spin box's own textChanged is watched
        # too; the line edit's catches text that is not a number yet (an emptied field).
        self.lineEdit().textChanged.connect(self._check)
        self.textChanged.connect(self._check)

    def setAllowedRange(self, low: float, high: float, limit_text: str = "") -> None:  # noqa: N802 - Qt style
        """The values the field accepts; `limit_text` names where the maximum comes from in the error."""
        self.low, self.high, self.limit_text = low, high, limit_text
        self._check()

    # To callers the range is the allowed one (Qt's own, internal range is only wide so typed text is kept).
    def minimum(self) -> float:
        return self.low

    def maximum(self) -> float:
        return self.high

    def _fmt(self, value: float) -> str:
        return f"{value:g}{self.suffix()}"

    def problem(self) -> str:
        """One line naming the field, the typed value and the allowed range; "" when the text is in range."""
        if not self.cleanText().strip():
            # Being retyped: value() is still the last number, and Qt puts it back if the field is left empty.
            return ""
        value = self.value()
        if value > self.high:
            limit = f"{self.limit_text} (the most is {self._fmt(self.high)})" if self.limit_text \
                else self._fmt(self.high)
            return f"{self.what}: {self._fmt(value)} is more than {limit}."
        if value < self.low:
            return f"{self.what}: {self._fmt(value)} is {'fewer' if self.countable else 'less'} than " \
                   f"{self._fmt(self.low)}."
        return ""

    def _check(self, *_: object) -> None:
        problem = self.problem()
        self.error.setText(problem)
        self.error.setVisible(bool(problem) and self.isEnabled())
        self.lineEdit().setStyleSheet(INVALID_STYLE if problem else "")
        if problem != self._problem:
            self._problem = problem
            self.problemChanged.emit(problem)

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if hasattr(self, "error"):
            self.error.setVisible(bool(self._problem) and self.isEnabled())

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt override
        self._typing = self.window().focusWidget() in (self, self.lineEdit())
        super().hideEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        # QWizard hides and re-shows its page frame whenever Next is enabled or disabled, and QAbstractSpinBox
        # rewrites its text from value() when shown (and a hidden field loses the focus): the "0" typed on the way
        # to "0.1" (out of range, so Next goes off) became "0.0", and "0.1" ended as "0.0". The field being typed
        # in keeps its text, cursor and focus.
        edit = self.lineEdit()
        text, cursor = edit.text(), edit.cursorPosition()
        super().showEvent(event)
        # setValue() rewrites the text at once, hidden or not: text that differs here was typed, and stays.
        if edit.text() != text:
            edit.setText(text)
            edit.setCursorPosition(cursor)
        if getattr(self, "_typing", False):
            self._typing = False
            if not self.hasFocus():
                self.setFocus()

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt override
        # The arrows move inside the allowed range (and bring an out-of-range value back into it).
        self.setValue(min(max(self.value() + steps * self.singleStep(), self.low), self.high))
        self.selectAll()

    def stepEnabled(self) -> QAbstractSpinBox.StepEnabledFlag:  # noqa: N802 - Qt override
        flags = QAbstractSpinBox.StepEnabledFlag.StepNone
        if self.value() < self.high:
            flags |= QAbstractSpinBox.StepEnabledFlag.StepUpEnabled
        if self.value() > self.low:
            flags |= QAbstractSpinBox.StepEnabledFlag.StepDownEnabled
        return flags


class RangeSpinBox(_RangeMixin, QSpinBox):
    """A QSpinBox whose out-of-range input stays visible as an error (see the module docstring)."""

    def __init__(self, what: str, parent: QWidget | None = None, countable: bool = False) -> None:
        super().__init__(parent)
        self.setRange(-_WIDE_INT, _WIDE_INT)
        self._setup(what, countable)


class RangeDoubleSpinBox(_RangeMixin, QDoubleSpinBox):
    """A QDoubleSpinBox whose out-of-range input stays visible as an error (see the module docstring)."""

    def __init__(self, what: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setRange(-_WIDE_FLOAT, _WIDE_FLOAT)
        self._setup(what, False)
