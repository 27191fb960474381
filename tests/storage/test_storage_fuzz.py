"""Hypothesis mutates a small qcow2 image (header, refcount table and block, L1 and L2 tables, snapshot table)
and then opens it, runs guest requests on it (writes, reads, write-zeroes, discards, flush), snapshot
operations, and `img check` with and without repair.

Whatever the bytes say: nothing but an ImageError (one line, naming the file) may come out, and no guest write may
change the header's identity (magic, version, backing file name's place and length, cluster size) — a guest
write that lands on the header is what turns a disk into one that names a host file as its backing file.

CI runs a bounded number of examples (seconds); VIREO_FUZZ_EXAMPLES=100000 runs more (e.g. overnight).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.storage import ImageError, create_image, open_image
from core.storage.check import check_image

CS = 4096
SIZE = 2 << 20
EXAMPLES = int(os.environ.get("VIREO_FUZZ_EXAMPLES", "120"))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    img = tmp_path_factory.mktemp("fuzz") / "base.qcow2"
    create_image(str(img), "qcow2", SIZE, cluster_size=CS)
    with open_image(str(img)) as dev:
        dev.write(0, b"A" * 3 * CS)
        dev.write(SIZE // 2 + 100, b"B" * 5000)
        dev.snapshot_create("one")
        dev.write(CS, b"C" * CS)
        dev.write_zeroes(SIZE - 4 * CS, 2 * CS)
    return img.read_bytes()


# Mutations aim at the metadata (the first clusters) more often than at data.
MUTATION = st.tuples(
    st.one_of(st.integers(0, 127), st.integers(0, 16 * CS - 8)),
    st.sampled_from(["byte", "u64", "zero64", "u32"]),
    st.integers(0, (1 << 64) - 1),
)
OFFSETS = st.one_of(st.integers(0, SIZE - 1), st.sampled_from([0, CS - 1, SIZE // 2, SIZE - CS]))
OP = st.one_of(
    st.tuples(st.just("write"), OFFSETS, st.integers(1, 3 * CS)),
    st.tuples(st.just("read"), OFFSETS, st.integers(1, 3 * CS)),
    st.tuples(st.just("zero"), OFFSETS, st.integers(1, 4 * CS)),
    st.tuples(st.just("discard"), OFFSETS, st.integers(1, 4 * CS)),
    st.tuples(st.just("flush"), st.just(0), st.just(0)),
    st.tuples(st.just("snapshot"), st.sampled_from(["create", "apply", "delete"]), st.just(0)),
)


def _mutate(data: bytearray, mutations: list[tuple[int, str, int]]) -> None:
    for off, kind, value in mutations:
        if off >= len(data):
            continue
        if kind == "byte":
            data[off] = value & 0xFF
        elif kind == "u32" and off + 4 <= len(data):
            struct.pack_into(">I", data, off, value & 0xFFFF_FFFF)
        elif kind in ("u64", "zero64") and off + 8 <= len(data):
            struct.pack_into(">Q", data, off - off % 8, 0 if kind == "zero64" else value)


def _run(dev, ops: list[tuple[str, object, int]]) -> None:
    for kind, off, n in ops:
        try:
            if kind == "write":
                n = min(n, SIZE - off)
                dev.write(off, bytes([off & 0xFF]) * n)
            elif kind == "read":
                dev.read(off, min(n, SIZE - off))
            elif kind == "zero":
                dev.write_zeroes(off, min(n, SIZE - off))
            elif kind == "discard":
                dev.discard(off, min(n, SIZE - off))
            elif kind == "flush":
                dev.flush()
            elif kind == "snapshot":
                names = [s.name for s in dev.snapshots]
                if off == "create":
                    dev.snapshot_create(f"s{len(names)}")
                elif names:
                    (dev.snapshot_apply if off == "apply" else dev.snapshot_delete)(names[0])
        except ImageError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=6), ops=st.lists(OP, max_size=12), repair=st.booleans())
def test_mutated_images_fail_cleanly(tmp_path: Path, base: bytes, mutations, ops, repair: bool) -> None:
    data = bytearray(base)
    _mutate(data, mutations)
    img = tmp_path / "m.qcow2"
    img.write_bytes(bytes(data))
    identity = bytes(data[:24])
    try:
        dev = open_image(str(img), fmt="qcow2")
    except ImageError as exc:
        assert "\n" not in str(exc)
    else:
        try:
            _run(dev, ops)
        finally:
            dev.close()
    assert img.read_bytes()[:24] == identity
    try:
        check_image(str(img), repair="all" if repair else None)
    except ImageError as exc:
        assert "\n" not in str(exc)
