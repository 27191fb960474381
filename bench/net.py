#!/usr/bin/env python3
"""Network benchmark (issue 13): Vireo's virtio-net on passt against QEMU 7.2's virtio-net-pci on its own passt
(`-netdev stream`, the same length-prefixed socket protocol, virtio 1.2 section 5.1 on both sides).

Both boot Debian's kernel (tests/fixtures/out/vmlinuz-amd64) with the tests' busybox initramfs and today's
tests/fixtures/init.sh, `vireo.action=net-bench`: the guest takes a DHCP lease from passt and starts busybox httpd on
port 80, then, timed with the guest's own clock (/proc/uptime), `bench_reps` times:
- host -> guest: busybox wget of a --mib MiB file from an HTTP server this script runs on the host's loopback,
  reached through the gateway address (passt maps it to the host's 127.0.0.1);
- guest -> host: busybox wget --post-file of a --mib MiB file (made in the guest's tmpfs before the clock starts;
  not zeros, as busybox wget posts strlen() of the file) to the same server, which answers once it has read every
  byte (so the time covers delivery to the host, not just the guest's socket buffer); the run fails unless the
  host got every byte of every POST. (busybox nc was tried: it waits for an end of stream from passt after the
  answer that never comes, with QEMU as with Vireo.)
Then the host times --requests small HTTP GETs (a new TCP connection each, as busybox httpd closes it) of the
guest's index page through a forwarded port (127.0.0.1:P -> guest :80): the request latency, in ms.

Vireo runs with `--accel software`, QEMU with `-accel tcg`; the runs alternate (Vireo, QEMU, Vireo, QEMU, ...)
and the medians over all runs and reps are compared. "vireo/qemu" is Vireo's speed relative to QEMU's for each
metric: MB/s divided for throughput, ms inverted for latency (above 1: Vireo is faster; issue 13's target: >= 0.9).
The host's CPU is shared, so single runs are noisy: look at medians and use --runs >= 3.

With --pcap each side's passt also writes its capture (a `passt` wrapper first in PATH adds --pcap), and each run
line says which host -> guest transfers stalled: a slow transfer is a fast one with a single ~170 ms gap in which
passt has nothing to send, on QEMU's side too (bench/pcap_stalls.py, docs/net-performance.md "Session 11"). The
summary then adds the stall counts and the medians of the transfers without one.

    .venv/bin/python bench/net.py [--runs 3] [--reps 3] [--mib 32] [--requests 200] [--pcap]
"""
from __future__ import annotations

import argparse
import http.client
import http.server
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pcap_stalls import downloads  # noqa: E402
from tests.helpers.initrd import initrd_with_current_init  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "out"
BOOT_TIMEOUT = 300
work_dirs: list[Path] = []                      # removed at the end


class _Blob(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:                   # noqa: N802 (the stdlib's name)
        data = self.server.blob                 # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:                  # noqa: N802
        left = int(self.headers.get("Content-Length", "0"))
        got = 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)
            got += len(chunk)
        self.server.posted.append(got)          # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"OK\n")

    def log_message(self, *args) -> None:
        pass


def start_blob_server(size: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blob)
    server.blob = os.urandom(size)              # type: ignore[attr-defined]
    server.posted = []                          # type: ignore[attr-defined]  # bytes of each POST received
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmdline(args: argparse.Namespace, blob_port: int) -> str:
    return (f"console=ttyS0 quiet vireo.action=net-bench vireo.httpd=80 vireo.bench_mib={args.mib} "
            f"vireo.bench_reps={args.reps} vireo.url=http://GATEWAY:{blob_port}/blob")


def vireo_cmd(kernel: Path, initrd: Path, append: str, fwd_port: int, _work: Path) -> tuple[list[str], list]:
    return ([sys.executable, str(ROOT / "main.py"), "run", "--kernel", str(kernel), "--initrd", str(initrd),
             "--accel", "software", "--memory", "256", "--serial", "stdio", "--timeout", "900",
             "--net", f"user,hostfwd=tcp:127.0.0.1:{fwd_port}-:80", "--append", append], [])


def qemu_cmd(kernel: Path, initrd: Path, append: str, fwd_port: int, work: Path) -> tuple[list[str], list]:
    """QEMU and the passt it connects to (passt listens on a UNIX socket; QEMU 7.2's -netdev stream connects)."""
    # passt started as root runs as nobody: the socket's directory must be reachable for nobody, so not under the
    # (0700) work directory but a world-writable one of its own in the system's temporary directory.
    sock_dir = Path(tempfile.mkdtemp(prefix="vireo-netbench-passt-"))
    sock_dir.chmod(0o777)
    sock = sock_dir / "passt.sock"
    passt = subprocess.Popen(["passt", "--foreground", "--quiet", "--socket", str(sock), "-t",
                              f"127.0.0.1/{fwd_port}:80", "-u", "none"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if passt.poll() is not None or time.monotonic() > deadline:
            passt.kill()
            raise RuntimeError("passt for QEMU did not start")
        time.sleep(0.02)
    work_dirs.append(sock_dir)
    return (["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "256", "-nographic", "-no-reboot",
             "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
             "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}",
             "-device", "virtio-net-pci,netdev=n0"], [passt])


def request_latencies(port: int, n: int) -> list[float]:
    """ms per GET / through the forwarded port, a new connection each."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        body = conn.getresponse().read()
        conn.close()
        out.append((time.perf_counter() - t0) * 1000)
        if b"VIREO-HTTPD-PAGE" not in body:
            raise RuntimeError(f"unexpected page: {body[:100]!r}")
    return out


def run_once(name: str, make, kernel: Path, initrd: Path, args: argparse.Namespace, blob,
             work: Path) -> dict[str, list[float]]:
    blob_port = blob.server_address[1]
    blob.posted.clear()
    fwd = free_port()
    cmd, helpers = make(kernel, initrd, cmdline(args, blob_port), fwd, work)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    results: dict[str, list[float]] = {"h2g": [], "g2h": [], "latency": []}
    tail: list[str] = []
    timer = threading.Timer(BOOT_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            tail = (tail + [line])[-30:]
            m = re.search(r"VIREO-BENCH-(h2g|g2h)=([0-9.]+)", line)
            if m:
                results[m.group(1)].append(float(m.group(2)))
            if "VIREO-BENCH-READY" in line:
                timer.cancel()
                request_latencies(fwd, 10)                      # warm-up: the first connections set up state
                results["latency"] = request_latencies(fwd, args.requests)
                break
        else:
            raise RuntimeError(f"{name}: no VIREO-BENCH-READY; last output:\n" + "\n".join(tail))
    finally:
        timer.cancel()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for helper in helpers:
            helper.terminate()
            helper.wait(10)
    # A guest->host figure only counts if every byte got here (busybox wget once posted nothing for a file of
    # zeros: it sends strlen() of the file, and the figures were those of an empty request).
    if results["g2h"] and blob.posted != [args.mib << 20] * len(results["g2h"]):
        raise RuntimeError(f"{name}: the host received POSTs of {blob.posted} bytes, not {len(results['g2h'])} "
                           f"of {args.mib << 20}")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="boots of each, alternating (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="transfers each way per boot (default 3)")
    ap.add_argument("--mib", type=int, default=32, help="MiB per transfer (default 32)")
    ap.add_argument("--requests", type=int, default=200, help="HTTP requests through the forward (default 200)")
    ap.add_argument("--only", choices=("vireo", "qemu"), help="run one side only (profiling)")
    ap.add_argument("--pcap", action="store_true",
                    help="capture each boot's passt traffic (passt --pcap, both sides) and report the host -> guest "
                         "transfers that stalled (a gap of over 50 ms between data frames), and the medians of "
                         "those that did not (bench/pcap_stalls.py)")
    args = ap.parse_args()
    kernel, base = OUT / "vmlinuz-amd64", OUT / "initramfs-amd64.cpio.gz"
    if not kernel.exists() or not base.exists():
        print(f"fixtures missing in {OUT}: build them with .venv/bin/python tests/fixtures/build.py")
        return 2
    for tool in ("qemu-system-x86_64", "passt"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed for this benchmark")
            return 2
    size = args.mib << 20
    blob = start_blob_server(size)
    sides = [(n, m) for n, m in (("vireo", vireo_cmd), ("qemu", qemu_cmd)) if args.only in (None, n)]
    all_results: dict[str, dict[str, list[float]]] = {n: {"h2g": [], "g2h": [], "latency": []} for n, _ in sides}
    unstalled: dict[str, list[float]] = {n: [] for n, _ in sides}
    stalls: dict[str, list[float]] = {n: [] for n, _ in sides}
    pcap_dir = capture_passt() if args.pcap else None
    with tempfile.TemporaryDirectory(prefix="vireo-netbench-") as tmp:
        work = Path(tmp)
        initrd = initrd_with_current_init(base, work)
        for run in range(args.runs):
            for name, make in sides:
                r = run_once(name, make, kernel, initrd, args, blob, work)
                for key, values in r.items():
                    all_results[name][key] += values
                line = (f"run {run + 1} {name:5}: h2g {' '.join(f'{v:.1f}' for v in r['h2g'])} MB/s  "
                        f"g2h {' '.join(f'{v:.1f}' for v in r['g2h'])} MB/s  "
                        f"latency median {statistics.median(r['latency']):.2f} ms")
                if pcap_dir is not None:
                    line += "  " + stalled_transfers(pcap_dir, blob.server_address[1], r["h2g"],
                                                     unstalled[name], stalls[name])
                print(line, flush=True)
    blob.shutdown()
    if pcap_dir is not None:
        shutil.rmtree(pcap_dir, ignore_errors=True)
    for d in work_dirs:
        shutil.rmtree(d, ignore_errors=True)
    print(f"\nmedians over {args.runs} alternating boots x {args.reps} transfers of {args.mib} MiB, "
          f"{args.requests} requests per boot (software CPU vs TCG; shared host CPU: noisy)")
    print(f"{'metric':22}{'vireo':>10}{'qemu':>10}{'vireo/qemu':>12}")
    labels = {"h2g": "host->guest MB/s", "g2h": "guest->host MB/s", "latency": "request latency ms"}
    for key, label in labels.items():
        med = {n: statistics.median(all_results[n][key]) for n, _ in sides}
        if len(med) == 2:
            v, q = med["vireo"], med["qemu"]
            ratio = q / v if key == "latency" else v / q
            print(f"{label:22}{v:10.2f}{q:10.2f}{ratio:12.2f}")
        else:
            (n, v), = med.items()
            print(f"{label:22}{v:10.2f}" if n == "vireo" else f"{label:22}{'':10}{v:10.2f}")
    if pcap_dir is not None:
        print("host->guest transfers with a stall of over 50 ms (passt's capture): "
              + ", ".join(f"{n} {len(stalls[n])} of {len(all_results[n]['h2g'])}"
                          + (f" (longest {max(stalls[n]) * 1000:.0f} ms)" if stalls[n] else "") for n, _ in sides))
        med = {n: statistics.median(v) for n, v in unstalled.items() if v}
        row = "  ".join(f"{n} {v:.1f} MB/s ({len(unstalled[n])})" for n, v in med.items())
        if len(med) == 2:
            row += f"  vireo/qemu {med['vireo'] / med['qemu']:.2f}"
        print(f"host->guest medians of the transfers without one: {row}")
    return 0


def capture_passt() -> Path:
    """Put a `passt` first in PATH that runs the real one with --pcap into a fresh directory (for both sides: Vireo
    and this script start passt by name). passt started as root runs as nobody, so the directory is
    world-writable."""
    real = shutil.which("passt")
    pcap_dir = Path(tempfile.mkdtemp(prefix="vireo-netbench-pcap-"))
    pcap_dir.chmod(0o1777)
    wrapper = pcap_dir / "bin" / "passt"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {real} --pcap "{pcap_dir}/$(date +%s%N).pcap" "$@"\n')
    wrapper.chmod(0o755)
    os.environ["PATH"] = f"{wrapper.parent}:{os.environ['PATH']}"
    return pcap_dir


def stalled_transfers(pcap_dir: Path, server_port: int, guest_mbs: list[float], unstalled: list[float],
                      stalls: list[float]) -> str:
    """Read (and delete) the boot's capture: which of its host->guest transfers stalled. The guest's own
    figures (guest_mbs, in order) of those that did not go to `unstalled`, the stalls' lengths to `stalls`."""
    transfers = []
    for path in sorted(pcap_dir.glob("*.pcap")):
        transfers += downloads(path, server_port)
        path.unlink()
    if len(transfers) != len(guest_mbs):
        return f"pcap: {len(transfers)} downloads seen for {len(guest_mbs)} transfers"
    for tr, mbs in zip(transfers, guest_mbs, strict=True):
        if tr.stalled:
            stalls.append(tr.longest_gap)
        else:
            unstalled.append(mbs)
    return "stalls " + " ".join(f"{tr.longest_gap * 1000:.0f}ms" if tr.stalled else "-" for tr in transfers)


if __name__ == "__main__":
    sys.exit(main())
