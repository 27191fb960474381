"""Screenshots for the docs: the main window, the New VM wizard and the VM window's tabs, rendered with the real
widgets (offscreen unless a display is set) from demo definitions in a throw-away XDG directory.

When the engine can boot and the test fixtures exist (tests/fixtures/out), one demo VM really boots the Debian
kernel and busybox initramfs so the console, the sparkline and the Performance graphs show live data.
Usage: .venv/bin/python -m app.tools.screenshots [OUTDIR]   (default docs/screenshots)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="vireo-shots-")
    os.environ["XDG_CONFIG_HOME"] = f"{tmp}/config"
    os.environ["XDG_DATA_HOME"] = f"{tmp}/data"
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="vireo-rt-")  # a throw-away service, exits when idle
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6.QtCore import QSettings
    from PyQt6.QtWidgets import QApplication

    from app.icons import app_icon
    from app.ui.main_window import MainWindow, local_bridge
    from core.config import BootConfig, ConfigStore, DiskConfig, VmConfig
    from core.host import HostError, VmState

    app = QApplication(["vireo"])
    app.setWindowIcon(app_icon())

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    def wait(predicate, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not predicate() and time.monotonic() < deadline:
            pump(0.1)

    bridge = local_bridge()
    wait(lambda: bridge.facts is not None, 30)
    try:
        engine = bridge.accel_preview("auto")[0]     # the backend `auto` picks here, "" when none can run
    except HostError:
        engine = ""
    store = ConfigStore()
    fixtures = REPO / "tests" / "fixtures" / "out"
    kernel, initrd = fixtures / "vmlinuz-amd64", fixtures / "initramfs-amd64.cpio.gz"
    live = kernel.exists() and initrd.exists() and bool(engine)
    demo = VmConfig(name="debian-busybox", memory_mib=256,
                    boot=BootConfig(kernel=str(kernel if live else "/boot/vmlinuz"),
                                    initrd=str(initrd if live else "/boot/initrd.img"),
                                    cmdline="console=ttyS0 quiet vireo.action=shell"),
                    notes="Debian's kernel with the test suite's busybox initramfs")
    store.save(demo)
    store.save(VmConfig(name="homelab-router", memory_mib=128, boot=BootConfig(kernel="/boot/vmlinuz-router")))
    store.save(VmConfig(name="ubuntu-server", memory_mib=2048, vcpus=2,
                        boot=BootConfig(kernel="/boot/vmlinuz", cmdline="root=/dev/vda console=ttyS0"),
                        disks=[DiskConfig(path=f"{tmp}/data/vireo/images/ubuntu-server.img")]))
    (store.directory / "0badf11e-0000-4000-8000-000000000000.json").write_text('{"name": "old", "memory_mib": "1G"}')
    bridge.reload()
    wait(lambda: bridge.info(demo.uuid) is not None, 30)
    window = MainWindow([bridge], QSettings(f"{tmp}/settings.ini", QSettings.Format.IniFormat))
    window.resize(900, 460)
    window.show()
    pump(0.3)
    vm_window = window.open_vm((bridge, demo.uuid))
    vm_window.resize(760, 520)
    term = vm_window.console.terminal
    if live:
        bridge.lifecycle("start", demo.uuid)
        deadline = time.monotonic() + 240
        while "vireo:~#" not in term.text() and time.monotonic() < deadline:
            pump(0.2)
        for line in ("uname -sr", "cat /proc/cpuinfo | grep -m1 'model name'", "free -m"):
            bridge.send_serial(demo.uuid, line.encode() + b"\r")
            pump(1.0)
        pump(8)
    else:
        term.feed(b"[    0.000000] Linux version 6.1.0 (debian-kernel@lists.debian.org)\r\n"
                  b"VIREO-BOOT-OK\r\n\x1b[1;32mvireo\x1b[0m:~# uname -sr\r\nLinux 6.1.0\r\nvireo:~# ")
    window.select_vm(demo.uuid)
    pump(0.3)
    window.grab().save(str(out / "main-window.png"))
    vm_window.show_tab("serial")      # the commands typed above (the VGA screen: app.tools.console_screenshots)
    pump(0.2)
    vm_window.grab().save(str(out / "vm-console.png"))
    vm_window.show_tab("details")
    vm_window.details.pages.setCurrentRow(3)
    pump(0.2)
    vm_window.grab().save(str(out / "vm-details.png"))
    vm_window.show_tab("performance")
    pump(0.5)
    vm_window.grab().save(str(out / "vm-performance.png"))
    window.new_vm()
    wizard = window.wizard
    pump(0.2)
    wizard.grab().save(str(out / "wizard-1-source.png"))
    wizard.source_page.kernel.setChecked(True)       # the demo's kernel, booted directly
    wizard.next()
    wizard.boot_page.kernel.setText(str(kernel if live else "/boot/vmlinuz"))
    wizard.next()
    wizard.next()
    wizard.storage_page.create.setChecked(True)
    wizard.next()
    wizard.finish_page.name.setText("new-lab-vm")
    pump(0.2)
    wizard.grab().save(str(out / "wizard-5-finish.png"))
    wizard.reject()
    if live and bridge.info(demo.uuid).state.active:
        bridge.lifecycle("force_off", demo.uuid)
        wait(lambda: not bridge.info(demo.uuid).state.active, 30)
    state = bridge.info(demo.uuid).state
    print(f"screenshots in {out} ({'live VM' if live else 'defined VMs only'}); demo VM state {state.value}")
    bridge.shutdown(close_host=True)
    return 0 if not live or state == VmState.SHUTOFF else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
