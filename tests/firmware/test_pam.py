"""The i440FX's PAM registers (core/devices/i440fx.py) and what they do to 0xC0000-0xFFFFF (core/boot/firmware.py):
which ranges the CPU backend maps from RAM or ROM and whether writable, and the MMIO path that serves every access
the backend leaves to it (writes to read-only mappings included)."""
from __future__ import annotations

import pytest

from core.boot.firmware import (
    FOUR_GIB,
    FirmwareError,
    FirmwareMemory,
    Mapping,
    load_firmware_image,
)
from core.bus import MmioBus
from core.devices.i440fx import I440fxHostBridge
from core.memory import GuestMemory

IMAGE = bytes(range(256)) * (256 * 1024 // 256)      # a 256 KiB "BIOS" whose bytes are their offset's low byte


class RecordingMapper:
    """Stands in for an Accelerator: records map_ram/unmap_ram."""

    def __init__(self) -> None:
        self.mapped: dict[int, tuple[int, int, bool]] = {}

    def map_ram(self, gpa: int, host: int, size: int, readonly: bool = False) -> None:
        assert gpa not in self.mapped
        self.mapped[gpa] = (host, size, readonly)

    def unmap_ram(self, gpa: int) -> None:
        del self.mapped[gpa]


@pytest.fixture
def fw():
    memory = GuestMemory(4 << 20)
    mapper = RecordingMapper()
    firmware = FirmwareMemory(IMAGE, memory, MmioBus(), mapper)
    bridge = I440fxHostBridge(firmware.set_pam)
    yield firmware, bridge, mapper, memory
    memory.close()


def write_pam(bridge: I440fxHostBridge, values: bytes) -> None:
    """As SeaBIOS does: two dword writes covering 0x58-0x5F (PAM0 is byte 1 of the first)."""
    data = bytes([0]) + values
    bridge.config_write(0x58, 4, int.from_bytes(data[0:4], "little"))
    bridge.config_write(0x5C, 4, int.from_bytes(data[4:8], "little"))


def test_host_bridge_identity_is_what_seabios_checks():
    bridge = I440fxHostBridge()
    assert bridge.config_read(0, 4) == 0x1237_8086
    assert bridge.config_read(0x2C, 4) == 0x1100_1AF4          # QEMU's subsystem: SeaBIOS's qemu_detect
    assert bridge.config_read(0x0E, 1) == 0


def test_pam_registers_keep_only_their_defined_bits():
    bridge = I440fxHostBridge()
    bridge.config_write(0x58, 4, 0xFFFF_FFFF)
    bridge.config_write(0x5C, 4, 0xFFFF_FFFF)
    assert bridge.pam == bytes([0x30] + [0x33] * 6)
    bridge.reset()
    assert bridge.pam == bytes(7)


def test_power_on_maps_the_rom_read_only_at_both_places(fw):
    firmware, _, mapper, memory = fw
    assert mapper.mapped[FOUR_GIB - len(IMAGE)] == (firmware.rom.address, len(IMAGE), True)
    # 0xC0000-0xFFFFF all from the ISA ROM window (zeros, then the image's last 128 KiB), read-only, in one piece.
    assert mapper.mapped[0xC0000] == (firmware.isa_rom.address, 0x40000, True)
    assert firmware.shadow_read(0xFFFF0, 4) == int.from_bytes(IMAGE[-16:-12], "little")
    assert firmware.shadow_read(0xC0000, 4) == 0


def test_writable_shadow_then_locked(fw):
    firmware, bridge, mapper, memory = fw
    write_pam(bridge, bytes([0x30] + [0x33] * 6))               # make_bios_writable
    assert firmware.mappings == [Mapping(0xC0000, 0x40000, memory.host_base + 0xC0000, False)]
    assert mapper.mapped == {FOUR_GIB - len(IMAGE): (firmware.rom.address, len(IMAGE), True),
                             0xC0000: (memory.host_base + 0xC0000, 0x40000, False)}
    firmware.shadow_write(0xF0000, 2, 0xBEEF)                    # RAM takes writes now
    assert memory.read(0xF0000, 2) == b"\xEF\xBE"
    write_pam(bridge, bytes([0x10, 0x11, 0x11, 0x31, 0x33, 0x33, 0x33]))   # make_bios_readonly
    ram = memory.host_base
    assert firmware.mappings == [
        Mapping(0xC0000, 0x14000, ram + 0xC0000, True),           # 0xC0000-0xD3FFF: the ROMs, locked
        Mapping(0xD4000, 0x1C000, ram + 0xD4000, False),          # upper memory the firmware keeps writable
        Mapping(0xF0000, 0x10000, ram + 0xF0000, True),
    ]
    firmware.shadow_write(0xF0000, 2, 0x1234)                    # discarded: WE=0
    assert memory.read(0xF0000, 2) == b"\xEF\xBE"
    assert firmware.shadow_read(0xF0000, 2) == 0xBEEF            # reads RAM: RE=1


def test_write_only_ram_reads_the_rom_and_writes_ram(fw):
    firmware, bridge, _, memory = fw
    write_pam(bridge, bytes([0x20, 0, 0, 0, 0, 0, 0]))          # 0xF0000: WE only
    firmware.shadow_write(0xF0000, 1, 0x5A)
    assert memory.read_u8(0xF0000) == 0x5A
    assert firmware.shadow_read(0xF0000, 1) == IMAGE[len(IMAGE) - 0x10000]


def test_reset_brings_back_the_rom(fw):
    firmware, bridge, mapper, memory = fw
    write_pam(bridge, bytes([0x30] + [0x33] * 6))
    bridge.reset()
    assert firmware.pam == bytes(7)
    assert mapper.mapped[0xC0000] == (firmware.isa_rom.address, 0x40000, True)


def test_without_a_mapper_everything_is_served_as_mmio():
    memory = GuestMemory(2 << 20)
    mmio = MmioBus()
    firmware = FirmwareMemory(IMAGE, memory, mmio)
    assert firmware.mappings == []
    assert mmio.read(FOUR_GIB - 16, 4) == int.from_bytes(IMAGE[-16:-12], "little")
    mmio.write(FOUR_GIB - 16, 4, 0)                              # a ROM: writes go nowhere
    assert mmio.read(FOUR_GIB - 16, 4) == int.from_bytes(IMAGE[-16:-12], "little")
    assert mmio.read(0xFFFF0, 1) == IMAGE[-16]
    memory.close()


def test_bad_firmware_files_are_one_line_errors(tmp_path):
    with pytest.raises(FirmwareError, match="does not exist: install Debian's seabios"):
        load_firmware_image(str(tmp_path / "missing.bin"))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\0" * 1000)
    with pytest.raises(FirmwareError, match="1000 bytes; a BIOS image is a multiple of 64 KiB"):
        load_firmware_image(str(odd))
    with pytest.raises(FirmwareError, match="is a directory"):
        load_firmware_image(str(tmp_path))


class CountingMapper(RecordingMapper):
    """Also counts each range's map_ram and unmap_ram calls (an unmap drops the range's translated code)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def map_ram(self, gpa: int, host: int, size: int, readonly: bool = False) -> None:
        super().map_ram(gpa, host, size, readonly)
        self.calls.append(("map", gpa))

    def unmap_ram(self, gpa: int) -> None:
        super().unmap_ram(gpa)
        self.calls.append(("unmap", gpa))


def test_a_pam_change_redoes_only_the_mappings_it_changes():
    """Locking the option ROM's segment (0xC0000-0xC3FFF) leaves the mapping of 0xF0000-0xFFFFF alone, so the
    BIOS's own translated code survives; the end state is the one a full remap gives."""
    memory = GuestMemory(4 << 20)
    try:
        mapper = CountingMapper()
        firmware = FirmwareMemory(IMAGE, memory, MmioBus(), mapper)
        bridge = I440fxHostBridge(firmware.set_pam)
        write_pam(bridge, bytes([0x10, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]))   # the BIOS locked, the rest RAM
        bios = next(m for m in firmware.mappings if m.gpa == 0xF0000)
        assert bios.readonly
        mapper.calls.clear()
        write_pam(bridge, bytes([0x10, 0x31, 0x33, 0x33, 0x33, 0x33, 0x33]))   # 0xC0000-0xC3FFF read-only too
        assert ("unmap", 0xF0000) not in mapper.calls and ("map", 0xF0000) not in mapper.calls, mapper.calls
        assert bios in firmware.mappings
        fresh = FirmwareMemory(IMAGE, memory, MmioBus(), RecordingMapper())
        fresh.set_pam(firmware.pam)
        assert firmware.mappings == fresh.mappings
        low = {gpa: v for gpa, v in mapper.mapped.items() if gpa < FOUR_GIB - len(IMAGE)}      # not the image
        assert low == {m.gpa: (m.host, m.size, m.readonly) for m in firmware.mappings}
    finally:
        memory.close()
