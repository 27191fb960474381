"""probe_file through the local service (core/agent/connection.py m_probe_file, the client's probe_file in
core/remote/service.py, core/agent/wire.py's probe encoding): what the service's host reads in a file arrives as
the same FileProbe, a file that cannot be read as the service's one-line HostError, and a disk asked for under an
images "folder" that is a file as one line naming it (issue 17)."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.host import FileProbe, HostError
from tests.helpers.service import ServiceSandbox


def test_probe_file_travels_through_the_service(local_service: ServiceSandbox, debian_kernel: Path,
                                                busybox_initramfs: Path, tmp_path: Path) -> None:
    host = local_service.connect()
    kernel = host.probe_file(str(debian_kernel), "kernel")
    assert kernel.ok and kernel.kind.startswith("Linux kernel bzImage 6.1.") and "(boot protocol 2.15)" in kernel.kind
    assert host.probe_file(str(busybox_initramfs), "initrd") == FileProbe(True, "gzip-compressed cpio initramfs")
    readme = tmp_path / "README.md"
    readme.write_text("# Vireo\n\nRead me first.\n")
    refused = host.probe_file(str(readme), "kernel")
    assert refused == FileProbe(False, "text file (not a kernel)", f"{readme} is a text file, not a Linux bzImage "
                                "or Multiboot kernel: choose another file")
    image = local_service.data_home / "vireo" / "images" / "probe.qcow2"
    host.create_disk(str(image), 1 << 30, fmt="qcow2")
    assert host.probe_file(str(image), "disk") == FileProbe(True, "qcow2 disk image, 1 GiB virtual")
    with pytest.raises(HostError, match=f"^{tmp_path / 'gone'}: no such file; check the path$"):
        host.probe_file(str(tmp_path / "gone"), "disk")
    with pytest.raises(HostError, match="unknown file role 'floppy'"):
        host.probe_file(str(readme), "floppy")


def test_images_folder_that_is_a_file_through_the_service(local_service: ServiceSandbox) -> None:
    host = local_service.connect()
    images = local_service.data_home / "vireo" / "images"
    images.parent.mkdir(parents=True, exist_ok=True)
    images.write_text("in the way")
    with pytest.raises(HostError) as err:
        host.create_disk(str(images / "web.raw"), 1 << 20)
    assert str(err.value) == (f"cannot create {images / 'web.raw'}: {images} is a file, not a folder; move it away "
                              "or choose another place")
