"""The state file itself (core/state/container.py, docs/machine-state.md): zero pages cost nothing, the file
appears whole or not at all, and a corrupt or lying file gives one line naming what is wrong -- never a crash,
never a device indexed out of bounds."""
from __future__ import annotations

import os

import pytest

from core.machine import DiskSpec, Machine, MachineConfig
from core.machine_record import SavedState
from core.memory import GuestMemory
from core.state.container import StateReader, StateWriter
from core.state.fields import StateError
from core.storage import create_image
from tests.guests.build import guest_path
from tests.helpers.accel import require_accel
from tests.state.helpers import Running, rewrite


def test_ram_skips_zero_pages_and_round_trips(tmp_path):
    memory = GuestMemory(64 << 20)
    memory.write(0x1000, b"first page")
    memory.write(0x2FF_F000, b"\xAA" * 8192)                    # two pages straddling nothing special
    memory.write(memory.size - 4096, b"last")
    path = tmp_path / "ram.state"
    with StateWriter(str(path)) as writer:
        writer.record("machine", 1, {"memory": memory.size})
        writer.ram(memory)
    assert writer.bytes_ram == 4 * 4096
    assert os.path.getsize(path) < 20_000                        # 64 MiB of RAM, four pages in the file
    copy = GuestMemory(64 << 20)
    reader = StateReader(str(path))
    assert [n for n, _, _ in reader.records()] == ["machine"]
    reader.load_ram(copy)
    reader.close()
    assert bytes(copy.view(0, copy.size)) == bytes(memory.view(0, memory.size))


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "x.state"
    with pytest.raises(RuntimeError), StateWriter(str(path)) as writer:
        writer.record("machine", 1, {})
        raise RuntimeError("device refused")
    assert os.listdir(tmp_path) == []


VIRTIO = {}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    """A running counter guest with a VGA and a virtio disk (so their records are there to lie in), saved."""
    require_accel("software")
    directory = tmp_path_factory.mktemp("state")
    path, disk = directory / "counter.state", directory / "disk.raw"
    create_image(str(disk), "raw", 1 << 20)
    vm = Running(MachineConfig(kernel=str(guest_path("counter")), memory_mib=32, accel="software",
                               disks=[DiskSpec(str(disk), format="raw")]))
    try:
        vm.expect(r"counter: 2\n", 20)
        VIRTIO["key"] = f"{vm.machine.board.disk_transports[0].slot << 3:02x}"
        vm.machine.save(str(path))
    finally:
        vm.close()
    return str(path)


def _restore(path: str) -> None:
    config, state = SavedState.open(path)
    try:
        Machine(config, restore=state).board.close()
    finally:
        state.close()


def _one_line_error(path: str, *words: str) -> str:
    with pytest.raises(StateError) as info:
        _restore(path)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


@pytest.mark.parametrize("cut", [4, 40, 700, -5000, -3])
def test_truncated_file(saved, tmp_path, cut):
    data = open(saved, "rb").read()
    bad = tmp_path / "cut.state"
    bad.write_bytes(data[:cut])
    _one_line_error(str(bad), "truncated")


def test_flipped_bytes(saved, tmp_path):
    data = bytearray(open(saved, "rb").read())
    bad = tmp_path / "flip.state"
    data[200] ^= 0x01                                            # inside the machine record
    bad.write_bytes(bytes(data))
    _one_line_error(str(bad), "corrupt")
    data[200] ^= 0x01
    data[-200] ^= 0x40                                           # inside the last RAM run
    bad.write_bytes(bytes(data))
    _one_line_error(str(bad), "RAM", "corrupt")


def test_not_a_state_file_and_future_version(saved, tmp_path):
    bad = tmp_path / "magic.state"
    bad.write_bytes(b"QEVM" + open(saved, "rb").read()[4:])
    _one_line_error(str(bad), "not a Vireo machine-state file")
    data = bytearray(open(saved, "rb").read())
    data[8] = 9
    bad.write_bytes(bytes(data))
    _one_line_error(str(bad), "format version 9")


def _set(path: list, value):
    def mutate(records):
        target = records[path[0]][1]
        for key in path[1:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


LIES = {
    "pic-irr-out-of-range": (["chips", "pic", "master", "irr"], 300, "pic.master.irr"),
    "pit-count-zero": (["chips", "pit", "counters", 0, "n"], 0, "pit.counters[0].n"),
    "ioapic-short-table": (["chips", "ioapic", "redirection"], [0] * 3, "ioapic.redirection"),
    "cpu-mp-state": (["cpu.0", "mp_state"], "dancing", "cpu.0.mp_state"),
    "cpu-segment-limit": (["cpu.0", "segments", "cs", "limit"], -1, "cpu.0.segments.cs.limit"),
    "lapic-page-size": (["cpu.0", "lapic"], b"\0" * 10, "cpu.0.lapic"),
    "uart-fifo-overflow": (["dev.uart", "rx_fifo"], [[65, 0]] * 100, "uart.rx_fifo"),
    "rtc-cmos-short": (["dev.rtc", "ram"], b"\0" * 5, "rtc.ram"),
    "i8042-queue-huge": (["dev.i8042", "keyboard", "queue"], [0] * 5000, "i8042.keyboard.queue"),
    "pci-bar-misaligned": (["pci", "functions", "virtio-fn", "pci", "bars", "4"], 0x123, "BAR 4"),
    "virtio-queue-size": (["pci", "functions", "virtio-fn", "virtio", "queues", 0, "size"], 3, "queues[0].size"),
    "vga-dispi-registers": (["dev.vga", "vbe", "r"], [0] * 3, "vga.vbe.r"),
    "memory-size": (["machine", "memory"], 64 << 20, "MiB"),
    "unknown-field": (["dev.acpi_pm", "extra"], 1, "unknown field"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_lying_records(saved, tmp_path, lie):
    path, value, words = LIES[lie]
    bad = tmp_path / f"{lie}.state"
    path = [VIRTIO["key"] if p == "virtio-fn" else p for p in path]
    rewrite(saved, str(bad), _set(path, value))
    _one_line_error(str(bad), words)


def test_ram_run_outside_ram(saved, tmp_path):
    """A RAM run that claims pages past the machine's RAM is refused before a byte is written there."""
    data = bytearray(open(saved, "rb").read())
    bad = tmp_path / "ram.state"
    # Find the first RAM run header after the RAM section header and point it at 4 GiB.
    marker = data.index(b"\x02\x03\x00ram") + 6 + 12
    data[marker:marker + 8] = (1 << 32).to_bytes(8, "little")
    bad.write_bytes(bytes(data))
    _one_line_error(str(bad), "outside the machine's RAM")
