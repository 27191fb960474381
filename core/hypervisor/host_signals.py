"""Signal handlers installed with glibc's sigaction(2), for the vCPU threads' signals: KVM's kick (kvm_vcpu) and
the software CPU's local APIC timer (vcpu_signal_timer). Python's `signal` module cannot serve them: it runs
handlers in the main thread only, later, and the point of both is to act on the very thread that receives them.
"""
from __future__ import annotations

import ctypes
import os
import threading

SA_SIGINFO = 4
SA_RESTART = 0x10000000


class Sigaction(ctypes.Structure):
    # glibc's struct sigaction on x86-64: handler, a 1024-bit sigset_t, flags, restorer (glibc fills it in).
    _fields_ = [("sa_handler", ctypes.c_void_p), ("sa_mask", ctypes.c_ulong * 16), ("sa_flags", ctypes.c_int),
                ("sa_restorer", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()
_installed: set[int] = set()


def install_handler(signum: int, handler: int, flags: int) -> None:
    """Make the native function at `handler` the handler of `signum` (process-wide), once per process: later
    calls for the same signal do nothing. OSError when refused."""
    with _lock:
        if signum in _installed:
            return
        act = Sigaction()
        act.sa_handler = handler
        act.sa_flags = flags
        if _libc.sigaction(signum, ctypes.byref(act), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        _installed.add(signum)
