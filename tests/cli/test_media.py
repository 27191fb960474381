"""Firmware-boot definitions and `vireo change-media` (core/cli/commands.py) as a user at a shell sees them: a
definition with no kernel, an IDE disk, CD-ROM drives, a boot order, a firmware file and the boot-once flag goes
through define and dumpconfig unchanged, on the local service and over SSH; change-media puts an ISO in a drive
(saying what the host found in it) or ejects it, refuses what is not an ISO or a drive that is not there with one
line, and on a running VM says the change is for its next start."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.cli.conftest import Vireo, one_error_line
from tests.helpers.iso import write_iso
from tests.helpers.runner import REPO_ROOT


def _firmware_definition(folder: Path, name: str, drives: list[str]) -> Path:
    disk = folder / f"{name}.img"
    disk.write_bytes(bytes(1 << 20))
    data = {"name": name, "memory_mib": 256,
            "disks": [{"path": str(disk), "format": "raw", "bus": "ide"}],
            "cdroms": [{"path": d} for d in drives],
            "boot": {"order": ["disk", "cd"], "cd_once": True, "firmware": "/usr/share/seabios/bios-256k.bin"}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_firmware_definition_round_trips_and_change_media(vireo: Vireo, tmp_path: Path) -> None:
    name = f"iso-{vireo.kind}"
    iso = write_iso(tmp_path / "debian-12.iso", "Debian 12 amd64", size=3 << 20)
    path = _firmware_definition(tmp_path, name, [str(iso), ""])
    assert vireo.ok("define", str(path)) == f"Domain '{name}' defined from {path}\n"
    dumped = json.loads(vireo.ok("dumpconfig", name))
    written = json.loads(path.read_text())
    assert dumped["cdroms"] == written["cdroms"] and dumped["disks"][0]["bus"] == "ide"
    assert dumped["boot"] == {"kernel": "", "initrd": "", "cmdline": "", "order": ["disk", "cd"], "cd_once": True,
                              "firmware": "/usr/share/seabios/bios-256k.bin"}
    again = tmp_path / "again.json"
    again.write_text(json.dumps(dumped))
    assert vireo.ok("define", str(again)) == f"Domain '{name}' updated from {again}\n"
    assert json.loads(vireo.ok("dumpconfig", name)) == dumped

    assert vireo.ok("change-media", name, "--eject") == f"Ejected {iso} from CD-ROM 1 of '{name}'\n"
    assert vireo.ok("change-media", name, str(iso), "--drive", "2") == (
        f"Inserted {iso} into CD-ROM 2 of '{name}': ISO 9660 image 'Debian 12 amd64', bootable (El Torito), "
        "3 MiB\n")
    assert json.loads(vireo.ok("dumpconfig", name))["cdroms"] == [{"path": ""}, {"path": str(iso)}]
    if vireo.kind == "remote":
        # This shell's directory means nothing on the remote host.
        one_error_line(vireo.cli("change-media", name, "debian-12.iso"), 2, "debian-12.iso is a relative path",
                       "absolute path")
    vireo.ok("undefine", name, "--remove-storage")


def test_change_media_refusals_are_one_line(local_vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                            busybox_initramfs: Path) -> None:
    name = "media-refusals"
    local_vireo.ok("define", str(_firmware_definition(tmp_path, name, [""])))
    readme = tmp_path / "README"
    readme.write_text("not a disc\n")
    one_error_line(local_vireo.cli("change-media", name, str(readme)), 2, f"{readme} is a text file",
                   "ISO 9660")
    one_error_line(local_vireo.cli("change-media", name, str(tmp_path / "gone.iso")), 2, "gone.iso", "no such file")
    one_error_line(local_vireo.cli("change-media", name), 2, "give the ISO image to insert, or --eject")
    one_error_line(local_vireo.cli("change-media", name, str(readme), "--eject"), 2, "not both")
    one_error_line(local_vireo.cli("change-media", name, "--eject", "--drive", "2"), 2,
                   f"--drive 2: {name} has 1 CD-ROM drive; give 1..1")
    assert local_vireo.ok("change-media", name, "--eject") == f"CD-ROM 1 of '{name}' is already empty\n"
    # A relative path is this shell's directory's (the CLI runs in the repository).
    iso = write_iso(tmp_path / "rel.iso")
    out = local_vireo.ok("change-media", name, os.path.relpath(iso, REPO_ROOT))
    assert out.startswith(f"Inserted {iso} into CD-ROM 1 of '{name}'")
    local_vireo.ok("undefine", name, "--remove-storage")

    plain = local_vireo.write_definition(tmp_path, "no-drive", debian_kernel, busybox_initramfs)
    local_vireo.ok("define", str(plain))
    one_error_line(local_vireo.cli("change-media", "no-drive", str(iso)), 1, "no-drive has no CD-ROM drive",
                   "Add CD-ROM Drive", '"cdroms"')
    local_vireo.ok("undefine", "no-drive")


def test_change_media_on_a_running_vm_is_for_its_next_start(local_vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                                            busybox_initramfs: Path) -> None:
    """A VM booting its kernel directly, with a CD-ROM drive (the engine cannot swap a disc under a running guest)."""
    name = "media-running"
    first, second = write_iso(tmp_path / "first.iso"), write_iso(tmp_path / "second.iso", "SECOND")
    path = local_vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs,
                                        cdroms=[{"path": str(first)}])
    local_vireo.ok("define", str(path))
    local_vireo.ok("start", name)
    try:
        out = local_vireo.ok("change-media", name, str(second))
        assert out.splitlines() == [
            f"Inserted {second} into CD-ROM 1 of '{name}': ISO 9660 image 'SECOND', bootable (El Torito), 128 KiB",
            f"'{name}' is running: the change takes effect at its next start (the running VM keeps the disc it "
            "started with)"]
        assert json.loads(local_vireo.ok("dumpconfig", name))["cdroms"] == [{"path": str(second)}]
        assert local_vireo.states()[name] == "running"
    finally:
        local_vireo.cli("destroy", name)
        local_vireo.cli("undefine", name)
