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


@pytest.mark.parametrize("graphics, uri_host, spec, shown", [
    ("<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'/>", "", "127.0.0.1:1",
     "vnc://127.0.0.1:5901"),
    ("<graphics type='vnc' port='5905'><listen type='address' address='192.168.1.9'/></graphics>", "", "192.168.1.9:5",
     "vnc://192.168.1.9:5905"),
    ("<graphics type='vnc' port='5900' listen='0.0.0.0'/>", "kvm1.example", "kvm1.example:0", "vnc://kvm1.example:5900"),
    ("<graphics type='vnc' port='5900' listen='0.0.0.0'/>", "", "127.0.0.1:0", "vnc://127.0.0.1:5900"),
    ("<graphics type='vnc' socket='/run/user/1000/vnc.sock'/>", "", "unix:/run/user/1000/vnc.sock",
     "vnc+unix:///run/user/1000/vnc.sock"),
    ("<graphics type='vnc' port='-1' autoport='yes'/>", "", "", ""),       # defined, not running: no port yet
    ("<graphics type='spice' port='5930'/>", "", "", ""),
])
def test_vnc_address_from_domain_xml(graphics, uri_host, spec, shown):
    import xml.etree.ElementTree as ET

    from core.host.libvirt_host import display_uri, vnc_spec
    xml = ET.fromstring(f"<domain><devices>{graphics}</devices></domain>")
    assert vnc_spec(xml, uri_host) == spec
    if spec:
        assert display_uri(spec) == shown
