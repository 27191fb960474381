"""Qt key events -> the engine's key names (core/keymap.py).

Prefers the physical key: under X11 (xcb) and Wayland Qt's native scan code is the Linux evdev code + 8, which
identifies the key position independently of the host's layout, and tells left from right modifiers. Elsewhere
(offscreen, other platforms) the Qt key code and the keypad modifier decide.
"""
from __future__ import annotations

from PyQt6.QtCore import Qt
from PyQt6.QtGui import QGuiApplication, QKeyEvent

from core.host import EVDEV_KEYS

K = Qt.Key
_QT_KEYS: dict[int, str] = {
    K.Key_Escape: "esc", K.Key_Tab: "tab", K.Key_Backtab: "tab", K.Key_Backspace: "backspace",
    K.Key_Return: "enter", K.Key_Enter: "kp_enter", K.Key_Insert: "insert", K.Key_Delete: "delete",
    K.Key_Pause: "pause", K.Key_Print: "print", K.Key_SysReq: "print", K.Key_Home: "home", K.Key_End: "end",
    K.Key_Left: "left", K.Key_Up: "up", K.Key_Right: "right", K.Key_Down: "down", K.Key_PageUp: "pageup",
    K.Key_PageDown: "pagedown", K.Key_Shift: "shift_l", K.Key_Control: "ctrl_l", K.Key_Meta: "meta_l",
    K.Key_Alt: "alt_l", K.Key_AltGr: "alt_r", K.Key_CapsLock: "capslock", K.Key_NumLock: "numlock",
    K.Key_ScrollLock: "scrolllock", K.Key_Menu: "menu", K.Key_Space: "space",
    K.Key_Minus: "minus", K.Key_Underscore: "minus", K.Key_Equal: "equal", K.Key_Plus: "equal",
    K.Key_BracketLeft: "bracketleft", K.Key_BraceLeft: "bracketleft", K.Key_BracketRight: "bracketright",
    K.Key_BraceRight: "bracketright", K.Key_Backslash: "backslash", K.Key_Bar: "backslash",
    K.Key_Semicolon: "semicolon", K.Key_Colon: "semicolon", K.Key_Apostrophe: "apostrophe",
    K.Key_QuoteDbl: "apostrophe", K.Key_QuoteLeft: "grave", K.Key_AsciiTilde: "grave", K.Key_Comma: "comma",
    K.Key_Less: "comma", K.Key_Period: "period", K.Key_Greater: "period", K.Key_Slash: "slash",
    K.Key_Question: "slash", K.Key_Exclam: "1", K.Key_At: "2", K.Key_NumberSign: "3", K.Key_Dollar: "4",
    K.Key_Percent: "5", K.Key_AsciiCircum: "6", K.Key_Ampersand: "7", K.Key_Asterisk: "8",
    K.Key_ParenLeft: "9", K.Key_ParenRight: "0",
}
for _i in range(1, 13):
    _QT_KEYS[getattr(K, f"Key_F{_i}")] = f"f{_i}"
for _c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _QT_KEYS[getattr(K, f"Key_{_c}")] = _c.lower()
for _d in "0123456789":
    _QT_KEYS[getattr(K, f"Key_{_d}")] = _d

_KEYPAD: dict[int, str] = {
    K.Key_Slash: "kp_divide", K.Key_Asterisk: "kp_multiply", K.Key_Minus: "kp_subtract", K.Key_Plus: "kp_add",
    K.Key_Enter: "kp_enter", K.Key_Period: "kp_decimal", K.Key_Comma: "kp_decimal", K.Key_Delete: "kp_decimal",
    K.Key_Insert: "kp_0", K.Key_End: "kp_1", K.Key_Down: "kp_2", K.Key_PageDown: "kp_3", K.Key_Left: "kp_4",
    K.Key_Clear: "kp_5", K.Key_Right: "kp_6", K.Key_Home: "kp_7", K.Key_Up: "kp_8", K.Key_PageUp: "kp_9",
}
for _d in "0123456789":
    _KEYPAD[getattr(K, f"Key_{_d}")] = f"kp_{_d}"


def _uses_evdev_codes() -> bool:
    name = QGuiApplication.platformName()
    return name in ("xcb", "wayland") or name.startswith("wayland")


def key_name(event: QKeyEvent) -> str | None:
    """The engine key name for a Qt key event, or None for keys a PC keyboard does not have."""
    if _uses_evdev_codes():
        code = event.nativeScanCode() - 8
        if code in EVDEV_KEYS:
            return EVDEV_KEYS[code]
    key = event.key()
    if event.modifiers() & Qt.KeyboardModifier.KeypadModifier and key in _KEYPAD:
        return _KEYPAD[key]
    return _QT_KEYS.get(key)


# The key combinations that, pressed together and released with no other key between, toggle the console's grab:
# Ctrl+Alt as QEMU's GTK display and virt-manager have it, or Ctrl+Alt+Shift for a guest that needs Ctrl+Alt alone.
GRAB_COMBOS = ("ctrl+alt", "ctrl+alt+shift")


def grab_label(combo: str) -> str:
    """'ctrl+alt' -> 'Ctrl+Alt'."""
    return "+".join(part.capitalize() for part in combo.split("+"))


def key_family(name: str) -> str:
    """A modifier's family, left and right alike ('ctrl_r' -> 'ctrl'); other keys are their own."""
    head, _, side = name.partition("_")
    return head if side in ("l", "r") and head in ("ctrl", "alt", "shift", "meta") else name
