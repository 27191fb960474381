"""Measure the system calls a running VM process makes after start-up, for the sandbox's list
(core/vmproc/sandbox.py, docs/security.md).

It starts a VM process (Debian's kernel and the test initramfs on the software CPU, or on KVM with --accel kvm)
with a qcow2 disk, a passt card with a port forward and a VNC server, sandboxed as usual, attaches `strace -f` to
all its threads once it has started (the sandbox is on by then; passt and its launcher were started before and are
not traced, and the sandboxed process can start no other), drives it (serial input, guest disk writes, downloads
through the forward, a VNC client, a snapshot, a change of forwards that restarts passt through the launcher, a
pause and a save), then prints each call seen with its count, whether the list allows it, and every call the filter
refused (EPERM). With --unsandboxed (VIREO_SANDBOX=0) it shows what the engine would call with no filter at all,
forks and passt included. Run: .venv/bin/python bench/syscalls.py [--accel kvm] [--unsandboxed]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import DiskConfig, DisplayConfig, NicConfig  # noqa: E402
from core.storage import create_image  # noqa: E402
from core.vmproc import sandbox  # noqa: E402
from tests.helpers.vmproc import PROMPT, Spawner, guest_config  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attach(pid: int, out: str) -> subprocess.Popen:
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


def parse(path: str) -> tuple[dict[str, int], dict[str, int]]:
    """(calls by name, calls refused with EPERM by name) from strace -f output."""
    calls: dict[str, int] = {}
    refused: dict[str, int] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        if rest.startswith("<... "):             # the end of a call counted at its start
            name = rest[5:].split()[0]
        else:
            m = re.match(r"(\w+)\(", rest)
            if not m:
                continue                          # signals, exits
            name = m.group(1)
            calls[name] = calls.get(name, 0) + 1
        if "= -1 EPERM" in rest:
            refused[name] = refused.get(name, 0) + 1
    return calls, refused


def vnc_touch(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.recv(12)
        s.sendall(b"RFB 003.008\n")
        s.recv(64)


def run(work: str, accel: str) -> tuple[dict[str, int], dict[str, int]]:
    disk = os.path.join(work, "d.qcow2")
    create_image(disk, "qcow2", 64 << 20)
    port, port2 = free_port(), free_port()
    vnc = os.path.join(work, "vnc.sock")
    cfg = guest_config(FIXTURES / "vmlinuz-amd64", FIXTURES / "initramfs-amd64.cpio.gz",
                       "console=ttyS0 quiet vireo.action=net vireo.httpd=80",
                       disks=[DiskConfig(disk, format="qcow2")],
                       nics=[NicConfig(forwards=[f"tcp:127.0.0.1:{port}-:80"])],
                       display=DisplayConfig("vga", vnc=f"unix:{vnc}"), accel=accel)
    spawn = Spawner(os.path.join(work, "run"))
    try:
        vm, rec = spawn(cfg)
        rec.expect(b"VIREO-HTTPD-READY", 180)
        out = os.path.join(work, "vm.strace")
        tracer = attach(vm.pid, out)
        vm.serial_input(b"modprobe virtio_blk; sleep 1; dd if=/dev/urandom of=/dev/vda bs=64k count=64 conv=fsync; "
                        b"dd if=/dev/vda of=/dev/null bs=64k count=64 iflag=direct; echo DISK-DONE\n")
        rec.expect(b"DISK-DONE", 120)
        for _ in range(3):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
        vnc_touch(vnc)
        vm.net_status()
        vm.net_set(0, forwards=[f"tcp:127.0.0.1:{port2}-:80"])
        time.sleep(1)
        urllib.request.urlopen(f"http://127.0.0.1:{port2}/", timeout=30).read()
        vm.snapshot_create("s1")
        vm.serial_input(b"echo $((6*7))\n")
        rec.expect(PROMPT, 30)
        vm.pause()
        vm.resume()
        vm.save(os.path.join(work, "state.vireo"))
        time.sleep(1)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        return parse(out)
    finally:
        spawn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accel", default="software", choices=("software", "kvm"))
    parser.add_argument("--unsandboxed", action="store_true")
    args = parser.parse_args()
    if args.unsandboxed:
        os.environ["VIREO_SANDBOX"] = "0"
    else:
        os.environ.pop("VIREO_SANDBOX", None)
    with tempfile.TemporaryDirectory() as work:
        calls, refused = run(work, args.accel)
    allowed = set(sandbox.ALLOWED) | set(sandbox.FALLBACK)
    for name, count in sorted(calls.items(), key=lambda kv: -kv[1]):
        print(f"{name:24} {count:10}  {'allowed' if name in allowed else 'NOT IN THE LIST'}"
              + (f"  refused {refused[name]}x" if name in refused else ""))
    missing = sorted(set(calls) - allowed)
    print(f"{args.accel}: {len(calls)} distinct calls after start-up; {len(allowed)} in the list; "
          f"not in the list: {missing}; refused with EPERM: {sorted(refused)}")
    return 1 if missing or refused else 0


if __name__ == "__main__":
    sys.exit(main())
