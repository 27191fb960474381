"""The qcow2 snapshot table: parsing with bounds, and serialization.

QEMU docs/interop/qcow2.txt, "Snapshots": header fields nb_snapshots/snapshots_offset locate a table of
variable-length entries, each 8-byte aligned: the snapshot's L1 table (offset, entries), the lengths of the
unique ID and the name, date (seconds, nanoseconds), VM clock (ns), a 32-bit VM state size, the length of extra
data, the extra data (v3 requires at least 16 bytes: the 64-bit VM state size and the virtual disk size; QEMU
also writes the icount), then the ID and the name (not NUL-terminated).

Every size read from the file is bounded before it is used, with QEMU's limits: 65536 snapshots, 64 MiB of
table, 1 KiB of extra data per entry, 32 MiB of L1 table per snapshot; offsets must be cluster-aligned and
inside the file. A bad table is an ImageFormatError with a one-line reason.
"""
from __future__ import annotations

import struct
import time

from core.storage.errors import ImageFormatError
from core.storage.plain_record import PlainRecord
from core.storage.qcow2_header import MAX_L1_BYTES, MAX_SNAPSHOTS
from core.storage.sizes import format_size

TYPE_CHECKING = False     # not typing's: `img snapshot` starts without typing and collections (bench/snapshot.py)
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_TABLE_BYTES = 64 << 20
MAX_EXTRA = 1024
_FIXED = struct.Struct(">QIHHIIQII")        # 40 bytes
EXTRA_SIZE = 24                              # what QEMU writes: vm_state_size_large, disk_size, icount


class Snapshot(PlainRecord):
    """One entry of the snapshot table (a PlainRecord, not a dataclass: start-up time)."""

    _FIELDS = ("id_str", "name", "l1_table_offset", "l1_size", "date_sec", "date_nsec", "vm_clock_nsec",
               "vm_state_size", "disk_size", "icount", "unknown_extra", "problem")

    def __init__(self, id_str: str, name: str, l1_table_offset: int, l1_size: int, date_sec: int = 0,
                 date_nsec: int = 0, vm_clock_nsec: int = 0, vm_state_size: int = 0, disk_size: int | None = None,
                 icount: int = 0, unknown_extra: bytes = b"", problem: str | None = None) -> None:
        self.id_str = id_str
        self.name = name
        self.l1_table_offset = l1_table_offset
        self.l1_size = l1_size
        self.date_sec = date_sec
        self.date_nsec = date_nsec
        self.vm_clock_nsec = vm_clock_nsec
        self.vm_state_size = vm_state_size
        self.disk_size = disk_size
        self.icount = icount
        self.unknown_extra = unknown_extra      # extra data past what we know, kept as it was
        self.problem = problem                  # why its L1 table cannot be used (listed, but not applied or walked)

    def pack(self) -> bytes:
        id_b, name_b = self.id_str.encode(), self.name.encode()
        icount = self.icount & 0xFFFF_FFFF_FFFF_FFFF
        extra = struct.pack(">QQQ", self.vm_state_size, self.disk_size or 0, icount) + self.unknown_extra
        entry = _FIXED.pack(self.l1_table_offset, self.l1_size, len(id_b), len(name_b), self.date_sec,
                            self.date_nsec, self.vm_clock_nsec, self.vm_state_size & 0xFFFF_FFFF,
                            len(extra)) + extra + id_b + name_b
        return entry + bytes(-len(entry) % 8)


def pack_table(snapshots: list[Snapshot]) -> bytes:
    return b"".join(s.pack() for s in snapshots)


def parse_table(read: Callable[[int, int], bytes], offset: int, count: int, cluster_size: int, file_size: int,
                path: str) -> tuple[list[Snapshot], int]:
    """The snapshots of a table of `count` entries at `offset`, and the table's length in bytes."""
    def bad(why: str) -> ImageFormatError:
        return ImageFormatError(f"{path}: not a valid qcow2 image: {why}")

    if count == 0:
        return [], 0
    if count > MAX_SNAPSHOTS:
        raise bad(f"{count} snapshots is more than the limit of {MAX_SNAPSHOTS}")
    if offset % cluster_size or offset == 0 or offset >= file_size:
        raise bad(f"snapshot table offset {offset:#x} is misaligned or outside the file")
    limit = min(MAX_TABLE_BYTES, file_size - offset)
    raw = bytearray()

    def need(end: int, n: int) -> None:
        """Read more of the table (doubling, up to the limit) until it holds `end` bytes."""
        if end > limit:
            raise bad(f"snapshot table entry {n} runs past the end of the file or the 64 MiB limit")
        if end > len(raw):
            raw.extend(read(offset + len(raw), min(limit, max(end, 2 * len(raw), 4096)) - len(raw)))

    out: list[Snapshot] = []
    pos = 0
    for n in range(count):
        need(pos + _FIXED.size, n)
        l1_off, l1_size, id_len, name_len, dsec, dnsec, clock, vm32, extra_len = _FIXED.unpack_from(raw, pos)
        if extra_len > MAX_EXTRA:
            raise bad(f"snapshot {n} has {extra_len} bytes of extra data (the limit is {MAX_EXTRA})")
        end = pos + _FIXED.size + extra_len + id_len + name_len
        need(end, n)
        extra = raw[pos + _FIXED.size:pos + _FIXED.size + extra_len]
        vm_size, disk_size, icount = vm32, None, -1
        if extra_len >= 8:
            vm_size = struct.unpack_from(">Q", extra)[0]
        if extra_len >= 16:
            disk_size = struct.unpack_from(">Q", extra, 8)[0]
        if extra_len >= 24:
            icount = struct.unpack_from(">q", extra, 16)[0]
        names = raw[pos + _FIXED.size + extra_len:end]
        try:
            id_str, name = names[:id_len].decode(), names[id_len:].decode()
        except UnicodeDecodeError as exc:
            raise bad(f"snapshot {n}'s ID or name is not valid UTF-8") from exc
        # As QEMU, a bad L1 table does not stop the listing; it stops applying the snapshot and is a check error.
        problem = None
        if l1_size * 8 > MAX_L1_BYTES:
            problem = f"snapshot {id_str!r} has an L1 table of {l1_size} entries (more than 32 MiB)"
        elif l1_off % cluster_size or (l1_size and (l1_off == 0 or l1_off + l1_size * 8 > file_size)):
            problem = f"snapshot {id_str!r} has its L1 table at {l1_off:#x}, misaligned or outside the file"
        out.append(Snapshot(id_str, name, l1_off, l1_size, dsec, dnsec, clock, vm_size, disk_size, icount,
                            bytes(extra[24:]), problem))
        pos = end + (-end % 8)
    return out, pos


def format_listing(snapshots: list[Snapshot]) -> str:
    """The table `qemu-img snapshot -l` prints (QEMU's bdrv_snapshot_dump columns; dates in local time)."""
    lines = ["Snapshot list:", f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}"]
    for sn in snapshots:
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sn.date_sec))
        secs = sn.vm_clock_nsec // 10**9
        clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{sn.vm_clock_nsec // 10**6 % 1000:03d}"
        icount = "" if sn.icount == -1 else str(sn.icount)
        lines.append(f"{sn.id_str:<9} {sn.name:<16} {format_size(sn.vm_state_size):>8}{date:>20}{clock:>13}"
                     f"{icount:>11}")
    return "\n".join(lines)


def as_json(sn: Snapshot) -> dict[str, object]:
    """A snapshot as qemu-img info --output=json names its fields."""
    out: dict[str, object] = {"id": sn.id_str, "name": sn.name, "vm-state-size": sn.vm_state_size,
                              "date-sec": sn.date_sec, "date-nsec": sn.date_nsec,
                              "vm-clock-sec": sn.vm_clock_nsec // 10**9, "vm-clock-nsec": sn.vm_clock_nsec % 10**9}
    if sn.icount != -1:
        out["icount"] = sn.icount
    return out
