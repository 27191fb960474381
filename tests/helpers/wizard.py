"""The New VM wizard as a test reaches it: the main window opens it only once the host's facts are in (its limits
and capabilities come from a worker thread), so a test waits for it after New VM instead of reading it at once."""
from __future__ import annotations

TIMEOUT_MS = 30_000


def wizard_of(qtbot, window):
    """The wizard New VM opened on `window`, once it is shown."""
    qtbot.waitUntil(lambda: getattr(window, "wizard", None) is not None and window.wizard.isVisible(),
                    timeout=TIMEOUT_MS)
    return window.wizard
