"""A small AML (ACPI Machine Language) assembler: the encodings of ACPI 6.4, 20.2 "AML Grammar Definition" that
Vireo's DSDT uses, as functions returning bytes that nest the way ASL does.

Package lengths follow 20.2.4 "Package Length Encoding": the length counts its own encoding bytes; up to 63
fits in one byte, otherwise bits 7:6 of the lead byte give the count of following bytes, its bits 3:0 hold the
low nibble and each following byte the next eight bits.
"""
from __future__ import annotations

import struct

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP, METHOD_OP, RETURN_OP = 0x08, 0x10, 0x11, 0x12, 0x14, 0xA4
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, PARENT_PREFIX, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x5E, 0x2E, 0x2F


def pkg_length(content_len: int) -> bytes:
    """The PkgLength encoding for `content_len` bytes that follow it."""
    if content_len + 1 <= 0x3F:
        return bytes((content_len + 1,))
    for extra in (1, 2, 3):
        total = content_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = bytearray([(extra << 6) | (total & 0xF)])
            rest = total >> 4
            for _ in range(extra):
                out.append(rest & 0xFF)
                rest >>= 8
            return bytes(out)
    raise ValueError(f"AML package of {content_len} bytes is too large to encode")


def decode_pkg_length(data: bytes, offset: int) -> tuple[int, int]:
    """(total length including the encoding, bytes the encoding took) at data[offset]."""
    lead = data[offset]
    extra = lead >> 6
    if extra == 0:
        return lead & 0x3F, 1
    value = lead & 0xF
    for i in range(extra):
        value |= data[offset + 1 + i] << (4 + 8 * i)
    return value, 1 + extra


def name_seg(seg: str) -> bytes:
    """A 4-character NameSeg: a lead of A-Z or _, then A-Z, 0-9 or _, padded with _."""
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_") or not all(
            c.isupper() or c.isdigit() or c == "_" for c in seg) or not seg.isascii():
        raise ValueError(f"invalid AML name segment {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    r"""A NameString: an optional root (\) or parent (^) prefix and dot-separated segments."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += bytes((ROOT_CHAR if path[0] == "\\" else PARENT_PREFIX,))
        path = path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + b"\x00"
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes((DUAL_NAME_PREFIX,)) + segs[0] + segs[1]
    return prefix + bytes((MULTI_NAME_PREFIX, len(segs))) + b"".join(segs)


def integer(value: int) -> bytes:
    """The shortest ComputationalData for an unsigned integer."""
    if value < 0 or value > 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"AML integer out of range: {value}")
    if value == 0:
        return bytes((ZERO_OP,))
    if value == 1:
        return bytes((ONE_OP,))
    if value <= 0xFF:
        return bytes((BYTE_PREFIX, value))
    if value <= 0xFFFF:
        return bytes((WORD_PREFIX,)) + struct.pack("<H", value)
    if value <= 0xFFFF_FFFF:
        return bytes((DWORD_PREFIX,)) + struct.pack("<I", value)
    return bytes((QWORD_PREFIX,)) + struct.pack("<Q", value)


def package(*elements: bytes) -> bytes:
    """Package(){...}; elements are already-encoded data objects."""
    if len(elements) > 255:
        raise ValueError("an AML Package holds at most 255 elements")
    body = bytes((len(elements),)) + b"".join(elements)
    return bytes((PACKAGE_OP,)) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes((BUFFER_OP,)) + pkg_length(len(body)) + body


def name(path: str, obj: bytes) -> bytes:
    """Name(path, obj)."""
    return bytes((NAME_OP,)) + name_string(path) + obj


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes((SCOPE_OP,)) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes((EXT_OP_PREFIX, DEVICE_OP)) + pkg_length(len(body)) + body


def method(path: str, nargs: int, *terms: bytes, serialized: bool = False) -> bytes:
    flags = (nargs & 7) | (int(serialized) << 3)
    body = name_string(path) + bytes((flags,)) + b"".join(terms)
    return bytes((METHOD_OP,)) + pkg_length(len(body)) + body


def return_(obj: bytes) -> bytes:
    return bytes((RETURN_OP,)) + obj


def eisa_id(text: str) -> bytes:
    """EISAID("PNP0501"): three letters (5 bits each) and four hex digits, stored big-endian as a DWord."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"invalid EISA id {text!r}")
    letters = [(ord(c) - 0x40) & 0x1F for c in text[:3]]
    value = (letters[0] << 26) | (letters[1] << 21) | (letters[2] << 16) | int(text[3:], 16)
    return integer(struct.unpack("<I", struct.pack(">I", value))[0])


# -- resource descriptors (ACPI 6.4, 6.4 "Resource Data Types for ACPI") for _CRS buffers ---------------------

def io_port(base: int, length: int) -> bytes:
    """IO(Decode16, base, base, 1, length): a fixed 16-bit-decoded I/O range."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, 1, length)


def irq_no_flags(irq: int) -> bytes:
    """IRQNoFlags(){irq}: an edge-triggered, active-high ISA interrupt."""
    return struct.pack("<BH", 0x22, 1 << irq)


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(){...}: the descriptors and an End Tag whose checksum 0 means "treat as valid"."""
    return buffer(b"".join(descriptors) + bytes((0x79, 0x00)))


def word_bus_number(first: int, last: int) -> bytes:
    """WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, first, last, 0, count) (6.4.3.5.3)."""
    return struct.pack("<BHBBBHHHHH", 0x88, 13, 2, 0x0C, 0, 0, first, last, 0, last - first + 1)


def word_io(first: int, last: int) -> bytes:
    """WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...): an I/O window a bridge decodes."""
    return struct.pack("<BHBBBHHHHH", 0x88, 13, 1, 0x0C, 0x03, 0, first, last, 0, last - first + 1)


def dword_memory(first: int, last: int) -> bytes:
    """DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...) (6.4.3.5.2)."""
    return struct.pack("<BHBBBIIIII", 0x87, 23, 0, 0x0C, 0x01, 0, first, last, 0, last - first + 1)


def qword_memory(first: int, last: int) -> bytes:
    """QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...) (6.4.3.5.1):
    a memory window that may lie above 4 GiB."""
    return struct.pack("<BHBBBQQQQQ", 0x8A, 43, 0, 0x0C, 0x01, 0, first, last, 0, last - first + 1)
