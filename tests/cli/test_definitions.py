"""`vireo list/define/dumpconfig/undefine/autostart` (core/cli/commands.py) as a user at a shell sees them, on the
local service and over SSH: what they print, their exit status, and the one line a refusal prints on stderr.
Over SSH every command runs once (each call is a new SSH connection); the finer cases run locally."""
from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Vireo, one_error_line


def test_define_dumpconfig_autostart_undefine(vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                              busybox_initramfs: Path) -> None:
    name = f"def-{vireo.kind}"
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    path = vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs, notes="first",
                                  disks=[{"path": str(disk), "format": "raw"}])
    assert vireo.ok("define", str(path)) == f"Domain '{name}' defined from {path}\n"
    dumped = json.loads(vireo.ok("dumpconfig", name))
    assert dumped["name"] == name and dumped["notes"] == "first" and dumped["boot"]["kernel"] == str(debian_kernel)

    # What dumpconfig printed is a definition: changed and defined again, it updates the same VM (same uuid).
    dumped["memory_mib"] = 160
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(dumped))
    assert vireo.ok("define", str(changed)) == f"Domain '{name}' updated from {changed}\n"
    assert vireo.ok("autostart", name) == f"Domain '{name}' marked as autostarted\n"
    assert json.loads(vireo.ok("dumpconfig", name)) == dict(dumped, autostart=True)
    assert vireo.states()[name] == "shut off"                 # defining does not start it

    assert vireo.ok("undefine", name, "--remove-storage") == (f"Removed {disk}\n"
                                                              f"Domain '{name}' has been undefined\n")
    assert not disk.exists() and name not in vireo.states()


def test_undefine_remove_storage_keeps_a_disk_another_vm_uses(local_vireo: Vireo, tmp_path: Path,
                                                               debian_kernel: Path,
                                                               busybox_initramfs: Path) -> None:
    shared, own = tmp_path / "shared.img", tmp_path / "own.img"
    shared.write_bytes(b"\0" * 4096)
    own.write_bytes(b"\0" * 4096)
    raw = {"format": "raw"}
    for name, disks in (("share-web", [shared]), ("share-imp", [shared, own])):
        path = local_vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs,
                                            disks=[dict(raw, path=str(d)) for d in disks])
        local_vireo.ok("define", str(path))
    assert local_vireo.ok("undefine", "share-imp", "--remove-storage") == (
        f"Removed {own}\n"
        f"Kept {shared}: used by VM 'share-web'\n"
        "Domain 'share-imp' has been undefined\n")
    assert shared.exists() and not own.exists()
    # Once no other VM lists it, the shared disk goes with the last one.
    assert local_vireo.ok("undefine", "share-web", "--remove-storage") == (f"Removed {shared}\n"
                                                                             "Domain 'share-web' has been undefined\n")
    assert not shared.exists()


def test_unknown_vm_and_malformed_file_are_bad_input(vireo: Vireo, tmp_path: Path) -> None:
    line = one_error_line(vireo.cli("start", "nosuchvm"), 2, "'nosuchvm'", "vireo list --all")
    if vireo.kind == "remote":
        assert "--connect ssh://" in line                    # the hint is a command that works as given
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"name": "broken",\n "memory_mib": }')
    one_error_line(vireo.cli("define", str(malformed)), 2, str(malformed), "not valid JSON", "line 2")


def test_every_command_refuses_an_unknown_vm(local_vireo: Vireo, tmp_path: Path) -> None:
    for command in (["dumpconfig", "nosuchvm"], ["console", "nosuchvm"], ["shutdown", "nosuchvm"],
                    ["destroy", "nosuchvm"], ["suspend", "nosuchvm"], ["resume", "nosuchvm"],
                    ["reboot", "nosuchvm"], ["undefine", "nosuchvm"], ["autostart", "nosuchvm"],
                    ["screendump", "nosuchvm", str(tmp_path / "x.png")]):
        one_error_line(local_vireo.cli(*command), 2, "'nosuchvm'", "vireo list --all")
    assert local_vireo.cli("frobnicate").returncode == 2                   # argparse's own usage error


def test_unreadable_and_invalid_files_are_bad_input(local_vireo: Vireo, tmp_path: Path) -> None:
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"name": "invalid", "vcpus": 0, "boot": {"kernel": "/k"}}))
    one_error_line(local_vireo.cli("define", str(invalid)), 2, str(invalid), "vcpus")
    missing = tmp_path / "missing.json"
    one_error_line(local_vireo.cli("define", str(missing)), 2, str(missing), "cannot read", "No such file")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    one_error_line(local_vireo.cli("define", str(folder)), 2, str(folder), "cannot read")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    one_error_line(local_vireo.cli("define", str(binary)), 2, str(binary), "not UTF-8")
    assert "invalid" not in local_vireo.states()


def test_define_by_name_lookup_by_uuid_and_id_and_undefine_keeps_disks(local_vireo: Vireo, tmp_path: Path,
                                                                       debian_kernel: Path,
                                                                       busybox_initramfs: Path) -> None:
    disk = tmp_path / "keep.img"
    disk.write_bytes(b"\0" * 4096)
    path = local_vireo.write_definition(tmp_path, "byname", debian_kernel, busybox_initramfs,
                                        disks=[{"path": str(disk), "format": "raw"}])
    local_vireo.ok("define", str(path))
    uuid = json.loads(local_vireo.ok("dumpconfig", "byname"))["uuid"]
    # A file naming no uuid but an existing name updates that VM rather than adding a second.
    path.write_text(path.read_text().replace('"memory_mib": 128', '"memory_mib": 144'))
    assert "updated" in local_vireo.ok("define", str(path))
    by_uuid = json.loads(local_vireo.ok("dumpconfig", uuid))
    assert by_uuid["uuid"] == uuid and by_uuid["memory_mib"] == 144
    assert json.loads(local_vireo.ok("dumpconfig", uuid[:8]))["name"] == "byname"   # the Id `list` shows
    assert json.loads(local_vireo.ok("dumpconfig", "BYNAME"))["uuid"] == uuid   # names ignore case
    assert local_vireo.ok("autostart", "byname", "--disable") == "Domain 'byname' unmarked as autostarted\n"
    listing = local_vireo.ok("list", "--all")
    assert f" {uuid[:8]}   byname " in listing and listing.count("byname") == 1
    assert "byname" not in local_vireo.ok("list")            # shut off: not in plain `list`
    local_vireo.ok("undefine", "byname")
    assert disk.exists()
