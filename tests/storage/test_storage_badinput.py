"""Hostile and broken images: clear one-line errors naming the file, no crash, no partial writes; metadata
pointing outside the file fails only the request that meets it."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from core.storage import (  # noqa: E402
    ImageCorruptError,
    ImageError,
    ImageFormatError,
    ImageIOError,
    ImageRangeError,
    ReadOnlyImageError,
    UnsupportedImageError,
    create_image,
    open_image,
)
from core.storage.qcow2 import Qcow2Image  # noqa: E402
from tests.helpers.storage import need_qemu_img, qemu_img, qemu_io  # noqa: E402


def _image(tmp_path: Path, size: int = 4 << 20) -> Path:
    img = tmp_path / "t.qcow2"
    create_image(str(img), "qcow2", size)
    with open_image(str(img)) as dev:
        dev.write(0, b"A" * 65536)
        dev.write(1 << 20, b"B" * 65536)
    return img


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _open_error(path: Path, kind: type[Exception] = ImageError, **kw) -> str:
    with pytest.raises(kind) as info:
        open_image(str(path), **kw).close()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_truncated_header(tmp_path: Path) -> None:
    img = _image(tmp_path)
    data = img.read_bytes()
    img.write_bytes(data[:40])
    assert "truncated" in _open_error(img, ImageFormatError, fmt="qcow2")


def test_truncated_tables(tmp_path: Path) -> None:
    img = _image(tmp_path)
    data = img.read_bytes()
    img.write_bytes(data[:65536 + 100])      # header survives, the refcount table and L1 table do not
    message = _open_error(img, ImageFormatError)
    assert "beyond the end of the file" in message


@pytest.mark.parametrize("cluster_bits", [0, 8, 22, 63])
def test_cluster_bits_out_of_range(tmp_path: Path, cluster_bits: int) -> None:
    img = _image(tmp_path)
    _patch(img, 20, struct.pack(">I", cluster_bits))
    assert "cluster_bits" in _open_error(img, ImageFormatError)


def test_impossible_sizes(tmp_path: Path) -> None:
    img = _image(tmp_path)
    _patch(img, 24, struct.pack(">Q", 1 << 62))             # virtual size the L1 table cannot map
    assert "larger L1 table" in _open_error(img, ImageFormatError)
    img = _image(tmp_path)
    _patch(img, 36, struct.pack(">I", 0x7FFF_FFFF))         # L1 of 16 GiB
    assert "32 MiB" in _open_error(img, ImageFormatError)
    img = _image(tmp_path)
    _patch(img, 40, struct.pack(">Q", 1 << 40))             # L1 table far past EOF
    assert "L1 table" in _open_error(img, ImageFormatError)
    img = _image(tmp_path)
    _patch(img, 48, struct.pack(">QI", 1 << 40, 1))         # refcount table past EOF
    assert "refcount table" in _open_error(img, ImageFormatError)
    img = _image(tmp_path)
    _patch(img, 56, struct.pack(">I", 1 << 20))             # 64 GiB refcount table
    assert "8 MiB" in _open_error(img, ImageFormatError)
    img = _image(tmp_path)
    _patch(img, 40, struct.pack(">Q", 65536 + 8))           # misaligned L1
    assert "not cluster-aligned" in _open_error(img, ImageFormatError)


def test_unknown_incompatible_feature(tmp_path: Path) -> None:
    img = _image(tmp_path)
    _patch(img, 72, struct.pack(">Q", 1 << 9))
    message = _open_error(img, UnsupportedImageError, read_only=True)
    assert "unknown incompatible" in message and "bit 9" in message


def test_encrypted_and_external_data_are_refused(tmp_path: Path) -> None:
    img = _image(tmp_path)
    _patch(img, 32, struct.pack(">I", 1))
    assert "encrypted" in _open_error(img, UnsupportedImageError)
    img = _image(tmp_path)
    _patch(img, 72, struct.pack(">Q", 1 << 2))
    assert "external data file" in _open_error(img, UnsupportedImageError)


def test_dirty_image_opens_read_only_only(tmp_path: Path) -> None:
    img = _image(tmp_path)
    _patch(img, 72, struct.pack(">Q", 1))
    assert "dirty" in _open_error(img, UnsupportedImageError)
    with open_image(str(img), read_only=True) as dev:
        assert dev.read(0, 1) == b"A"


def test_l2_entry_past_eof_fails_only_that_request(tmp_path: Path) -> None:
    img = _image(tmp_path)
    with open_image(str(img), read_only=True) as dev:
        l2 = dev.l1[0] & 0x00FF_FFFF_FFFF_FE00
    # The L2 entry for guest cluster 16 (1 MiB) now points 1 TiB into a small file.
    _patch(img, l2 + 16 * 8, struct.pack(">Q", (1 << 63) | (1 << 40)))
    size_before = img.stat().st_size
    with open_image(str(img)) as dev:
        with pytest.raises(ImageCorruptError, match="past the end"):
            dev.read(1 << 20, 512)
        with pytest.raises(ImageIOError):
            dev.read((1 << 20) - 512, 1024)                 # a request that merely touches it fails too
        assert dev.read(0, 65536) == b"A" * 65536           # everything else still works
        dev.write(2 << 20, b"C" * 4096)
        assert dev.read(2 << 20, 4096) == b"C" * 4096
        with pytest.raises(ImageCorruptError):
            dev.write((1 << 20) + 100, b"x")                  # copy-on-write would have to read it
    assert img.stat().st_size < size_before + (1 << 20)     # nothing was written out there


def test_l1_entry_past_eof_and_misaligned_l2_entry(tmp_path: Path) -> None:
    img = _image(tmp_path, size=1 << 30)
    with open_image(str(img), read_only=True) as dev:
        l1_off = dev.header.l1_table_offset
        l2 = dev.l1[0] & 0x00FF_FFFF_FFFF_FE00
    _patch(img, l1_off + 8, struct.pack(">Q", (1 << 63) | (1 << 41)))
    _patch(img, l2 + 3 * 8, struct.pack(">Q", (1 << 63) | 0x10200))
    with open_image(str(img), read_only=True) as dev:
        with pytest.raises(ImageCorruptError, match="L2 table"):
            dev.read(512 << 20, 512)
        with pytest.raises(ImageCorruptError, match="misaligned"):
            dev.read(3 * 65536, 512)
        assert dev.read(0, 4) == b"AAAA"


def test_requests_outside_the_disk_and_read_only(tmp_path: Path) -> None:
    img = _image(tmp_path)
    with open_image(str(img), read_only=True) as dev:
        for off, n in ((-1, 1), (dev.size - 1, 2), (dev.size + 512, 0)):
            with pytest.raises(ImageRangeError):
                dev.read(off, n)
        with pytest.raises(ReadOnlyImageError):
            dev.write(0, b"x")
        with pytest.raises(ReadOnlyImageError):
            dev.discard(0, 65536)


def test_backing_file_loop_and_missing_backing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    create_image(str(a), "qcow2", 1 << 20)
    create_image(str(b), "qcow2", 1 << 20, backing_file="a.qcow2")
    # Point a's backing at b: a ↔ b loop. Rewrite a's header through a clone of b's layout.
    create_image(str(a), "qcow2", 1 << 20, backing_file="b.qcow2")
    message = _open_error(b, ImageError, read_only=True)
    assert "chain" in message or "in use" in message or "loop" in message
    (tmp_path / "b.qcow2").unlink()
    assert "backing file" in _open_error(a, ImageError, read_only=True)


def test_qcow2_image_alone_refuses_to_write_over_an_unopened_backing_file(tmp_path: Path) -> None:
    """Qcow2Image opens a backing file only through the opener core.storage.open_image gives it; without one a
    write would copy zeros where the backing data belongs, so it opens read-only only (as `img info` does)."""
    base, clone = tmp_path / "base.raw", tmp_path / "clone.qcow2"
    base.write_bytes(b"\x5a" * (1 << 20))
    create_image(str(clone), "qcow2", 1 << 20, backing_file=base.name)
    with pytest.raises(UnsupportedImageError, match="clone.qcow2: cannot open for writing: .*open_image"):
        Qcow2Image(str(clone))
    with Qcow2Image(str(clone), read_only=True) as dev:
        assert dev.backing is None and dev.header.backing_file == base.name
    with open_image(str(clone)) as dev:
        assert dev.read(0, 4) == b"\x5a" * 4


def test_zstd_compressed_cluster_is_a_clear_error(tmp_path: Path) -> None:
    need_qemu_img()
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-f", "qcow2", src, "1M")
    qemu_io(src, "qcow2", "write -P 0x5a 0 64k")
    packed = tmp_path / "z.qcow2"
    if qemu_img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, packed,
                check=False).returncode:
        pytest.skip("this qemu-img was built without zstd")
    with open_image(str(packed), read_only=True) as dev:
        with pytest.raises(UnsupportedImageError, match="zstd"):
            dev.read(0, 512)
        assert dev.read(65536, 512) == bytes(512)        # unallocated clusters still read


def test_probed_raw_cannot_become_qcow2(tmp_path: Path) -> None:
    img = tmp_path / "guest.img"
    img.write_bytes(bytes(1 << 20))
    with open_image(str(img)) as dev:
        with pytest.raises(ImageIOError, match="qcow2"):
            dev.write(0, b"QFI\xfb\x00\x00\x00\x03")
        dev.write(512, b"QFI\xfb")                          # elsewhere it is just data
    assert img.read_bytes()[:4] == bytes(4)
    with open_image(str(img), fmt="raw") as dev:          # a stated format lets the guest own sector 0
        dev.write(0, b"QFI\xfb")
