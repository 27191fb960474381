"""Scan code set 2 tables and text typing (core/keymap.py)."""
from __future__ import annotations

from core.keymap import EVDEV_KEYS, KEY_NAMES, break_code, combo_events, make_code, text_events


def test_make_and_break_codes():
    assert make_code("a") == b"\x1c" and break_code("a") == b"\xf0\x1c"
    assert make_code("enter") == b"\x5a"
    assert make_code("kp_enter") == b"\xe0\x5a" and break_code("kp_enter") == b"\xe0\xf0\x5a"
    assert make_code("ctrl_r") == b"\xe0\x14" and make_code("ctrl_l") == b"\x14"
    assert make_code("f7") == b"\x83"
    assert make_code("print") == b"\xe0\x12\xe0\x7c" and break_code("print") == b"\xe0\xf0\x7c\xe0\xf0\x12"
    assert make_code("pause") == b"\xe1\x14\x77\xe1\xf0\x14\xf0\x77" and break_code("pause") == b""


def test_every_key_has_distinct_codes_and_evdev_names_exist():
    codes = [make_code(n) for n in KEY_NAMES]
    assert len(set(codes)) == len(codes)
    assert set(EVDEV_KEYS.values()) <= KEY_NAMES
    assert len(KEY_NAMES) >= 104


def test_combo_releases_in_reverse():
    assert combo_events("ctrl_l", "alt_l", "backspace") == [b"\x14", b"\x11", b"\x66", b"\xf0\x66", b"\xf0\x11",
                                                            b"\xf0\x14"]


def test_text_events_use_shift_for_capitals_and_symbols():
    events, skipped = text_events("Hi!\r\n")
    assert skipped == 0
    assert events == [b"\x12", b"\x33", b"\xf0\x33", b"\xf0\x12",        # H
                      b"\x43", b"\xf0\x43",                              # i
                      b"\x12", b"\x16", b"\xf0\x16", b"\xf0\x12",        # !
                      b"\x5a", b"\xf0\x5a"]                              # CR LF -> one Enter
    assert text_events("é")[1] == 1
