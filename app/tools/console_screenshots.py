"""Screenshots of the graphical console for the docs: the VM window's Console tab on Debian's VGA text console,
and the bochs DRM framebuffer console (1024x768) saved through the tab's "Save screenshot" path.

Boots the tests' Debian kernel and busybox initramfs (tests/fixtures/build.py) on the software CPU through the
real manager pieces (LocalHost, HostBridge, VmWindow), types commands into the console view as key events, and
writes docs/screenshots/vm-vga-console.png and docs/screenshots/vga-drm-console.png.

Run: QT_QPA_PLATFORM=offscreen .venv/bin/python -m app.tools.console_screenshots [OUT_DIR]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "out"


def _wait(app, predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"console screenshots: timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def _settle(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    kernel, initrd = FIXTURES / "vmlinuz-amd64", FIXTURES / "initramfs-amd64.cpio.gz"
    if not kernel.exists() or not initrd.exists():
        print("console screenshots: build the guest first: .venv/bin/python tests/fixtures/build.py", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="vireo-shots-")
    os.environ["XDG_CONFIG_HOME"] = f"{tmp}/config"
    os.environ["XDG_DATA_HOME"] = f"{tmp}/data"
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vireo-rt-")  # a throw-away service, exits when idle
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PyQt6.QtCore import QSettings
    from PyQt6.QtWidgets import QApplication

    from app.ui.main_window import local_bridge
    from app.ui.vm_window import VmWindow
    from core.config import BootConfig, ConfigStore, VmConfig
    from core.host import VmState

    app = QApplication.instance() or QApplication(["vireo"])
    app.setApplicationName("vireo")
    bridge = local_bridge()
    settings = QSettings(f"{tmp}/settings.ini", QSettings.Format.IniFormat)

    def boot(name: str, cmdline: str) -> tuple[VmWindow, object, str]:
        cfg = VmConfig(name=name, memory_mib=256, accel="software",
                       boot=BootConfig(kernel=str(kernel), initrd=str(initrd), cmdline=cmdline))
        ConfigStore().save(cfg)
        bridge.reload()
        _wait(app, lambda: bridge.info(cfg.uuid) is not None, 30, "the new definition")
        window = VmWindow(bridge, cfg.uuid, settings)
        window.show()
        bridge.lifecycle("start", cfg.uuid)
        _wait(app, lambda: window.display is not None and window.display.view.sink is not None, 60, "the console")
        return window, window.display, cfg.uuid

    def serial_shows(window: VmWindow, marker: str) -> bool:
        return marker in window.console.terminal.text()

    def wait_for_shell(window: VmWindow, tab) -> None:
        """The shell on tty1 reads keys once it answers one typed through the console, on ttyS0 (the screen's
        text is pixels here). Typing starts after init said VIREO-BOOT-OK: keys typed before Linux's i8042 driver
        starts make it give up on the controller."""
        _wait(app, lambda: serial_shows(window, "VIREO-BOOT-OK"), 120, "init on the serial console")
        deadline = time.monotonic() + 90
        while not serial_shows(window, "VIREO-SHELL-READY"):
            if time.monotonic() > deadline:
                raise SystemExit("console screenshots: timed out waiting for the shell on tty1")
            # Again every few seconds: keys that reach the VT before the shell starts may be flushed.
            tab.view.type_text("echo VIREO-SHELL''-READY > /dev/ttyS0; clear\n")
            end = time.monotonic() + 5
            while time.monotonic() < end and not serial_shows(window, "VIREO-SHELL-READY"):
                _settle(app, 0.1)

    def type_commands(tab, commands: list[str]) -> None:
        for command in commands:
            tab.view.type_text(command + "\n")
            _wait(app, lambda: tab.view.typing_pending == 0, 30, "typing")
            _settle(app, 1.0)

    try:
        # 1. The VGA text console (vgacon): boot messages, then a shell on tty1.
        window, tab, uuid = boot("debian-vga", "console=tty0 console=ttyS0 vireo.action=shell vireo.console=tty1")
        wait_for_shell(window, tab)
        type_commands(tab, ["uname -a", "cat /proc/cmdline", "ls /sys/class/graphics /dev/dri 2>&1 | head -3"])
        window.resize(940, 640)
        _settle(app, 0.5)
        window.grab().save(str(out / "vm-vga-console.png"))
        bridge.lifecycle("force_off", uuid)
        _wait(app, lambda: bridge.info(uuid).state == VmState.SHUTOFF, 30, "power-off")
        window.close()

        # 2. The bochs DRM driver's framebuffer console (fbcon on fb0), a shell on it.
        window, tab, uuid = boot("debian-drm", "console=tty0 console=ttyS0 vireo.action=display vireo.then=shell "
                                               "vireo.console=tty1")
        _wait(app, lambda: tab.view.frame is not None and tab.view.frame.mode.startswith("vbe"), 120,
              "the DRM framebuffer")
        wait_for_shell(window, tab)
        type_commands(tab, ["cat /sys/class/graphics/fb0/name /sys/class/graphics/fb0/modes", "uname -r"])
        _settle(app, 1.0)
        tab.save_screenshot(str(out / "vga-drm-console.png"))
        bridge.lifecycle("force_off", uuid)
        _wait(app, lambda: bridge.info(uuid).state == VmState.SHUTOFF, 30, "power-off")
        window.close()
    finally:
        bridge.shutdown(close_host=True)
    print(f"wrote {out / 'vm-vga-console.png'} and {out / 'vga-drm-console.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
