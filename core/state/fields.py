"""Declared device state: each device model lists its saved fields with their types and ranges, and the
helpers here take them from the object (capture) and put them back (apply) after checking every value.

A state file is untrusted input (it may be corrupt, or written by someone else): apply() checks the whole
record first -- every field present, the right type, inside its range, lists of the right length -- and only
then assigns, so a bad file leaves the device as it was and gives one line naming the field. Host-monotonic
times (a timer's start, a deadline) are saved relative to the moment of saving and rebased on the moment of
restoring: the guest does not see the time the VM spent saved.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_NS = 1 << 62


class StateError(ValueError):
    """A state record that cannot be loaded (one line: which thing, what is wrong, what to do)."""


@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Bool:
    pass


@dataclass(frozen=True)
class Bytes:
    length: int | None = None      # exact length, or None with max_length
    max_length: int = 1 << 26


@dataclass(frozen=True)
class Ints:
    """A list of ints: exactly `count` (or up to `max_count`) items in [lo, hi]."""
    count: int | None = None
    lo: int = 0
    hi: int = 0xFFFF_FFFF_FFFF_FFFF
    max_count: int = 4096


@dataclass(frozen=True)
class Optional:
    inner: Any


@dataclass(frozen=True)
class Mono:
    """A host-monotonic time in ns, saved relative to the save moment."""


@dataclass(frozen=True)
class TimerField:
    """A core.timers.Timer attribute: saved as the time left (or None when not armed)."""


@dataclass(frozen=True)
class Str:
    max_length: int = 256


U8, U16, U32, U64 = Int(0, 0xFF), Int(0, 0xFFFF), Int(0, 0xFFFF_FFFF), Int()
BOOL = Bool()
MONO = Mono()
TIMER = TimerField()


def u(bits: int) -> Int:
    return Int(0, (1 << bits) - 1)


def check(value: Any, kind: Any, where: str, now: int = 0) -> Any:
    """`value` from a state file, checked against `kind`; returns what the device attribute should be."""
    if isinstance(kind, Int):
        if type(value) is not int or not kind.lo <= value <= kind.hi:
            raise StateError(f"{where}: {value!r} is not an integer in {kind.lo:#x}..{kind.hi:#x}")
        return value
    if isinstance(kind, Bool):
        if type(value) is not bool:
            raise StateError(f"{where}: {value!r} is not true/false")
        return value
    if isinstance(kind, Bytes):
        if not isinstance(value, bytes | bytearray):
            raise StateError(f"{where}: expected bytes, got {type(value).__name__}")
        if kind.length is not None and len(value) != kind.length:
            raise StateError(f"{where}: {len(value)} bytes, expected {kind.length}")
        if len(value) > kind.max_length:
            raise StateError(f"{where}: {len(value)} bytes is more than {kind.max_length}")
        return bytes(value)
    if isinstance(kind, Ints):
        if not isinstance(value, list):
            raise StateError(f"{where}: expected a list, got {type(value).__name__}")
        if kind.count is not None and len(value) != kind.count:
            raise StateError(f"{where}: {len(value)} items, expected {kind.count}")
        if len(value) > kind.max_count:
            raise StateError(f"{where}: {len(value)} items is more than {kind.max_count}")
        item = Int(kind.lo, kind.hi)
        return [check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(kind, Optional):
        return None if value is None else check(value, kind.inner, where, now)
    if isinstance(kind, Mono):
        if type(value) is not int or not -MAX_NS <= value <= MAX_NS:
            raise StateError(f"{where}: {value!r} is not a time offset in ns")
        return now + value
    if isinstance(kind, TimerField):
        if value is not None and (type(value) is not int or not -MAX_NS <= value <= MAX_NS):
            raise StateError(f"{where}: {value!r} is not a timer's time left in ns")
        return value
    if isinstance(kind, Str):
        if not isinstance(value, str) or len(value) > kind.max_length:
            raise StateError(f"{where}: {value!r} is not a string of at most {kind.max_length} characters")
        return value
    raise TypeError(f"unknown field kind {kind!r}")


def capture(obj: Any, spec: Mapping[str, Any], now: int) -> dict[str, Any]:
    """The fields of `spec` taken from `obj` (Mono ones relative to `now`, timers as time left)."""
    out: dict[str, Any] = {}
    for name, kind in spec.items():
        value = getattr(obj, name)
        if isinstance(kind, Mono):
            value = value - now
        elif isinstance(kind, TimerField):
            value = None if value.deadline is None else value.deadline - now
        elif isinstance(kind, Optional) and isinstance(kind.inner, Mono) and value is not None:
            value = value - now
        elif isinstance(kind, Bytes) and value is not None:
            value = bytes(value)
        elif isinstance(kind, Ints):
            value = list(value)
        out[name] = value
    return out


def validate(state: Any, spec: Mapping[str, Any], where: str, now: int) -> dict[str, Any]:
    """Every field of `spec` checked (and converted) from `state`; unknown fields are refused too."""
    if not isinstance(state, dict):
        raise StateError(f"{where}: expected a record, got {type(state).__name__}")
    extra = set(state) - set(spec)
    if extra:
        raise StateError(f"{where}: unknown field {sorted(extra)[0]!r}")
    out = {}
    for name, kind in spec.items():
        if name not in state:
            raise StateError(f"{where}: field {name!r} is missing")
        out[name] = check(state[name], kind, f"{where}.{name}", now)
    return out


def apply(obj: Any, checked: Mapping[str, Any], spec: Mapping[str, Any], now: int) -> None:
    """Assign fields already checked by validate(); timers are re-armed at their time left."""
    for name, kind in spec.items():
        value = checked[name]
        if isinstance(kind, TimerField):
            timer = getattr(obj, name)
            if value is None:
                timer.cancel()
            else:
                timer.arm(now + value)
        elif isinstance(kind, Bytes) and isinstance(getattr(obj, name, None), bytearray):
            getattr(obj, name)[:] = value
        else:
            setattr(obj, name, value)


def expect_record(state: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A dict with exactly `keys` (for hand-written records)."""
    if not isinstance(state, dict):
        raise StateError(f"{where}: expected a record, got {type(state).__name__}")
    if set(state) != set(keys):
        missing = set(keys) - set(state)
        what = f"field {sorted(missing)[0]!r} is missing" if missing else \
            f"unknown field {sorted(set(state) - set(keys))[0]!r}"
        raise StateError(f"{where}: {what}")
    return state
