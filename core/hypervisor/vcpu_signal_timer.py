"""A vCPU's local APIC timer, delivered to that vCPU's own thread by the host kernel (a POSIX timer and a signal).

The local APIC timer (Intel SDM vol. 3, 10.5.4 "APIC Timer", 10.5.4.1 "TSC-Deadline Mode") is a Linux guest's
tick: every vCPU arms it again at each tick, 250 times a second. On the shared TimerQueue thread each expiry
wakes that thread, which then needs the interpreter lock and a core. With every core running a vCPU, it preempts
one, and at a tick -- the guest's per-CPU ticks are aligned -- both vCPUs, the timer thread and their interrupt
acknowledges contend for the interpreter lock at once. That is the main cost of parallel vCPUs over one
(docs/software-cpu.md, session 11).

A vCPU with a unicorn instance of its own (one vCPU per instance: a 1-vCPU VM, or the parallel engine) does
without that thread, as KVM's in-kernel LAPIC timer (an hrtimer) does:

* The deadline is a POSIX timer (timer_create(2), CLOCK_MONOTONIC, absolute) whose signal goes to the vCPU's
  thread only (SIGEV_THREAD_ID). Its handler is a few native instructions (HANDLER_STUB): QEMU's cpu_interrupt,
  the VIRQ request set atomically and the running block chain sent back to QEMU's loop. No interpreter, no lock,
  no other thread.
* The CPU then takes the interrupt when EFLAGS.IF allows, and the interrupt acknowledge (Python, on the vCPU's
  thread) polls first: a timer whose deadline has passed fires there, so its vector is in the IRR when the model
  picks the highest one. The model also polls whenever it is asked whether an interrupt is pending (the vCPU
  loop, before a slice and while halted), so an expiry whose signal came while the thread was outside emulation
  is not lost.
* A halted vCPU sleeps until its deadline (a timed wait) instead of waiting for a wake-up.

The signal is SIGRTMIN+5 with SA_RESTART, so system calls the vCPU's thread makes restart after it (KVM's kick
is SIGRTMIN+4, core/hypervisor/kvm_vcpu.py).
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable
from ctypes import c_int, c_long, c_uint64, c_void_p

from core.hypervisor import uc_internals as ui
from core.hypervisor.host_signals import SA_RESTART, SA_SIGINFO, install_handler
from core.timers import now_ns

TIMER_SIGNAL = signal.SIGRTMIN + 5
ENV_VAR = "VIREO_VCPU_TIMER"          # 0: every local APIC timer on the TimerQueue thread (for comparison)

# void handler(int sig, siginfo_t *info, void *context); info->si_value (offset 24) is the vCPU's block
# {&interrupt_request, &icount_decr.high}, zeroed when the vCPU is closed (a signal may still be pending then):
#     mov rax, [rsi+24]; test rax, rax; jz done
#     mov rcx, [rax]; test rcx, rcx; jz done
#     lock or dword [rcx], CPU_INTERRUPT_VIRQ
#     mov rcx, [rax+8]; mov word [rcx], -1
#   done: ret
HANDLER_STUB = bytes.fromhex("488b4618 4885c0 7418 488b08 4885c9 7410 f08109"
                             + ui.CPU_INTERRUPT_VIRQ.to_bytes(4, "little").hex() + "488b4808 66c701ffff c3")

_CLOCK_MONOTONIC = 1
_TIMER_ABSTIME = 1
_SIGEV_THREAD_ID = 4


class _Sigevent(ctypes.Structure):
    # glibc's struct sigevent on x86-64 (64 bytes): sigev_value, signo, notify, then the thread id of
    # SIGEV_THREAD_ID at offset 16 (sigev_notify_thread_id).
    _fields_ = [("sigev_value", c_void_p), ("sigev_signo", c_int), ("sigev_notify", c_int), ("tid", c_int),
                ("_pad", c_int * 11)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", c_long), ("tv_nsec", c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


# The system calls themselves, not glibc's wrappers: the kernel's timer id is what uc_native_tick's WRMSR stub
# passes to timer_settime (x86-64 numbers, arch/x86/entry/syscalls/syscall_64.tbl).
SYS_TIMER_CREATE, SYS_TIMER_SETTIME, SYS_TIMER_DELETE = 222, 223, 226
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = c_long
_retired: list[ctypes.Array] = []


def wanted() -> bool:
    """Whether vCPUs with an instance of their own take their local APIC timer this way (VIREO_VCPU_TIMER=0:
    no, the TimerQueue thread serves it, as it does for time-shared vCPUs)."""
    return os.environ.get(ENV_VAR, "").strip() != "0"


class VcpuSignalTimer:
    """The TimerQueue Timer's interface (arm, cancel, armed, deadline) for one vCPU's local APIC timer, fired on
    that vCPU's thread: by `poll`, prompted by the signal (see the module docstring)."""

    def __init__(self, callback: Callable[[], None], handler: int, interrupt_request: int, icount_decr_high: int,
                 on_foreign_arm: Callable[[], None]) -> None:
        self.callback = callback
        self.deadline: int | None = None
        self._on_foreign_arm = on_foreign_arm
        self._block = (c_uint64 * 2)(interrupt_request, icount_decr_high)
        self._handler = handler
        self.kernel_id: int | None = None      # the kernel's timer id
        self.thread_id: int | None = None
        self._lock = threading.Lock()            # the kernel timer's creation, deletion and setting
        self._spec = _Itimerspec()

    # -- the TimerQueue Timer interface ------------------------------------------------------------------------
    @property
    def armed(self) -> bool:
        return self.deadline is not None

    def arm(self, deadline_ns: int) -> None:
        self.deadline = deadline_ns
        self._set(deadline_ns)
        if threading.get_native_id() != self.thread_id:
            self._on_foreign_arm()               # a halted vCPU sleeps until the deadline it knew of

    def arm_after(self, delay_ns: int) -> None:
        self.arm(now_ns() + max(0, delay_ns))

    def cancel(self) -> None:
        if self.deadline is not None:
            self.deadline = None
            self._set(0)                         # a signal for a cancelled deadline would be a spurious interrupt

    def adopt(self, deadline_ns: int | None) -> None:
        """The deadline the kernel timer was already set to natively (uc_native_tick's WRMSR stub), or None when
        that deadline has fired: only this side's record of it changes."""
        self.deadline = deadline_ns

    # -- the vCPU's side ---------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Fire the timer if its deadline has passed (any thread; the model's lock makes it once)."""
        if self.due():
            self.deadline = None
            self.callback()

    def due(self) -> bool:
        deadline = self.deadline
        return deadline is not None and deadline <= now_ns()

    def seconds_left(self) -> float | None:
        """Until the deadline (0 when passed), or None when not armed: how long a halted vCPU may sleep."""
        deadline = self.deadline
        return None if deadline is None else max(0, deadline - now_ns()) / 1e9

    def bind_to_current_thread(self) -> None:
        """Send the expiry signal to the calling thread (the vCPU's), from now on."""
        tid = threading.get_native_id()
        if tid == self.thread_id:
            return
        try:
            install_handler(TIMER_SIGNAL, self._handler, SA_SIGINFO | SA_RESTART)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot install the vCPU timer signal's handler: {exc.strerror}") from None
        event = _Sigevent()
        event.sigev_value = ctypes.addressof(self._block)
        event.sigev_signo = TIMER_SIGNAL
        event.sigev_notify = _SIGEV_THREAD_ID
        event.tid = tid
        timer_id = c_int()
        with self._lock:
            self._delete_locked()
            if _libc.syscall(c_long(SYS_TIMER_CREATE), c_int(_CLOCK_MONOTONIC), ctypes.byref(event),
                             ctypes.byref(timer_id)) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot create the vCPU's local APIC timer: {os.strerror(err)}")
            self.kernel_id = timer_id.value
            self.thread_id = tid
        if self.deadline is not None:
            self._set(self.deadline)

    def close(self) -> None:
        """Delete the kernel timer and point the handler nowhere, before the unicorn instance goes away."""
        with self._lock:
            self._delete_locked()
            self.thread_id = None
            self._block[0] = self._block[1] = 0
            _retired.append(self._block)         # a signal already queued may still read it

    def _delete_locked(self) -> None:
        if self.kernel_id is not None:
            _libc.syscall(c_long(SYS_TIMER_DELETE), c_int(self.kernel_id))
            self.kernel_id = None

    def _set(self, deadline_ns: int) -> None:
        with self._lock:
            if self.kernel_id is None:
                return                           # bound later; bind_to_current_thread sets the deadline then
            spec = self._spec
            # 0 disarms; a deadline already past fires at once (1 ns: an absolute time of 0 would disarm).
            deadline_ns = max(deadline_ns, 1) if deadline_ns else 0
            spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
            if _libc.syscall(c_long(SYS_TIMER_SETTIME), c_int(self.kernel_id), c_int(_TIMER_ABSTIME),
                             ctypes.byref(spec), c_void_p(0)) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot set the vCPU's local APIC timer: {os.strerror(err)}")
