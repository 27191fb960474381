"""ACPI tables (core/boot/acpi.py) and the AML encoder (core/boot/aml.py): every checksum, the pointers between
tables, the FADT's fixed hardware, the MADT's entries, and the DSDT's \\_S5 decoded back from its bytes."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from core import platform
from core.boot import aml
from core.boot.acpi import build_acpi_tables
from core.memory import GuestMemory

MiB = 1 << 20


@pytest.fixture
def mem():
    m = GuestMemory(64 * MiB)
    yield m
    m.close()


def read_table(memory: GuestMemory, addr: int) -> bytes:
    length = memory.read_u32(addr + 4)
    assert 36 <= length < 0x10000
    return memory.read(addr, length)


def tables_by_signature(memory: GuestMemory, rsdp_addr: int) -> dict[bytes, tuple[int, bytes]]:
    rsdp = memory.read(rsdp_addr, 36)
    xsdt_addr = struct.unpack_from("<Q", rsdp, 24)[0]
    xsdt = read_table(memory, xsdt_addr)
    found = {b"XSDT": (xsdt_addr, xsdt)}
    for i in range((len(xsdt) - 36) // 8):
        addr = struct.unpack_from("<Q", xsdt, 36 + 8 * i)[0]
        t = read_table(memory, addr)
        found[t[:4]] = (addr, t)
    fadt = found[b"FACP"][1]
    dsdt_addr = struct.unpack_from("<Q", fadt, 140)[0]
    found[b"DSDT"] = (dsdt_addr, read_table(memory, dsdt_addr))
    rsdt_addr = struct.unpack_from("<I", rsdp, 16)[0]
    found[b"RSDT"] = (rsdt_addr, read_table(memory, rsdt_addr))
    return found


def test_rsdp_in_bios_area_with_both_checksums(mem):
    addr = build_acpi_tables(mem, 1)
    assert platform.BIOS_AREA_START <= addr < platform.BIOS_AREA_END and addr % 16 == 0
    rsdp = mem.read(addr, 36)
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2
    assert sum(rsdp[:20]) % 256 == 0
    assert sum(rsdp) % 256 == 0
    assert struct.unpack_from("<I", rsdp, 20)[0] == 36


def test_rsdp_found_by_a_scan(mem):
    """What a guest without the zero page's acpi_rsdp_addr does (ACPI 6.4, 5.2.5.1)."""
    addr = build_acpi_tables(mem, 2)
    area = mem.read(0xE0000, 0x20000)
    hits = [off for off in range(0, len(area), 16)
            if area[off:off + 8] == b"RSD PTR " and sum(area[off:off + 20]) % 256 == 0]
    assert hits and 0xE0000 + hits[0] == addr


@pytest.mark.parametrize("cpus", [1, 4, 300])
def test_every_table_sums_to_zero(mem, cpus):
    rsdp = build_acpi_tables(mem, cpus)
    tables = tables_by_signature(mem, rsdp)
    assert set(tables) == {b"XSDT", b"RSDT", b"FACP", b"APIC", b"DSDT"}     # no HPET: the machine has none
    for sig, (addr, t) in tables.items():
        assert sum(t) % 256 == 0, f"{sig} checksum"
        assert t[10:16] == b"VIREO "
        assert platform.ACPI_TABLES_ADDR <= addr and addr + len(t) <= platform.MP_TABLE_ADDR
    # The RSDT lists the same tables as the XSDT, with 32-bit pointers.
    xsdt, rsdt = tables[b"XSDT"][1], tables[b"RSDT"][1]
    x = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    r = struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36)
    assert list(x) == list(r)


def test_fadt_fixed_hardware(mem):
    tables = tables_by_signature(mem, build_acpi_tables(mem, 2))
    fadt = tables[b"FACP"][1]
    assert len(fadt) == 276 and fadt[8] == 6
    facs_addr, dsdt_addr = struct.unpack_from("<II", fadt, 36)
    assert dsdt_addr == tables[b"DSDT"][0] == struct.unpack_from("<Q", fadt, 140)[0]
    assert struct.unpack_from("<Q", fadt, 132)[0] == 0 and facs_addr % 64 == 0   # X_FIRMWARE_CTRL unused
    assert mem.read(facs_addr, 8) == b"FACS" + struct.pack("<I", 64)
    sci, smi_cmd = struct.unpack_from("<HI", fadt, 46)
    assert sci == platform.ACPI_SCI_IRQ == 9 and smi_cmd == 0
    pm1a_evt, pm1b_evt, pm1a_cnt, _, _, pm_tmr, gpe0, _ = struct.unpack_from("<8I", fadt, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr, gpe0) == (platform.ACPI_PM1A_EVT, platform.ACPI_PM1A_CNT,
                                                  platform.ACPI_PM_TMR, platform.ACPI_GPE0)
    assert pm1b_evt == 0
    assert tuple(fadt[88:93]) == (4, 2, 0, 4, 8)           # PM1_EVT, PM1_CNT, PM2_CNT, PM_TMR, GPE0 lengths

    def gas(offset: int) -> tuple[int, int, int, int, int]:
        return struct.unpack_from("<BBBBQ", fadt, offset)

    assert gas(148) == (1, 32, 0, 2, platform.ACPI_PM1A_EVT)     # X_PM1a_EVT_BLK
    assert gas(172) == (1, 16, 0, 2, platform.ACPI_PM1A_CNT)     # X_PM1a_CNT_BLK
    assert gas(208) == (1, 32, 0, 3, platform.ACPI_PM_TMR)       # X_PM_TMR_BLK
    assert gas(220)[::4] == (1, platform.ACPI_GPE0)              # X_GPE0_BLK
    assert gas(160)[4] == 0 and gas(184)[4] == 0                 # no PM1b
    assert gas(116) == (1, 8, 0, 1, platform.RESET_CONTROL_PORT) and fadt[128] == 0x06
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 10)                                     # RESET_REG_SUP
    assert flags & (1 << 0) and flags & (1 << 2) and flags & (1 << 5)   # WBINVD, PROC_C1, SLP_BUTTON
    assert not flags & (1 << 4)                                  # fixed-feature power button
    assert not flags & (1 << 8)                                  # 24-bit PM timer
    assert not flags & (1 << 20)                                 # not hardware-reduced
    assert struct.unpack_from("<H", fadt, 109)[0] & 0b11 == 0b11  # legacy devices + 8042


@pytest.mark.parametrize("cpus", [1, 2, 8, 254, 256])
def test_madt_entries(mem, cpus):
    madt = tables_by_signature(mem, build_acpi_tables(mem, cpus))[b"APIC"][1]
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == platform.LAPIC_BASE and flags & 1
    entries = []
    off = 44
    while off < len(madt):
        etype, elen = madt[off], madt[off + 1]
        assert elen >= 2
        entries.append((etype, madt[off:off + elen]))
        off += elen
    assert off == len(madt)
    cpus_seen = []
    for etype, e in entries:
        if etype == 0:
            uid, apic_id, eflags = struct.unpack_from("<BBI", e, 2)
            assert eflags & 1 and apic_id < 255
            cpus_seen.append(apic_id)
        elif etype == 9:
            x2apic_id, eflags, uid = struct.unpack_from("<III", e, 4)
            assert eflags & 1 and x2apic_id >= 255
            cpus_seen.append(x2apic_id)
    assert sorted(cpus_seen) == list(range(cpus))
    ioapics = [e for t, e in entries if t == 1]
    assert len(ioapics) == 1
    ioapic_id, _, address, gsi_base = struct.unpack_from("<BBII", ioapics[0], 2)
    assert ioapic_id == cpus & 0xFF and address == platform.IOAPIC_BASE and gsi_base == 0
    overrides = {e[3]: struct.unpack_from("<IH", e, 4) for t, e in entries if t == 2}
    assert overrides[0] == (2, 0)                      # the PIT on I/O APIC pin 2
    assert overrides[9] == (9, 0b1101)                 # SCI: level-triggered, active high
    nmis = [e for t, e in entries if t == 4]
    assert nmis and nmis[0][2] == 0xFF and nmis[0][5] == 1     # all processors, LINT1


# -- AML -------------------------------------------------------------------------------------------------------

def decode_data_object(data: bytes, off: int) -> tuple[object, int]:
    """Decode one AML DataObject (integers and packages) starting at off; returns (value, next offset)."""
    op = data[off]
    if op in (0x00, 0x01):
        return op, off + 1
    if op == 0xFF:
        return 0xFFFF_FFFF_FFFF_FFFF, off + 1
    sizes = {0x0A: 1, 0x0B: 2, 0x0C: 4, 0x0E: 8}
    if op in sizes:
        n = sizes[op]
        return int.from_bytes(data[off + 1:off + 1 + n], "little"), off + 1 + n
    if op == 0x12:
        length, used = aml.decode_pkg_length(data, off + 1)
        end = off + 1 + length
        count = data[off + 1 + used]
        p = off + 2 + used
        items = []
        for _ in range(count):
            item, p = decode_data_object(data, p)
            items.append(item)
        assert p == end, "package length disagrees with its contents"
        return items, end
    raise AssertionError(f"unexpected AML opcode {op:#x}")


def test_dsdt_s5_package(mem):
    dsdt = tables_by_signature(mem, build_acpi_tables(mem, 1))[b"DSDT"][1]
    assert dsdt[8] == 2                                  # 64-bit integers
    body = dsdt[36:]
    pos = body.find(b"_S5_")
    assert pos > 0 and body[pos - 1] in (0x5C, 0x08)       # \_S5 or _S5 right after NameOp
    assert body[pos - 2 if body[pos - 1] == 0x5C else pos - 1] == 0x08
    value, end = decode_data_object(body, pos + 4)
    assert value == [platform.ACPI_S5_SLP_TYP, platform.ACPI_S5_SLP_TYP, 0, 0]
    assert end < len(body)                               # the PCI root bridge follows


@pytest.mark.parametrize("n", [0, 1, 62, 63, 64, 4000, 4093, 4094, 4095, 0xFFFFF - 3, 0xFFFFF, 0x100_0000])
def test_pkg_length_round_trip(n):
    enc = aml.pkg_length(n)
    total, used = aml.decode_pkg_length(enc + bytes(4), 0)
    assert used == len(enc) and total == n + len(enc)
    # The shortest encoding is chosen.
    assert len(enc) == (1 if n + 1 <= 63 else 2 if n + 2 < 1 << 12 else 3 if n + 3 < 1 << 20 else 4)


def test_pkg_length_boundaries():
    assert aml.pkg_length(62) == bytes([63])
    assert aml.pkg_length(63) == bytes([0x41, 0x04])     # 65 = 0x41: lead 0x40|0x1, next byte 0x04
    with pytest.raises(ValueError):
        aml.pkg_length(1 << 28)


def test_large_package_decodes():
    items = [aml.integer(i * 1000) for i in range(200)]
    value, end = decode_data_object(aml.package(*items), 0)
    assert value == [i * 1000 for i in range(200)] and end == len(aml.package(*items))


def test_aml_integers_and_names():
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(5) == b"\x0a\x05"
    assert aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(0x12345678) == b"\x0c\x78\x56\x34\x12"
    assert aml.integer(1 << 40) == b"\x0e" + (1 << 40).to_bytes(8, "little")
    assert aml.name_string("\\_S5") == b"\\_S5_"
    assert aml.name_string("_SB.COM1") == b"\x2e_SB_COM1"
    assert aml.name_string("\\_SB.PCI0.ISA") == b"\\\x2f\x03_SB_PCI0ISA_"
    assert aml.eisa_id("PNP0501") == b"\x0c\x41\xd0\x05\x01"
    with pytest.raises(ValueError):
        aml.name_seg("1ABC")


def test_device_with_resources_disassembles():
    """A Device with _HID/_CRS built from the helpers is valid AML (checked by iasl when installed)."""
    body = aml.device("\\_SB.COM1", aml.name("_HID", aml.eisa_id("PNP0501")), aml.name("_UID", aml.integer(1)),
                      aml.name("_CRS", aml.resource_template(aml.io_port(0x3F8, 8), aml.irq_no_flags(4))),
                      aml.method("_STA", 0, aml.return_(aml.integer(0x0F))))
    assert body[:2] == b"\x5b\x82"
    length, used = aml.decode_pkg_length(body, 2)
    assert 2 + length == len(body)
    iasl = shutil.which("iasl")
    if iasl is None:
        pytest.skip("iasl (Debian acpica-tools) not installed; structural checks passed")
    dsl = _disassemble_ok(iasl, b"SSDT", body)
    assert 'EisaId ("PNP0501")' in dsl and "0x03F8" in dsl and "IRQNoFlags" in dsl and "Return (0x0F)" in dsl


def _disassemble_ok(iasl: str, sig: bytes, body: bytes) -> str:
    import tempfile

    from core.boot.acpi import table
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/t.dat"
        with open(path, "wb") as f:
            f.write(table(sig, 2, body))
        proc = subprocess.run([iasl, "-d", path], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with open(f"{d}/t.dsl") as f:
            dsl = f.read()
    assert "Error" not in proc.stdout and "Warning" not in dsl
    return dsl


def test_dsdt_disassembles_with_iasl(mem):
    iasl = shutil.which("iasl")
    if iasl is None:
        pytest.skip("iasl (Debian acpica-tools) not installed")
    dsdt = tables_by_signature(mem, build_acpi_tables(mem, 1))[b"DSDT"][1]
    dsl = _disassemble_ok(iasl, b"DSDT", dsdt[36:])
    assert "Name (\\_S5, Package (0x04)" in dsl
    assert 'Device (PCI0)' in dsl and 'EisaId ("PNP0A03")' in dsl
    assert "Name (_PRT, Package (0x7C)" in dsl                       # 31 slots x 4 pins
    # slot 1 INTA -> PIRQ (1+0)%4 = B -> GSI 17, the same swizzle core/devices/pci.py drives
    assert re.search(r"0x0001FFFF,\s*Zero,\s*Zero,\s*0x11\b", dsl)
    # 64 MiB of RAM: SeaBIOS's 32-bit window starts at 2 GiB, and 64-bit BARs may go from 4 GiB up.
    assert "WordBusNumber" in dsl and "0x80000000," in dsl and "0xFEBFFFFF," in dsl
    assert "0x0000000100000000," in dsl
    assert 'EisaId ("PNP0303")' in dsl and 'EisaId ("PNP0F13")' in dsl       # the 8042's ports, which SeaBIOS needs
