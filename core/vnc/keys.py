"""VNC key events -> the console's PS/2 set-2 key events (core.keymap).

Two ways in:
- RFB KeyEvent (RFC 6143 7.5.4) carries an X keysym (X Window System Protocol, appendix A, and X11/keysymdef.h):
  the character or function the client's layout produced. It is mapped to the US-layout key that types it; a
  character that needs Shift (``A``, ``!``) is wrapped in Shift when the client is not holding Shift itself, so a
  client that sends bare keysyms (vncdotool's ``type``) still types what it meant.
- QEMU's extended key event (rfbproto.rst "QEMU Extended Key Event Message") carries the key's position as an XT
  (set 1) scan code, 0xE0-prefixed keys as 0x80 | code, which is what lets any layout arrive exactly. Set-1 codes
  below 0x59 equal Linux's evdev codes, which core.keymap.EVDEV_KEYS names; the E0 keys are listed here.
"""
from __future__ import annotations

from core.keymap import EVDEV_KEYS, SET2, break_code, char_to_key, make_code

KEYSYMS: dict[int, str] = {
    0xFF08: "backspace", 0xFF09: "tab", 0xFF0D: "enter", 0xFF13: "pause", 0xFF14: "scrolllock", 0xFF1B: "esc",
    0xFF50: "home", 0xFF51: "left", 0xFF52: "up", 0xFF53: "right", 0xFF54: "down", 0xFF55: "pageup",
    0xFF56: "pagedown", 0xFF57: "end", 0xFF61: "print", 0xFF63: "insert", 0xFF67: "menu", 0xFF7F: "numlock",
    0xFF8D: "kp_enter", 0xFFAA: "kp_multiply", 0xFFAB: "kp_add", 0xFFAD: "kp_subtract", 0xFFAE: "kp_decimal",
    0xFFAF: "kp_divide", 0xFF95: "kp_7", 0xFF96: "kp_4", 0xFF97: "kp_8", 0xFF98: "kp_6", 0xFF99: "kp_2",
    0xFF9A: "kp_9", 0xFF9B: "kp_3", 0xFF9C: "kp_1", 0xFF9D: "kp_5", 0xFF9E: "kp_0", 0xFF9F: "kp_decimal",
    0xFFE1: "shift_l", 0xFFE2: "shift_r", 0xFFE3: "ctrl_l", 0xFFE4: "ctrl_r", 0xFFE5: "capslock",
    0xFFE7: "meta_l", 0xFFE8: "meta_r", 0xFFE9: "alt_l", 0xFFEA: "alt_r", 0xFFEB: "meta_l", 0xFFEC: "meta_r",
    0xFE03: "alt_r", 0xFFFF: "delete",
    **{0xFFB0 + i: f"kp_{i}" for i in range(10)},
    **{0xFFBE + i: f"f{i + 1}" for i in range(12)},
}
SHIFTS = frozenset((0xFFE1, 0xFFE2))

# XT codes of the E0-prefixed keys (QEMU's "qnum": 0x80 | the byte after E0).
XT_EXTENDED: dict[int, str] = {
    0x9C: "kp_enter", 0x9D: "ctrl_r", 0xB5: "kp_divide", 0xB7: "print", 0xB8: "alt_r", 0xC6: "pause",
    0xC7: "home", 0xC8: "up", 0xC9: "pageup", 0xCB: "left", 0xCD: "right", 0xCF: "end", 0xD0: "down",
    0xD1: "pagedown", 0xD2: "insert", 0xD3: "delete", 0xDB: "meta_l", 0xDC: "meta_r", 0xDD: "menu",
}


def xt_key(code: int) -> str | None:
    """The key name of an XT scan code from QEMU's extended key event, or None for a key the keyboard lacks."""
    if code < 0x80:
        name = EVDEV_KEYS.get(code)
        return name if name in SET2 or name in ("print", "pause") else None
    return XT_EXTENDED.get(code)


def keysym_key(keysym: int) -> tuple[str, bool] | None:
    """(key name, needs Shift) typing `keysym` on a US keyboard, or None."""
    if keysym in KEYSYMS:
        return KEYSYMS[keysym], False
    if 0x20 <= keysym <= 0x7E:
        return char_to_key(chr(keysym))
    return None


class KeyTranslator:
    """One client's key state: which keys it holds down (so its disconnect releases them), and its Shift."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}         # key name -> keysym or scan code that pressed it
        self.shift_down = 0

    def keysym_event(self, keysym: int, down: bool) -> list[bytes]:
        key = keysym_key(keysym)
        if key is None:
            return []
        name, needs_shift = key
        if keysym in SHIFTS:
            self.shift_down = max(0, self.shift_down + (1 if down else -1))
        if down:
            events = [make_code(name)]
            if needs_shift and not self.shift_down:
                events = [make_code("shift_l"), *events, break_code("shift_l")]
            self.held[name] = keysym
            return events
        if name not in self.held:
            return []
        del self.held[name]
        brk = break_code(name)
        return [brk] if brk else []

    def scancode_event(self, code: int, down: bool) -> list[bytes]:
        name = xt_key(code)
        if name is None:
            return []
        if down:
            self.held[name] = code
            return [make_code(name)]
        if self.held.pop(name, None) is None:
            return []
        brk = break_code(name)
        return [brk] if brk else []

    def release_all(self) -> list[bytes]:
        """Break codes of every key still held (a client that left mid-keypress must not leave it stuck)."""
        events = [break_code(name) for name in self.held]
        self.held.clear()
        self.shift_down = 0
        return [e for e in events if e]


# The other way, for the RFB client (core/vnc/client.py): a console's set-2 key event -> (key name, pressed).
_SET2_NAMES = {code: name for name, code in SET2.items()}
XT_CODES = {**{name: code for code, name in EVDEV_KEYS.items() if code < 0x59},
            **{name: code for code, name in XT_EXTENDED.items()}}
KEYSYM_OF = {**{name: sym for sym, name in reversed(list(KEYSYMS.items()))},
             **{name: ord(name) for name in SET2 if len(name) == 1},
             **{name: ord(ch) for ch, name in (("`", "grave"), ("-", "minus"), ("=", "equal"), ("[", "bracketleft"),
                                               ("]", "bracketright"), ("\\", "backslash"), (";", "semicolon"),
                                               ("'", "apostrophe"), (",", "comma"), (".", "period"), ("/", "slash"),
                                               (" ", "space"), ("<", "less"))}}


def set2_key(event: bytes) -> tuple[str, bool] | None:
    """(key name, pressed) of one set-2 make or break code as core.keymap produces them, or None."""
    for name in ("print", "pause"):
        if event == make_code(name):
            return name, True
        if event and event == break_code(name):
            return name, False
    pressed = b"\xf0" not in event
    body = event.replace(b"\xf0", b"")
    if len(body) == 1:
        code = body[0]
    elif len(body) == 2 and body[0] == 0xE0:
        code = 0x100 | body[1]
    else:
        return None
    name = _SET2_NAMES.get(code)
    return (name, pressed) if name else None
