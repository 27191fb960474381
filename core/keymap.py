"""Keys as PS/2 scan code set 2 bytes, and the input sink a console sends keyboard and mouse events to.

Scan codes: IBM PS/2 Keyboard Technical Reference / Microsoft "Keyboard Scan Code Specification" (rev. 1.3a),
set 2: a make code per key, E0-prefixed for the extended keys, break = F0 before the last byte (E0 F0 xx for
extended keys); Print Screen and Pause are the two multi-code keys. The console speaks set 2, which is what
a PS/2 keyboard sends; the i8042 model translates to set 1 when the guest enables translation.

Key names are Qt-independent (this module is part of the engine, shared with the remote agent), e.g. "a", "1",
"f5", "enter", "ctrl_l", "alt_r", "kp_enter". EVDEV_KEYS maps Linux input event codes (what Qt reports as
native scan code minus 8 under X11 and Wayland) to the same names, so a console can follow the physical key
position whatever the host layout is.
"""
from __future__ import annotations

from typing import Protocol


class InputSink(Protocol):
    """Where a console sends input. `key_event` gets one key's make or break bytes (scan code set 2);
    `mouse_event` a relative motion in screen pixels (dx right-positive, dy DOWN-positive, as screens count; a
    PS/2 mouse model negates dy for its packet), the button state (bit 0 left, bit 1 right, bit 2 middle) and
    dz, wheel notches (+1 = away from the user)."""

    def key_event(self, set2_bytes: bytes) -> None: ...

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None: ...


class Ps2InputSink:
    """Adapts the console's InputSink calls to the i8042 model (core/devices/i8042.py): set-2 bytes go to
    press_key(), motion to mouse_event() with dy flipped to PS/2's up-positive convention; the wheel is flipped
    too, since an IntelliMouse reports a notch away from the user as -1 (Linux psmouse negates it back)."""

    def __init__(self, controller) -> None:
        self.controller = controller

    def key_event(self, set2_bytes: bytes) -> None:
        self.controller.press_key(set2_bytes)

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        self.controller.mouse_event(dx, -dy, buttons, -dz)


_E0 = 0x100        # marks extended keys in the table below

SET2: dict[str, int] = {
    "esc": 0x76, "f1": 0x05, "f2": 0x06, "f3": 0x04, "f4": 0x0C, "f5": 0x03, "f6": 0x0B, "f7": 0x83,
    "f8": 0x0A, "f9": 0x01, "f10": 0x09, "f11": 0x78, "f12": 0x07,
    "grave": 0x0E, "1": 0x16, "2": 0x1E, "3": 0x26, "4": 0x25, "5": 0x2E, "6": 0x36, "7": 0x3D, "8": 0x3E,
    "9": 0x46, "0": 0x45, "minus": 0x4E, "equal": 0x55, "backspace": 0x66,
    "tab": 0x0D, "q": 0x15, "w": 0x1D, "e": 0x24, "r": 0x2D, "t": 0x2C, "y": 0x35, "u": 0x3C, "i": 0x43,
    "o": 0x44, "p": 0x4D, "bracketleft": 0x54, "bracketright": 0x5B, "backslash": 0x5D,
    "capslock": 0x58, "a": 0x1C, "s": 0x1B, "d": 0x23, "f": 0x2B, "g": 0x34, "h": 0x33, "j": 0x3B, "k": 0x42,
    "l": 0x4B, "semicolon": 0x4C, "apostrophe": 0x52, "enter": 0x5A,
    "shift_l": 0x12, "less": 0x61, "z": 0x1A, "x": 0x22, "c": 0x21, "v": 0x2A, "b": 0x32, "n": 0x31, "m": 0x3A,
    "comma": 0x41, "period": 0x49, "slash": 0x4A, "shift_r": 0x59,
    "ctrl_l": 0x14, "meta_l": _E0 | 0x1F, "alt_l": 0x11, "space": 0x29, "alt_r": _E0 | 0x11,
    "meta_r": _E0 | 0x27, "menu": _E0 | 0x2F, "ctrl_r": _E0 | 0x14,
    "insert": _E0 | 0x70, "home": _E0 | 0x6C, "pageup": _E0 | 0x7D, "delete": _E0 | 0x71, "end": _E0 | 0x69,
    "pagedown": _E0 | 0x7A, "up": _E0 | 0x75, "left": _E0 | 0x6B, "down": _E0 | 0x72, "right": _E0 | 0x74,
    "numlock": 0x77, "kp_divide": _E0 | 0x4A, "kp_multiply": 0x7C, "kp_subtract": 0x7B, "kp_add": 0x79,
    "kp_enter": _E0 | 0x5A, "kp_decimal": 0x71, "kp_0": 0x70, "kp_1": 0x69, "kp_2": 0x72, "kp_3": 0x7A,
    "kp_4": 0x6B, "kp_5": 0x73, "kp_6": 0x74, "kp_7": 0x6C, "kp_8": 0x75, "kp_9": 0x7D,
    "scrolllock": 0x7E,
}
SPECIAL_MAKE = {"print": bytes((0xE0, 0x12, 0xE0, 0x7C)), "pause": bytes((0xE1, 0x14, 0x77, 0xE1, 0xF0, 0x14,
                                                                           0xF0, 0x77))}
SPECIAL_BREAK = {"print": bytes((0xE0, 0xF0, 0x7C, 0xE0, 0xF0, 0x12)), "pause": b""}   # Pause has no break code

KEY_NAMES = frozenset(SET2) | frozenset(SPECIAL_MAKE)


def make_code(name: str) -> bytes:
    if name in SPECIAL_MAKE:
        return SPECIAL_MAKE[name]
    code = SET2[name]
    return bytes((0xE0, code & 0xFF)) if code & _E0 else bytes((code,))


def break_code(name: str) -> bytes:
    if name in SPECIAL_BREAK:
        return SPECIAL_BREAK[name]
    code = SET2[name]
    return bytes((0xE0, 0xF0, code & 0xFF)) if code & _E0 else bytes((0xF0, code))


def combo_events(*names: str) -> list[bytes]:
    """Press the keys in order and release them in reverse, e.g. combo_events("ctrl_l", "alt_l", "delete")."""
    events = [make_code(n) for n in names]
    events += [b for b in (break_code(n) for n in reversed(names)) if b]
    return events


# US layout: the key (and whether Shift is held) that produces each printable ASCII character.
_US_UNSHIFTED = {"`": "grave", "-": "minus", "=": "equal", "[": "bracketleft", "]": "bracketright",
                 "\\": "backslash", ";": "semicolon", "'": "apostrophe", ",": "comma", ".": "period",
                 "/": "slash", " ": "space", "\n": "enter", "\t": "tab"}
_US_SHIFTED = {"~": "grave", "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8",
               "(": "9", ")": "0", "_": "minus", "+": "equal", "{": "bracketleft", "}": "bracketright",
               "|": "backslash", ":": "semicolon", '"': "apostrophe", "<": "comma", ">": "period", "?": "slash"}


def char_to_key(ch: str) -> tuple[str, bool] | None:
    """(key name, shift) typing `ch` on a US keyboard, or None if it cannot be typed."""
    if "a" <= ch <= "z" or "0" <= ch <= "9":
        return ch, False
    if "A" <= ch <= "Z":
        return ch.lower(), True
    if ch in _US_UNSHIFTED:
        return _US_UNSHIFTED[ch], False
    if ch in _US_SHIFTED:
        return _US_SHIFTED[ch], True
    if ch == "\r":
        return "enter", False
    return None


def text_events(text: str) -> tuple[list[bytes], int]:
    """Key events that type `text` (US layout; CR LF counts as one Enter). Returns (events, characters skipped)."""
    events: list[bytes] = []
    skipped = 0
    text = text.replace("\r\n", "\n")
    for ch in text:
        key = char_to_key(ch)
        if key is None:
            skipped += 1
            continue
        name, shift = key
        if shift:
            events.append(make_code("shift_l"))
        events += [make_code(name), break_code(name)]
        if shift:
            events.append(break_code("shift_l"))
    return events, skipped


# Linux input event codes (include/uapi/linux/input-event-codes.h) -> key names.
EVDEV_KEYS: dict[int, str] = {
    1: "esc", 2: "1", 3: "2", 4: "3", 5: "4", 6: "5", 7: "6", 8: "7", 9: "8", 10: "9", 11: "0", 12: "minus",
    13: "equal", 14: "backspace", 15: "tab", 16: "q", 17: "w", 18: "e", 19: "r", 20: "t", 21: "y", 22: "u",
    23: "i", 24: "o", 25: "p", 26: "bracketleft", 27: "bracketright", 28: "enter", 29: "ctrl_l", 30: "a",
    31: "s", 32: "d", 33: "f", 34: "g", 35: "h", 36: "j", 37: "k", 38: "l", 39: "semicolon", 40: "apostrophe",
    41: "grave", 42: "shift_l", 43: "backslash", 44: "z", 45: "x", 46: "c", 47: "v", 48: "b", 49: "n", 50: "m",
    51: "comma", 52: "period", 53: "slash", 54: "shift_r", 55: "kp_multiply", 56: "alt_l", 57: "space",
    58: "capslock", 59: "f1", 60: "f2", 61: "f3", 62: "f4", 63: "f5", 64: "f6", 65: "f7", 66: "f8", 67: "f9",
    68: "f10", 69: "numlock", 70: "scrolllock", 71: "kp_7", 72: "kp_8", 73: "kp_9", 74: "kp_subtract",
    75: "kp_4", 76: "kp_5", 77: "kp_6", 78: "kp_add", 79: "kp_1", 80: "kp_2", 81: "kp_3", 82: "kp_0",
    83: "kp_decimal", 86: "less", 87: "f11", 88: "f12", 96: "kp_enter", 97: "ctrl_r", 98: "kp_divide",
    99: "print", 100: "alt_r", 102: "home", 103: "up", 104: "pageup", 105: "left", 106: "right", 107: "end",
    108: "down", 109: "pagedown", 110: "insert", 111: "delete", 119: "pause", 125: "meta_l", 126: "meta_r",
    127: "menu",
}
