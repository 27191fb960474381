"""`vireo list/define/dumpconfig/undefine/autostart` (core/cli/commands.py) as a user at a shell sees them, on the
local service and over SSH: what they print, their exit status, and the one line a refusal prints on stderr."""
from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Vireo, one_error_line


def test_define_then_dumpconfig_round_trips_and_define_updates(vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                                               busybox_initramfs: Path) -> None:
    name = f"def-{vireo.kind}"
    path = vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs, notes="first")
    assert vireo.ok("define", str(path)) == f"Domain '{name}' defined from {path}\n"
    assert vireo.states()[name] == "shut off"
    assert name not in vireo.states(all_vms=False)          # plain `list` shows the active VMs only, as virsh
    dumped = json.loads(vireo.ok("dumpconfig", name))
    assert dumped["name"] == name and dumped["notes"] == "first" and dumped["boot"]["kernel"] == str(debian_kernel)

    # What dumpconfig printed is a definition: changed and defined again, it updates the same VM (same uuid) ...
    dumped["memory_mib"] = 160
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(dumped))
    assert vireo.ok("define", str(changed)) == f"Domain '{name}' updated from {changed}\n"
    assert json.loads(vireo.ok("dumpconfig", name)) == dumped
    # ... and so does a file naming no uuid but the same name; the VM is also found by its uuid and its Id.
    assert "updated" in vireo.ok("define", str(path))
    again = json.loads(vireo.ok("dumpconfig", dumped["uuid"]))
    assert again["uuid"] == dumped["uuid"] and again["memory_mib"] == 128
    assert json.loads(vireo.ok("dumpconfig", dumped["uuid"][:8]))["name"] == name
    assert list(vireo.states()).count(name) == 1

    assert vireo.ok("autostart", name) == f"Domain '{name}' marked as autostarted\n"
    assert json.loads(vireo.ok("dumpconfig", name))["autostart"] is True
    assert vireo.ok("autostart", name, "--disable") == f"Domain '{name}' unmarked as autostarted\n"
    assert json.loads(vireo.ok("dumpconfig", name))["autostart"] is False

    assert vireo.ok("undefine", name) == f"Domain '{name}' has been undefined\n"
    assert name not in vireo.states()


def test_bad_input_is_one_line_and_status_2(vireo: Vireo, tmp_path: Path) -> None:
    for command in (["start", "nosuchvm"], ["dumpconfig", "nosuchvm"], ["console", "nosuchvm"],
                    ["shutdown", "nosuchvm"], ["undefine", "nosuchvm"], ["autostart", "nosuchvm"],
                    ["screendump", "nosuchvm", str(tmp_path / "x.png")]):
        line = one_error_line(vireo.cli(*command), 2, "'nosuchvm'", "vireo list --all")
        if vireo.kind == "remote":
            assert "--connect ssh://" in line                    # the hint is a command that works as given
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"name": "broken",\n "memory_mib": }')
    one_error_line(vireo.cli("define", str(malformed)), 2, str(malformed), "not valid JSON", "line 2")
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"name": "invalid", "vcpus": 0, "boot": {"kernel": "/k"}}))
    one_error_line(vireo.cli("define", str(invalid)), 2, str(invalid), "vcpus")
    missing = tmp_path / "missing.json"
    one_error_line(vireo.cli("define", str(missing)), 2, str(missing), "cannot read")
    unreadable = tmp_path / "unreadable.json"
    unreadable.mkdir()
    one_error_line(vireo.cli("define", str(unreadable)), 2, str(unreadable), "cannot read")
    assert vireo.cli("frobnicate").returncode == 2                   # argparse's own usage error
    assert "invalid" not in vireo.states() and "broken" not in vireo.states()


def test_undefine_remove_storage_deletes_the_disk(vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                                  busybox_initramfs: Path) -> None:
    name = f"disk-{vireo.kind}"
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    keep = tmp_path / "keep.img"
    keep.write_bytes(b"\0" * (1 << 20))
    path = vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs,
                                  disks=[{"path": str(disk), "format": "raw"}])
    vireo.ok("define", str(path))
    out = vireo.ok("undefine", name, "--remove-storage")
    assert out == f"Removed {disk}\nDomain '{name}' has been undefined\n"
    assert not disk.exists() and name not in vireo.states()
    # Without the option the image stays.
    path = vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs,
                                  disks=[{"path": str(keep), "format": "raw"}])
    vireo.ok("define", str(path))
    vireo.ok("undefine", name)
    assert keep.exists()
