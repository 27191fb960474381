"""Save a running machine to a state file and restore it (docs/machine-state.md): the guest carries on where it
stopped, under the same accelerator or the other one (state written by one backend, read by the other), and a
virtio-blk request in flight at the save is neither lost nor repeated."""
from __future__ import annotations

import re
import time

import pytest

from core.machine import DiskSpec, MachineConfig, MachineState
from core.storage import create_image, open_image
from tests.guests.build import guest_path
from tests.helpers.accel import require_accel, require_guest
from tests.helpers.runner import run_vireo
from tests.state.helpers import Running

PAIRS = [("software", "software"), ("kvm", "kvm"), ("software", "kvm"), ("kvm", "software")]


def _counters(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^counter: (\d+)$", text, re.M)]


CASES = [(a, b, 1) for a, b in PAIRS] + [("kvm", "software", 2), ("software", "kvm", 2)]


@pytest.mark.parametrize(("saved_on", "restored_on", "cpus"), CASES,
                         ids=[f"{a}-to-{b}-{n}cpu" for a, b, n in CASES])
def test_counter_continues_after_save_and_restore(saved_on, restored_on, cpus, tmp_path):
    """With 2 CPUs the AP is saved waiting for a SIPI (the counter guest starts none) and restored so."""
    require_guest(saved_on, "counter")
    require_guest(restored_on, "counter")
    state = tmp_path / "vm.state"
    config = MachineConfig(kernel=str(guest_path("counter")), memory_mib=32, accel=saved_on, display="none",
                           cpus=cpus)
    first = Running(config)
    try:
        first.expect(r"counter: 5\n", 20)
        first.machine.save(str(state))
        assert first.machine.wait(10) == MachineState.SHUTOFF
        assert first.machine.reason == f"saved to {state}"
        before = _counters(first.output)
    finally:
        first.close()
    assert before == list(range(1, len(before) + 1)) and before[-1] >= 5

    second = Running(state_file=str(state), accel=restored_on)
    try:
        assert second.machine.board.accel.name == restored_on
        second.expect(rf"counter: {before[-1] + 5}\n", 20)
        after = _counters(second.output)
    finally:
        second.close()
    # The first number after the restore follows the last one before it: not 1 again, nothing skipped.
    assert after[:5] == list(range(before[-1] + 1, before[-1] + 6)), (before, after)
    assert "counter: started" not in second.output


def test_virtio_request_in_flight_is_neither_lost_nor_repeated(debian_kernel, busybox_initramfs, tmp_path):
    """Linux writes a record and flushes it, over and over (init.sh's disk-syncloop: the flushes go to the disk's
    worker thread, so requests are in flight when the save comes); after save and restore every record it
    reported is on the disk and the sequence goes on without a gap or a repeat."""
    require_accel("software")
    disk = tmp_path / "disk.raw"
    create_image(str(disk), "raw", 16 << 20)
    state = tmp_path / "vm.state"
    config = MachineConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs), memory_mib=128,
                           accel="software", display="none", disks=[DiskSpec(str(disk), format="raw")],
                           cmdline="console=ttyS0 quiet vireo.action=disk-syncloop")
    first = Running(config)
    try:
        first.expect(r"VIREO-SYNCED=6\n", 120)
        first.machine.save(str(state))
        first.machine.wait(10)
        before = [int(n) for n in re.findall(r"VIREO-SYNCED=(\d+)\n", first.output)]
    finally:
        first.close()
    second = Running(state_file=str(state))
    try:
        second.expect(rf"VIREO-SYNCED={before[-1] + 6}\n", 60)
        second.machine.power_off()
        after = [int(n) for n in re.findall(r"VIREO-SYNCED=(\d+)\n", second.output)]
    finally:
        second.close()
    synced = before + after
    assert "VIREO-ERROR" not in first.output + second.output
    assert synced == list(range(len(synced))), synced
    with open_image(str(disk), read_only=True) as dev:
        for n in synced:
            assert dev.read(n * 17 * 4096, 4096) == f"VIREO-SEQ {n}\n".encode().ljust(4096, b"\0"), n


def test_runner_restores_a_state_file(tmp_path):
    """`vireo run --restore FILE` resumes a saved machine from the definition in the file."""
    require_guest("software", "counter")
    state = tmp_path / "vm.state"
    first = Running(MachineConfig(kernel=str(guest_path("counter")), memory_mib=32, accel="software",
                                  display="none"))
    try:
        first.expect(r"counter: 3\n", 20)
        first.machine.save(str(state))
        last = _counters(first.output)[-1]
    finally:
        first.close()
    code, out, err = run_vireo(["--restore", str(state), "--accel", "software", "--serial", "stdio",
                                "--timeout", "1.5"], timeout=40)
    after = _counters(out.replace("\r\n", "\n"))
    assert after[:3] == [last + 1, last + 2, last + 3], (out[-500:], err)
    code, _, err = run_vireo(["--restore", str(tmp_path / "missing.state")], timeout=40)
    assert code == 2 and err.strip().count("\n") == 0 and "missing.state" in err, err


def test_firmware_machine_keeps_its_screen(tmp_path):
    """A machine booted through SeaBIOS (PAM shadow RAM, fw_cfg, the VGA in text mode): the restored machine
    shows the screen it was saved with and runs on."""
    from core.display.renderer import text_snapshot
    require_accel("software")
    state = tmp_path / "fw.state"
    first = Running(MachineConfig(memory_mib=64, accel="software", boot_menu_wait_ms=0))
    try:
        deadline = time.monotonic() + 30
        while not any("No bootable device" in line for line in text_snapshot(first.machine.board.vga)):
            assert time.monotonic() < deadline, text_snapshot(first.machine.board.vga)
            time.sleep(0.05)
        screen = text_snapshot(first.machine.board.vga)
        first.machine.save(str(state))
    finally:
        first.close()
    second = Running(state_file=str(state))
    try:
        assert text_snapshot(second.machine.board.vga) == screen
        time.sleep(0.5)
        assert second.machine.state == MachineState.RUNNING, second.machine.reason
        assert second.machine.board.firmware.pam == first.machine.board.firmware.pam
    finally:
        second.close()
