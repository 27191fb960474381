"""The machine-state file (docs/machine-state.md): a header, named and versioned record sections, guest RAM
as runs of non-zero pages, and an end marker.

Records are JSON (bytes values as zlib-compressed base64, `{"$z": ...}`), each with a CRC-32; RAM is streamed
straight from and into GuestMemory (views, no copy of the whole RAM), pages that are all zero are skipped, so an
idle 1 GiB guest makes a small file. Writing goes to a temporary file in the target's directory, fsync, rename,
fsync of the directory: a crash leaves the old file or the new one, never half of one. Reading trusts nothing:
sizes are bounded before anything is allocated, every RAM run must lie inside the machine's RAM (through the
bounds-checked GuestMemory API), and a truncated or corrupt file gives StateError with one line.
"""
from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from core.memory import PAGE_SIZE, GuestMemory, GuestMemoryError
from core.state.fields import StateError

MAGIC = b"VIREOSAV"
FORMAT_VERSION = 1
KIND_RECORD, KIND_RAM, KIND_END = 1, 2, 0xFF
_HEADER = struct.Struct("<8sII")              # magic, format version, reserved
_SECTION = struct.Struct("<BH")               # kind, name length (name follows)
_RECORD = struct.Struct("<IQI")               # section version, payload length, CRC-32 of payload
_RUN = struct.Struct("<QII")                  # gpa, pages, CRC-32 of the data
RAM_END = 0xFFFF_FFFF_FFFF_FFFF
MAX_RECORD = 64 << 20                         # a record (video memory is the largest) is far smaller than this
MAX_BYTES_VALUE = 64 << 20


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$z": base64.b64encode(zlib.compress(bytes(value), 1)).decode()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$z"}:
            try:
                raw = base64.b64decode(value["$z"], validate=True)
                d = zlib.decompressobj()
                out = d.decompress(raw, MAX_BYTES_VALUE)
                if d.unconsumed_tail or not d.eof:
                    raise ValueError("too large or truncated")
            except (ValueError, TypeError, zlib.error) as exc:
                raise StateError(f"{where}: a bytes value is corrupt ({exc})") from None
            return out
        return {k: _decode(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    return value


class StateWriter:
    """Writes one state file. Use as a context manager: the file appears (atomically) only if the block ends
    without an exception, after records, RAM and the end marker have been written."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        self._tmp = os.path.join(directory, f".{os.path.basename(self.path)}.{os.getpid()}.tmp")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._f: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)
        self._f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, 0))
        self.bytes_ram = 0

    def _section(self, kind: int, name: str) -> None:
        raw = name.encode()
        self._f.write(_SECTION.pack(kind, len(raw)) + raw)

    def record(self, name: str, version: int, value: Any) -> None:
        payload = json.dumps(_encode(value), separators=(",", ":")).encode()
        self._section(KIND_RECORD, name)
        self._f.write(_RECORD.pack(version, len(payload), zlib.crc32(payload)))
        self._f.write(payload)

    def ram(self, memory: GuestMemory, version: int = 1) -> None:
        """Guest RAM: every region, as runs of pages that are not all zero (core/state/ram_scan.py finds them,
        reading only the pages the kernel has backed)."""
        from core.state.ram_scan import nonzero_runs
        self._section(KIND_RAM, "ram")
        self._f.write(struct.pack("<IQ", version, memory.size))
        for gpa, data in nonzero_runs(memory):
            self._f.write(_RUN.pack(gpa, len(data) // PAGE_SIZE, zlib.crc32(data)))
            self._f.write(data)
            self.bytes_ram += len(data)
            data.release()
        self._f.write(_RUN.pack(RAM_END, 0, 0))

    def __enter__(self) -> StateWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._f.close()
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            return
        try:
            self._section(KIND_END, "end")
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.rename(self._tmp, self.path)
        except BaseException:
            self._f.close()
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            raise
        dfd = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class StateReader:
    """Reads a state file: records() gives every record section before the RAM; load_ram() then fills guest
    RAM and checks the end marker. Every failure is StateError naming the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._f: BinaryIO = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 -- closed by close()
        except OSError as exc:
            raise StateError(f"state file {path}: {exc.strerror or exc}") from None
        try:
            magic, version, _ = _HEADER.unpack(self._exact(_HEADER.size, "header"))
            if magic != MAGIC:
                raise self._error("not a Vireo machine-state file (bad magic)")
            if version != FORMAT_VERSION:
                raise self._error(f"format version {version}, this Vireo reads version {FORMAT_VERSION}; "
                                  f"restore it with the Vireo that saved it")
        except BaseException:
            self._f.close()
            raise
        self._pending: tuple[int, str] | None = None

    def _error(self, what: str) -> StateError:
        return StateError(f"state file {self.path}: {what}")

    def _exact(self, n: int, what: str) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise self._error(f"truncated in the {what}")
        return data

    def _next_section(self) -> tuple[int, str]:
        kind, name_len = _SECTION.unpack(self._exact(_SECTION.size, "section header"))
        try:
            name = self._exact(name_len, "section name").decode()
        except UnicodeDecodeError:
            raise self._error("a section name is not UTF-8") from None
        if kind not in (KIND_RECORD, KIND_RAM, KIND_END):
            raise self._error(f"section {name!r} has unknown kind {kind}")
        return kind, name

    def records(self) -> Iterator[tuple[str, int, Any]]:
        """(name, version, value) of each record section, up to the RAM section."""
        while True:
            kind, name = self._next_section()
            if kind != KIND_RECORD:
                self._pending = (kind, name)
                return
            version, length, crc = _RECORD.unpack(self._exact(_RECORD.size, f"section {name!r}"))
            if length > MAX_RECORD:
                raise self._error(f"section {name!r} claims {length} bytes (more than {MAX_RECORD})")
            payload = self._exact(length, f"section {name!r}")
            if zlib.crc32(payload) != crc:
                raise self._error(f"section {name!r} is corrupt (CRC mismatch)")
            try:
                value = json.loads(payload)
            except ValueError:
                raise self._error(f"section {name!r} is not valid JSON") from None
            yield name, version, _decode(value, f"state file {self.path}: section {name!r}")

    def load_ram(self, memory: GuestMemory) -> None:
        """Fill `memory` (fresh, all zero) from the RAM section, then check the end marker."""
        if self._pending is None or self._pending[0] != KIND_RAM:
            raise self._error("no RAM section after the records")
        version, size = struct.unpack("<IQ", self._exact(12, "RAM header"))
        if version != 1:
            raise self._error(f"RAM section version {version} is not supported")
        if size != memory.size:
            raise self._error(f"RAM is {size >> 20} MiB in the file, the machine has {memory.size >> 20} MiB")
        while True:
            gpa, pages, crc = _RUN.unpack(self._exact(_RUN.size, "RAM"))
            if gpa == RAM_END:
                break
            length = pages * PAGE_SIZE
            if gpa % PAGE_SIZE or not pages or not memory.contains(gpa, length):
                raise self._error(f"a RAM run at {gpa:#x} ({pages} pages) lies outside the machine's RAM")
            try:
                view = memory.view(gpa, length)
            except GuestMemoryError:
                raise self._error(f"a RAM run at {gpa:#x} lies outside the machine's RAM") from None
            got = self._f.readinto(view)
            if got != length:
                raise self._error("truncated in the RAM")
            if zlib.crc32(view) != crc:
                raise self._error(f"RAM at {gpa:#x} is corrupt (CRC mismatch)")
            memory.notify_written(gpa, length)
            del view
        kind, name = self._next_section()
        if kind != KIND_END:
            raise self._error(f"unexpected section {name!r} after the RAM")

    def close(self) -> None:
        self._f.close()
