"""Remote-host benchmark (issue 7), over a loopback SSH connection to a real sshd (tests/helpers/remote.py):

  * connect time: first connection to a host that never saw Vireo (engine upload), then a reconnect;
  * control-call round trip through the agent (median, p99), next to the same call on a LocalHost in-process;
  * console frames per second for a changing 1024x768x32 screen over the link, next to the same screen locally.

The console over the link is measured with the agent's own wire path — core.agent.console.encode_frame on the
remote side (a short program run in the installed engine over a second channel of the same SSH connection),
protocol frames through sshd, the bridge-less channel, FrameAssembler and its flow-control acknowledgements on
this side — fed by a VGA whose 1024x768x32 framebuffer changes every frame. (A guest cannot drive that test:
every write to the Bochs linear framebuffer is an MMIO exit here, so a guest repaints a few times a second.)
Two pictures: a solid colour changing each frame (compresses to almost nothing) and noise with one pixel in 128
changing each frame (incompressible, every frame dirty across the whole screen).

Needs root-or-own-user sshd like the tests. Run: .venv/bin/python bench/remote.py [--seconds S] [--calls N]
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from core.agent.console import FrameAssembler, encode_frame  # noqa: E402
from core.protocol import exact_reader, read_message  # noqa: E402

# Runs on the remote side: a Vga in 1024x768x32 whose framebuffer changes every frame, rendered by the engine's
# Renderer and sent with the agent's console encoding; at most 2 frames unacknowledged (as the agent).
STREAMER = r'''
import os, select, sys, time
import numpy as np
from core.agent.console import MAX_IN_FLIGHT, encode_frame
from core.protocol import encode
from core.devices.vga import Vga
from core.display.renderer import Renderer
kind, seconds = sys.argv[1], float(sys.argv[2])
vga = Vga()
for index, value in ((3, 32), (1, 1024), (2, 768), (4, 0x41)):
    vga.vbe.write_reg(index, value)
pixels = vga.vbe.array[:1024 * 768 * 4].view("u4").reshape(768, 1024)
if kind == "noise":
    pixels[:, :] = np.random.default_rng(1).integers(0, 2**32, size=(768, 1024), dtype=np.uint32)
renderer = Renderer(vga)
out = os.fdopen(1, "wb", buffering=0)
in_flight, seq, end = 0, 0, time.monotonic() + seconds
while time.monotonic() < end:
    while in_flight >= MAX_IN_FLIGHT or select.select([0], [], [], 0)[0]:
        if not select.select([0], [], [], 1)[0]:
            continue
        data = os.read(0, 4096)
        if not data:
            sys.exit(0)
        in_flight = max(0, in_flight - data.count(b"A"))
    seq += 1
    if kind == "noise":
        pixels.reshape(-1)[seq % 128::128] = seq * 0x00010307
    else:
        pixels[:, :] = seq * 0x00010203
    vga.regs.generation += 1
    frame = renderer.render()
    if frame is None:
        continue
    in_flight += 1
    out.write(b"".join(encode(h, p) for h, p in encode_frame("bench", seq, frame.pixels, frame.dirty, frame.mode)))
out.write(encode({"t": "done"}))
'''


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def local_console_fps(kind: str, seconds: float) -> tuple[float, float]:
    """(frames/s of Renderer alone, frames/s of Renderer + encode + FrameAssembler) in this process."""
    from core.devices.vga import Vga
    from core.display.renderer import Renderer

    vga = Vga()
    for index, value in ((3, 32), (1, 1024), (2, 768), (4, 0x41)):
        vga.vbe.write_reg(index, value)
    pixels = vga.vbe.array[:1024 * 768 * 4].view("u4").reshape(768, 1024)
    if kind == "noise":
        pixels[:, :] = np.random.default_rng(1).integers(0, 2**32, size=(768, 1024), dtype=np.uint32)
    renderer = Renderer(vga)
    results = []
    for through_codec in (False, True):
        assembler = FrameAssembler()
        frames, seq, end = 0, 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < end:
            seq += 1
            if kind == "noise":
                pixels.reshape(-1)[seq % 128::128] = seq * 0x00010307
            else:
                pixels[:, :] = seq * 0x00010203
            vga.regs.generation += 1
            frame = renderer.render()
            if frame is None:
                continue
            if through_codec:
                for header, payload in encode_frame("bench", seq, frame.pixels, frame.dirty, frame.mode):
                    assembler.apply(header, payload)
                assembler.render()
            frames += 1
        results.append(frames / (time.perf_counter() - start))
    return results[0], results[1]


def remote_console_fps(host, kind: str, seconds: float) -> tuple[float, float]:
    """(frames/s, compressed KiB per frame) for the streamer over a second channel of host's SSH connection."""
    from core.agent.install import bridge_command

    report = host.report
    command = bridge_command(host.target.python, report).replace(
        "-m core.agent.bridge", f"-c {shlex.quote(STREAMER)} {kind} {seconds}")
    chan = host._transport.open_session()
    chan.exec_command(command)
    recv = exact_reader(chan.recv)
    assembler = FrameAssembler(ack=lambda n: chan.sendall(b"A" * n))
    start = None
    while True:
        header, payload = read_message(recv)
        if header["t"] == "done":
            break
        if start is None:
            start = time.perf_counter()
        if assembler.apply(header, payload) is not None:
            assembler.render()
    elapsed = time.perf_counter() - start
    chan.close()
    return assembler.frames / elapsed, assembler.bytes / max(1, assembler.frames) / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0, help="per console measurement")
    ap.add_argument("--calls", type=int, default=2000, help="control calls timed")
    args = ap.parse_args()
    import pytest

    from core.config import ConfigStore
    from core.host import LocalHost
    from core.remote.host import RemoteHost
    from core.remote.ssh import parse_uri
    from tests.helpers.remote import REPO_PYTHON, SshServer

    class Trust:
        def confirm_host_key(self, *a) -> bool:
            return True

        def secret(self, *a, **k):
            return None

    workdir = Path(tempfile.mkdtemp(prefix="vireo-bench-remote-"))
    os.environ["XDG_CACHE_HOME"] = str(workdir / "client-cache")
    server = SshServer(workdir)
    try:
        try:
            server.start()
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            print(f"cannot start sshd: {exc}")
            return 1
        target = parse_uri(server.uri(python=REPO_PYTHON))
        target.identity = str(server.user_key)
        target.known_hosts = server.known_hosts
        first = RemoteHost(target, Trust())
        first.connect()
        t1, up = first.timing, first.report
        first.close()
        host = RemoteHost(target, Trust())
        host.connect()
        t2 = host.timing
        print(f"connect, first (uploads {up.upload_bytes / 1e6:.2f} MB: {', '.join(up.uploaded)}): "
              f"{t1.total * 1000:.0f} ms (ssh {t1.ssh * 1000:.0f}, probe+upload {t1.install * 1000:.0f}, "
              f"agent start {t1.agent * 1000:.0f})")
        print(f"connect, again: {t2.total * 1000:.0f} ms (ssh {t2.ssh * 1000:.0f}, probe {t2.install * 1000:.0f}, "
              f"agent {t2.agent * 1000:.0f})")

        rtts = [host.ping() for _ in range(args.calls)]
        listing = []
        for _ in range(200):
            t0 = time.perf_counter()
            host._call("list")
            listing.append(time.perf_counter() - t0)
        local = LocalHost(ConfigStore(workdir / "local-vms"), runtime_dir=str(workdir / "local-runtime"))
        local_rtts = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            local.list_vms()
            local_rtts.append(time.perf_counter() - t0)
        print(f"control call round trip over SSH (ping, {args.calls}): median {statistics.median(rtts) * 1e3:.3f} ms,"
              f" p99 {percentile(rtts, 99) * 1e3:.3f} ms; list: median {statistics.median(listing) * 1e3:.3f} ms")
        print(f"same request locally (LocalHost.list_vms in-process): median "
              f"{statistics.median(local_rtts) * 1e6:.1f} µs, p99 {percentile(local_rtts, 99) * 1e6:.1f} µs")

        for kind in ("solid", "noise"):
            render_fps, codec_fps = local_console_fps(kind, args.seconds)
            fps, kib = remote_console_fps(host, kind, args.seconds)
            print(f"console 1024x768x32, {kind:5}: over SSH {fps:6.1f} frames/s ({kib:7.1f} KiB/frame, "
                  f"{fps * kib / 1024:6.1f} MiB/s); locally {render_fps:6.1f} frames/s "
                  f"(render only), {codec_fps:6.1f} frames/s (render + encode + decode, no link)")
        host.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
