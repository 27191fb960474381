#!/usr/bin/env python3
"""Soak (issue 18, "Soak and load"): --vms VMs (default 4) run at once through Vireo's real stack, with guest
activity, for --seconds; the resident memory and open descriptors of every process are sampled over time. Goal: no
growth after warm-up.

The stack is the one `vireo start` uses: a per-user service (core/agent, started on demand by core.connect's
connect_local) that spawns one VM process (core/vmproc) per VM, each with its passt. It runs in a sandbox
(tests/helpers/service.py: XDG_RUNTIME_DIR, XDG_CONFIG_HOME and XDG_DATA_HOME in a temporary directory, so a
throw-away service is started, and every process left with that runtime directory is killed afterwards, by pid).

Each VM: Debian's kernel and the tests' busybox initramfs (tests/fixtures/init.sh, vireo.action=net with
vireo.httpd=80: a DHCP lease from passt, busybox httpd, then a shell on ttyS0) on the software CPU, 128 MiB, a
64 MiB qcow2 virtio-blk disk and a passt card forwarding a host port to the guest's httpd. Activity, kept light
(2 cores, software CPUs):
  - guest: a shell loop writes 256 KiB to /dev/vda and reads it back (O_DIRECT, fsync), then prints a numbered
    line on ttyS0 (serial) and on tty1 (the VGA text console), every 2 s;
  - host, every second per VM: a line typed into the serial console (send_serial, echoed back), a page fetched
    through the forwarded port (passt to the guest's httpd), stats() and net_status() as the GUI's tabs poll;
  - console, every --screendump seconds per VM: a screendump through the Host API, alternately the shared console
    (console() + render(force=True), as the local GUI maps it) and a second client's streamed console (the
    service sends the frame over the socket), each closed afterwards (close_console), as a VM window opening and
    closing.

Every --interval seconds the script reads VmRSS from /proc/PID/status and counts /proc/PID/fd for the service,
each VM process and each of their children (passt). The first quarter of the run is warm-up (caches, lazily
imported modules, the first console opened, the guest's page cache); growth is measured from the window just
after it to the last window of the run (each --window of the run, at least 3 samples), comparing each window's
minimum, so a transient (an allocation in flight, a connection being closed) does not count and a leak, which
never comes back down, does. The slope of a least-squares line through the post-warm-up samples is shown too.

Run: .venv/bin/python bench/soak.py [--seconds 300] [--vms 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import BootConfig, DiskConfig, NicConfig, VmConfig  # noqa: E402
from core.host import HostError, VmState  # noqa: E402
from core.remote.local import LocalServiceHost  # noqa: E402
from tests.helpers.service import ServiceSandbox  # noqa: E402
from tests.helpers.vmproc import Recorder  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "out"
PROMPT = re.compile(rb"vireo:[^\n#]*# ")
# console=ttyS0 last: /dev/console (init's stdin/stdout, the shell) is the last console= named.
CMDLINE = "console=tty1 console=ttyS0 quiet vireo.action=net vireo.httpd=80"
GUEST_LOOP = (b"modprobe virtio_blk; i=0; while :; do "
              b"dd if=/dev/urandom of=/dev/vda bs=64k count=4 oflag=direct conv=fsync 2>/dev/null; "
              b"dd if=/dev/vda of=/dev/null bs=64k count=4 iflag=direct 2>/dev/null; "
              b"echo soak-tick-$i > /dev/tty1; echo soak-tick-$i; i=$((i+1)); sleep 2; done &\n")
TICK = re.compile(rb"soak-tick-(\d+)")

# The verdict's tolerance. RSS: 4 MiB, or 2 % of the process's size if that is more. A Python process's resident
# size moves in steps that are not leaks: pymalloc takes memory from the system an arena (1 MiB) at a time and
# keeps arenas that still hold one live object; glibc's malloc keeps freed memory below its trim threshold; a
# console frame is 720x400x4 = 1.1 MiB, and a frame and its compressed copy can be alive at the moment of a
# sample. 4 MiB is a few such steps: a real leak of the activity here (hundreds of requests, screendumps and disk
# requests a minute) passes it within the run and keeps rising, which the slope shows. Descriptors: none (a
# descriptor held past its use is the leak this looks for; transients are filtered by the windows' minimum).
RSS_TOLERANCE_MIB = 4.0
RSS_TOLERANCE_FRACTION = 0.02
FD_TOLERANCE = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """VmRSS of /proc/PID/status, in MiB (proc(5))."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def program(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return os.path.basename(f.read().split(b"\0")[0].decode(errors="replace")) or "?"


def label_processes(sandbox: ServiceSandbox, vm_pids: dict[int, str]) -> dict[int, str]:
    """A label for every process of the sandbox: "service", the VM's name, or "<program> of <VM>"."""
    labels = {}
    daemon = sandbox.daemon_pid()
    for pid in sandbox.processes():
        try:
            if pid == daemon:
                labels[pid] = "service"
            elif pid in vm_pids:
                labels[pid] = vm_pids[pid]
            else:
                owner = parent(pid)
                while owner > 1 and owner not in vm_pids and owner != daemon:
                    owner = parent(owner)
                labels[pid] = f"{program(pid)} of {vm_pids.get(owner, 'service' if owner == daemon else '?')}"
        except (OSError, ValueError, IndexError):
            pass    # it exited between the listing and the read
    return labels


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def screendump(host: LocalServiceHost, uuid: str, timeout: float = 15.0) -> bool:
    """Open the VM's console, take one frame (render(force=True) until a picture exists), close it."""
    try:
        console = host.console(uuid)
        deadline = time.monotonic() + timeout
        frame = console.frames.render(force=True)
        while frame is None and time.monotonic() < deadline:
            time.sleep(0.05)
            frame = console.frames.render(force=True)
        return frame is not None and frame.width > 0 and bool(frame.pixels.any())
    except HostError:
        return False
    finally:
        host.close_console(uuid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="the soak, after every VM booted")
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--screendump", type=float, default=5.0, help="seconds between a VM's screendumps")
    parser.add_argument("--window", type=float, default=0.1, help="fraction of the run compared at each end")
    parser.add_argument("--boot-timeout", type=float, default=900.0)
    parser.add_argument("--json", help="write every sample here")
    args = parser.parse_args()
    warmup = args.seconds / 4

    with tempfile.TemporaryDirectory(prefix="vireo-soak-") as work:
        sandbox = ServiceSandbox(Path(work) / "service")
        os.environ.update(sandbox.env)      # inherited by the service started on demand, and by its VM processes
        try:
            host = sandbox.connect(idle_exit=args.seconds + args.boot_timeout + 600)
            viewer = LocalServiceHost("soak viewer")     # a second client, whose console the service streams
            viewer.shared_console = False
            viewer.connect()
            sandbox.clients.append(viewer)
            vms: list[tuple[str, str, int, Recorder]] = []      # (name, uuid, forwarded port, serial)
            t0 = time.monotonic()
            for n in range(args.vms):
                image = sandbox.data_home / "vireo" / "images" / f"soak-{n}.qcow2"
                host.create_disk(str(image), 64 << 20, fmt="qcow2")
                port = free_port()
                cfg = VmConfig(name=f"soak-{n}", memory_mib=128, accel="software",
                               boot=BootConfig(kernel=str(FIXTURES / "vmlinuz-amd64"),
                                               initrd=str(FIXTURES / "initramfs-amd64.cpio.gz"), cmdline=CMDLINE),
                               disks=[DiskConfig(path=str(image), format="qcow2")],
                               nics=[NicConfig(forwards=[f"tcp:127.0.0.1:{port}-:80"])])
                info = host.define(cfg)
                serial = Recorder()
                host.subscribe_serial(info.uuid, serial.on_serial)
                host.start(info.uuid)
                vms.append((cfg.name, info.uuid, port, serial))
            for _, uuid, _, serial in vms:
                serial.expect(b"VIREO-HTTPD-READY", args.boot_timeout)
                serial.expect(PROMPT, 120)
                host.send_serial(uuid, GUEST_LOOP)
            print(f"{args.vms} VMs booted in {time.monotonic() - t0:.0f} s; soaking {args.seconds:.0f} s "
                  f"(warm-up {warmup:.0f} s)", flush=True)
            vm_pids = {sandbox.vm_pid(uuid): name for name, uuid, _, _ in vms}
            assert None not in vm_pids, "a VM process is missing"

            samples: dict[int, list[tuple[float, float, int]]] = {}
            labels: dict[int, str] = {}
            counts = {"typed": 0, "echoed": 0, "fetched": 0, "fetch errors": 0, "screendumps": 0,
                      "blank or failed screendumps": 0}
            start = time.monotonic()
            next_sample = next_dump = start
            dump_turn = 0
            typed = 0
            while (now := time.monotonic()) - start < args.seconds:
                for _, uuid, port, _ in vms:
                    host.send_serial(uuid, f"echo host-{typed}-$((6*7))\n".encode())
                    typed += 1
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
                            ok = b"VIREO-HTTPD-PAGE" in page.read()
                        counts["fetched" if ok else "fetch errors"] += 1
                    except OSError:
                        counts["fetch errors"] += 1
                    host.stats(uuid)
                    host.net_status(uuid)
                if now >= next_dump:
                    client = host if dump_turn % 2 == 0 else viewer
                    for _, uuid, _, _ in vms:
                        good = screendump(client, uuid)
                        counts["screendumps" if good else "blank or failed screendumps"] += 1
                    dump_turn += 1
                    next_dump += args.screendump
                if now >= next_sample:
                    labels.update(label_processes(sandbox, vm_pids))
                    for pid in labels:
                        try:
                            samples.setdefault(pid, []).append((now - start, rss_mib(pid), fd_count(pid)))
                        except OSError:
                            pass
                    next_sample += args.interval
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            counts["typed"] = typed
            counts["echoed"] = sum(len(re.findall(rb"host-\d+-42", s.serial)) for *_, s in vms)
            ticks = {name: [int(m) for m in TICK.findall(bytes(s.serial))] for name, _, _, s in vms}
            states = {name: host.get(uuid).state for name, uuid, _, _ in vms}
            return report(args, warmup, samples, labels, counts, ticks, states)
        finally:
            sandbox.stop()


def report(args: argparse.Namespace, warmup: float, samples: dict[int, list[tuple[float, float, int]]],
           labels: dict[int, str], counts: dict[str, int], ticks: dict[str, list[int]],
           states: dict[str, VmState]) -> int:
    window = max(args.seconds * args.window, 3 * args.interval)
    print("activity: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print("guest loop rounds (disk write+read, serial and tty1 line): "
          + ", ".join(f"{n} {max(t, default=-1) + 1}" for n, t in ticks.items()))
    print(f"growth after warm-up: minimum over [{warmup:.0f}, {warmup + window:.0f}] s vs minimum over the last "
          f"{window:.0f} s")
    print(f"{'process':<16} {'pid':>7} {'RSS MiB':>8} {'growth':>7} {'MiB/h':>6} {'fds':>4} {'growth':>6}")
    failures = []
    for pid, series in sorted(samples.items(), key=lambda item: labels[item[0]]):
        first = [s for s in series if warmup <= s[0] <= warmup + window]
        last = [s for s in series if s[0] >= series[-1][0] - window]
        if not first or not last or series[-1][0] < args.seconds - 2 * args.interval:
            print(f"{labels[pid]:<16} {pid:>7} (not sampled through the run)")
            continue
        rss0, rss1 = min(s[1] for s in first), min(s[1] for s in last)
        fd0, fd1 = min(s[2] for s in first), min(s[2] for s in last)
        slope = slope_per_hour([(s[0], s[1]) for s in series if s[0] >= warmup])
        print(f"{labels[pid]:<16} {pid:>7} {rss1:>8.1f} {rss1 - rss0:>+7.1f} {slope:>+6.1f} {fd1:>4} "
              f"{fd1 - fd0:>+6d}")
        if rss1 - rss0 > max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION * rss0):
            failures.append(f"{labels[pid]} RSS {rss1 - rss0:+.1f} MiB")
        if fd1 - fd0 > FD_TOLERANCE:
            failures.append(f"{labels[pid]} descriptors {fd1 - fd0:+d}")
    idle = [n for n, t in ticks.items() if len(t) < 2 or states[n] != VmState.RUNNING]
    if idle:
        failures.append("no guest activity (or not running at the end): " + ", ".join(idle))
    if counts["fetched"] == 0 or counts["screendumps"] == 0 or counts["echoed"] == 0:
        failures.append("some host activity never succeeded")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "labels": {str(p): n for p, n in labels.items()},
                                               "samples": {str(p): s for p, s in samples.items()}}, indent=1))
    print(f"goal: no growth after warm-up (tolerance RSS {RSS_TOLERANCE_MIB:.0f} MiB or "
          f"{RSS_TOLERANCE_FRACTION:.0%}, descriptors {FD_TOLERANCE})")
    print("verdict: " + ("PASS, no growth after warm-up" if not failures else "FAIL: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
