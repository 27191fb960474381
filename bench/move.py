"""Clone and move benchmark (issue 15; docs/clone-and-move.md), each next to the reference doing the same bytes:

  * full clone of a VM with a disk of N MiB of random data (`vireo clone`'s path: the service copies and fsyncs)
    against `cp` of the same file followed by `sync -f`;
  * linked clone against `qemu-img create -f qcow2 -b DISK -F raw` (QEMU 7.2's qemu-img);
  * move of the shut-off VM to an SSH host (loopback sshd, tests/helpers/remote.py: SFTP on the client's SSH
    connection, SHA-256 on both sides, fsync) against OpenSSH's `scp` of the same file to the same sshd, and back.

Ratios are reference time / Vireo time: at least 1.0 means Vireo is as fast. Each figure is the best of --repeat.
Run: .venv/bin/python bench/move.py [--mib N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vireo-bench-move-"))
    from tests.helpers.service import ServiceSandbox
    sandbox = ServiceSandbox(work / "local")
    os.environ.update(sandbox.env)
    from tests.helpers.remote import REPO_PYTHON, SshServer
    server = SshServer(work / "ssh").start()
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    from core.config import DiskConfig, VmConfig
    from core.connect import RemoteHost, move_vm, parse_uri

    class Trust:
        def confirm_host_key(self, *a) -> bool:
            return True

        def secret(self, *a):
            return None

    try:
        local = sandbox.connect()
        target = parse_uri(server.uri(python=REPO_PYTHON))
        target.identity, target.known_hosts = str(server.user_key), server.known_hosts
        remote = RemoteHost(target, Trust())
        remote.connect()
        images = sandbox.data_home / "vireo" / "images"
        images.mkdir(parents=True, exist_ok=True)
        disk = images / "bench.raw"
        with open(disk, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        vm = local.define(VmConfig(name="bench", accel="software", disks=[DiskConfig(str(disk))]))
        size = args.mib / 1024 if args.mib >= 1024 else args.mib
        unit = "GiB" if args.mib >= 1024 else "MiB"
        print(f"disk: {size} {unit} of random data (raw); best of {args.repeat}")

        n = iter(range(1000))

        def clone(linked: bool) -> None:
            info = local.clone(vm.uuid, f"c{next(n)}", linked=linked)
            clones.append(info.uuid)
        clones: list[str] = []
        t_full = best(lambda: clone(False), args.repeat)
        for uuid in clones:
            local.delete(uuid, True)
        copy = work / "copy.raw"

        def cp() -> None:
            copy.unlink(missing_ok=True)
            subprocess.run(["cp", str(disk), str(copy)], check=True)
            subprocess.run(["sync", "-f", str(copy)], check=True)
        t_cp = best(cp, args.repeat)
        print(f"full clone   vireo {t_full:7.3f} s   cp+sync {t_cp:7.3f} s   ratio {t_cp / t_full:5.2f}")

        clones.clear()
        t_linked = best(lambda: clone(True), args.repeat)
        overlay = work / "overlay.qcow2"

        def qemu_img() -> None:
            overlay.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "raw", str(overlay)],
                           check=True)
        t_qi = best(qemu_img, args.repeat)
        print(f"linked clone vireo {t_linked:7.3f} s   qemu-img {t_qi:7.3f} s   ratio {t_qi / t_linked:5.2f}")
        for uuid in clones:
            local.delete(uuid, True)

        # Move there and back (each direction once per repeat), next to scp of the same file each way. A VM of its
        # own: after a linked clone the first one's disk is an overlay, which a move refuses.
        mover = images / "mover.raw"
        subprocess.run(["cp", str(copy), str(mover)], check=True)
        vm = local.define(VmConfig(name="mover", accel="software", disks=[DiskConfig(str(mover))]))
        there, back = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            move_vm(local, remote, vm.uuid)
            there.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            moved = move_vm(remote, local, vm.uuid)
            back.append(time.perf_counter() - t0)
        source = moved.config.disks[0].path
        ssh = ["-i", str(server.user_key), "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes",
               "-P", str(server.port)]
        dest = f"{server.user}@127.0.0.1:{server.data_home}/scp.raw"

        def scp_there() -> None:
            subprocess.run(["scp", "-q", *ssh, source, dest], check=True, env=server.client_env())

        def scp_back() -> None:
            subprocess.run(["scp", "-q", *ssh, dest, str(work / "scp-back.raw")], check=True, env=server.client_env())
        t_scp, t_scp_back = best(scp_there, args.repeat), best(scp_back, args.repeat)
        mb = args.mib * (1 << 20) / 1e6
        print(f"move to SSH  vireo {min(there):7.3f} s ({mb / min(there):6.1f} MB/s)   scp {t_scp:7.3f} s   "
              f"ratio {t_scp / min(there):5.2f}")
        print(f"move back    vireo {min(back):7.3f} s ({mb / min(back):6.1f} MB/s)   scp {t_scp_back:7.3f} s   "
              f"ratio {t_scp_back / min(back):5.2f}")
        remote.close()
    finally:
        sandbox.stop()
        server.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
