"""Test plumbing for the VNC server: a free display number, the real clients (vncdotool's `vncdo`, Debian's
`vncsnapshot`) as subprocesses, and waiting for a guest's screen to settle."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.vnc.client import VncClient
from tests.helpers.runner import REPO_ROOT, in_ci

BASE_PORT = 5900


def free_display() -> int:
    """A display number whose port (5900 + N) nothing listens on right now."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > BASE_PORT:
            return port - BASE_PORT


def vncdo(port: int, *commands: str, password: str = "", zrle: bool = False, timeout: float = 60) -> None:
    """Run vncdotool (the PyPI client) against 127.0.0.1:port; zrle asks for ZRLE instead of its default Raw."""
    target = f"127.0.0.1::{port}"
    if zrle:
        # vncdo has no option for the encoding: set its client class's preference, then run its command line.
        code = ("import sys; from vncdotool import client, command, rfb; "
                "client.VNCDoToolClient.encoding = rfb.Encoding.ZRLE; sys.argv[0] = 'vncdo'; command.vncdo()")
        argv = [sys.executable, "-c", code]
    else:
        argv = [str(Path(sys.executable).with_name("vncdo"))]
    argv += ["-s", target] + (["-p", password] if password else []) + list(commands)
    result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"vncdo {' '.join(commands)} failed: {result.stderr[-2000:]}"


def require_vncsnapshot() -> str:
    path = shutil.which("vncsnapshot")
    if path is None:
        reason = "Debian's vncsnapshot is not installed (./run-tests installs it)"
        if in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def settled_screen(port: int, quiet: float = 0.6, timeout: float = 30, password: str = "") -> np.ndarray:
    """The screen once it has not changed for `quiet` seconds (read through Vireo's own RFB client)."""
    client = VncClient.connect(("127.0.0.1", port), password=password)
    try:
        deadline = time.monotonic() + timeout
        last = client.screen()
        since = time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                pytest.fail(f"the screen on port {port} did not settle within {timeout} s", pytrace=False)
            time.sleep(0.1)
            now = client.screen()
            if now.shape != last.shape or (now != last).any():
                last, since = now, time.monotonic()
        return last
    finally:
        client.close()


def rgb(pixels: np.ndarray) -> np.ndarray:
    """0xFFRRGGBB -> (h, w, 3) uint8, as PNG files hold them."""
    return np.ascontiguousarray(pixels.view(np.uint8).reshape(*pixels.shape, 4)[..., 2::-1])


def png(path: Path | str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
