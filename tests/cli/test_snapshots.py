"""VM snapshots through the CLI (core/cli/snapcmds.py over the Host API: core/host/snapshots.py in the service,
core/vmproc/snapshot_call.py in the VM process), on the local service and over SSH; what the user sees: the counter
guest (tests/guests/counter.s) carries on from the snapshot's value after a revert, `qemu-img check` finds the
image clean and `qemu-img snapshot -l` lists the snapshots, with a VM SIZE for the one taken while running."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from tests.cli.conftest import Vireo, one_error_line
from tests.guests.build import guest_path


def _counters(log: Path) -> list[int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [int(n) for n in re.findall(r"counter: (\d+)", text)]


def _wait_counter(log: Path, above: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _counters(log)
        if got and got[-1] > above:
            return got
        time.sleep(0.05)
    raise AssertionError(f"the counter did not pass {above}: {_counters(log)[-5:]}")


def _resumed(values: list[int], start: int) -> list[int]:
    """The counters after the first step back at or past `start` (the log goes on across the revert)."""
    for i in range(max(start, 1), len(values)):
        if values[i] < values[i - 1]:
            return values[i:]
    return []


def _qemu_img(*args: str) -> str:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def _definition(tmp_path: Path, name: str, disks: list[dict]) -> tuple[Path, Path]:
    log = tmp_path / "serial.log"
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "memory_mib": 32, "accel": "software",
                                "boot": {"kernel": str(guest_path("counter"))}, "display": {"type": "none"},
                                "serial": {"log_file": str(log)}, "disks": disks}))
    return path, log


def test_snapshot_of_a_running_vm_reverts_the_counter(vireo: Vireo, tmp_path: Path) -> None:
    name = f"snapper-{vireo.kind}"
    disk, second = tmp_path / "disk.qcow2", tmp_path / "data.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(disk), "16M")
    _qemu_img("create", "-q", "-f", "qcow2", str(second), "8M")
    definition, log = _definition(tmp_path, name, [{"path": str(disk), "format": "qcow2"},
                                                   {"path": str(second), "format": "qcow2"}])
    vireo.ok("define", str(definition))
    try:
        # Shut off: disks only.
        assert vireo.ok("snapshot-create", name, "cold", "--description", "before the first boot") == \
            "Domain snapshot cold created\n"
        vireo.ok("start", name)
        _wait_counter(log, 3)
        before = _counters(log)[-1]
        assert vireo.ok("snapshot-create", name, "hot") == "Domain snapshot hot created\n"
        at = _counters(log)[-1]
        _wait_counter(log, at + 15)          # it runs on past the snapshot
        assert vireo.states()[name] == "running"

        listing = vireo.ok("snapshot-list", name).splitlines()
        assert listing[0].split() == ["Name", "Creation", "Time", "State"] and set(listing[1]) == {"-"}
        rows = [re.match(r"^ (\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4})\s+(\S+)$", line) for line in
                listing[2:] if line]
        assert [(m.group(1), m.group(3)) for m in rows] == [("cold", "shutoff"), ("hot", "running")], listing

        # Revert: the VM resumes running from the snapshot, so the counter goes on from the value it had when the
        # snapshot paused it: past what the log showed before snapshot-create, at most one past what it showed
        # when snapshot-create returned (the 15 ticks counted after that are undone).
        before_revert = len(_counters(log))
        vireo.ok("snapshot-revert", name, "hot")
        assert vireo.states()[name] == "running"
        deadline = time.monotonic() + 30
        while len(_resumed(_counters(log), before_revert)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        resumed = _resumed(_counters(log), before_revert)
        assert before < resumed[0] <= at + 1 and resumed[:3] == list(range(resumed[0], resumed[0] + 3)), \
            (before, at, resumed[:5])
        assert "counter: started" not in log.read_text()[-200:]

        # Revert to the shut-off snapshot: the VM is powered off and its disks are as before the first boot.
        vireo.ok("snapshot-revert", name, "cold")
        assert vireo.states()[name] == "shut off"
        assert vireo.ok("snapshot-delete", name, "cold") == "Domain snapshot cold deleted\n"
        one_error_line(vireo.cli("snapshot-revert", name, "cold"), 2, "cold", "snapshot-list")

        # qemu-img sees a clean image holding the snapshot, with the machine state on the first disk only.
        _qemu_img("check", "-q", str(disk))
        _qemu_img("check", "-q", str(second))
        first = _qemu_img("snapshot", "-l", str(disk))
        hot = [line for line in first.splitlines() if re.match(r"^\d+\s+hot\s", line)]
        assert len(hot) == 1 and not re.search(r"\s0 B\s", hot[0]), first
        assert "cold" not in first
        other = [line for line in _qemu_img("snapshot", "-l", str(second)).splitlines() if " hot " in line]
        assert len(other) == 1 and re.search(r"\s0 B\s", other[0]), other
        vireo.ok("snapshot-delete", name, "hot")
        assert "hot" not in _qemu_img("snapshot", "-l", str(disk))
        _qemu_img("check", "-q", str(disk))
    finally:
        if vireo.states().get(name) in ("running", "paused"):
            vireo.cli("destroy", name)
        vireo.cli("undefine", name)


def test_a_raw_disk_is_refused_in_one_line(local_vireo: Vireo, tmp_path: Path) -> None:
    name = "snap-raw"
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1 << 20))
    definition, _ = _definition(tmp_path, name, [{"path": str(disk), "format": "raw"}])
    local_vireo.ok("define", str(definition))
    try:
        one_error_line(local_vireo.cli("snapshot-create", name, "s1"), 1, "qcow2", str(disk), "raw")
        assert local_vireo.ok("snapshot-list", name).splitlines()[2:] == [""]
    finally:
        local_vireo.cli("undefine", name)
