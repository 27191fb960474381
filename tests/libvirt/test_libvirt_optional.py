"""libvirt-python is optional: without it a libvirt URI gives one line naming how to install it, and the URI kinds
are told apart without it (core/host/libvirt_host.py)."""
from __future__ import annotations

import sys

import pytest

from core.host.api import HostError
from core.host.libvirt_host import LibvirtHost, is_libvirt_uri


def test_missing_binding_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)       # import libvirt now raises ImportError
    with pytest.raises(HostError) as caught:
        LibvirtHost("qemu:///session")
    message = str(caught.value)
    assert "\n" not in message
    assert "libvirt-python" in message and "apt-get install libvirt-dev" in message
    assert "requirements-libvirt.txt" in message


@pytest.mark.parametrize("uri, libvirt", [
    ("qemu:///session", True), ("qemu:///system", True), ("qemu+ssh://root@host/system", True),
    ("test:///default", True), ("QEMU+tcp://h/system", True),
    ("ssh://me@host", False), ("ssh://me@host:2222", False), ("me@host", False), ("", False),
])
def test_uri_kinds(uri, libvirt):
    assert is_libvirt_uri(uri) is libvirt
