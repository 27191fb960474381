"""Debian's amd64 kernel on the software CPU draws on our VGA (issue 5's done-means), checked through the
runner's `--screendump`:

* `console=ttyS0 console=tty0`: vgacon prints the boot messages into the 0xB8000 text buffer and, as /dev/console
  is tty0 (the last console= wins), /init's VIREO-BOOT-OK marker goes to the screen only, not to the serial
  port; the screendump's .txt shows both, and its PNG is the 720x400 of mode 3's 9x16 cells;
* with the bochs DRM driver loaded (init.sh's `display` action), the guest reports the framebuffer mode of fb0
  and the screendump (taken after power-off, the last frame) has exactly that size, with fbcon's text on it.
"""
from __future__ import annotations

import re

import numpy as np
from PIL import Image

from tests.helpers.runner import run_vireo


def _boot(kernel, initrd, cmdline: str, dump, timeout: float = 150) -> tuple[int, str, str]:
    return run_vireo(["--kernel", kernel, "--initrd", initrd, "--append", cmdline, "--accel", "software",
                      "--serial", "stdio", "--timeout", str(int(timeout - 20)), "--screendump", dump],
                     timeout=timeout)


def test_text_console_shows_boot_messages_and_marker(debian_kernel, busybox_initramfs, tmp_path):
    dump = tmp_path / "screen.png"
    status, out, err = _boot(debian_kernel, busybox_initramfs, "console=ttyS0 console=tty0 vireo.action=poweroff",
                             dump)
    assert status == 0, err + out[-3000:]
    # The serial port got the kernel's messages but not /init's output: that went to tty0 only.
    assert "Run /init as init process" in out
    assert "VIREO-BOOT-OK" not in out
    text = (tmp_path / "screen.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 25, text
    assert "VIREO-BOOT-OK" in lines and "VIREO-POWEROFF" in lines, text
    assert any(re.match(r"\[\s*\d+\.\d+\] Run /init as init process$", line) for line in lines), text
    assert any("reboot: Power down" in line for line in lines), text
    image = Image.open(dump)
    assert image.size == (720, 400)
    # The marker's row has light grey (vgacon's default attribute 0x07) glyph pixels on black.
    row = lines.index("VIREO-BOOT-OK")
    pixels = np.asarray(image.convert("RGB"))[row * 16:(row + 1) * 16, :13 * 9]
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert colours == {(0, 0, 0), (170, 170, 170)}


def test_bochs_drm_framebuffer_mode_and_frame_size(debian_kernel, busybox_initramfs, tmp_path):
    dump = tmp_path / "fb.png"
    status, out, err = _boot(debian_kernel, busybox_initramfs, "console=tty0 console=ttyS0 vireo.action=display",
                             dump, timeout=200)
    assert status == 0, err + out[-3000:]
    assert "fb0: bochs-drmdrmfb frame buffer device" in out, out[-3000:]
    width, height = map(int, re.search(r"VIREO-FB-MODE=(\d+)x(\d+)", out).groups())
    virtual = tuple(map(int, re.search(r"VIREO-FB-VIRTUAL-SIZE=(\d+),(\d+)", out).groups()))
    bpp = int(re.search(r"VIREO-FB-BPP=(\d+)", out).group(1))
    assert (width, height) == (1024, 768)      # bochs-drm's preferred mode without EDID
    assert virtual[0] == width and virtual[1] >= height
    assert bpp == 32
    assert not (tmp_path / "fb.txt").exists()   # a graphics mode has no text to dump
    image = np.asarray(Image.open(dump).convert("RGB"))
    assert image.shape == (height, width, 3)
    # fbcon drew its console: light grey text on black, 128x48 cells of 8x16, the report lines among them.
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    found = {tuple(c): n for c, n in zip(colours.tolist(), counts.tolist(), strict=True)}
    assert set(found) <= {(0, 0, 0), (170, 170, 170), (255, 255, 255), (85, 85, 85)}, found
    assert found.get((170, 170, 170), 0) > 20_000, found        # dozens of lines of text


def test_display_window_runs_the_guest_and_dumps_its_screen(debian_kernel, busybox_initramfs, tmp_path):
    # --display window: the same run with the console window open (offscreen without a display); the window
    # closes by itself when the guest powers off, and the exit status is the guest's.
    dump = tmp_path / "window.png"
    status, out, err = run_vireo(["--kernel", debian_kernel, "--initrd", busybox_initramfs, "--append",
                                  "console=ttyS0 console=tty0 vireo.action=poweroff", "--accel", "software",
                                  "--serial", "stdio", "--timeout", "100", "--display", "window",
                                  "--screendump", dump], timeout=130)
    assert status == 0, err + out[-3000:]
    assert "VIREO-POWEROFF" in (tmp_path / "window.txt").read_text(encoding="utf-8")
