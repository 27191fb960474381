"""Bus-master DMA on the PIIX3 IDE function (SFF-8038i through the 82371SB's BAR4): PRD tables of every shape the
interface allows and several it does not. A table exactly the transfer's size, larger, or smaller (the rest moves
with a second table); regions of 64 KiB (count 0); tables and regions outside RAM, a table running off its 64 KiB
page, the wrong direction, bus mastering disabled: each ends in the interface's status bits and an ATA error,
never an access outside guest memory. Writes, the worker path of cache=none, a stop mid-transfer, and the software
CPU's code cache being told which RAM DMA wrote."""
from __future__ import annotations

import os
import struct
import threading

import pytest

from core.devices.ide import AtaDisk
from core.devices.ide.defs import ABRT, DRDY, DRQ, ERR, UNC
from core.storage import open_image
from core.storage.errors import ImageIOError
from tests.helpers.ide import IdeRig, make_image

SECTORS = 4096
TABLE = 0x1000
ACTIVE, ERROR, INTERRUPT = 0x01, 0x02, 0x04


@pytest.fixture
def disk(tmp_path):
    image = make_image(tmp_path / "d.raw", SECTORS * 512)
    image.write(0, os.urandom(SECTORS * 512))
    yield image
    image.close()


@pytest.fixture
def rig(disk):
    rig = IdeRig({0: AtaDisk(disk)}, ram=4 << 20)
    yield rig
    rig.close()


def test_read_dma_scatters_into_the_regions_and_ends_with_interrupt_not_active(rig, disk):
    regions = [(0x20000, 0x0), (0x40000, 512), (0x50002, 1536)]       # count 0 is 64 KiB; a word-aligned one
    rig.prd_table(TABLE, regions)
    rig.command(0, 0, 0xC8, count=(0x10000 + 2048) // 512, lba=5)
    assert rig.status(0) & DRQ                                          # waiting for the engine
    rig.dma(0, TABLE, to_memory=True)
    assert rig.bm_in(0, 2) & (ACTIVE | INTERRUPT | ERROR) == INTERRUPT
    assert rig.status(0) == DRDY | 0x10 and rig.irqs.edges[14] == 1
    expect = disk.read(5 * 512, 0x10000 + 2048)
    got = rig.mem.read(0x20000, 0x10000) + rig.mem.read(0x40000, 512) + rig.mem.read(0x50002, 1536)
    assert got == expect
    rig.stop_dma(0)
    rig.bm_out(0, 2, 1, INTERRUPT)
    assert rig.bm_in(0, 2) == 0
    assert rig.ide.stats()["dma_transfers"] == 1


def test_the_engine_may_start_before_the_command(rig, disk):
    rig.prd_table(TABLE, [(0x30000, 4096)])
    rig.dma(0, TABLE, to_memory=True)
    assert rig.bm_in(0, 2) & ACTIVE
    rig.command(0, 0, 0x25, count=8, lba=(1 << 20) % SECTORS, lba48=True)  # READ DMA EXT
    assert rig.bm_in(0, 2) & (ACTIVE | INTERRUPT) == INTERRUPT
    assert rig.mem.read(0x30000, 4096) == disk.read(((1 << 20) % SECTORS) * 512, 4096)


def test_write_dma_ext_gathers_from_memory(rig, disk):
    payload = os.urandom(3 * 512)
    rig.mem.write(0x60000, payload[:512])
    rig.mem.write(0x70000, payload[512:])
    rig.prd_table(TABLE, [(0x60000, 512), (0x70000, 1024)])
    rig.command(0, 0, 0x35, count=3, lba=100, lba48=True)
    rig.dma(0, TABLE, to_memory=False)
    assert rig.bm_in(0, 2) & (ACTIVE | INTERRUPT) == INTERRUPT and rig.status(0) == DRDY | 0x10
    assert disk.read(100 * 512, 3 * 512) == payload


def test_a_larger_table_leaves_the_engine_active_for_the_driver_to_stop(rig, disk):
    rig.prd_table(TABLE, [(0x20000, 8192)])
    rig.command(0, 0, 0xC8, count=2, lba=0)
    rig.dma(0, TABLE, to_memory=True)
    assert rig.bm_in(0, 2) & (ACTIVE | INTERRUPT) == ACTIVE | INTERRUPT
    assert rig.mem.read(0x20000, 1024) == disk.read(0, 1024)
    rig.stop_dma(0)
    assert not rig.bm_in(0, 2) & ACTIVE


def test_a_shorter_table_stops_without_interrupt_and_a_second_table_moves_the_rest(rig, disk):
    rig.prd_table(TABLE, [(0x20000, 1024)])
    rig.command(0, 0, 0xC8, count=4, lba=40)
    rig.dma(0, TABLE, to_memory=True)
    assert rig.bm_in(0, 2) & (ACTIVE | INTERRUPT) == 0 and rig.status(0) & DRQ
    assert rig.irqs.edges.get(14, 0) == 0
    rig.stop_dma(0)
    rig.prd_table(TABLE + 0x100, [(0x28000, 1024)])
    rig.dma(0, TABLE + 0x100, to_memory=True)
    assert rig.bm_in(0, 2) & INTERRUPT and rig.status(0) == DRDY | 0x10
    assert rig.mem.read(0x20000, 1024) + rig.mem.read(0x28000, 1024) == disk.read(40 * 512, 2048)


@pytest.mark.parametrize("case", ["region-outside-ram", "region-straddles-the-end", "table-outside-ram",
                                  "table-crosses-64k", "wrong-direction", "bus-master-off"])
def test_hostile_tables_set_the_error_bit_and_abort_the_command(rig, case):
    ram = rig.mem.size
    table = TABLE
    to_memory = True
    if case == "region-outside-ram":
        rig.prd_table(table, [(0xFEE0_0000, 1024)])
    elif case == "region-straddles-the-end":
        rig.prd_table(table, [(ram - 512, 1024)])
    elif case == "table-outside-ram":
        table = ram + 0x1000
    elif case == "table-crosses-64k":
        table = 0x2FFF8                                             # no EOT in its last entry of the page
        rig.mem.write(table, struct.pack("<II", 0x40000, 512))
    elif case == "wrong-direction":
        rig.prd_table(table, [(0x40000, 1024)])
        to_memory = False
    else:
        rig.prd_table(table, [(0x40000, 1024)])
        rig.cfg_write(0x04, 2, 0x0001)
    before = rig.mem.read(0, ram)
    rig.command(0, 0, 0xC8, count=2, lba=0)
    rig.dma(0, table, to_memory=to_memory)
    assert rig.bm_in(0, 2) & (ACTIVE | ERROR | INTERRUPT) == ERROR | INTERRUPT
    assert rig.status(0) & ERR and rig.inb(0, 1) == ABRT
    assert rig.mem.read(0, ram) == before                          # nothing was written anywhere
    rig.stop_dma(0)
    rig.bm_out(0, 2, 1, ERROR | INTERRUPT)
    rig.prd_table(TABLE, [(0x40000, 1024)])                         # and the channel still works
    rig.cfg_write(0x04, 2, 0x0005)
    rig.command(0, 0, 0xC8, count=2, lba=0)
    rig.dma(0, TABLE, to_memory=True)
    assert rig.bm_in(0, 2) & (ERROR | INTERRUPT) == INTERRUPT


def test_an_image_error_during_dma_is_uncorrectable(rig, disk):
    def broken(offset, views):
        raise ImageIOError("d.raw: read failed: Input/output error")

    disk.readv = broken
    rig.prd_table(TABLE, [(0x40000, 512)])
    rig.command(0, 0, 0xC8, count=1, lba=77)
    rig.dma(0, TABLE, to_memory=True)
    assert rig.status(0) & ERR and rig.inb(0, 1) == UNC and rig.inb(0, 3) == 77
    assert rig.bm_in(0, 2) & (ACTIVE | INTERRUPT) == INTERRUPT


def test_dma_tells_the_code_cache_which_ram_it_wrote(rig):
    seen = []
    rig.mem.add_write_listener(lambda gpa, n: seen.append((gpa, n)))
    rig.prd_table(TABLE, [(0x20000, 1024), (0x20400, 1024)])
    rig.command(0, 0, 0xC8, count=4, lba=0)
    rig.dma(0, TABLE, to_memory=True)
    assert (0x20000, 2048) in seen                                  # adjacent regions: one notification


def test_cache_none_runs_dma_on_the_worker_and_a_stop_drops_its_completion(tmp_path):
    path = tmp_path / "slow.raw"
    make_image(path, 64 * 512).close()
    image = open_image(str(path), cache="none")
    gate = threading.Event()
    threads = []
    real = image.readv

    def slow(offset, views):
        threads.append(threading.current_thread().name)
        gate.wait(10)
        real(offset, views)

    image.readv = slow
    rig = IdeRig({0: AtaDisk(image)})
    try:
        rig.prd_table(TABLE, [(0x20000, 512)])
        rig.command(0, 0, 0xC8, count=1, lba=0)
        rig.dma(0, TABLE, to_memory=True)
        assert rig.bm_in(0, 2) & ACTIVE and rig.status(0) & DRQ      # the vCPU went on while the worker reads
        gate.set()
        assert rig.ide.channels[0].worker().wait_idle(10)
        assert threads == ["vireo-ide0"] and rig.bm_in(0, 2) & INTERRUPT and rig.status(0) == DRDY | 0x10

        gate.clear()
        rig.command(0, 0, 0xC8, count=1, lba=1)
        rig.dma(0, TABLE, to_memory=True)
        rig.stop_dma(0)                                              # the driver gives up mid-transfer
        gate.set()
        assert rig.ide.channels[0].worker().wait_idle(10)
        assert not rig.bm_in(0, 2) & (ACTIVE | INTERRUPT) and rig.status(0) & DRQ   # completion dropped
    finally:
        rig.close()
        image.close()
