"""Direct kernel boot, whatever the kernel is: reads the files, writes the ACPI tables, recognises the kernel by
its contents (a Linux bzImage's "HdrS" header, Linux boot.rst; or a Multiboot v1 header, Multiboot 0.6.96 3.1)
and hands it to the matching loader. Every problem the user can fix comes out as a one-line BootError.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from core.boot.acpi import build_acpi_tables
from core.boot.errors import BootError
from core.boot.files import read_bounded
from core.hypervisor.base import CpuState
from core.memory import GuestMemory, GuestMemoryError

__all__ = ["BootError", "BootResult", "load_kernel"]


@dataclass
class BootResult:
    cpu_state: CpuState        # the bootstrap processor's state at the kernel's entry
    description: str           # e.g. "Linux 6.1.0-50-amd64, bzImage protocol 2.15" or "Multiboot ELF"
    rsdp_addr: int = 0


def load_kernel(memory: GuestMemory, kernel_path: str, initrd_path: str | None, cmdline: str, num_cpus: int,
                decompress_on_host: bool = False, screen_info: bytes | None = None) -> BootResult:
    """Put the kernel, initrd, command line and ACPI tables in guest memory; return the BSP's entry state."""
    # The loaders (with their ELF, x86 set-up and unpacking-cache modules) load only for a direct kernel boot:
    # `run --cdrom`, a firmware boot, never needs them, and their imports are part of its start-up.
    from core.boot.linux import boot_linux, is_bzimage
    from core.boot.multiboot import boot_multiboot, is_multiboot, multiboot_ranges
    # Neither file can be bigger than guest RAM and still boot: refuse it before reading it.
    kernel = read_bounded(kernel_path, "kernel", memory.size)
    initrd = read_bounded(initrd_path, "initrd", memory.size) if initrd_path else None
    kernel_name = os.path.basename(kernel_path) or kernel_path
    initrd_name = os.path.basename(initrd_path) if initrd_path else "initrd"
    if not kernel:
        raise BootError(f"kernel {kernel_path} is empty")
    try:
        if is_bzimage(kernel):
            rsdp = build_acpi_tables(memory, num_cpus)
            linux = boot_linux(memory, kernel, initrd, cmdline, rsdp, decompress_on_host=decompress_on_host,
                               kernel_name=kernel_name, initrd_name=initrd_name, screen_info=screen_info)
            return BootResult(linux.cpu_state, linux.description, rsdp)
        if is_multiboot(kernel):
            # The tables go where this kernel does not load (a linker may put its ELF headers just below 1 MiB).
            rsdp = build_acpi_tables(memory, num_cpus, avoid=multiboot_ranges(kernel, kernel_name))
            mb = boot_multiboot(memory, kernel, cmdline, initrd, kernel_name, initrd_name)
            return BootResult(mb.cpu_state, mb.description, rsdp)
    except GuestMemoryError as exc:
        # The loaders check sizes first; this is the backstop so a layout mistake still reads as a boot error.
        raise BootError(f"{kernel_name} does not fit in {memory.size >> 20} MiB of guest memory ({exc}); "
                        f"give more --memory") from exc
    raise BootError(f"{kernel_path} is neither a Linux bzImage nor a Multiboot kernel")
