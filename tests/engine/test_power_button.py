"""Graceful shutdown: SIGTERM to the runner presses the ACPI power button (PM1 PWRBTN_STS + SCI); Debian's kernel
reports it through its button driver, the test guest's acpid powers off, and the runner exits 0."""
import ctypes
import os
import signal

from tests.helpers.runner import SHELL_PROMPT, VireoSession

SYS_TGKILL = 234    # x86-64


def _press_and_expect_power_off(session: VireoSession) -> None:
    session.expect("VIREO-POWER-BUTTON", 30)
    assert session.wait(30) == 0, session.stderr
    assert "power button" in session.stderr


def test_sigterm_presses_the_power_button_and_the_guest_powers_off(debian_kernel, busybox_initramfs):
    args = ["--kernel", debian_kernel, "--initrd", busybox_initramfs, "--append", "console=ttyS0 vireo.action=shell",
            "--accel", "software", "--timeout", "100"]
    with VireoSession(args) as session:
        session.expect(SHELL_PROMPT, 100)
        os.kill(session.proc.pid, signal.SIGTERM)
        _press_and_expect_power_off(session)


def test_sigterm_taken_by_another_thread_still_presses_the_button(debian_kernel, busybox_initramfs):
    """The kernel may hand a process's SIGTERM to any thread that does not block it (CI saw one in about twenty
    runs); CPython runs the handler in the main thread only, so the runner must not sit in one long wait. tgkill
    to a thread other than the main one makes that choice every time."""
    args = ["--kernel", debian_kernel, "--initrd", busybox_initramfs, "--append", "console=ttyS0 vireo.action=shell",
            "--accel", "software", "--timeout", "100"]
    with VireoSession(args) as session:
        session.expect(SHELL_PROMPT, 100)
        pid = session.proc.pid
        others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
        assert others, "the runner has no thread but its main one"
        libc = ctypes.CDLL(None, use_errno=True)
        # The first SIGTERM presses the button, a second would force the power off: one signal, one thread.
        assert libc.syscall(SYS_TGKILL, pid, others[0], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        _press_and_expect_power_off(session)
