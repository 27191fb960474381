"""The one private libvirtd of a test session (tests/helpers/libvirtd.py), with the TCG test domain defined."""
from __future__ import annotations

import pytest

from tests.helpers.libvirtd import PrivateLibvirtd, require_libvirt
from tests.helpers.service import local_service  # noqa: F401  (the GUI tests: the manager is its client)


@pytest.fixture(scope="session")
def libvirtd_session(debian_kernel, busybox_initramfs):
    require_libvirt()
    daemon = PrivateLibvirtd(debian_kernel, busybox_initramfs)
    try:
        daemon.define()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def libvirtd(libvirtd_session):
    """The session's daemon, with no domain left running after each test (one that failed half-way would
    otherwise fail the next test's start)."""
    yield libvirtd_session
    libvirtd_session.destroy_running()
