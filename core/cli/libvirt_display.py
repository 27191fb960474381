"""`vireo domdisplay NAME --connect LIBVIRT-URI`: where a VNC viewer reaches a libvirt domain's graphics, as virsh
domdisplay prints it (vnc://127.0.0.1:5900), from the live domain XML (core/host/libvirt_host.py)."""
from __future__ import annotations

from core.cli.connect import CommandFailed
from core.host.api import VmInfo, VmState
from core.host.libvirt_host import display_uri
from core.runner import EXIT_OK


def domdisplay(info: VmInfo) -> int:
    if info.state not in (VmState.RUNNING, VmState.PAUSED):
        raise CommandFailed(f"{info.name} is not running: its graphics exist while it runs; start it with "
                            f"`vireo start {info.name} --connect …`")
    if not info.config.display.vnc:
        raise CommandFailed(f"{info.name} has no VNC graphics: add <graphics type='vnc'/> to its domain XML "
                            "(virsh edit)")
    print(display_uri(info.config.display.vnc), flush=True)
    return EXIT_OK
