"""The ACPI tables as fw_cfg files (core/boot/acpi_fw_cfg.py) and the DSDT's PCI windows (core/boot/acpi_dsdt.py).

The table-loader script is run here by a small executor written from SeaBIOS's description of the commands
(src/fw/romfile_loader.c), over a fake address space with one bump allocator per zone. After it ran, the tables
must link and checksum like direct boot's, hold the same bytes apart from the relocated pointers, and carry the
PCI windows SeaBIOS uses for the guest's RAM."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from core import platform
from core.boot import acpi_fw_cfg
from core.boot.acpi import build_acpi_tables, guest_ram_split
from core.boot.acpi_dsdt import PciWindows, pci_windows
from core.boot.acpi_fw_cfg import firmware_acpi_files
from core.memory import GuestMemory

MiB, GiB = 1 << 20, 1 << 30
HIGH, FSEG = 1, 2
HIGH_BASE = 0xBFF8_0000       # near the top of 3 GiB: bit 31 set, so 4-byte pointers must carry it
FSEG_BASE = 0xF_5A40
Reader = Callable[[int, int], bytes]


class LoaderRun:
    """Executes an etc/table-loader script the way SeaBIOS's romfile_loader_execute does, checking each entry's
    well-formedness strictly (SeaBIOS would only warn and skip)."""

    def __init__(self, files: dict[str, bytes], high_base: int = HIGH_BASE, fseg_base: int = FSEG_BASE) -> None:
        self.files = files
        self.next = {HIGH: high_base, FSEG: fseg_base}
        self.loaded: dict[str, tuple[int, bytearray]] = {}
        self.zone: dict[str, int] = {}

    @staticmethod
    def name(raw: bytes) -> str:
        assert len(raw) == 56 and raw[55] == 0, "file names are 56 bytes with a NUL terminator"
        text, _, pad = raw.partition(b"\0")
        assert not pad.strip(b"\0"), "names are NUL-padded"
        return text.decode("ascii")

    def run(self, script: bytes) -> LoaderRun:
        assert script and len(script) % 128 == 0
        for off in range(0, len(script), 128):
            command, = struct.unpack_from("<I", script, off)
            args = script[off + 4:off + 128]
            if command == 1:
                self.allocate(self.name(args[:56]), *struct.unpack_from("<IB", args, 56))
                used = 61
            elif command == 2:
                self.add_pointer(self.name(args[:56]), self.name(args[56:112]), *struct.unpack_from("<IB", args, 112))
                used = 117
            elif command == 3:
                self.add_checksum(self.name(args[:56]), *struct.unpack_from("<III", args, 56))
                used = 68
            else:
                raise AssertionError(f"command {command} in entry {off // 128}: Vireo uses only 1-3")
            assert not args[used:].strip(b"\0"), "the rest of an entry is zero"
        return self

    def allocate(self, file: str, align: int, zone: int) -> None:
        assert file in self.files and self.files[file], f"{file} is not a non-empty fw_cfg file"
        assert file not in self.loaded, f"{file} allocated twice"
        assert align and not align & (align - 1) and zone in (HIGH, FSEG)
        addr = -self.next[zone] % max(align, 16) + self.next[zone]
        data = bytearray(self.files[file])
        self.next[zone] = addr + len(data)
        if zone == FSEG:
            assert self.next[zone] <= 0x10_0000, "the F segment ends at 1 MiB"
        self.loaded[file], self.zone[file] = (addr, data), zone

    def add_pointer(self, dest: str, src: str, offset: int, size: int) -> None:
        assert dest in self.loaded and src in self.loaded, "pointer between files not yet allocated"
        assert size in (1, 2, 4, 8)
        data = self.loaded[dest][1]
        assert offset + size <= len(data)
        field = int.from_bytes(data[offset:offset + size], "little")
        assert field < len(self.files[src]), "a pointer field holds an offset into its source file"
        value = field + self.loaded[src][0]
        assert value < 1 << (8 * size)
        data[offset:offset + size] = value.to_bytes(size, "little")

    def add_checksum(self, file: str, offset: int, start: int, length: int) -> None:
        assert file in self.loaded
        data = self.loaded[file][1]
        assert offset < len(data) and start + length <= len(data) and start <= offset < start + length
        data[offset] = (data[offset] - sum(data[start:start + length])) & 0xFF

    def addr(self, file: str) -> int:
        return self.loaded[file][0]

    def read(self, addr: int, size: int) -> bytes:
        for base, data in self.loaded.values():
            if base <= addr and addr + size <= base + len(data):
                return bytes(data[addr - base:addr - base + size])
        raise AssertionError(f"{addr:#x}+{size} lies in no loaded file")

    def table(self, addr: int) -> bytes:
        return table_at(self.read, addr)

    def tables(self) -> dict[bytes, int]:
        return walk(self.read, self.addr("etc/acpi/rsdp"))


def loaded(cpus: int = 2, low: int = 256 * MiB, high: int = 0, **bases: int) -> LoaderRun:
    files = firmware_acpi_files(cpus, low, high)
    assert set(files) == {"etc/acpi/tables", "etc/acpi/rsdp", "etc/table-loader"}
    return LoaderRun(files, **bases).run(files["etc/table-loader"])


def table_at(read: Reader, addr: int) -> bytes:
    return read(addr, struct.unpack("<I", read(addr + 4, 4))[0])


def walk(read: Reader, rsdp_addr: int) -> dict[bytes, int]:
    """Each table's address, found from the RSDP the way an OS does (XSDT and RSDT must list the same)."""
    rsdp = read(rsdp_addr, 36)
    rsdt_addr, = struct.unpack_from("<I", rsdp, 16)
    xsdt_addr, = struct.unpack_from("<Q", rsdp, 24)
    xsdt, rsdt = table_at(read, xsdt_addr), table_at(read, rsdt_addr)
    x_entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert list(x_entries) == list(struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36))
    found = {b"XSDT": xsdt_addr, b"RSDT": rsdt_addr}
    found.update({table_at(read, a)[:4]: a for a in x_entries})
    assert list(found)[2:] == [b"FACP", b"APIC"]
    fadt = table_at(read, found[b"FACP"])
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    x_facs, x_dsdt = struct.unpack_from("<QQ", fadt, 132)
    assert dsdt == x_dsdt and x_facs == 0
    found[b"DSDT"], found[b"FACS"] = dsdt, facs
    return found


def test_script_allocates_links_then_checksums():
    files = firmware_acpi_files(2, 256 * MiB)
    script = files["etc/table-loader"]
    entries = [script[i:i + 128] for i in range(0, len(script), 128)]
    commands = [struct.unpack_from("<I", e)[0] for e in entries]
    # Both files allocated first; all pointers before any checksum, so each sum covers the final pointers.
    assert commands == [1, 1] + [2] * 9 + [3] * 7
    allocs = {LoaderRun.name(e[4:60]): struct.unpack_from("<IB", e, 60) for e in entries[:2]}
    assert allocs == {"etc/acpi/tables": (64, HIGH), "etc/acpi/rsdp": (16, FSEG)}
    pointers = [(LoaderRun.name(e[4:60]), LoaderRun.name(e[60:116]), *struct.unpack_from("<IB", e, 116))
                for e in entries[2:11]]
    assert all(src == "etc/acpi/tables" for _, src, _, _ in pointers)
    assert {(d, o, s) for d, _, o, s in pointers if d == "etc/acpi/rsdp"} == {("etc/acpi/rsdp", 16, 4),
                                                                             ("etc/acpi/rsdp", 24, 8)}
    rsdp_sums = [struct.unpack_from("<III", e, 60) for e in entries[11:] if LoaderRun.name(e[4:60]) ==
                 "etc/acpi/rsdp"]
    assert rsdp_sums == [(8, 0, 20), (32, 0, 36)]         # the ACPI 1.0 checksum before the extended one


@pytest.mark.parametrize("cpus,low,high", [(1, 256 * MiB, 0), (4, 2 * GiB, 0), (300, 3 * GiB, 1 * GiB)])
def test_loaded_tables_link_and_sum_to_zero(cpus, low, high):
    run = loaded(cpus, low, high)
    rsdp_addr = run.addr("etc/acpi/rsdp")
    assert 0xF_0000 <= rsdp_addr < 0x10_0000 and rsdp_addr % 16 == 0
    rsdp = run.read(rsdp_addr, 36)
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    tables = run.tables()
    assert set(tables) == {b"XSDT", b"RSDT", b"FACP", b"APIC", b"DSDT", b"FACS"}
    base, blob = run.loaded["etc/acpi/tables"]
    for sig, addr in tables.items():
        t = run.table(addr)
        assert t[:4] == sig and base <= addr and addr + len(t) <= base + len(blob)
        if sig != b"FACS":                           # the FACS has no checksum (5.2.10)
            assert sum(t) % 256 == 0, f"{sig} checksum"
    assert tables[b"FACS"] % 64 == 0
    assert run.zone["etc/acpi/tables"] == HIGH and run.addr("etc/acpi/tables") >= HIGH_BASE


# Where a table holds pointers (and so differs between placements): its checksum byte, and the pointer fields.
POINTER_FIELDS = {b"FACP": [(9, 1), (36, 8), (140, 8)], b"XSDT": [(9, 1), (36, 16)], b"RSDT": [(9, 1), (36, 8)],
                  b"DSDT": [(9, 1)], b"APIC": [(9, 1)], b"FACS": []}


@pytest.mark.parametrize("size", [64 * MiB, 3 * GiB + 512 * MiB])
def test_same_bytes_as_direct_boot(size):
    mem = GuestMemory(size)
    try:
        cpus = 3
        rsdp_addr = build_acpi_tables(mem, cpus)
        direct = walk(mem.read, rsdp_addr)
        low, high = guest_ram_split(mem)
        assert (low, high) == (min(size, 3 * GiB), max(0, size - 3 * GiB))
        # Placed where direct boot places them, the loader's result is byte for byte what direct boot wrote.
        run = loaded(cpus, low, high, high_base=direct[b"FACS"], fseg_base=rsdp_addr)
        assert run.addr("etc/acpi/tables") == direct[b"FACS"] and run.addr("etc/acpi/rsdp") == rsdp_addr
        for file in ("etc/acpi/tables", "etc/acpi/rsdp"):
            addr, data = run.loaded[file]
            assert mem.read(addr, len(data)) == bytes(data), file
        # Placed anywhere else, each table differs from direct boot's only in its pointers and checksum.
        moved = loaded(cpus, low, high)
        elsewhere = moved.tables()
        assert list(elsewhere) == list(direct) and elsewhere != direct
        for sig, fields in POINTER_FIELDS.items():
            a = bytearray(moved.table(elsewhere[sig]))
            b = bytearray(mem.read(direct[sig], len(a)))
            for off, n in fields:
                a[off:off + n] = b[off:off + n] = bytes(n)
            assert a == b, sig
    finally:
        mem.close()


# -- the DSDT's PCI windows ------------------------------------------------------------------------------------

@pytest.mark.parametrize("low,high,mem32,mem64_start", [
    (256 * MiB, 0, 0x8000_0000, 1 << 32),
    (2 * GiB, 0, 0x8000_0000, 1 << 32),
    (2 * GiB + 4096, 0, 0xC000_0000, 1 << 32),
    (3 * GiB, 0, 0xC000_0000, 1 << 32),
    (3 * GiB, 1 * GiB, 0xC000_0000, 5 * GiB),
    (3 * GiB, 1 * GiB + 512 * MiB, 0xC000_0000, 6 * GiB),     # rounded up to 1 GiB as SeaBIOS does
    (0xE000_0000, 0, 0xE000_0000, 1 << 32),                   # above 3 GiB SeaBIOS starts at the end of RAM
])
def test_pci_windows_follow_seabios(low, high, mem32, mem64_start):
    w = pci_windows(low, high)
    assert w == PciWindows((mem32, 0xFEC0_0000), (mem64_start, mem64_start + platform.PCI_MMIO64_SIZE))


def test_direct_boot_bars_inside_the_window_for_every_ram_size():
    direct_lo, direct_hi = platform.PCI_MMIO_WINDOW
    for low in [4096, *range(64 * MiB, 3 * GiB + 1, 64 * MiB), 2 * GiB + 4096]:
        w = pci_windows(low, 0)
        assert low <= w.mem32[0] <= direct_lo and direct_hi <= w.mem32[1]


@pytest.mark.parametrize("low,high", [(0, 0), (0xE000_1000, 0), (5 * GiB, 0), (3 * GiB, -1)])
def test_pci_windows_reject_impossible_ram(low, high):
    with pytest.raises(ValueError, match="RAM"):
        pci_windows(low, high)


def memory_windows(dsl: str) -> list[tuple[str, int, int]]:
    """(kind, minimum, maximum) of every DWordMemory/QWordMemory in iasl's disassembly."""
    out = []
    for m in re.finditer(r"(DWordMemory|QWordMemory) \(.*?Range Minimum.*?Range Maximum", dsl, re.S):
        lo, hi = re.findall(r"0x([0-9A-F]+),\s*// Range M", m.group(0))
        out.append((m.group(1), int(lo, 16), int(hi, 16)))
    return out


@pytest.mark.parametrize("low,high", [(256 * MiB, 0), (2 * GiB, 0), (3 * GiB, 0), (3 * GiB, 1 * GiB)])
def test_dsdt_from_fw_cfg_disassembles_with_the_window(tmp_path: Path, low, high):
    iasl = shutil.which("iasl")
    if iasl is None:
        pytest.skip("iasl (Debian acpica-tools) not installed")
    run = loaded(2, low, high)
    (tmp_path / "dsdt.dat").write_bytes(run.table(run.tables()[b"DSDT"]))
    proc = subprocess.run([iasl, "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Error" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    w = pci_windows(low, high)
    assert memory_windows(dsl) == [("DWordMemory", 0xA_0000, 0xB_FFFF),
                                   ("DWordMemory", w.mem32[0], 0xFEBF_FFFF),
                                   ("QWordMemory", w.mem64[0], w.mem64[1] - 1)]
    assert w.mem32[0] == (0x8000_0000 if low <= 2 * GiB else 0xC000_0000)
    assert w.mem64[0] == (5 * GiB if high else 4 * GiB)


# -- what SeaBIOS's own DSDT parser (src/fw/dsdt_parser.c) makes of it ------------------------------------------

def seabios_devices(aml: bytes) -> dict[str, bytes]:
    """Device name -> the bytes of its _HID value, walking the AML with only the opcodes SeaBIOS's parser knows
    (it gives up on anything else, and then would not see the keyboard)."""
    devices: dict[str, bytes] = {}

    def pkg_length(p: int) -> tuple[int, int]:
        lead, extra = aml[p], aml[p] >> 6
        if not extra:
            return lead & 0x3F, 1
        return (lead & 0xF) | sum(aml[p + 1 + i] << (4 + 8 * i) for i in range(extra)), 1 + extra

    def name_string(p: int) -> tuple[str, int]:
        while aml[p] in b"\\^":
            p += 1
        if aml[p] == 0x2E:
            return (aml[p + 1:p + 9]).decode(), p + 9
        if aml[p] == 0x2F:
            return aml[p + 2:p + 2 + 4 * aml[p + 1]].decode(), p + 2 + 4 * aml[p + 1]
        assert aml[p] == 0x5F or 0x41 <= aml[p] <= 0x5A, f"name at {p}"
        return aml[p:p + 4].decode().rstrip("_"), p + 4

    def term_list(p: int, end: int, device: str | None) -> None:
        while p < end:
            p = term(p, device)
        assert p == end

    def term(p: int, device: str | None) -> int:
        op = aml[p]
        if op in (0x00, 0x01):
            return p + 1
        if op in (0x0A, 0x0B, 0x0C):
            return p + 1 + {0x0A: 1, 0x0B: 2, 0x0C: 4}[op]
        if op == 0x08:
            name, q = name_string(p + 1)
            end = term(q, device)
            if device is not None and name == "_HID":
                devices[device] = aml[q:end]
            return end
        if op in (0x10, 0x11, 0x12, 0x13):                     # scope, buffer, package: length-delimited
            length, used = pkg_length(p + 1)
            if op == 0x10:
                _, q = name_string(p + 1 + used)
                term_list(q, p + 1 + length, device)
            return p + 1 + length
        if op == 0x5B and aml[p + 1] == 0x82:
            length, used = pkg_length(p + 2)
            name, q = name_string(p + 2 + used)
            term_list(q, p + 2 + length, name)
            return p + 2 + length
        raise AssertionError(f"opcode {op:#x} at {p}: SeaBIOS's DSDT parser would stop here")

    term_list(36, len(aml), None)
    return devices


def test_seabios_parser_sees_the_keyboard():
    """SeaBIOS skips PS/2 keyboard setup when a DSDT it parsed lists no PNP0303 (src/hw/ps2port.c)."""
    run = loaded(1, 256 * MiB, 0)
    devices = seabios_devices(run.table(run.tables()[b"DSDT"]))
    eisa = {"PNP0A03": b"\x0c\x41\xd0\x0a\x03", "PNP0303": b"\x0c\x41\xd0\x03\x03", "PNP0F13": b"\x0c\x41\xd0\x0f\x13"}
    assert devices == {"PCI0": eisa["PNP0A03"], "KBD": eisa["PNP0303"], "MOU": eisa["PNP0F13"]}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="CPU"):
        firmware_acpi_files(0, 256 * MiB)
    with pytest.raises(ValueError, match="low RAM"):
        firmware_acpi_files(1, 0)
    with pytest.raises(ValueError, match="longer than 55"):
        acpi_fw_cfg.allocate("etc/" + "x" * 52, 16, acpi_fw_cfg.ZONE_HIGH)
