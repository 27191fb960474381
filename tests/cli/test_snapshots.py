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

        # A managed save: no disk-only snapshot under it; a revert discards it (it belongs with the old disks).
        vireo.ok("save", name)
        one_error_line(vireo.cli("snapshot-create", name, "under-save"), 1, name, "saved state")
        vireo.ok("snapshot-revert", name, "hot")
        assert vireo.states()[name] == "running"

        # Revert to the shut-off snapshot: the VM is powered off and its disks are as before the first boot; the
        # next start boots afresh (the managed save went with the revert before).
        vireo.ok("snapshot-revert", name, "cold")
        assert vireo.states()[name] == "shut off"
        boots = log.read_text().count("counter: started")
        vireo.ok("start", name)
        deadline = time.monotonic() + 20
        while log.read_text().count("counter: started") == boots and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().count("counter: started") == boots + 1
        vireo.ok("destroy", name)
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


def test_a_file_written_after_the_snapshot_is_gone_after_revert(local_vireo: Vireo, tmp_path: Path,
                                                                 debian_kernel: Path, busybox_initramfs: Path) -> None:
    """The Debian kernel's busybox guest makes an ext2 file system on its qcow2 /dev/vda and writes a file; a
    running snapshot; another file; revert: the guest's shell is where it was, and the second file is gone from
    the disk itself (the guest's page cache is dropped before looking)."""
    from tests.cli.test_lifecycle import shell

    vireo, name = local_vireo, "snap-files"
    disk = tmp_path / "vda.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(disk), "32M")
    path = vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs,
                                  disks=[{"path": str(disk), "format": "qcow2"}])
    vireo.ok("define", str(path))
    try:
        vireo.ok("start", name)
        shell(vireo, name, b"for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $m; done; sleep 1; "
                           b"mke2fs -q /dev/vda && mkdir -p /mnt && mount /dev/vda /mnt && echo one > /mnt/before && "
                           b"sync && echo MARK-$((6*7))", b"MARK-42")
        vireo.ok("snapshot-create", name, "with-before")
        shell(vireo, name, b"echo two > /mnt/after && sync && ls /mnt && echo MARK-$((6*8))", b"MARK-48")
        vireo.ok("snapshot-revert", name, "with-before")
        assert vireo.states()[name] == "running"
        text = shell(vireo, name, b"sync; echo 3 > /proc/sys/vm/drop_caches; echo FILES-$((1+1)): $(ls /mnt) END",
                     re.compile(rb"FILES-2: [^\r\n]*END"))
        files = re.findall(r"FILES-2: ([^\r\n]*) END", text)[-1].split()
        assert "before" in files and "after" not in files, files
        vireo.ok("destroy", name)
        _qemu_img("check", "-q", str(disk))
        assert re.search(r"\swith-before\s", _qemu_img("snapshot", "-l", str(disk)))
    finally:
        if vireo.states().get(name) in ("running", "paused"):
            vireo.cli("destroy", name)
        vireo.cli("undefine", name)


def test_a_disk_added_since_the_snapshot_stops_the_revert_before_any_disk_changes(local_vireo: Vireo,
                                                                                   tmp_path: Path) -> None:
    from core.storage import open_image

    name = "snap-added"
    first, added = tmp_path / "first.qcow2", tmp_path / "added.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(first), "8M")
    _qemu_img("create", "-q", "-f", "qcow2", str(added), "8M")
    definition, _ = _definition(tmp_path, name, [{"path": str(first), "format": "qcow2"}])
    local_vireo.ok("define", str(definition))
    try:
        local_vireo.ok("snapshot-create", name, "one-disk")
        with open_image(str(first)) as dev:          # written after the snapshot
            dev.write(0, b"AFTER".ljust(512, b"\0"))
            dev.flush()
        definition, _ = _definition(tmp_path, name, [{"path": str(first), "format": "qcow2"},
                                                     {"path": str(added), "format": "qcow2"}])
        local_vireo.ok("define", str(definition))
        one_error_line(local_vireo.cli("snapshot-revert", name, "one-disk"), 1, str(added), "one-disk",
                       "no disk was reverted")
        with open_image(str(first), read_only=True) as dev:
            assert dev.read(0, 5) == b"AFTER"
        _qemu_img("check", "-q", str(first))
    finally:
        local_vireo.cli("undefine", name)


def test_a_paused_vm_snapshot_reverts_running(local_vireo: Vireo, tmp_path: Path) -> None:
    """Taken while paused: listed as "paused" (with machine state: a VM SIZE in qemu-img's list), the VM stays
    paused meanwhile; revert brings it back running, the counter going on from the paused value."""
    name = "snap-paused"
    disk = tmp_path / "disk.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(disk), "8M")
    definition, log = _definition(tmp_path, name, [{"path": str(disk), "format": "qcow2"}])
    local_vireo.ok("define", str(definition))
    try:
        local_vireo.ok("start", name)
        _wait_counter(log, 3)
        local_vireo.ok("suspend", name)
        time.sleep(0.3)
        at = _counters(log)[-1]
        local_vireo.ok("snapshot-create", name, "still")
        time.sleep(0.5)
        assert local_vireo.states()[name] == "paused" and _counters(log)[-1] == at
        assert local_vireo.ok("snapshot-list", name).splitlines()[2].split()[-1] == "paused"
        local_vireo.ok("resume", name)
        _wait_counter(log, at + 10)
        before = len(_counters(log))
        local_vireo.ok("snapshot-revert", name, "still")
        assert local_vireo.states()[name] == "running"
        deadline = time.monotonic() + 30
        while len(_resumed(_counters(log), before)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _resumed(_counters(log), before)[:2] == [at + 1, at + 2]
        local_vireo.ok("destroy", name)
        line = [x for x in _qemu_img("snapshot", "-l", str(disk)).splitlines() if " still " in x]
        assert len(line) == 1 and not re.search(r"\s0 B\s", line[0]), line
    finally:
        if local_vireo.states().get(name) in ("running", "paused"):
            local_vireo.cli("destroy", name)
        local_vireo.cli("undefine", name)
