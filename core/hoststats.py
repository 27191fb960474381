"""Facts and counters about the machine Vireo runs on, read from Linux's /proc (proc(5)) and psutil.

Host info for the main window's host rows: CPU model, logical CPUs and physical cores, memory, and whether KVM
with hardware virtualization is usable (core.hypervisor.hostcaps.kvm_status).

Per-thread CPU time, which is how a VM's CPU usage is measured: every vCPU is one host thread, and the kernel
counts the time each thread ran — guest time included for KVM — in /proc/self/task/<tid>/schedstat
(nanoseconds, proc(5) and Documentation/scheduler/sched-stats.rst) or, without schedstats, in .../stat fields
14-15 (clock ticks). Resident guest RAM comes from mincore(2) over the guest memory mapping.
"""
from __future__ import annotations

import ctypes
import os
import platform
import socket
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpu_model: str
    cpus: int              # logical CPUs: the most vCPUs that can run at once
    cores: int             # physical cores
    memory_mib: int
    kvm_usable: bool       # /dev/kvm can be opened
    kvm_hardware: bool     # ... and it is backed by VT-x/AMD-V (not, e.g., a nested emulation without it)
    kvm_reason: str        # one line: why KVM is or is not available
    system: str = ""       # "Linux 6.1.0-18-amd64"
    images_dir: str = ""   # where the service there puts new disk images (core.config.images_dir, its user's)

    @property
    def summary(self) -> str:
        kvm = "hardware KVM" if self.kvm_usable and self.kvm_hardware else "no hardware KVM"
        return (f"{self.cpu_model} · {self.cpus} CPUs ({self.cores} cores) · "
                f"{self.memory_mib / 1024:.1f} GiB · {kvm}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def kvm_facts() -> tuple[bool, bool, str]:
    """(usable, hardware, reason), as core.hypervisor.hostcaps probes /dev/kvm."""
    # Imported here: hostcaps loads the KVM ABI's ctypes structures, which clients that only need HostInfo's
    # fields (core.agent.wire) do not.
    from core.hypervisor.hostcaps import kvm_status

    status = kvm_status()
    return bool(status.usable), bool(status.hardware), str(status.reason)


def local_host_info() -> HostInfo:
    import psutil

    from core.config import images_dir

    usable, hardware, reason = kvm_facts()
    cpus = os.cpu_count() or 1
    return HostInfo(
        hostname=socket.gethostname(),
        cpu_model=cpu_model(),
        cpus=cpus,
        cores=psutil.cpu_count(logical=False) or cpus,
        memory_mib=psutil.virtual_memory().total // (1024 * 1024),
        kvm_usable=usable, kvm_hardware=hardware, kvm_reason=reason,
        system=f"{platform.system()} {platform.release()}",
        images_dir=str(images_dir()),
    )


def thread_cpu_seconds(native_id: int, pid: int | None = None) -> float | None:
    """CPU time (user + system, guest time included) of one thread of this process (or of process `pid`); None
    once it has exited."""
    task = f"/proc/{'self' if pid is None else pid}/task/{native_id}"
    try:
        with open(f"{task}/schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"{task}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK   # utime, stime: fields 14 and 15 overall
    except (ValueError, IndexError):
        return None


# The C library the interpreter is linked with, by name: find_library("c") runs `ldconfig -p` (a process).
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.mincore.restype = ctypes.c_int


def resident_bytes(address: int, length: int) -> int | None:
    """How much of the mapping [address, address+length) is in RAM (mincore(2)); None if it is not mapped.

    mincore only inspects page tables, so calling it on a mapping that another thread has just unmapped
    fails with ENOMEM rather than touching memory."""
    if length <= 0 or address % _PAGE:
        return None
    pages = (length + _PAGE - 1) // _PAGE
    vec = ctypes.create_string_buffer(pages)
    if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), vec) != 0:
        return None
    raw = vec.raw
    # Bit 0 of each byte says resident; the other bits are reserved (mincore(2)).
    return sum(raw.count(bytes([b])) for b in set(raw) if b & 1) * _PAGE
