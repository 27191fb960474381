"""What LocalHost refuses with one line before it spawns a VM process (core/host/local.py): a definition that is not
valid or does not fit this host, one the engine cannot build a machine from (core.machine.MachineConfig.from_vm),
a firmware boot on an engine that declares no firmware boot (HostCapabilities.firmware_boot, from
core.machine.ENGINE_FEATURES), and a file it names — kernel, initrd, disk, ISO, firmware image — that is missing
or unreadable. The VM process checks again for itself; this is so the user hears it before a process is made."""
from __future__ import annotations

import os

from core.config import ConfigError, VmConfig
from core.host.api import HostError
from core.hoststats import HostInfo


def check_startable(cfg: VmConfig, info: HostInfo, firmware_boot: bool) -> None:
    """HostError (one line naming the field or file and what to do) when `cfg` cannot start on this host."""
    from core.machine import ConfigError as MachineConfigError
    from core.machine import MachineConfig

    try:
        cfg.validate()
        cfg.validate_for_host(info.memory_mib, info.cpus)
        machine = MachineConfig.from_vm(cfg, cfg.accel)
    except (ConfigError, MachineConfigError) as exc:
        raise HostError(str(exc)) from None
    if not machine.direct_kernel_boot and not firmware_boot:
        raise HostError(f"{cfg.name} boots through firmware ({', '.join(cfg.boot_devices())}), which this host's "
                        "engine cannot do yet: give it a kernel to boot directly (Boot Options), or update Vireo "
                        "on this host")
    files = [("kernel", cfg.boot.kernel), ("initrd", cfg.boot.initrd), ("firmware", cfg.boot.firmware)]
    files += [(f"disk {i}", d.path) for i, d in enumerate(cfg.disks)]
    files += [(f"CD-ROM {i + 1} image", c.path) for i, c in enumerate(cfg.cdroms)]
    for what, path in files:
        if path and not os.path.isfile(path):
            raise HostError(f"{what} {path}: no such file")
        if path and not os.access(path, os.R_OK):
            raise HostError(f"{what} {path}: not readable")
