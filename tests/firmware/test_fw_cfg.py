"""fw_cfg (core/devices/fw_cfg.py) against QEMU's docs/specs/fw_cfg.rst: the port interface, the DMA interface,
the file directory, and what a guest gets for bad addresses and unknown keys."""
from __future__ import annotations

import struct

import pytest

from core.bus import PortIoBus
from core.devices import fw_cfg as fc
from core.memory import GuestMemory

DMA_STRUCT = 0x1000
BUFFER = 0x2000


@pytest.fixture
def dev():
    memory = GuestMemory(1 << 20)
    pio = PortIoBus()
    fw = fc.FwCfg(memory)
    fw.attach(pio)
    yield fw, pio, memory
    memory.close()


def read_item(pio: PortIoBus, key: int, n: int) -> bytes:
    pio.write(fc.PORT_SELECTOR, 2, key)
    return bytes(pio.read(fc.PORT_DATA, 1) for _ in range(n))


def dma(pio: PortIoBus, memory: GuestMemory, control: int, length: int, address: int,
        where: int = DMA_STRUCT) -> int:
    """Run one DMA transfer as SeaBIOS does (outl of the big-endian low half at 0x518); return the control word
    the device wrote back."""
    memory.write(where, struct.pack(">IIQ", control, length, address))
    pio.write(fc.PORT_DMA, 4, 0)                                    # high half: 0
    pio.write(fc.PORT_DMA + 4, 4, int.from_bytes(where.to_bytes(4, "big"), "little"))
    return struct.unpack(">I", memory.read(where, 4))[0]


def test_signature_and_id_through_the_data_port(dev):
    _, pio, _ = dev
    assert read_item(pio, fc.SIGNATURE, 4) == b"QEMU"
    ident = struct.unpack("<I", read_item(pio, fc.ID, 4))[0]
    assert ident & fc.ID_TRADITIONAL and ident & fc.ID_DMA


def test_dma_register_reads_the_signature(dev):
    _, pio, _ = dev
    raw = pio.read(fc.PORT_DMA, 4).to_bytes(4, "little") + pio.read(fc.PORT_DMA + 4, 4).to_bytes(4, "little")
    assert raw == b"QEMU CFG"


def test_reads_past_the_end_and_unknown_keys_are_zero(dev):
    fw, pio, _ = dev
    fw.add_u16(fc.NB_CPUS, 3)
    assert read_item(pio, fc.NB_CPUS, 4) == b"\x03\x00\x00\x00"
    assert read_item(pio, 0x1F, 4) == bytes(4)                # nobody provides item 0x1f
    assert read_item(pio, fc.ARCH_LOCAL + 5, 2) == bytes(2)
    pio.write(fc.PORT_DATA, 1, 0x55)                            # data writes do nothing
    assert read_item(pio, fc.NB_CPUS, 2) == b"\x03\x00"


def test_file_directory_lists_files_sorted_with_their_keys(dev):
    fw, pio, _ = dev
    kb = fw.add_file("etc/zzz", b"last")
    ka = fw.add_file("bootorder", b"/pci@i0cf8/scsi@3/disk@0,0\0")
    count = struct.unpack(">I", read_item(pio, fc.FILE_DIR, 4))[0]
    assert count == 2
    entries = {}
    for _ in range(count):
        size, key, _res = struct.unpack(">IHH", bytes(pio.read(fc.PORT_DATA, 1) for _ in range(8)))
        name = bytes(pio.read(fc.PORT_DATA, 1) for _ in range(56)).rstrip(b"\0").decode()
        entries[name] = (size, key)
    assert list(entries) == ["bootorder", "etc/zzz"]
    assert entries["etc/zzz"] == (4, kb) and entries["bootorder"][1] == ka
    assert kb >= fc.FILE_FIRST and ka >= fc.FILE_FIRST and ka != kb
    assert read_item(pio, kb, 4) == b"last"


def test_dma_select_read_skip_and_zero_fill(dev):
    fw, pio, memory = dev
    key = fw.add_file("etc/data", bytes(range(32)))
    ctl = fc.DMA_CTL_SELECT | fc.DMA_CTL_READ | key << 16
    assert dma(pio, memory, ctl, 8, BUFFER) == 0
    assert memory.read(BUFFER, 8) == bytes(range(8))
    assert dma(pio, memory, fc.DMA_CTL_SKIP, 8, 0) == 0             # offsets continue from where they were
    memory.write(BUFFER, b"\xAA" * 24)
    assert dma(pio, memory, fc.DMA_CTL_READ, 24, BUFFER) == 0        # 16 bytes left, then zeros
    assert memory.read(BUFFER, 24) == bytes(range(16, 32)) + bytes(8)


def test_dma_write_to_a_read_only_item_is_refused(dev):
    fw, pio, memory = dev
    key = fw.add_file("etc/ro", b"abcd")
    assert dma(pio, memory, fc.DMA_CTL_SELECT | fc.DMA_CTL_WRITE | key << 16, 4, BUFFER) == fc.DMA_CTL_ERROR
    assert fw.file_data("etc/ro") == b"abcd"


def test_dma_write_to_a_writable_file(dev):
    fw, pio, memory = dev
    key = fw.add_file("etc/rw", bytes(8), writable=True)
    memory.write(BUFFER, b"12345678")
    assert dma(pio, memory, fc.DMA_CTL_SELECT | fc.DMA_CTL_WRITE | key << 16, 4, BUFFER) == 0
    assert fw.file_data("etc/rw") == b"1234" + bytes(4)
    assert dma(pio, memory, fc.DMA_CTL_WRITE, 8, BUFFER) == fc.DMA_CTL_ERROR    # past the end of the file


def test_dma_to_an_address_outside_ram_sets_the_error_bit(dev):
    fw, pio, memory = dev
    key = fw.add_file("etc/data", b"x" * 16)
    ctl = fc.DMA_CTL_SELECT | fc.DMA_CTL_READ | key << 16
    assert dma(pio, memory, ctl, 16, (1 << 20) - 8) == fc.DMA_CTL_ERROR     # runs off the end of RAM
    assert dma(pio, memory, ctl, 16, 0xFFFF_FFFF_0000) == fc.DMA_CTL_ERROR
    assert fw.dma_errors == 2


def test_dma_structure_outside_ram_is_ignored(dev):
    fw, pio, _ = dev
    pio.write(fc.PORT_DMA, 4, 0)
    pio.write(fc.PORT_DMA + 4, 4, int.from_bytes((0xF000_0000).to_bytes(4, "big"), "little"))
    assert fw.dma_errors == 1          # nothing to write the error back to; the device carries on
    assert read_item(pio, fc.SIGNATURE, 4) == b"QEMU"


def test_select_through_dma_of_an_unknown_key_reads_zeros(dev):
    _, pio, memory = dev
    memory.write(BUFFER, b"\xFF" * 4)
    assert dma(pio, memory, fc.DMA_CTL_SELECT | fc.DMA_CTL_READ | 0x1E << 16, 4, BUFFER) == 0
    assert memory.read(BUFFER, 4) == bytes(4)


def test_bad_file_names_are_refused(dev):
    fw, _, _ = dev
    with pytest.raises(fc.FwCfgError):
        fw.add_file("x" * 56, b"")
    with pytest.raises(fc.FwCfgError):
        fw.add_item(fc.FILE_FIRST, b"")


def test_a_huge_dma_read_allocates_nothing_on_the_host(dev):
    """Found by the platform fuzz target (fuzz/corpus/platform/regress-fw-cfg-dma-length): the read length is the
    guest's 32-bit field, and the zeros past the item's end were built as one host buffer before the range was
    checked against RAM, so a single outl made the VM process allocate up to 4 GiB (MemoryError, or seconds of
    the vCPU thread spent filling it). The range is checked first, and the zeros are written in place."""
    import tracemalloc
    fw, pio, memory = dev
    key = fw.add_file("etc/data", b"x" * 16)
    ctl = fc.DMA_CTL_SELECT | fc.DMA_CTL_READ | key << 16
    tracemalloc.start()
    try:
        assert dma(pio, memory, ctl, 0xFFFF_FFF0, BUFFER) == fc.DMA_CTL_ERROR     # far past the end of RAM
        assert dma(pio, memory, ctl, 256 << 20, 0) == fc.DMA_CTL_ERROR
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # Inside RAM, past the end of the item, the rest is still zeros (as QEMU's dma_memory_set).
    memory.write(BUFFER, b"\xAA" * 0x10000)
    assert dma(pio, memory, ctl, 0x10000, BUFFER) == 0
    assert memory.read(BUFFER, 0x10000) == b"x" * 16 + bytes(0x10000 - 16)
