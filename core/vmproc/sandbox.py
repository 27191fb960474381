"""The VM process's sandbox, in the manner of Firecracker's jailer: once the machine is built and started, the
process sets PR_SET_NO_NEW_PRIVS (prctl(2): no set-uid or file-capability gain through exec, the precondition of an
unprivileged seccomp filter) and loads a seccomp-bpf filter (seccomp(2), libseccomp through `pyseccomp`) on every
thread at once (SECCOMP_FILTER_FLAG_TSYNC) that allows only the system calls listed below.

Everything else fails with EPERM instead of killing the process: the guest never makes host system calls itself,
so a refused call can only come from the engine's own code, where it becomes a Python PermissionError that the
device model's error handling turns into "VM crashed: ... Operation not permitted" (or an error reply to a
control call) instead of a process dead of SIGSYS with no reason given. clone3 answers ENOSYS, so that glibc falls
back to clone(2), whose flags a filter can see: clone is allowed for new threads (CLONE_THREAD) only, which keeps
fork, vfork and every exec out. The list was measured with `bench/syscalls.py` (strace -f -c attached to running VM
processes on the software CPU and KVM, with a qcow2 disk, passt networking, VNC, serial traffic, save/restore and
snapshots) and is documented in docs/security.md.

VIREO_SANDBOX=0 in the VM process's environment turns the sandbox off (for debugging with strace or gdb).
"""
from __future__ import annotations

import errno
import logging
import os

log = logging.getLogger("vireo.sandbox")

CLONE_THREAD = 0x00010000

# Each allowed system call, with why the VM process needs it after start-up.
ALLOWED: dict[str, str] = {
    # Memory: Python's allocator, numpy buffers, guest RAM already mapped, the shared console's mapping.
    "mbind": "OpenBLAS memory placement hints when numpy is first imported (qcow2 snapshots)",
    "get_mempolicy": "OpenBLAS", "brk": "the C heap", "mmap": "allocator arenas, thread stacks",
    "munmap": "allocator arenas",
    "mremap": "growing buffers", "mprotect": "thread stack guard pages", "madvise": "returning freed memory",
    # Threads and synchronisation.
    "clone": "new threads only (CLONE_THREAD required, see CLONE_RULE)", "futex": "locks and condition variables",
    "set_robust_list": "glibc at thread start", "rseq": "glibc at thread start",
    "sched_yield": "lock hand-offs", "sched_getaffinity": "os.cpu_count in libraries",
    "gettid": "thread ids (vCPU thread ids for the controller)", "getpid": "logging, signals to itself",
    "tgkill": "Python's signal wake-up, raise()", "exit": "a thread ends", "exit_group": "the process ends",
    "restart_syscall": "an interrupted sleep resumes",
    # Signals: SIGTERM powers the machine off; the software CPU's and KVM's vCPU kicks.
    "rt_sigaction": "installing handlers", "rt_sigprocmask": "blocking signals around critical sections",
    "rt_sigreturn": "returning from a handler", "sigaltstack": "Python's faulthandler", "kill": "signalling itself",
    # Time.
    "clock_gettime": "monotonic deadlines (vDSO fallback)", "clock_nanosleep": "time.sleep",
    "nanosleep": "time.sleep in libraries", "clock_getres": "time module", "gettimeofday": "vDSO fallback",
    "timer_create": "the software vCPUs' local APIC timers (vcpu_signal_timer)", "timer_settime": "the same",
    "timer_delete": "the same",
    # Descriptors already open: disks, sockets, the KVM fds, pipes, the log.
    "read": "sockets, pipes, eventfds", "write": "sockets, pipes, the log", "readv": "sockets", "writev": "sockets",
    "pread64": "disk images", "pwrite64": "disk images", "preadv": "disk images", "pwritev": "disk images",
    "preadv2": "disk images (Python's os.preadv)", "pwritev2": "disk images (Python's os.pwritev)",
    "lseek": "disk images, files", "fsync": "guest flushes", "fdatasync": "guest flushes",
    "fallocate": "qcow2 cluster allocation, discard", "ftruncate": "qcow2 growth, the shared console",
    "close": "closing connections and files", "dup": "socket.makefile, subprocess plumbing",
    "dup2": "library plumbing", "dup3": "library plumbing", "fcntl": "non-blocking mode, CLOEXEC",
    "ioctl": "KVM_RUN and the other KVM calls; FIONREAD, TCGETS", "fstat": "open files",
    "newfstatat": "stat() of files (save, lazy imports)", "statx": "stat() in newer glibc",
    "fadvise64": "file reads", "fchmod": "the shared console file's mode when it is made anew",
    "flock": "disk image locks", "getdents64": "directory listings of lazy imports",
    "statfs": "disk space checks", "fstatfs": "disk space checks",
    # Waiting.
    "poll": "select.poll", "ppoll": "select.poll", "select": "select.select", "pselect6": "select.select",
    "epoll_create1": "selectors", "epoll_ctl": "selectors", "epoll_wait": "selectors", "epoll_pwait": "selectors",
    "eventfd2": "KVM irqfd/ioeventfd, wake-ups", "pipe2": "wake-up pipes",
    # Sockets: controllers connect to the VM's listening socket; VNC clients to its bound port; passt's stream.
    "accept": "controller connections", "accept4": "controller and VNC connections",
    "recvfrom": "sockets", "sendto": "sockets", "recvmsg": "sockets", "sendmsg": "sockets (descriptors to a "
    "restarted passt's launcher)", "shutdown": "ending a connection", "getsockopt": "SO_PEERCRED, SO_ERROR",
    "setsockopt": "timeouts, TCP_NODELAY", "getsockname": "VNC address", "getpeername": "peer addresses",
    "socketpair": "a restarted passt's socket", "listen": "already-bound sockets", "socket": "the controller "
    "socket's family check by libraries", "connect": "the passt launcher's socket",
    # Files the VM itself creates after start-up: a saved state, the serial log's reopen, lazy imports.
    "openat": "save files, lazy imports (seccomp cannot see paths: docs/security.md)", "unlink": "its socket at exit",
    "unlinkat": "its socket at exit", "rename": "atomic save", "renameat": "atomic save", "renameat2": "atomic save",
    "readlink": "path resolution in imports", "readlinkat": "path resolution", "getcwd": "path resolution",
    "access": "imports", "faccessat": "imports", "faccessat2": "imports",
    # Information about itself and the host, for stats.
    "getrusage": "CPU time for stats", "times": "CPU time", "sysinfo": "memory figures", "uname": "platform module",
    "getuid": "library checks", "geteuid": "library checks", "getgid": "library checks", "getegid": "library checks",
    "getppid": "library checks", "getrandom": "random numbers (MACs, VNC challenges)", "prlimit64": "resource "
    "checks", "sched_getparam": "thread priorities", "sched_getscheduler": "thread priorities",
    "prctl": "thread names (PR_SET_NAME)", "arch_prctl": "thread-local storage", "membarrier": "glibc",
    "wait4": "reaping a passt that ended", "waitid": "reaping a passt that ended",
    "pidfd_open": "watching a restarted passt", "pidfd_send_signal": "stopping a restarted passt",
}

# Calls answered with an errno rather than EPERM, so that the caller takes its fallback.
FALLBACK: dict[str, int] = {"clone3": errno.ENOSYS}


def disabled() -> bool:
    return os.environ.get("VIREO_SANDBOX", "1") == "0"


def apply() -> str:
    """Set no-new-privileges and load the filter on every thread; one line saying what was done. Raises
    SandboxError when the filter cannot be loaded (the VM must not run unconfined by accident)."""
    if disabled():
        log.warning("sandbox off (VIREO_SANDBOX=0)")
        return "off (VIREO_SANDBOX=0)"
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:        # OSError: libseccomp2 missing
        raise SandboxError(f"the seccomp library is not available ({exc}): install libseccomp2 and pyseccomp, "
                           f"or set VIREO_SANDBOX=0") from None
    try:
        filt = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
        filt.set_attr(seccomp.Attr.CTL_NNP, 1)
        filt.set_attr(seccomp.Attr.CTL_TSYNC, 1)
        allowed = 0
        for name in ALLOWED:
            try:
                if name == "clone":
                    filt.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
                else:
                    filt.add_rule(seccomp.ALLOW, name)
            except (ValueError, RuntimeError, OSError):
                continue                          # not a call on this architecture
            allowed += 1
        for name, err in FALLBACK.items():
            try:
                filt.add_rule(seccomp.ERRNO(err), name)
            except (ValueError, RuntimeError, OSError):
                pass
        filt.load()
    except Exception as exc:
        raise SandboxError(f"cannot load the seccomp filter: {exc}; set VIREO_SANDBOX=0 to run without it") from None
    line = f"seccomp: {allowed} system calls allowed, others fail with EPERM; no new privileges"
    log.info("sandbox %s", line)
    return line


class SandboxError(RuntimeError):
    """The sandbox could not be set up; the message is one line."""


def probe() -> str:
    """The test hook behind the `sandbox_probe` control call (tests/vmproc/test_sandbox.py): try to execve
    /bin/true from the running VM process. Honoured only with VIREO_TEST_HOOKS=1 in its environment. Sandboxed,
    the answer is the refusal; unconfined, the VM process is replaced by /bin/true and the controller sees it die."""
    if os.environ.get("VIREO_TEST_HOOKS") != "1":
        return "sandbox_probe is a test hook: the VM process needs VIREO_TEST_HOOKS=1"
    try:
        os.execv("/bin/true", ["true"])
    except OSError as exc:
        return f"execve refused by the sandbox: {exc.strerror} (errno {exc.errno})"
    return "execve returned"                     # not reached: a successful execve does not return
