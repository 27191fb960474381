"""Boot-once across a reboot the guest asks for, through the whole host path (issue 12): a definition with
boot.cd_once, as the wizard's "Install from ISO" writes it, started by LocalHost in a real VM process on the software
CPU with Debian's SeaBIOS.

libvirt and virt-manager users expect the install boot to last for the install run only: virt-install boots the
installer, and the guest's own reboot at the end of the install comes up from the disk (QEMU's -boot once=d, which
the engine's MachineConfig.boot_once follows: fw_cfg "bootorder" is rewritten at the first reset; the host clears
the saved flag as it starts the VM, so a later start follows the order too).

The guest here is the tests' GRUB ISO; at its menu the test types, on the VM's console input (the PS/2 keyboard),
`c` and `reboot` at GRUB's prompt. GRUB jumps to the BIOS's reset vector and SeaBIOS resets the machine through
port 0xCF9, then runs int3 with no IDT, relying on the reset to come first. The lasting order is the blank disk
alone, so the reboot ends at SeaBIOS's "No bootable device", with the VM running. The screen is read from the
console's frames as any viewer gets them (tests/helpers/screen_text.py). Either bug fails it: the CD booted
again shows GRUB's menu, and a reset that lost to the int3's triple fault leaves the VM crashed."""
from __future__ import annotations

import json
import time
from pathlib import Path

from core.config import BootConfig, CdromConfig, DiskConfig, VmConfig
from core.host import LocalHost, VmState
from core.keymap import text_events
from core.vmproc.wire import vm_paths
from tests.helpers import boot_media as bm
from tests.helpers.screen_text import frame_text
from tests.host.test_host_boot import host, runtime_dir  # noqa: F401  (fixtures)

TIMEOUT = 90


def _wait_for_screen(vms: LocalHost, uuid: str, text: str) -> list[str]:
    deadline = time.monotonic() + TIMEOUT
    lines: list[str] = []
    with vms.console(uuid).frames as frames:        # one reader (and one descriptor) for the whole wait
        while time.monotonic() < deadline:
            info = vms.get(uuid)
            assert info.state == VmState.RUNNING, (info.state, info.reason, lines)
            lines = frame_text(frames.render(force=True))
            if any(text in line for line in lines):
                return lines
            time.sleep(0.1)
    raise AssertionError(f"{text!r} not on the screen after {TIMEOUT} s:\n" + "\n".join(lines)
                         + "\nthe VM process's log ends:\n" + _log_tail(vms, uuid))


def _log_tail(vms: LocalHost, uuid: str) -> str:
    try:
        return Path(vm_paths(vms.runtime_dir, uuid).log).read_text(errors="replace")[-3000:]
    except OSError as exc:
        return f"({exc})"


def _type(vms: LocalHost, uuid: str, text: str) -> None:
    """Key by key, as a person types (GRUB reads the BIOS keyboard buffer, which holds 15 keys)."""
    keys = vms.input_sink(uuid)
    events, skipped = text_events(text)
    assert not skipped
    for event in events:
        keys.key_event(event)
        time.sleep(0.02)


def test_a_reboot_by_the_guest_after_the_install_boot_boots_the_disk(host: LocalHost, tmp_path: Path) -> None:  # noqa: F811
    disk = bm.blank_disk(tmp_path / "disk.raw")
    cfg = VmConfig(name="install", memory_mib=256, accel="software", cdroms=[CdromConfig(str(bm.grub_iso()))],
                   disks=[DiskConfig(path=str(disk), bus="ide")], boot=BootConfig(order=["disk"], cd_once=True))
    uuid = host.define(cfg).uuid
    host.start(uuid)
    assert json.loads(host.store.path_for(uuid).read_text())["boot"]["cd_once"] is False

    _wait_for_screen(host, uuid, bm.LINUX_TITLES[0])                 # the install boot: GRUB from the CD
    _type(host, uuid, "c")
    _wait_for_screen(host, uuid, "grub>")
    _type(host, uuid, "reboot\r")
    screen = _wait_for_screen(host, uuid, bm.NO_BOOTABLE_DEVICE)   # the lasting order: the blank disk
    assert not any(bm.LINUX_TITLES[0] in line for line in screen), screen
    time.sleep(1)
    assert host.get(uuid).state == VmState.RUNNING, host.get(uuid).reason
