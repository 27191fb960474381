"""ISO 9660 images for tests, laid out byte by byte as ECMA-119 8.4 (the primary volume descriptor) and El Torito
1.0 2.0 (the boot record volume descriptor) describe them: xorriso/genisoimage are not installed on the test
machines. Only the volume descriptors are real; the rest is zeros (no directory tree, no boot image), which is all
a probe of the image's kind reads."""
from __future__ import annotations

import struct
from pathlib import Path

SECTOR = 2048


def iso_bytes(volume_id: str, el_torito: bool) -> bytes:
    """An ISO 9660 image's first sectors: 16 system-area sectors, the primary volume descriptor (sector 16), an
    El Torito boot record (sector 17) when asked, and the set terminator (ECMA-119 8.3)."""
    pvd = bytearray(SECTOR)
    pvd[0:7] = b"\x01CD001\x01"                                 # type 1, standard identifier, version 1
    pvd[8:40] = b"LINUX".ljust(32)                              # system identifier
    pvd[40:72] = volume_id.encode("ascii").ljust(32)            # volume identifier, a-characters padded with spaces
    pvd[80:88] = struct.pack("<I", 64) + struct.pack(">I", 64)  # volume space size, both-endian
    descriptors = [bytes(pvd)]
    if el_torito:
        boot = bytearray(SECTOR)
        boot[0:7] = b"\x00CD001\x01"                            # type 0: boot record
        boot[7:39] = b"EL TORITO SPECIFICATION".ljust(32, b"\0")
        boot[0x47:0x4B] = struct.pack("<I", 19)                 # the boot catalog's sector
        descriptors.append(bytes(boot))
    terminator = bytearray(SECTOR)
    terminator[0:7] = b"\xffCD001\x01"
    descriptors.append(bytes(terminator))
    image = bytes(16 * SECTOR) + b"".join(descriptors)
    return image.ljust(64 * SECTOR, b"\0")


def write_iso(path: Path, volume_id: str = "Debian 12 amd64", el_torito: bool = True, size: int = 0) -> Path:
    """`path` holding iso_bytes(...), padded with zeros to `size` bytes when that is larger (sparse)."""
    path.write_bytes(iso_bytes(volume_id, el_torito))
    if size > path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(size)
    return path
