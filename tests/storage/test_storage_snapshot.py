"""qcow2 internal snapshots (issue 15), checked by qemu-img: Vireo's snapshots pass `qemu-img check` and
`qemu-img snapshot -l` lists them; snapshots taken by `qemu-img snapshot -c` revert in Vireo to exactly what
`qemu-img convert -l snapshot.name=…` reads; a random mix of writes, discards, snapshots, reverts and deletes
agrees with a model; VM state is stored where QEMU stores it."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from core.storage import create_image, open_image
from core.storage.check import check_image
from core.storage.cli import main as img_cli
from tests.helpers.storage import need_qemu_img, qemu_img, qemu_io

MiB = 1 << 20


def _snapshot_data(img: Path, name: str, tmp_path: Path) -> bytes:
    """The disk as snapshot `name` holds it, read by qemu-img."""
    out = tmp_path / f"snap-{name}.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", "-l", f"snapshot.name={name}", img, out)
    return out.read_bytes()


def _active_data(img: Path, tmp_path: Path) -> bytes:
    out = tmp_path / "active.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", img, out)
    return out.read_bytes()


def _qemu_check_clean(img: Path) -> None:
    proc = qemu_img("check", img, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert check_image(str(img)).clean and check_image(str(img)).leaks == 0


@pytest.mark.parametrize("cluster_size,compat", [(512, "1.1"), (65536, "1.1"), (4096, "0.10")])
def test_vireo_snapshots_pass_qemu_check_and_list(tmp_path: Path, cluster_size: int, compat: str, capsys) -> None:
    need_qemu_img()
    img = tmp_path / "v.qcow2"
    create_image(str(img), "qcow2", 8 * MiB, cluster_size=cluster_size, compat=compat)
    rng = random.Random(cluster_size)
    with open_image(str(img)) as dev:
        dev.write(0, rng.randbytes(300_000))
        dev.write(5 * MiB + 7, rng.randbytes(100_000))
        one = dev.read(0, dev.size)
        dev.snapshot_create("one")
        dev.write(1000, b"after one" * 1000)                 # copy-on-write of shared clusters
        dev.discard(5 * MiB, MiB)
        dev.write_zeroes(200_000, 50_000)
        two = dev.read(0, dev.size)
        dev.snapshot_create("two")
        dev.write(7 * MiB, b"active" * 100)
        active = dev.read(0, dev.size)
    _qemu_check_clean(img)
    listing = qemu_img("snapshot", "-l", img).stdout
    assert [line.split()[:2] for line in listing.splitlines()[2:]] == [["1", "one"], ["2", "two"]]
    assert img_cli(["snapshot", "-l", str(img)]) == 0
    assert capsys.readouterr().out == listing            # the same table, column for column
    assert _snapshot_data(img, "one", tmp_path) == one
    assert _snapshot_data(img, "two", tmp_path) == two
    assert _active_data(img, tmp_path) == active
    # QEMU can revert to and delete what Vireo made.
    qemu_img("snapshot", "-a", "one", img)
    assert _active_data(img, tmp_path) == one
    qemu_img("snapshot", "-d", "two", img)
    _qemu_check_clean(img)


@pytest.mark.parametrize("options", ["cluster_size=65536", "cluster_size=4096,refcount_bits=4",
                                     "cluster_size=1024,refcount_bits=64", "compat=0.10,cluster_size=8192"])
def test_qemu_snapshots_revert_in_vireo(tmp_path: Path, options: str) -> None:
    need_qemu_img()
    img = tmp_path / "q.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", options, img, "4M")
    qemu_io(img, "qcow2", "write -P 0x11 0 1M", "write -P 0x22 3M 64k", "write -z 512k 64k")
    qemu_img("snapshot", "-c", "s1", img)
    qemu_io(img, "qcow2", "write -P 0x33 100k 200k", "discard 3M 64k", "write -P 0x44 2M 4k")
    qemu_img("snapshot", "-c", "s2", img)
    qemu_io(img, "qcow2", "write -P 0x55 0 8k")
    s1, s2 = _snapshot_data(img, "s1", tmp_path), _snapshot_data(img, "s2", tmp_path)
    with open_image(str(img)) as dev:                    # images with snapshots open read-write
        dev.snapshot_apply("s1")
        assert dev.read(0, dev.size) == s1
        dev.write(50_000, b"vireo" * 3000)               # shared with s1: copied on write
        dev.snapshot_apply("2")                          # by ID
        assert dev.read(0, dev.size) == s2
        dev.snapshot_delete("s1")
        assert [s.name for s in dev.snapshots] == ["s2"]
        dev.write(3 * MiB, b"x" * 70_000)
    _qemu_check_clean(img)
    assert _snapshot_data(img, "s2", tmp_path) == s2
    expected = bytearray(s2)
    expected[3 * MiB:3 * MiB + 70_000] = b"x" * 70_000
    assert _active_data(img, tmp_path) == bytes(expected)


def test_random_snapshot_workload_matches_a_model(tmp_path: Path) -> None:
    """Writes, zeroes, discards, snapshot create/apply/delete at random; each snapshot and the active disk must
    read (through qemu-img) exactly as the model says, and the image must check clean after every step."""
    need_qemu_img()
    img = tmp_path / "r.qcow2"
    size = 2 * MiB
    create_image(str(img), "qcow2", size, cluster_size=4096)
    rng = random.Random(15)
    model = bytearray(size)
    snaps: dict[str, bytes] = {}
    serial = 0
    with open_image(str(img)) as dev:
        for step in range(120):
            op = rng.random()
            off = rng.randrange(size)
            n = min(size - off, rng.choice([1, 700, 4096, 10_000, 100_000]))
            if op < 0.45:
                data = rng.randbytes(n)
                dev.write(off, data)
                model[off:off + n] = data
            elif op < 0.55:
                dev.write_zeroes(off, n)
                model[off:off + n] = bytes(n)
            elif op < 0.6:
                dev.discard(off, n)
                model[off:off + n] = dev.read(off, n)
            elif op < 0.75:
                serial += 1
                dev.snapshot_create(f"s{serial}")
                snaps[f"s{serial}"] = bytes(model)
            elif op < 0.88 and snaps:
                name = rng.choice(sorted(snaps))
                dev.snapshot_apply(name)
                model[:] = snaps[name]
            elif snaps:
                name = rng.choice(sorted(snaps))
                dev.snapshot_delete(name)
                del snaps[name]
            if step % 30 == 29:
                result = check_image(str(img), force_share=True)
                assert result.clean and result.leaks == 0, result.messages[:5]
        assert dev.read(0, size) == model
    _qemu_check_clean(img)
    assert _active_data(img, tmp_path) == model
    for name, data in snaps.items():
        assert _snapshot_data(img, name, tmp_path) == data


def test_vm_state_is_stored_past_the_disk_as_qemu_does(tmp_path: Path) -> None:
    """The state goes at guest offsets from the first L1 entry that maps no disk cluster, is counted in the
    snapshot's VM SIZE, and is freed with the snapshot."""
    need_qemu_img()
    img = tmp_path / "vm.qcow2"
    create_image(str(img), "qcow2", 4 * MiB)
    state = random.Random(3).randbytes(300_000)
    with open_image(str(img)) as dev:
        dev.write(0, b"disk" * 1000)
        dev.write_vm_state(0, state[:100_000])
        dev.write_vm_state(100_000, state[100_000:])
        assert dev.vm_state_offset() == 512 * MiB          # one L2 table maps 512 MiB with 64 KiB clusters
        sn = dev.snapshot_create("with-state", vm_state_size=len(state))
        assert sn.vm_state_size == len(state)
        assert dev.read_vm_state("with-state", 0, len(state)) == state
        assert dev.read_vm_state("with-state", 123_456, 10) == state[123_456:123_466]
        dev.write(0, b"more" * 1000)
    _qemu_check_clean(img)
    listing = qemu_img("snapshot", "-l", img).stdout.splitlines()[2]
    assert listing.split()[:4] == ["1", "with-state", "293", "KiB"]
    with open_image(str(img), read_only=True) as dev:
        assert dev.read_vm_state("with-state", 0, len(state)) == state
        assert dev.read(0, 4000) == b"more" * 1000
    end_with_state = img.stat().st_blocks
    qemu_img("snapshot", "-d", "with-state", img)           # QEMU frees the state clusters with the snapshot
    _qemu_check_clean(img)
    with open_image(str(img)) as dev:
        dev.write_vm_state(0, state)
        dev.snapshot_create("again", vm_state_size=len(state))
        dev.snapshot_delete("again")
    _qemu_check_clean(img)
    assert img.stat().st_blocks <= end_with_state


def test_img_snapshot_cli(tmp_path: Path, capsys) -> None:
    need_qemu_img()
    img = tmp_path / "c.qcow2"
    create_image(str(img), "qcow2", MiB)
    with open_image(str(img)) as dev:
        dev.write(0, b"1" * 512)
    assert img_cli(["snapshot", "-c", "first", str(img)]) == 0
    with open_image(str(img)) as dev:
        dev.write(0, b"2" * 512)
    assert img_cli(["snapshot", "-l", str(img)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Snapshot list:" and out.splitlines()[2].split()[:2] == ["1", "first"]
    assert img_cli(["snapshot", "-a", "first", str(img)]) == 0
    with open_image(str(img), read_only=True) as dev:
        assert dev.read(0, 512) == b"1" * 512
    assert img_cli(["snapshot", "-a", "nope", str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vireo img: {img}: Could not apply snapshot 'nope'") and "\n" not in err
    assert img_cli(["snapshot", "-d", "first", str(img)]) == 0
    assert img_cli(["snapshot", "-l", str(img)]) == 0
    assert capsys.readouterr().out == ""                   # as qemu-img: nothing to list, nothing printed
    _qemu_check_clean(img)
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(MiB))
    assert img_cli(["snapshot", "-c", "x", str(raw)]) == 2
    assert "qcow2" in capsys.readouterr().err


def test_snapshot_create_refuses_bad_names_and_keeps_ids_unique(tmp_path: Path) -> None:
    img = tmp_path / "n.qcow2"
    create_image(str(img), "qcow2", MiB)
    with open_image(str(img)) as dev:
        with pytest.raises(Exception, match="name must be"):
            dev.snapshot_create("")
        a = dev.snapshot_create("same")
        b = dev.snapshot_create("same")                    # QEMU allows duplicate names; IDs differ
        assert (a.id_str, b.id_str) == ("1", "2")
        dev.snapshot_delete("same")                        # the first with that name, as qemu-img
        assert [s.id_str for s in dev.snapshots] == ["2"]
        assert dev.snapshot_create("next").id_str == "3"
    head = img.read_bytes()[:72]
    assert struct.unpack_from(">I", head, 60)[0] == 2


def test_snapshots_of_compressed_clusters_and_over_a_backing_file_with_resize(tmp_path: Path) -> None:
    """Compressed clusters are shared and copied like others (each host cluster their bytes touch is counted);
    a thin clone's snapshot keeps reading the backing file where it has nothing; a snapshot taken before a resize
    brings the old size back, as qemu-img snapshot -a does."""
    need_qemu_img()
    src, packed = tmp_path / "src.qcow2", tmp_path / "packed.qcow2"
    qemu_img("create", "-f", "qcow2", src, "4M")
    qemu_io(src, "qcow2", "write -P 0x5a 0 2M", "write -P 0x11 3M 100k")
    qemu_img("convert", "-c", "-O", "qcow2", src, packed)
    with open_image(str(packed)) as dev:
        before = dev.read(0, dev.size)
        dev.snapshot_create("c1")
        dev.write(100, b"x" * 10)
        dev.write_zeroes(MiB, MiB)
        dev.snapshot_apply("c1")
        assert dev.read(0, dev.size) == before
        dev.write(70_000, b"y" * 100_000)
        dev.snapshot_delete("c1")
    _qemu_check_clean(packed)

    base, clone = tmp_path / "base.raw", tmp_path / "clone.qcow2"
    base.write_bytes(random.Random(5).randbytes(4 * MiB))
    create_image(str(clone), "qcow2", None, backing_file=base.name, backing_format="raw")
    with open_image(str(clone)) as dev:
        original = dev.read(0, dev.size)
        dev.snapshot_create("o1")
        dev.write(5, b"zz")
        dev.discard(MiB, MiB)
        dev.resize(8 * MiB)
        dev.write(6 * MiB, b"q" * 1000)
        dev.snapshot_create("o2")
        dev.snapshot_apply("o1")
        assert dev.size == 4 * MiB and dev.read(0, dev.size) == original
        dev.snapshot_apply("o2")
        assert dev.size == 8 * MiB and dev.read(6 * MiB, 1000) == b"q" * 1000
    _qemu_check_clean(clone)
    assert '"virtual-size": 8388608' in qemu_img("info", "--output=json", clone).stdout
    # qemu-img convert -l reads a snapshot at the active disk's size: the first 4 MiB are o1's.
    assert _snapshot_data(clone, "o1", tmp_path)[:4 * MiB] == original


def _qemu_monitor(img: Path, *commands: str) -> str:
    """Run QEMU (no machine, no devices) on `img` and type monitor commands; return what the monitor printed."""
    import shutil
    import subprocess
    import time

    from tests.helpers.runner import in_ci

    if shutil.which("qemu-system-x86_64") is None:
        if in_ci():
            pytest.fail("CI: qemu-system-x86_64 (Debian package qemu-system-x86) is not installed", pytrace=False)
        pytest.skip("qemu-system-x86_64 is not installed")
    proc = subprocess.Popen(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg",
                             "-drive", f"file={img},if=none,id=d0,format=qcow2", "-monitor", "stdio"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdin is not None
    for command in commands:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        time.sleep(0.5)
    out, _ = proc.communicate("quit\n", timeout=30)
    return out


def test_vm_state_round_trips_with_qemu_savevm_and_loadvm(tmp_path: Path) -> None:
    """QEMU's savevm state reads back through read_vm_state (its stream starts with QEMU's "QEVM" magic); the same
    bytes written by Vireo into another image load with QEMU's loadvm, and garbage there does not."""
    need_qemu_img()
    theirs, ours, bad = tmp_path / "theirs.qcow2", tmp_path / "ours.qcow2", tmp_path / "bad.qcow2"
    qemu_img("create", "-f", "qcow2", theirs, "64M")
    _qemu_monitor(theirs, "savevm s1")
    with open_image(str(theirs), read_only=True) as dev:
        state = dev.read_vm_state("s1", 0, dev.find_snapshot("s1").vm_state_size)
    assert state[:4] == b"QEVM" and len(state) > 100
    for path, data in ((ours, state), (bad, bytes(len(state)))):
        create_image(str(path), "qcow2", 64 * MiB)
        with open_image(str(path)) as dev:
            dev.write_vm_state(0, data)
            dev.snapshot_create("mine", vm_state_size=len(data))
    assert "Error" not in _qemu_monitor(ours, "loadvm mine")
    assert "Error" in _qemu_monitor(bad, "loadvm mine")
    _qemu_check_clean(ours)


def test_img_info_lists_snapshots_as_qemu_img_info(tmp_path: Path, capsys) -> None:
    import json

    need_qemu_img()
    img = tmp_path / "i.qcow2"
    qemu_img("create", "-f", "qcow2", img, "16M")
    qemu_img("snapshot", "-c", "by-qemu", img)
    with open_image(str(img)) as dev:
        dev.write(0, b"x" * 4096)
        dev.write_vm_state(0, b"state" * 300)
        dev.snapshot_create("by-vireo", vm_state_size=1500)
    assert img_cli(["info", str(img)]) == 0
    ours = capsys.readouterr().out.splitlines()
    theirs = qemu_img("info", img).stdout.splitlines()
    assert [line for line in ours if not line.startswith("disk size")] == \
        [line for line in theirs if not line.startswith("disk size")]
    assert img_cli(["info", "--output", "json", str(img)]) == 0
    ours_json = json.loads(capsys.readouterr().out)
    assert ours_json["snapshots"] == json.loads(qemu_img("info", "--output=json", img).stdout)["snapshots"]


def test_vm_state_of_a_thin_clone_never_reads_the_backing_file(tmp_path: Path) -> None:
    """State written in pieces that share clusters, on an image with a backing file larger than the clone's state
    offset would suggest: the state reads back as written, holes as zeros."""
    need_qemu_img()
    base, clone = tmp_path / "base.raw", tmp_path / "clone.qcow2"
    base.write_bytes(b"\xbb" * (4 * MiB))
    create_image(str(clone), "qcow2", None, backing_file=base.name, backing_format="raw")
    with open_image(str(clone)) as dev:
        dev.write_vm_state(1000, b"a" * 3000)
        dev.write_vm_state(70_000, b"b" * 10)
        dev.snapshot_create("s", vm_state_size=80_000)
        state = dev.read_vm_state("s", 0, 80_000)
    assert state == bytes(1000) + b"a" * 3000 + bytes(66_000) + b"b" * 10 + bytes(9_990)
    _qemu_check_clean(clone)
