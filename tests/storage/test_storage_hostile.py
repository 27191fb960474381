"""Issue 18's storage defects: writes that would land on metadata, `img check` on hostile sizes and huge sparse
files, FIFOs and character devices as disks, virtual sizes that are not a multiple of 512."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from core.storage import ImageCorruptError, ImageError, UnsupportedImageError, create_image, open_image
from core.storage.check import check_image
from core.storage.cli import main as img_cli
from core.storage.info import image_info
from tests.helpers.storage import need_qemu_img, qemu_img

REPO = Path(__file__).resolve().parents[2]
CS = 65536


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _image(tmp_path: Path, name: str = "t.qcow2") -> Path:
    """A 4 MiB image with one data cluster: cluster 0 header, 1 refcount table, 2 refcount block, 3 L1, 4 L2,
    5 data (Vireo's create/allocation layout, asserted below)."""
    img = tmp_path / name
    create_image(str(img), "qcow2", 4 << 20)
    with open_image(str(img)) as dev:
        dev.write(0, b"A" * CS)
        assert dev.refcounts.table_offset == CS and dev.header.l1_table_offset == 3 * CS
        assert dev.l1[0] & 0xFFFF_FFFF_FE00 == 4 * CS
    return img


def _set_refcount(img: Path, cluster: int, value: int) -> None:
    _patch(img, 2 * CS + cluster * 2, struct.pack(">H", value))       # 16-bit refcounts in the block at cluster 2


def _evil_header() -> bytes:
    """A qcow2 header naming /etc/passwd as its (raw) backing file: what a guest would like cluster 0 to become."""
    name = b"/etc/passwd"
    head = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 2, 72, len(name), 16, 1 << 20, 0, 1, 3 * CS, CS, 1, 0, 0)
    return (head + name).ljust(CS, b"\0")


def test_guest_write_cannot_turn_into_a_header_naming_etc_passwd(tmp_path: Path) -> None:
    """The header cluster's refcount is 0, so the allocator finds cluster 0 'free' for the next guest cluster.
    QEMU refuses that write ("Preventing invalid write on metadata") and marks the image corrupt; so do we."""
    need_qemu_img()
    img = _image(tmp_path)
    _set_refcount(img, 0, 0)
    header_before = img.read_bytes()[:CS]
    with open_image(str(img)) as dev:
        with pytest.raises(ImageCorruptError, match="Preventing invalid write on metadata.*qcow2_header") as info:
            dev.write(1 << 20, _evil_header())
        assert "\n" not in str(info.value) and str(img) in str(info.value)
        assert dev.read(0, 4) == b"AAAA"                     # reads go on
        with pytest.raises(ImageCorruptError, match="marked corrupt"):
            dev.write(0, b"B")                               # writes fail from now on
    header_after = img.read_bytes()[:CS]
    assert header_after[:72] == header_before[:72] and b"passwd" not in header_after
    assert struct.unpack_from(">Q", header_after, 72)[0] & 2          # the corrupt bit
    assert "corrupt: true" in qemu_img("info", img).stdout
    assert "/etc/passwd" not in qemu_img("info", img).stdout
    with pytest.raises(UnsupportedImageError, match="marked corrupt"):
        open_image(str(img)).close()
    assert image_info(str(img)).backing_file is None


def test_refcount_table_entry_of_zero_does_not_put_a_block_on_the_header(tmp_path: Path) -> None:
    """A refcount-table entry of 0 makes the allocator create a refcount block inside the range it covers, at
    the first 'free' cluster: cluster 0, the header."""
    img = _image(tmp_path)
    _patch(img, CS, struct.pack(">Q", 0))
    with open_image(str(img)) as dev:
        with pytest.raises(ImageCorruptError, match="Preventing invalid write on metadata"):
            dev.write(2 << 20, b"x" * 4096)
    assert img.read_bytes()[:4] == b"QFI\xfb"


@pytest.mark.parametrize("cluster,kind", [(4, "L2 table"), (3, "active L1 table"), (2, "refcount block"),
                                          (1, "refcount table")])
def test_metadata_with_refcount_zero_is_not_handed_to_guest_data(tmp_path: Path, cluster: int, kind: str) -> None:
    img = _image(tmp_path)
    _set_refcount(img, cluster, 0)
    before = img.read_bytes()[cluster * CS:(cluster + 1) * CS]
    with open_image(str(img)) as dev:
        with pytest.raises(ImageCorruptError, match=f"overlaps with {kind}"):
            dev.write(3 << 20, b"\xee" * CS)
    assert img.read_bytes()[cluster * CS:(cluster + 1) * CS] == before


def test_in_place_write_through_an_l2_entry_pointing_at_metadata(tmp_path: Path) -> None:
    """An L2 entry (copied flag set) that points at the L1 table: an in-place guest write must not land there."""
    img = _image(tmp_path)
    _patch(img, 4 * CS + 8, struct.pack(">Q", (1 << 63) | 3 * CS))     # guest cluster 1 -> host cluster 3 (L1)
    l1_before = img.read_bytes()[3 * CS:4 * CS]
    with open_image(str(img)) as dev:
        with pytest.raises(ImageCorruptError, match="overlaps with active L1 table"):
            dev.write(CS + 100, b"\xff" * 8)
    assert img.read_bytes()[3 * CS:4 * CS] == l1_before


def test_virtio_blk_reports_the_refused_write_as_an_io_error(tmp_path: Path) -> None:
    """Seen from the guest: the request completes with VIRTIO_BLK_S_IOERR; the VM goes on."""
    from core.devices.virtio.blk import S_IOERR, S_OK, T_IN, T_OUT
    from tests.devices.test_virtio import Driver  # a real virtio-pci + virtio-blk stack in guest RAM

    img = _image(tmp_path)
    _set_refcount(img, 0, 0)
    with open_image(str(img)) as dev:
        drv = Driver(dev)
        drv.setup()
        assert drv.request(T_OUT, 2048, data=_evil_header()[:4096])[0] == S_IOERR
        assert drv.request(T_IN, 0, read_len=512) == (S_OK, b"A" * 512)
    assert img.read_bytes()[:4] == b"QFI\xfb"


# --- img check ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l1_size", [0, 1])
def test_check_snapshot_l1_offset_2_63_is_reported_not_a_traceback(tmp_path: Path, capsys, l1_size: int) -> None:
    """With an empty L1 table the offset was read from anyway (OverflowError); qemu-img reports the leaks the
    lost snapshot leaves, and with one entry an L1 table outside the file."""
    need_qemu_img()
    img = tmp_path / "s.qcow2"
    qemu_img("create", "-f", "qcow2", img, "4M")
    qemu_img("snapshot", "-c", "one", img)
    offset = struct.unpack_from(">Q", img.read_bytes(), 64)[0]
    _patch(img, offset, struct.pack(">QI", 1 << 63, l1_size))
    result = check_image(str(img))
    qemu = qemu_img("check", img, check=False)
    if l1_size:
        assert not result.clean and any("L1 table" in m for m in result.messages)
        assert img_cli(["check", str(img)]) == 1 and qemu.returncode != 0
    else:
        assert result.clean and result.leaks == int(qemu.stdout.split(" leaked clusters")[0].split()[-1])
        assert img_cli(["check", str(img)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_check_bitmap_directory_of_1_tib(tmp_path: Path, capsys) -> None:
    need_qemu_img()
    img = tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", img, "4M")
    qemu_img("bitmap", "--add", img, "b0")
    head = img.read_bytes()[:CS]
    at = head.index(struct.pack(">I", 0x23852875))
    _patch(img, at + 8 + 8, struct.pack(">Q", 1 << 40))       # bitmap directory size: 1 TiB
    result = check_image(str(img))
    assert not result.clean and any("File too large" in m for m in result.messages)
    assert img_cli(["check", str(img)]) == 1
    assert "Traceback" not in capsys.readouterr().err


CHECK_IN_LIMITED_MEMORY = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
from core.storage.check import check_image
r = check_image(sys.argv[2])
print(r.clean, r.leaks, r.image_end_offset)
"""


@pytest.mark.parametrize("tail", [64 << 30, 1 << 40])
def test_check_memory_does_not_grow_with_a_sparse_tail(tmp_path: Path, tail: int) -> None:
    """A valid image with 512-byte clusters whose file has a huge sparse tail (nothing references it): the check
    runs in 700 MB of address space (the interpreter with numpy takes about 150 MB)."""
    img = tmp_path / "tail.qcow2"
    create_image(str(img), "qcow2", 8 << 20, cluster_size=512)
    with open_image(str(img)) as dev:
        dev.write(0, b"data" * 4096)
        end = dev.file.size
    os.truncate(img, end + tail)
    proc = subprocess.run([sys.executable, "-c", CHECK_IN_LIMITED_MEMORY, str(REPO), str(img), str(700 << 20)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    clean, leaks, end_offset = proc.stdout.split()
    assert clean == "True" and leaks == "0" and int(end_offset) <= end


# --- non-regular files ----------------------------------------------------------------------------------------

OPEN_FIFO = r"""
import sys
sys.path.insert(0, sys.argv[1])
from core.storage import open_image, ImageError
try:
    open_image(sys.argv[2]).close()
except ImageError as exc:
    print(exc)
"""


def _open_in_subprocess(path: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", OPEN_FIFO, str(REPO), str(path)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_fifo_as_disk_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "disk.img"
    os.mkfifo(fifo)
    try:
        message = _open_in_subprocess(fifo)
    except subprocess.TimeoutExpired:
        pytest.fail("opening a FIFO as a disk blocked")
    assert message == f"{fifo}: is a FIFO (named pipe), not a disk image; use a regular file or a block device"


def test_fifo_as_backing_file_is_refused_without_blocking(tmp_path: Path) -> None:
    base, top = tmp_path / "base.raw", tmp_path / "top.qcow2"
    base.write_bytes(bytes(1 << 20))
    create_image(str(top), "qcow2", 1 << 20, backing_file=base.name, backing_format="raw")
    base.unlink()
    os.mkfifo(base)
    try:
        message = _open_in_subprocess(top)
    except subprocess.TimeoutExpired:
        pytest.fail("opening an image whose backing file is a FIFO blocked")
    assert "FIFO" in message and str(top) in message and "\n" not in message


def test_character_device_is_refused(tmp_path: Path) -> None:
    for path in ("/dev/zero", "/dev/null"):
        with pytest.raises(ImageError, match="character device"):
            open_image(path, read_only=True).close()
    link = tmp_path / "disk.img"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="character device"):
        open_image(str(link), fmt="raw", read_only=True).close()
    fifo = tmp_path / "new.qcow2"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        create_image(str(fifo), "qcow2", 1 << 20)


# --- virtual sizes that are not a multiple of 512 ---------------------------------------------------------------


def test_qcow2_size_not_a_multiple_of_512_is_rounded_as_qemu_img_does(tmp_path: Path) -> None:
    need_qemu_img()
    img = tmp_path / "odd.qcow2"
    create_image(str(img), "qcow2", 1 << 20)
    _patch(img, 24, struct.pack(">Q", 1_000_000))
    qemu_size = int(qemu_img("info", "--output=json", img).stdout.split('"virtual-size": ')[1].split(",")[0])
    assert qemu_size == 999_936
    with open_image(str(img)) as dev:
        assert dev.size == qemu_size
        dev.write(dev.size - 512, b"z" * 512)
    assert image_info(str(img)).virtual_size == qemu_size
    assert qemu_img("check", img, check=False).returncode == 0


def test_raw_size_not_a_multiple_of_512_is_rounded_as_qemu_img_does(tmp_path: Path) -> None:
    need_qemu_img()
    img = tmp_path / "odd.raw"
    img.write_bytes(b"r" * 1000)
    qemu_size = int(qemu_img("info", "--output=json", img).stdout.split('"virtual-size": ')[1].split(",")[0])
    with open_image(str(img), fmt="raw") as dev:
        assert dev.size == qemu_size == 1024
        assert dev.read(512, 512) == b"r" * 488 + bytes(24)


def test_discarding_an_l2_entry_that_points_at_metadata_does_not_free_it(tmp_path: Path) -> None:
    """Dropping that reference would bring the L1 table's refcount to 0 and let the next allocation (or the hole
    punch of a discard) destroy it; the discard is refused instead."""
    img = _image(tmp_path)
    _patch(img, 4 * CS + 8, struct.pack(">Q", (1 << 63) | 3 * CS))     # guest cluster 1 -> host cluster 3 (L1)
    l1_before = img.read_bytes()[3 * CS:4 * CS]
    with open_image(str(img)) as dev:
        with pytest.raises(ImageCorruptError, match="points at host offset 0x30000, which holds the active L1"):
            dev.discard(CS, CS)
        with pytest.raises(ImageCorruptError):
            dev.write(2 * CS, b"x" * CS)
    assert img.read_bytes()[3 * CS:4 * CS] == l1_before
