"""Texts shown in dialogs: the engine's one-line reasons (HostError and friends) are written to follow a colon in a
log line, so they start in lower case; a dialog shows them as sentences."""
from __future__ import annotations

import re

# A first word that is a config key, path, option or number (network.mac, /dev/vda, vireo.console=tty1, 0x3f8)
# names something exactly; changing its case would name something else.
_CODE_LIKE = re.compile(r"[./_=\\\d'\"<@]")
# Words a title shares with any sentence; they say nothing about a name.
_FUNCTION_WORDS = {"a", "an", "the", "to", "of", "on", "in", "for", "with", "from", "at", "by", "and", "or"}


def as_sentence(reason: str, title: str = "") -> str:
    """`reason` with its first letter capitalised, unless its first word is code-like or a name the dialog's
    `title` also mentions (the VM "lab" in "Starting lab" / "lab failed to start": a name keeps its case)."""
    text = reason.strip()
    first = text.split(maxsplit=1)[0].rstrip(":,;") if text else ""
    named = set(re.split(r"[^\w-]+", title)[1:]) - _FUNCTION_WORDS
    if not first[:1].islower() or _CODE_LIKE.search(first) or first in named:
        return text
    return text[0].upper() + text[1:]
