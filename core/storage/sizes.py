"""Size strings as qemu-img reads and prints them: `10G`, `512M`, `1.5T`, `4096` (bytes), `+1G` (relative).

Suffixes are binary multiples, case-insensitive except that only `k`/`K` exist for kibibytes: k K M G T P E
(qemu-img's `b` 512-byte sectors are not accepted). A fraction must come out to a whole number of bytes.
"""
from __future__ import annotations

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_SIZE_PATTERN = r"^\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtTpPeE]?)(?:i?[bB])?\s*$"


class SizeError(ValueError):
    """The text is not a size qemu-img would accept."""


def parse_size(text: str, allow_relative: bool = False) -> tuple[str, int]:
    """Parse `text` into (sign, bytes); sign is '' for an absolute size, '+' or '-' for a relative one."""
    import re  # here: listing snapshots (format_size) needs no re (re caches the compiled pattern)
    match = re.match(_SIZE_PATTERN, text)
    if not match:
        raise SizeError(f"invalid size {text!r}: use a number of bytes or a number with a suffix k, M, G, T "
                        "(e.g. 10G)")
    sign, number, suffix = match.groups()
    if sign and not allow_relative:
        raise SizeError(f"invalid size {text!r}: a relative size (+/-) is only accepted by resize")
    if match.group(0).rstrip().lower().endswith("b") and not suffix:
        raise SizeError(f"invalid size {text!r}: 512-byte sector sizes ('b') are not supported; give bytes "
                        "or a k/M/G/T suffix")
    from fractions import Fraction  # here: listing snapshots (format_size) needs no fractions module
    value = Fraction(number) * _SUFFIX[suffix.upper()]
    if value.denominator != 1:
        raise SizeError(f"invalid size {text!r}: it is not a whole number of bytes")
    if value > (1 << 63) - 1:
        raise SizeError(f"invalid size {text!r}: larger than 8 EiB")
    return sign, int(value)


def format_size(n: int) -> str:
    """Human-readable binary size the way qemu-img prints it: '1 GiB', '196 KiB', '1.5 MiB', '512 B'."""
    if n < 1024:
        return f"{n} B"
    for unit, scale in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                        ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
            return f"{text} {unit}"
    return f"{n} B"
