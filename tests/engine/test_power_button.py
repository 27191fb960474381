"""Graceful shutdown: SIGTERM to the runner presses the ACPI power button (PM1 PWRBTN_STS + SCI); Debian's kernel
reports it through its button driver, the test guest's acpid powers off, and the runner exits 0."""
import os
import signal

from tests.helpers.runner import SHELL_PROMPT, VireoSession


def test_sigterm_presses_the_power_button_and_the_guest_powers_off(debian_kernel, busybox_initramfs):
    args = ["--kernel", debian_kernel, "--initrd", busybox_initramfs, "--append", "console=ttyS0 vireo.action=shell",
            "--accel", "software", "--timeout", "100"]
    with VireoSession(args) as session:
        session.expect(SHELL_PROMPT, 100)
        os.kill(session.proc.pid, signal.SIGTERM)
        session.expect("VIREO-POWER-BUTTON", 30)
        assert session.wait(30) == 0, session.stderr
        assert "power button" in session.stderr
