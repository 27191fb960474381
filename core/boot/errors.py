"""The one exception the boot loaders raise: a kernel, initrd or command line Vireo cannot boot.

Its message is a single line that names the file and says what is wrong and what to do, because the runner and
the GUI show it to the user as is.
"""
from __future__ import annotations


class BootError(Exception):
    """A kernel/initrd/cmdline problem the user can fix; str() is one line naming the file."""


def mib(n: int) -> str:
    """A byte count as whole MiB, rounded up, for messages (a 64.2 MiB kernel needs 65, not 64)."""
    return f"{(n + (1 << 20) - 1) >> 20} MiB"
