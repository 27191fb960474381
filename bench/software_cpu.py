"""Software CPU vs QEMU's TCG on Debian's kernels and the tests' busybox initramfs (issues 3 and 4's benchmark).

Guests and contenders, each run alternately (`--runs` times each, default 3):

  i386   Vireo `--accel software` with vmlinuz-686      vs  qemu-system-i386 -accel tcg (bzImage via -kernel)
  amd64  Vireo `--accel software` with vmlinuz-amd64    vs  qemu-system-x86_64 -accel tcg -M pc, twice:
         the bzImage via -kernel (SeaBIOS, real-mode setup, in-guest decompression: QEMU's usual path), and
         the uncompressed vmlinux via -kernel, which QEMU boots through its Xen PVH entry note (its fastest
         path); the vmlinux is unpacked from the bzImage the way core/boot/linux.py does it.

Vireo runs twice per guest: `vireo` is `main.py run` (the VM inside that process), `vireo-service` is the same
definition (accel software, same kernel, initrd, command line, memory) started through a throw-away Vireo service
in a sandbox (its own XDG_RUNTIME_DIR/XDG_CONFIG_HOME/XDG_DATA_HOME): a client process connects (starting the
service), defines the VM, starts it — so it runs in a VM process of its own (core/vmproc/) — and copies its
serial output to stdout until the VM is off; the service and anything left are killed by pid afterwards. Its
times therefore include starting the service and the VM process, from a cold start each run; its run line also
says how much of that was the service starting and the VM's definition, and the rest, from the start request.

Vireo's sources are byte-compiled first (bench/bytecode.py), as a user's first run leaves them: the times
include the interpreter's start and imports from that cache, but not compiling Python source.

Measured: time to the VIREO-BOOT-OK marker, time to exit after power-off (vireo.action=poweroff), and the
in-guest sha256-of-256-MiB workload time the guest itself reports (vireo.action=sha256). Prints every run,
then medians and the ratio QEMU-time / Vireo-time (1.0 = as fast as QEMU; above 1, faster).

    .venv/bin/python bench/software_cpu.py [--runs 3] [--guest i386|amd64|all] [--no-workload]

`--smp` measures parallel vCPUs instead (amd64 only): N sha256 jobs of 64 MiB at once (vireo.action=sha256-jobs)
in a guest with N vCPUs, for N = 1, 2 and the host's core count, Vireo against QEMU `-accel tcg,thread=multi`
(its parallel TCG), alternating; Vireo both time-shared ("vireo", VIREO_PARALLEL_VCPUS=0) and with parallel
vCPUs ("vireo-parallel", VIREO_PARALLEL_VCPUS=1, the default for 2+ vCPUs). The scaling of each is
N x (time of 1 job on 1 vCPU) / (time of N jobs on N vCPUs): N would be perfect, 1 means N vCPUs do no
more work than one. Only the in-guest time of the jobs counts.

Both modes end with the host's steadiness: each contender's slowest run over its fastest, per measurement. The
same build on a quiet 2-core host repeats within about 10 %; when the reference's own runs (QEMU's) spread by
more than STEADY_SPREAD, the host was busy under the run and its ratios say more about the neighbours than about
the engines, which the report says in as many words.

    .venv/bin/python bench/software_cpu.py --smp [--runs 3]

`--pipe` runs one job -- `dd | sha256sum`, whose two ends the guest's scheduler puts on different vCPUs when it
has two -- on 1 and 2 vCPUs. Its "scaling" is the speed-up the second vCPU gives that one job (time on 1 vCPU
over time on 2): QEMU's MTTCG runs the pipe's ends at once, and every wake-up of the reader is an IPI, so this
measures the cost of IPIs and halts between vCPUs, which `--smp`'s independent jobs hardly use.

    .venv/bin/python bench/software_cpu.py --pipe [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "out"
MARKER = b"VIREO-BOOT-OK"
MEMORY_MIB = 256
STEADY_SPREAD = 1.25     # slowest / fastest run of one contender and measurement, above which the host was busy
sys.path.insert(0, str(ROOT))

from bench.bytecode import ensure_bytecode  # noqa: E402


def timed(cmd: list[str], timeout: float) -> tuple[float | None, float, bytes, float | None]:
    """Run cmd; return (seconds to the marker, seconds to exit, output, seconds to VIREO-BENCH-START-REQUESTED
    (vireo-service: the service is up and the VM defined) or None)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = bytearray()
    marker_at = requested_at = None
    assert proc.stdout is not None
    while True:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        out += chunk
        if requested_at is None and b"VIREO-BENCH-START-REQUESTED" in out:
            requested_at = time.monotonic() - start
        if marker_at is None and MARKER in out:
            marker_at = time.monotonic() - start
        if time.monotonic() - start > timeout:
            proc.kill()
            break
    proc.wait()
    return marker_at, time.monotonic() - start, bytes(out), requested_at


def vireo(kernel: Path, initrd: Path) -> Callable[[str], list[str]]:
    def cmd(action: str) -> list[str]:
        return [sys.executable, "main.py", "run", "--kernel", str(kernel), "--initrd", str(initrd), "--append",
                f"console=ttyS0 vireo.action={action}", "--accel", "software", "--serial", "stdio",
                "--memory", str(MEMORY_MIB), "--timeout", "300"]
    return cmd


SERVICE_CLIENT = r"""
import sys, threading, time
from core.config import BootConfig, VmConfig
from core.connect import connect_local
from core.host import VmState
kernel, initrd, append, memory = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host = connect_local()
info = host.define(VmConfig(name="bench", memory_mib=memory, accel="software",
                            boot=BootConfig(kernel=kernel, initrd=initrd, cmdline=append)))
out = sys.stdout.buffer
lock = threading.Lock()
def copy(data):
    with lock:
        out.write(data)
        out.flush()
copy(b"VIREO-BENCH-START-REQUESTED\n")   # bench(): what starting the service and defining took
host.start(info.uuid)
copy(host.subscribe_serial(info.uuid, copy))
deadline = time.monotonic() + 300
while host.get(info.uuid).state.active and time.monotonic() < deadline:
    time.sleep(0.05)
host.close()
"""


def vireo_service(kernel: Path, initrd: Path, sandbox: Path) -> Callable[[str], list[str]]:
    """The client above in `sandbox`'s environment (run_sandboxed() sets it and kills what it leaves)."""
    def cmd(action: str) -> list[str]:
        return ["env", f"XDG_RUNTIME_DIR={sandbox / 'rt'}", f"XDG_CONFIG_HOME={sandbox / 'config'}",
                f"XDG_DATA_HOME={sandbox / 'data'}", sys.executable, "-c", SERVICE_CLIENT, str(kernel), str(initrd),
                f"console=ttyS0 vireo.action={action}", str(MEMORY_MIB)]
    return cmd


def reset_sandbox(sandbox: Path) -> None:
    """Kill every process started with the sandbox's runtime directory (service, VM processes) and empty it."""
    marker = f"XDG_RUNTIME_DIR={sandbox / 'rt'}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue
    shutil.rmtree(sandbox, ignore_errors=True)
    for sub in ("rt", "config", "data"):
        (sandbox / sub).mkdir(parents=True, mode=0o700)


def qemu(binary: str, kernel: Path, initrd: Path, machine: list[str]) -> Callable[[str], list[str]]:
    def cmd(action: str) -> list[str]:
        return [binary, "-accel", "tcg", *machine, "-m", str(MEMORY_MIB), "-nographic", "-no-reboot",
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", f"console=ttyS0 vireo.action={action}"]
    return cmd


def unpack_vmlinux(bzimage: Path, into: Path) -> Path:
    """The bzImage's payload, decompressed on the host (core/boot/linux.py): an ELF vmlinux with a PVH note."""
    from core.boot.linux import decompress_payload, parse_bzimage
    data = bzimage.read_bytes()
    hdr = parse_bzimage(data, bzimage.name)
    pm = data[hdr.setup_size:hdr.setup_size + hdr.protected_mode_size]
    fmt, vmlinux = decompress_payload(pm[hdr.payload_offset:hdr.payload_offset + hdr.payload_length], bzimage.name)
    if vmlinux is None:
        raise SystemExit(f"{bzimage}: cannot unpack its {fmt} payload on this host")
    path = into / "vmlinux"
    path.write_bytes(vmlinux)
    return path


def steadiness(cells: dict[str, list[float]], reference: str | None) -> None:
    """Print each cell's spread (slowest / fastest run) and whether the reference's own runs were steady."""
    spreads = {name: max(v) / min(v) for name, v in cells.items() if len(v) >= 2 and min(v) > 0}
    if not spreads:
        return
    print("spread (slowest / fastest run): " + ", ".join(f"{k} {v:.2f}" for k, v in spreads.items()))
    ref = {k: v for k, v in spreads.items() if reference and k.startswith(reference)}
    worst = max(ref.items(), key=lambda kv: kv[1]) if ref else None
    if worst and worst[1] > STEADY_SPREAD:
        print(f"HOST NOT STEADY: {worst[0]} varied {worst[1]:.2f}x between its own runs (steady: under "
              f"{STEADY_SPREAD}); the ratios above reflect the host's load as much as the engines")
    elif worst:
        print(f"host steady: the reference's runs varied at most {worst[1]:.2f}x")


def workload_seconds(out: bytes) -> float | None:
    m = re.search(rb"VIREO-WORKLOAD-SECONDS=([0-9.]+)", out)
    return float(m.group(1)) if m else None


def bench(title: str, contenders: dict[str, Callable[[str], list[str]]], runs: int, workload: bool,
          sandbox: Path) -> None:
    print(f"== {title}", flush=True)
    results: dict[str, dict[str, list[float]]] = {name: {} for name in contenders}
    for run in range(runs):
        for name, make in contenders.items():
            reset_sandbox(sandbox)     # a cold service for vireo-service, nothing left over for the others
            marker, total, out, requested = timed(make("poweroff"), 300)
            r = results[name]
            if marker is None or b"VIREO-POWEROFF" not in out:
                tail = out[-1500:].decode(errors="replace")
                print(f"run {run + 1} {name}: no marker/power-off; last output:\n{tail}")
            if marker is not None:
                r.setdefault("marker", []).append(marker)
            r.setdefault("exit", []).append(total)
            line = f"run {run + 1} {name:<14} marker {marker and round(marker, 2)} s, exit {total:.2f} s"
            if requested is not None and marker is not None:
                line += (f" (service start + define {requested:.2f} s, start request to marker "
                         f"{marker - requested:.2f} s)")
            if workload:
                reset_sandbox(sandbox)
                _, _, out, _ = timed(make("sha256"), 600)
                w = workload_seconds(out)
                if w is not None:
                    r.setdefault("sha256", []).append(w)
                line += f", sha256 {w} s"
            print(line, flush=True)
    names = list(contenders)
    base = names[0]
    print(f"\n{'metric':<8}" + "".join(f"{n + ' (s)':>18}" for n in names)
          + "".join(f"{n + '/' + base:>24}" for n in names[1:]))
    for metric in ("marker", "exit", "sha256"):
        medians = {n: statistics.median(results[n][metric]) if results[n].get(metric) else None for n in names}
        if medians[base] is None:
            continue
        row = f"{metric:<8}" + "".join(f"{(medians[n] or float('nan')):>18.2f}" for n in names)
        row += "".join(f"{(medians[n] / medians[base] if medians[n] else float('nan')):>24.2f}" for n in names[1:])
        print(row)
    steadiness({f"{n} {m}": results[n][m] for n in names for m in ("marker", "sha256") if results[n].get(m)},
               "qemu")
    print(flush=True)


SMP_JOB_MIB = 64


def smp_cmd(contender: str, kernel: Path, initrd: Path, n: int, jobs: int) -> list[str]:
    append = f"console=ttyS0 quiet vireo.action=sha256-jobs vireo.jobs={jobs} vireo.mib={SMP_JOB_MIB}"
    if contender in ("vireo", "vireo-parallel"):
        # vireo-parallel: one unicorn instance per vCPU (VIREO_PARALLEL_VCPUS=1, docs/software-cpu.md)
        env = ["env", f"VIREO_PARALLEL_VCPUS={int(contender == 'vireo-parallel')}"]
        return [*env, sys.executable, "main.py", "run", "--kernel", str(kernel), "--initrd", str(initrd),
                "--append", append, "--accel", "software", "--serial", "stdio", "--memory", str(MEMORY_MIB),
                "--cpus", str(n), "--timeout", "300"]
    return ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-M", "pc", "-smp", str(n), "-m", str(MEMORY_MIB),
            "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]


def bench_smp(runs: int, pipe: bool = False) -> int:
    """N parallel hashing jobs on N vCPUs: Vireo's and QEMU MTTCG's scaling, side by side (see the docstring).
    `pipe`: one job (a dd | sha256sum pipeline) on 1 and 2 vCPUs instead, and the speed-up of the second vCPU."""
    import hashlib

    from tests.helpers.initrd import initrd_with_current_init
    kernel = OUT / "vmlinuz-amd64"
    base = OUT / "initramfs-amd64.cpio.gz"
    for f in (kernel, base):
        if not f.exists():
            print(f"fixture {f} missing: build it with .venv/bin/python tests/fixtures/build.py")
            return 2
    contenders = ["vireo", "vireo-parallel"] + (["qemu-mttcg"] if shutil.which("qemu-system-x86_64") else [])
    if "qemu-mttcg" not in contenders:
        print("(QEMU not installed: Vireo alone)")
    counts = [1, 2] if pipe else sorted({1, 2, os.cpu_count() or 1})
    want = hashlib.sha256(bytes(SMP_JOB_MIB << 20)).hexdigest()
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vireo-bench-") as tmp:
        initrd = initrd_with_current_init(base, Path(tmp))
        what = "one dd | sha256sum job" if pipe else "N jobs of sha256"
        print(f"== amd64 --{'pipe' if pipe else 'smp'}: {what} over {SMP_JOB_MIB} MiB on N vCPUs, N in {counts}, "
              f"host cores {os.cpu_count()}", flush=True)
        for run in range(runs):
            for n in counts:
                for c in contenders:
                    jobs = 1 if pipe else n
                    _, total, out, _ = timed(smp_cmd(c, kernel, initrd, n, jobs), 600)
                    w = workload_seconds(out)
                    sums = re.findall(rb"VIREO-SHA256-JOB=(\w+)", out)
                    ok = len(sums) == jobs and all(s.decode() == want for s in sums)
                    if w is not None and ok:
                        times.setdefault((c, n), []).append(w)
                    print(f"run {run + 1} {c:<11} N={n}: jobs {w} s, exit {total:.2f} s"
                          + ("" if ok else f" WRONG/MISSING SUMS: {[s.decode()[:12] for s in sums]}"), flush=True)
    qemu = "qemu-mttcg" in contenders
    print(f"\n{'N':<4}" + "".join(f"{c + ' jobs (s)':>24}{c + ' scaling':>24}" for c in contenders)
          + ("  vireo/qemu scaling  vireo-parallel/qemu scaling" if qemu else ""))
    for n in counts:
        row, scal = f"{n:<4}", {}
        for c in contenders:
            med = statistics.median(times[(c, n)]) if times.get((c, n)) else None
            one = statistics.median(times[(c, 1)]) if times.get((c, 1)) else None
            scal[c] = (1 if pipe else n) * one / med if med and one else None
            row += f"{(med or float('nan')):>24.2f}{(scal[c] or float('nan')):>24.2f}"
        if qemu and scal["qemu-mttcg"]:
            for c in ("vireo", "vireo-parallel"):
                row += f"{scal[c] / scal['qemu-mttcg']:>20.2f}" if scal[c] else f"{'nan':>20}"
        print(row)
    steadiness({f"{c} N={n}": v for (c, n), v in times.items()}, "qemu" if qemu else None)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--guest", choices=("i386", "amd64", "all"), default="all")
    ap.add_argument("--no-workload", action="store_true")
    ap.add_argument("--smp", action="store_true", help="parallel vCPUs: N hashing jobs on N vCPUs (amd64)")
    ap.add_argument("--pipe", action="store_true", help="one dd | sha256sum job on 1 and 2 vCPUs (amd64)")
    args = ap.parse_args()
    ensure_bytecode()
    if args.smp or args.pipe:
        return bench_smp(args.runs, pipe=args.pipe)
    needed = {"i386": ("vmlinuz-686", "initramfs-i386.cpio.gz"), "amd64": ("vmlinuz-amd64", "initramfs-amd64.cpio.gz")}
    guests = ["i386", "amd64"] if args.guest == "all" else [args.guest]
    for g in guests:
        for f in needed[g]:
            if not (OUT / f).exists():
                print(f"fixture {OUT / f} missing: build it with .venv/bin/python tests/fixtures/build.py")
                return 2
    with tempfile.TemporaryDirectory(prefix="vireo-bench-") as tmp:
        for g in guests:
            kernel, initrd = (OUT / f for f in needed[g])
            sandbox = Path(tempfile.mkdtemp(prefix="vireo-sb-"))   # short: the service's socket path
            contenders = {"vireo": vireo(kernel, initrd), "vireo-service": vireo_service(kernel, initrd, sandbox)}
            if g == "i386" and shutil.which("qemu-system-i386"):
                contenders["qemu-tcg"] = qemu("qemu-system-i386", kernel, initrd, [])
            if g == "amd64" and shutil.which("qemu-system-x86_64"):
                contenders["qemu-tcg"] = qemu("qemu-system-x86_64", kernel, initrd, ["-M", "pc"])
                contenders["qemu-tcg-pvh"] = qemu("qemu-system-x86_64", unpack_vmlinux(kernel, Path(tmp)), initrd,
                                                  ["-M", "pc"])
            if len(contenders) == 2:
                print("(QEMU not installed: Vireo alone)")
            try:
                bench(f"{g}: Debian {kernel.name} + {initrd.name}, {MEMORY_MIB} MiB, 1 CPU", contenders,
                      args.runs, not args.no_workload, sandbox)
            finally:
                reset_sandbox(sandbox)
                shutil.rmtree(sandbox, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
