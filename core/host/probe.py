"""What a file chosen for a VM definition is, read from its first bytes, for the Host API's probe_file (issue 17:
a README was accepted as the kernel and the failure only came at start, after the disk was made).

Each role is checked against the format the engine will read it as:
  * kernel: the Linux x86 boot protocol's setup header (Documentation/arch/x86/boot.rst: "HdrS" at 0x202, the
    protocol version at 0x206, the kernel_version string pointer at 0x20e), validated by core/boot/linux.py's own
    parse_bzimage; or a Multiboot v1 header in the first 8192 bytes (core/boot/multiboot.py).
  * initrd: a compressed archive the kernel unpacks (gzip 1f 8b, xz fd '7zXZ', zstd 28 b5 2f fd, lz4 legacy
    02 21 4c 18 or frame 04 22 4d 18, bzip2 'BZh', lzma 5d 00 00) or an uncompressed cpio "newc" ("070701") /
    "crc" ("070702") archive (Documentation/driver-api/early-userspace/buffer-format.rst).
  * disk: qcow2 by its signature (core/storage's is_qcow2, the header's virtual size at offset 24), else raw —
    any bytes are a valid raw disk, but a text file is almost certainly the wrong file and is refused.
  * iso: ISO 9660 (ECMA-119 8.4): the primary volume descriptor at sector 16 (0x8000) with "CD001" at 0x8001
    and the volume identifier at 0x8028; El Torito's boot record volume descriptor, which El Torito 1.0 puts at
    sector 17, makes it bootable. Any ISO serves a CD-ROM drive (a data disc too); boot-iso, what an install
    boots from, must be bootable.

At most PROBE_BYTES are read, from the start of the file, so probing a 20 GiB
image or a FIFO costs nothing.
"""
from __future__ import annotations

import os
import stat
import struct

from core.boot.errors import BootError
from core.boot.linux import is_bzimage, parse_bzimage
from core.boot.multiboot import MB_AOUT_KLUDGE, SEARCH_LIMIT, find_header
from core.host.api import PROBE_ROLES, FileProbe, HostError
from core.storage.qcow2_header import is_qcow2
from core.storage.sizes import format_size

PROBE_BYTES = 64 * 1024        # the whole real-mode setup of a bzImage (at most 1 + 63 sectors in practice)
MAX_KERNEL_BYTES = 512 << 20   # a bigger "kernel" is not one; parse_bzimage is given the header and the size
ISO_PVD = 16 * 2048            # ECMA-119: the volume descriptor set starts at logical sector 16
ISO_BOOT_RECORD = 17 * 2048    # El Torito 1.0, 2.0: the boot record volume descriptor at sector 17
EL_TORITO_ID = b"EL TORITO SPECIFICATION"

_INITRD_MAGICS = (
    (b"\x1f\x8b", "gzip-compressed cpio initramfs"),
    (b"\xfd7zXZ\x00", "xz-compressed cpio initramfs"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed cpio initramfs"),
    (b"\x02\x21\x4c\x18", "lz4-compressed cpio initramfs"),
    (b"\x04\x22\x4d\x18", "lz4-compressed cpio initramfs"),
    (b"BZh", "bzip2-compressed cpio initramfs"),
    (b"\x5d\x00\x00", "lzma-compressed cpio initramfs"),
    (b"070701", "cpio initramfs (newc, uncompressed)"),
    (b"070702", "cpio initramfs (crc, uncompressed)"),
)


def _read(path: str, offset: int, length: int) -> tuple[bytes, int]:
    """Up to `length` bytes at `offset` and the file's size; HostError (one line naming it) when it cannot be."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise HostError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise HostError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise HostError(f"{path} is a folder: choose a file")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise HostError(f"{path} is not a regular file or block device: choose a file")
        size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, length, offset), size
    except OSError as exc:
        raise HostError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _is_text(head: bytes) -> bool:
    """UTF-8 (or ASCII) with no control characters other than whitespace: a README, a config file, a script."""
    if not head:
        return False
    sample = head[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:      # a multibyte character cut at the end of the sample is fine
            return False
        text = sample[:exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\n\r\f" for c in text)


def _other(head: bytes, size: int) -> str:
    """Words for a file that is not what its role wants."""
    if size == 0:
        return "empty file"
    if _is_text(head):
        return "text file"
    if is_qcow2(head):
        return "qcow2 disk image"
    if len(head) > ISO_PVD + 6 and head[ISO_PVD + 1:ISO_PVD + 6] == b"CD001":
        return "ISO 9660 image"
    if head.startswith(b"\x7fELF"):
        return "ELF file"
    for magic, _ in _INITRD_MAGICS:
        if head.startswith(magic):
            return "compressed or cpio archive"
    if is_bzimage(head):
        return "Linux kernel bzImage"
    return "binary file of unknown format"


def _refuse(path: str, head: bytes, size: int, role: str, expected: str) -> FileProbe:
    what = _other(head, size)
    noun = {"kernel": "a kernel", "initrd": "an initrd", "disk": "a disk image", "iso": "an ISO image",
            "boot-iso": "an ISO image"}[role]
    article = "an" if what[0] in "aeiouAEIOU" else "a"
    return FileProbe(False, f"{what} (not {noun})", f"{path} is {article} {what}, not {expected}: choose another file")


def _probe_kernel(path: str, head: bytes, size: int) -> FileProbe:
    if is_bzimage(head):
        if size > MAX_KERNEL_BYTES:
            return FileProbe(False, "oversized bzImage", f"{path} is {format_size(size)}: too big for a kernel")
        try:
            # The header's sizes are checked against the whole file's size; only its start was read.
            hdr = parse_bzimage(head, path, file_size=size)
        except BootError as exc:
            return FileProbe(False, "Linux kernel bzImage (unusable)", str(exc))
        version = hdr.kernel_version.split(" ", 1)[0]
        return FileProbe(True, f"Linux kernel bzImage {version} (boot protocol {hdr.protocol})".replace("  ", " "))
    multiboot = find_header(head[:SEARCH_LIMIT])
    if multiboot is not None:
        # The loader follows the a.out kludge's addresses when flag 16 is set, else the ELF program headers.
        layout = "a.out kludge" if multiboot.flags & MB_AOUT_KLUDGE else "ELF"
        return FileProbe(True, f"Multiboot kernel ({layout})")
    return _refuse(path, head, size, "kernel", "a Linux bzImage or Multiboot kernel")


def _probe_initrd(path: str, head: bytes, size: int) -> FileProbe:
    for magic, kind in _INITRD_MAGICS:
        if head.startswith(magic):
            return FileProbe(True, kind)
    return _refuse(path, head, size, "initrd", "an initramfs (a cpio archive, possibly gzip/xz/zstd/lz4 compressed)")


def _probe_disk(path: str, head: bytes, size: int) -> FileProbe:
    if is_qcow2(head):
        virtual = struct.unpack_from(">Q", head, 24)[0] if len(head) >= 32 else 0
        return FileProbe(True, f"qcow2 disk image, {format_size(virtual)} virtual")
    if size == 0:
        return FileProbe(False, "empty file (not a disk)", f"{path} is an empty file, not a disk image: "
                                                           "choose an image or create a new disk")
    if _is_text(head):
        return _refuse(path, head, size, "disk", "a disk image (raw or qcow2)")
    return FileProbe(True, f"raw disk image, {format_size(size)}")


def _probe_iso(path: str, head: bytes, size: int, role: str) -> FileProbe:
    pvd = head[ISO_PVD:ISO_PVD + 2048]
    if len(pvd) < 0x48 or pvd[1:6] != b"CD001" or pvd[0] != 1:
        return _refuse(path, head, size, role, "an ISO 9660 CD/DVD image")
    volume = pvd[0x28:0x48].decode("ascii", "replace").strip()
    boot = head[ISO_BOOT_RECORD:ISO_BOOT_RECORD + 0x27]
    bootable = boot[:1] == b"\x00" and boot[1:6] == b"CD001" and boot[7:7 + len(EL_TORITO_ID)] == EL_TORITO_ID
    name = f"ISO 9660 image {volume!r}" if volume else "ISO 9660 image"
    if bootable:
        return FileProbe(True, f"{name}, bootable (El Torito), {format_size(size)}", volume_id=volume)
    if role == "boot-iso":
        return FileProbe(False, "not a bootable ISO", f"{path} is an ISO 9660 image but not a bootable ISO (no El "
                                                      "Torito boot record): choose an installer or live ISO")
    return FileProbe(True, f"{name}, {format_size(size)}, not bootable (a data disc: no El Torito boot record)",
                     volume_id=volume)


def probe_file(path: str, role: str) -> FileProbe:
    """What the file at `path` is, judged for `role` (one of PROBE_ROLES); HostError when it cannot be read."""
    if role not in PROBE_ROLES:
        raise HostError(f"unknown file role {role!r}: use one of {', '.join(PROBE_ROLES)}")
    if not path:
        raise HostError(f"no {role} file given: choose one")
    # One bounded read serves every role: an ISO's sectors 16 and 17 end at 0x9000, inside PROBE_BYTES.
    head, size = _read(path, 0, PROBE_BYTES)
    if role in ("iso", "boot-iso"):
        return _probe_iso(path, head, size, role)
    return {"kernel": _probe_kernel, "initrd": _probe_initrd, "disk": _probe_disk}[role](path, head, size)
