"""The LocalHost a Vireo service runs (core/host/local.py), adapted to hosts the client does not control: it says
plainly when the software CPU is missing there (unicorn 2.1.4 absent or another version), and it works without
psutil (host facts from /proc alone, proc(5)).
"""
from __future__ import annotations

import os
import socket

from core.host.api import HostError
from core.host.local import LocalHost
from core.hoststats import HostInfo


def software_cpu_available() -> tuple[bool, str]:
    try:
        import unicorn
    except ImportError:
        return False, ("the software CPU needs the Python module unicorn 2.1.4, which this host's python3 lacks "
                       "(pip install unicorn==2.1.4): only KVM is available")
    version = getattr(unicorn, "__version__", "")
    if not str(version).startswith("2.1.4"):
        return False, f"the software CPU needs unicorn 2.1.4, this host has {version}: only KVM is available"
    return True, ""


def host_info_without_psutil() -> HostInfo:
    """The host facts from /proc alone (proc(5): cpuinfo, meminfo) when psutil is not installed."""
    import platform

    from core.hoststats import cpu_model, kvm_facts
    usable, hardware, reason = kvm_facts()
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                phys = value
            elif key == "core id":
                core = value
                cores.add((phys, core))
    memory_kib = 0
    with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    cpus = os.cpu_count() or 1
    return HostInfo(hostname=socket.gethostname(), cpu_model=cpu_model(), cpus=cpus, cores=len(cores) or cpus,
                    memory_mib=memory_kib // 1024, kvm_usable=usable, kvm_hardware=hardware, kvm_reason=reason,
                    system=f"{platform.system()} {platform.release()}")


class AgentHost(LocalHost):
    """LocalHost as the agent runs it: says plainly when the software CPU is missing here, and works without
    psutil."""

    def info(self) -> HostInfo:
        if self._info is None:
            try:
                return super().info()
            except ImportError:
                self._info = host_info_without_psutil()
        return self._info

    def accel_preview(self, requested: str) -> tuple[str, str]:
        accel, why = super().accel_preview(requested)
        if accel == "software":
            ok, reason = software_cpu_available()
            if not ok:
                raise HostError(reason)
        return accel, why
