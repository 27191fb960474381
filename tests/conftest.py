"""Shared test set-up for every folder under tests/: the environment the engine and Qt need, and the guest
fixtures built by tests/fixtures/build.py.

Fixtures (paths under tests/fixtures/out/): `debian_kernel`, `busybox_initramfs` (amd64), `debian_kernel_686`,
`initramfs_686` (i386). A missing fixture skips the test with the reason, except under CI=true, where it fails:
CI builds every fixture, so an absent one is a broken set-up, not a reason to pass quietly. `vireo_session` is a
factory of VireoSession objects that are killed after the test.

Helpers that tests import live in tests/helpers/ (`from tests.helpers.runner import run_vireo, VireoSession`);
tests/ and each test folder are packages, so test modules are named by their path and basenames may repeat.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers.runner import FIXTURES_OUT, VireoSession, require_fixture

# Kernels the engine unpacks on the host are cached per user; the tests keep theirs beside the fixtures, out of the
# user's own cache (and shared by every runner subprocess, so each test kernel is unpacked once).
os.environ.setdefault("VIREO_CACHE_DIR", str(FIXTURES_OUT / "engine-cache"))

# Qt needs a platform; without a display the GUI tests render offscreen (./run-tests sets the same).
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """Debian's amd64 kernel (bzImage) from linux-image-amd64."""
    return require_fixture(FIXTURES_OUT / "vmlinuz-amd64", "Debian amd64 kernel")


@pytest.fixture(scope="session")
def busybox_initramfs() -> Path:
    """The amd64 busybox initramfs (gzip newc cpio) whose /init obeys vireo.action=."""
    return require_fixture(FIXTURES_OUT / "initramfs-amd64.cpio.gz", "amd64 busybox initramfs")


@pytest.fixture(scope="session")
def debian_kernel_686() -> Path:
    """Debian's 32-bit kernel (bzImage) from linux-image-686."""
    return require_fixture(FIXTURES_OUT / "vmlinuz-686", "Debian i386 (686) kernel")


@pytest.fixture(scope="session")
def initramfs_686() -> Path:
    """The i386 busybox initramfs with the 686 kernel's modules."""
    return require_fixture(FIXTURES_OUT / "initramfs-i386.cpio.gz", "i386 busybox initramfs")


@pytest.fixture
def vireo_session():
    """Factory fixture: vireo_session(args) starts a VireoSession that is killed after the test."""
    sessions: list[VireoSession] = []

    def start(args: list[str]) -> VireoSession:
        session = VireoSession(args)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


@pytest.fixture(autouse=True)
def _no_dialog_helper_outlives_its_test():
    """A GUI test's helper still waiting for a dialog that never opened must not answer the next test's."""
    yield
    dialogs = sys.modules.get("tests.helpers.dialogs")
    if dialogs is not None:
        dialogs.forget_pending()
