"""`vireo img create|info|check|resize` on this computer and, with `--connect`, on an SSH host's files through its
Vireo service (issue 17, remote parity): the same output and exit statuses both ways, and qemu-img reads what was
made. The host is this machine over a real sshd (tests/cli/conftest.py), so the test sees the files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import Vireo

GIB = 1024 ** 3


def test_img_commands_act_on_the_hosts_files(vireo: Vireo, tmp_path: Path) -> None:
    image = tmp_path / f"img-{vireo.kind}.qcow2"
    out = vireo.ok("img", "create", "-f", "qcow2", str(image), "1G")
    assert out == f"Formatting '{image}', fmt=qcow2 cluster_size=65536 size={GIB}\n"
    assert json.loads(vireo.ok("img", "info", "--output", "json", str(image)))["virtual-size"] == GIB
    assert vireo.ok("img", "resize", str(image), "+1G") == "Image resized.\n"
    info = json.loads(vireo.ok("img", "info", "--output", "json", str(image)))
    assert (info["format"], info["virtual-size"]) == ("qcow2", 2 * GIB)
    assert "No errors were found on the image." in vireo.ok("img", "check", str(image))
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        assert not os.environ.get("CI"), "qemu-img is missing (Debian's qemu-utils)"
    else:
        seen = json.loads(subprocess.run([qemu_img, "info", "--output=json", str(image)], check=True,
                                         capture_output=True, text=True).stdout)
        assert seen["virtual-size"] == 2 * GIB
    # A missing file: the one-line error and the status of the local command, from wherever it ran.
    missing = vireo.cli("img", "info", str(tmp_path / "nope.qcow2"))
    assert missing.returncode != 0 and missing.stdout == ""
    assert missing.stderr.startswith("vireo img: ") and "nope.qcow2" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1


def test_img_connect_wants_an_absolute_path(vireo: Vireo) -> None:
    if vireo.kind != "remote":
        pytest.skip("without --connect a relative path names a file in this computer's working folder")
    result = vireo.cli("img", "info", "disk.qcow2")
    assert result.returncode == 2
    assert result.stderr == ("vireo img: disk.qcow2: give an absolute path on the host (files there are named "
                             "from its root)\n")
