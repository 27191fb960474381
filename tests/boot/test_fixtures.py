"""The guest fixtures built by tests/fixtures/build.py: kernels that are bzImages, initramfs archives that are valid
newc cpio with /init, busybox and a dependency-closed modules tree; and, booted under QEMU's TCG where
qemu-system-x86 is installed, the /init contract (markers on the console) that the engine's tests rely on.
"""
from __future__ import annotations

import gzip
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import kmod, newc
from tests.helpers.runner import FIXTURES_OUT, REPO_ROOT, in_ci

MODULES_WANTED = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "bochs", "ext4"]


def _archive(path: Path) -> dict[str, newc.Entry]:
    entries = newc.read(gzip.decompress(path.read_bytes()))
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), "duplicate paths in the archive"
    return {e.name: e for e in entries}


def test_newc_round_trip() -> None:
    entries = [
        newc.Entry("bin", stat.S_IFDIR | 0o755),
        newc.Entry("bin/tool", stat.S_IFREG | 0o755, b"\x7fELF" + bytes(range(256)) * 3),
        newc.Entry("bin/sh", stat.S_IFLNK | 0o777, b"tool"),
        newc.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        newc.Entry("odd", stat.S_IFREG | 0o644, b"abc"),           # a size that needs padding
    ]
    blob = newc.write(entries)
    assert len(blob) % 4 == 0
    assert blob.endswith(b"\0") and b"TRAILER!!!" in blob
    back = newc.read(blob)
    assert [(e.name, e.mode, e.data, e.rdev) for e in back] == [(e.name, e.mode, e.data, e.rdev) for e in entries]


def test_newc_rejects_damage() -> None:
    blob = newc.write([newc.Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    with pytest.raises(newc.FormatError):
        newc.read(b"070702" + blob[6:])
    with pytest.raises(newc.FormatError):
        newc.read(blob[:60])
    with pytest.raises(newc.FormatError):
        newc.read(blob[:-200])            # the trailer is gone


def test_newc_matches_the_cpio_tool(tmp_path: Path) -> None:
    """GNU cpio, the reference implementation, lists and extracts what we write."""
    if not shutil.which("cpio"):
        pytest.skip("cpio is not installed")
    blob = newc.write([newc.Entry("d", stat.S_IFDIR | 0o755), newc.Entry("d/f", stat.S_IFREG | 0o644, b"hello\n"),
                       newc.Entry("l", stat.S_IFLNK | 0o777, b"d/f")])
    done = subprocess.run(["cpio", "-idm", "--quiet"], input=blob, cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "f").read_bytes() == b"hello\n"
    assert (tmp_path / "l").is_symlink() and (tmp_path / "l").read_text() == "hello\n"


def _check_bzimage(path: Path) -> None:
    """Linux boot.rst: "HdrS" at 0x202, boot protocol ≥ 2.06 at 0x206, setup_sects at 0x1F1."""
    head = path.read_bytes()[:0x300]
    assert head[0x1FE:0x200] == b"\x55\xaa"
    assert head[0x202:0x206] == b"HdrS"
    version, = struct.unpack_from("<H", head, 0x206)
    assert version >= 0x206, f"boot protocol {version:#x}"


def _check_initramfs(path: Path, elf_class: int) -> None:
    files = _archive(path)
    init = files["init"]
    assert stat.S_ISREG(init.mode) and init.mode & 0o111 and init.data.startswith(b"#!/bin/sh")
    assert b"VIREO-BOOT-OK" in init.data and b"vireo.action" in init.data
    busybox = files["bin/busybox"]
    assert stat.S_ISREG(busybox.mode) and busybox.mode & 0o111
    assert busybox.data[:4] == b"\x7fELF" and busybox.data[4] == elf_class
    assert stat.S_ISLNK(files["bin/sh"].mode)
    console = files["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    for d in ("proc", "sys", "tmp", "dev"):
        assert stat.S_ISDIR(files[d].mode), d
    # Every path's parent directory is in the archive before it (the kernel creates nothing implicitly).
    order = list(files)
    for i, name in enumerate(order):
        parent = name.rpartition("/")[0]
        assert not parent or order.index(parent) < i, name

    deps = [name for name in files if re.fullmatch(r"lib/modules/[^/]+/modules\.dep", name)]
    assert len(deps) == 1, deps
    modroot = deps[0].rpartition("/")[0]
    shipped = {n.removeprefix(modroot + "/") for n in files if n.endswith(".ko")}
    listed: dict[str, list[str]] = {}
    for line in files[deps[0]].data.decode().splitlines():
        mod, _, rest = line.partition(":")
        listed[mod] = rest.split()
    assert set(listed) == shipped
    for mod, needs in listed.items():
        assert set(needs) <= shipped, f"{mod} needs modules that are not shipped: {set(needs) - shipped}"
        # Each shipped module's .modinfo agrees with modules.dep.
        declared = kmod.modinfo(files[f"{modroot}/{mod}"].data).get("depends", [""])[0]
        needed = {Path(n).stem.replace("-", "_") for n in needs}
        assert {d.replace("-", "_") for d in declared.split(",") if d} <= needed, mod
    names = {Path(m).stem.replace("-", "_") for m in shipped}
    builtin = set(files.get(f"{modroot}/modules.builtin", newc.Entry("", 0)).data.decode().split())
    for m in MODULES_WANTED:
        assert m in names or any(Path(b).stem == m for b in builtin), f"{m} missing"


def test_amd64_kernel_is_a_bzimage(debian_kernel: Path) -> None:
    _check_bzimage(debian_kernel)


def test_686_kernel_is_a_bzimage(debian_kernel_686: Path) -> None:
    _check_bzimage(debian_kernel_686)


def test_amd64_initramfs(busybox_initramfs: Path) -> None:
    _check_initramfs(busybox_initramfs, elf_class=2)


def test_i386_initramfs(initramfs_686: Path) -> None:
    _check_initramfs(initramfs_686, elf_class=1)


def test_build_is_cached() -> None:
    """A build with nothing changed does no work (./run-tests runs the builder before every test run)."""
    if not (FIXTURES_OUT / "manifest-amd64.json").exists():
        pytest.skip("fixtures not built")
    cmd = [sys.executable, str(REPO_ROOT / "tests" / "fixtures" / "build.py"), "--arch", "amd64"]
    # The first run settles the output if the recipe changed since the last build (e.g. init.sh was edited).
    subprocess.run(cmd, capture_output=True, timeout=300)
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout
    assert elapsed < 10.0, elapsed      # an interpreter start and hashing the inputs; a build takes minutes


def _qemu_boot(qemu: str, kernel: Path, initrd: Path, action: str, timeout: float = 120) -> str:
    binary = shutil.which(qemu)
    if binary is None:
        if in_ci():
            pytest.fail(f"{qemu} missing (./run-tests installs qemu-system-x86)")
        pytest.skip(f"{qemu} is not installed")
    done = subprocess.run(
        [binary, "-accel", "tcg", "-M", "pc", "-m", "512", "-smp", "2", "-kernel", str(kernel), "-initrd",
         str(initrd), "-append", f"console=ttyS0 quiet vireo.action={action}", "-display", "none",
         "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
    )
    return done.stdout.decode(errors="replace")


def test_amd64_guest_under_qemu(debian_kernel: Path, busybox_initramfs: Path) -> None:
    """The fixture itself is right (independent of Vireo): modules load, markers appear, it powers off."""
    out = _qemu_boot("qemu-system-x86_64", debian_kernel, busybox_initramfs, "modules")
    assert "VIREO-BOOT-OK" in out
    assert "VIREO-MODULES-OK" in out, out[-2000:]
    assert "VIREO-POWEROFF" in out


def test_i386_guest_under_qemu(debian_kernel_686: Path, initramfs_686: Path) -> None:
    out = _qemu_boot("qemu-system-i386", debian_kernel_686, initramfs_686, "info")
    assert "VIREO-BOOT-OK" in out
    assert re.search(r"^VIREO-NPROC=2\r?$", out, re.MULTILINE), out[-2000:]
    mem = re.search(r"^VIREO-MEMTOTAL=(\d+)\r?$", out, re.MULTILINE)
    assert mem and 400_000 < int(mem.group(1)) <= 512 * 1024
