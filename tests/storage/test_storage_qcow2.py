"""qcow2 and raw interoperability with Debian's qemu-utils: what Vireo writes passes `qemu-img check` and
`qemu-img compare`; what qemu-img/qemu-io write, Vireo reads back byte for byte."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from core.storage import create_image, open_image  # noqa: E402
from core.storage.check import check_image  # noqa: E402
from core.storage.qcow2 import Qcow2Image  # noqa: E402
from tests.helpers.storage import need_qemu_img, qemu_img, qemu_io, random_workload  # noqa: E402


@pytest.fixture(autouse=True)
def _qemu() -> None:
    need_qemu_img()


def _assert_matches_raw(image: Path, ref: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "expected.raw"
    raw.write_bytes(ref)
    qemu_img("check", image)
    qemu_img("compare", "-F", "raw", image, raw)
    assert check_image(str(image)).clean


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 << 20])
def test_vireo_written_image_passes_qemu_check_and_compare(tmp_path: Path, cluster_size: int) -> None:
    img = tmp_path / "disk.qcow2"
    size = 24 << 20
    create_image(str(img), "qcow2", size, cluster_size=cluster_size)
    ref = bytearray(size)
    with open_image(str(img)) as dev:
        assert dev.format_name == "qcow2" and dev.size == size
        random_workload(dev, ref, seed=cluster_size)
        assert dev.read(0, size) == ref
    _assert_matches_raw(img, bytes(ref), tmp_path)
    with open_image(str(img), read_only=True) as dev:     # and it reads back the same after reopening
        assert dev.read(0, size) == ref


def test_version2_image_written_by_vireo(tmp_path: Path) -> None:
    img = tmp_path / "v2.qcow2"
    create_image(str(img), "qcow2", 8 << 20, compat="0.10")
    ref = bytearray(8 << 20)
    with open_image(str(img)) as dev:
        random_workload(dev, ref, seed=2)
    assert "compat: 0.10" in qemu_img("info", img).stdout
    _assert_matches_raw(img, bytes(ref), tmp_path)


@pytest.mark.parametrize("backing_fmt", ["raw", "qcow2"])
def test_thin_clone_over_backing_file(tmp_path: Path, backing_fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 16 << 20
    rng = random.Random(7)
    base_data = rng.randbytes(size - 3 * 512)       # a backing file a little shorter than the clone
    base = tmp_path / f"base.{backing_fmt}"
    if backing_fmt == "raw":
        base.write_bytes(base_data)
    else:
        create_image(str(base), "qcow2", len(base_data))
        with open_image(str(base)) as dev:
            dev.write(0, base_data)
    monkeypatch.chdir(tmp_path.parent)              # the relative name must resolve against the image, not cwd
    clone = tmp_path / "clone.qcow2"
    create_image(str(clone), "qcow2", size, backing_file=base.name)   # format detected, stored in the header
    assert f"backing file format: {backing_fmt}" in qemu_img("info", clone).stdout
    ref = bytearray(size)
    ref[:len(base_data)] = base_data
    with open_image(str(clone)) as dev:
        assert dev.read(0, size) == ref
        random_workload(dev, ref, seed=11)
    before = base.read_bytes()
    _assert_matches_raw(clone, bytes(ref), tmp_path)
    assert base.read_bytes() == before              # the backing file is never written


QEMU_OPTIONS = ["compat=1.1", "compat=0.10", "cluster_size=4096", "refcount_bits=1",
                "cluster_size=2M,refcount_bits=64", "cluster_size=512,refcount_bits=8", "lazy_refcounts=on"]


@pytest.mark.parametrize("options", QEMU_OPTIONS)
def test_reads_and_writes_images_made_by_qemu(tmp_path: Path, options: str) -> None:
    img = tmp_path / "q.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", options, img, "32M")
    qemu_io(img, "qcow2", "write -P 0x11 0 1M", "write -P 0x22 5M 100k", "write -z 512k 128k",
            "discard 5M 64k", "write -P 0x33 31M 1M")
    raw = tmp_path / "q.raw"
    qemu_img("convert", "-O", "raw", img, raw)
    ref = bytearray(raw.read_bytes())
    with open_image(str(img)) as dev:
        assert dev.read(0, dev.size) == ref
        assert dev.read(65535, 3) == ref[65535:65538]
        random_workload(dev, ref, seed=3, ops=60)
    _assert_matches_raw(img, bytes(ref), tmp_path)


def test_reads_qemu_clone_with_relative_backing_and_compressed_clusters(tmp_path: Path) -> None:
    sub = tmp_path / "vms"
    sub.mkdir()
    base = sub / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "32M")
    qemu_io(base, "qcow2", "write -P 0x44 0 4M", "write -P 0x55 20M 3M")
    top = sub / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    qemu_io(top, "qcow2", "write -P 0x66 1M 100k", "write -z 21M 64k", "write -P 0x77 3M 2M")
    packed = tmp_path / "packed.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", top, packed)
    for img in (top, packed):
        raw = tmp_path / "ref.raw"
        qemu_img("convert", "-O", "raw", img, raw)
        with open_image(str(img), read_only=True) as dev:
            assert dev.read(0, dev.size) == raw.read_bytes()
    # writing over compressed clusters copies them out; the rest stays compressed and readable
    ref = bytearray(raw.read_bytes())
    with open_image(str(packed)) as dev:
        random_workload(dev, ref, seed=5, ops=40)
    _assert_matches_raw(packed, bytes(ref), tmp_path)


def test_resize_grows_l1_and_keeps_data(tmp_path: Path) -> None:
    img = tmp_path / "g.qcow2"
    create_image(str(img), "qcow2", 1 << 20, cluster_size=512)    # tiny clusters: the L1 table must move
    with Qcow2Image(str(img)) as dev:
        dev.write(1000, b"before")
        old_l1 = dev.header.l1_table_offset
        dev.resize(64 << 20)
        assert dev.header.l1_table_offset != old_l1
        dev.write((64 << 20) - 6, b"after!")
    qemu_img("check", img)
    with open_image(str(img), read_only=True) as dev:
        assert dev.size == 64 << 20
        assert dev.read(1000, 6) == b"before" and dev.read((64 << 20) - 6, 6) == b"after!"
    assert "virtual size: 64 MiB" in qemu_img("info", img).stdout


def test_refcount_table_growth_with_small_clusters(tmp_path: Path) -> None:
    img = tmp_path / "small.qcow2"
    create_image(str(img), "qcow2", 48 << 20, cluster_size=512)     # one table cluster covers only 8 MiB
    data = random.Random(1).randbytes(20 << 20)
    with Qcow2Image(str(img)) as dev:
        table_clusters = dev.refcounts.table_clusters
        dev.write(4096, data)
        assert dev.refcounts.table_clusters > table_clusters
    ref = bytearray(48 << 20)
    ref[4096:4096 + len(data)] = data
    _assert_matches_raw(img, bytes(ref), tmp_path)


def test_write_zeroes_and_discard_free_space(tmp_path: Path) -> None:
    img = tmp_path / "z.qcow2"
    create_image(str(img), "qcow2", 16 << 20)
    with Qcow2Image(str(img)) as dev:
        dev.write(0, b"\xab" * (8 << 20))
        used = dev.allocated_bytes()
        dev.write_zeroes(0, 4 << 20)
        dev.discard(4 << 20, 4 << 20)
        assert dev.read(0, 4 << 20) == bytes(4 << 20)
        assert dev.allocated_bytes() < used - (6 << 20)            # the host blocks were released
    qemu_img("check", img)
    assert check_image(str(img)).clean


def test_format_comes_from_the_header_not_the_name(tmp_path: Path) -> None:
    disguised = tmp_path / "disk.raw"
    qemu_img("create", "-f", "qcow2", disguised, "1M")
    with open_image(str(disguised)) as dev:
        assert dev.format_name == "qcow2" and dev.size == 1 << 20
    plain = tmp_path / "disk.qcow2"
    plain.write_bytes(b"\x01" * 4096)
    with open_image(str(plain)) as dev:
        assert dev.format_name == "raw" and dev.read(0, 2) == b"\x01\x01"


def test_raw_image_roundtrip(tmp_path: Path) -> None:
    img = tmp_path / "r.img"
    create_image(str(img), "raw", 8 << 20)
    ref = bytearray(8 << 20)
    with open_image(str(img), fmt="raw") as dev:
        random_workload(dev, ref, seed=9, ops=80)
    assert img.read_bytes() == ref
