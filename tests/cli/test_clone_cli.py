"""`vireo clone` on the local service and over SSH (`--connect`, the agent's clone call): the clone has a new
uuid and MAC and the original's hardware; a taken name is one line on stderr, exit 1 (docs/clone-and-move.md)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Vireo, one_error_line


def test_clone_over_the_cli(vireo: Vireo, tmp_path: Path, debian_kernel: Path, busybox_initramfs: Path) -> None:
    name = f"cl-{vireo.kind}"
    path = vireo.write_definition(tmp_path, name, debian_kernel, busybox_initramfs, vcpus=2,
                                  nics=[{"backend": "user"}])
    vireo.ok("define", str(path))
    try:
        out = vireo.ok("clone", name, f"{name}-2")
        assert f"Domain '{name}' cloned as '{name}-2' (full copy; no disks)" in out
        original = json.loads(vireo.ok("dumpconfig", name))
        clone = json.loads(vireo.ok("dumpconfig", f"{name}-2"))
        assert clone["uuid"] != original["uuid"] and clone["name"] == f"{name}-2"
        assert clone["nics"][0]["mac"] and clone["nics"][0]["mac"] != original["nics"][0]["mac"]
        assert clone["vcpus"] == 2 and clone["boot"] == original["boot"]
        one_error_line(vireo.cli("clone", name, f"{name.upper()}-2"), 1, "already exists")
        assert vireo.states()[f"{name}-2"] == "shut off"
    finally:
        vireo.cli("undefine", f"{name}-2")
        vireo.cli("undefine", name)


def test_move_needs_another_host(local_vireo: Vireo, tmp_path: Path, debian_kernel: Path,
                                 busybox_initramfs: Path) -> None:
    path = local_vireo.write_definition(tmp_path, "mv-here", debian_kernel, busybox_initramfs)
    local_vireo.ok("define", str(path))
    try:
        one_error_line(local_vireo.cli("move", "mv-here", "--to", "local"), 2, "on this computer already")
        one_error_line(local_vireo.cli("move", "mv-here", "--to", "ftp://nowhere"), 1, "cannot reach")
        assert local_vireo.states()["mv-here"] == "shut off"
    finally:
        local_vireo.cli("undefine", "mv-here")
