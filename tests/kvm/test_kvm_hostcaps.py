"""Host capability probing: /dev/kvm missing, not a KVM device, kvm_pvm vs hardware."""
from __future__ import annotations

import os

import pytest

from core.hypervisor import hostcaps


def test_missing_device(tmp_path) -> None:
    st = hostcaps.kvm_status(str(tmp_path / "kvm"))
    assert not st.usable and not st.hardware
    assert "does not exist" in st.reason


def test_not_a_kvm_device() -> None:
    st = hostcaps.kvm_status("/dev/null")
    assert not st.usable
    assert "does not answer KVM ioctls" in st.reason


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm on this host")
def test_this_host() -> None:
    st = hostcaps.kvm_status()
    assert st.usable, st.reason
    if os.path.exists("/sys/module/kvm_pvm"):
        assert not st.hardware
        assert st.reason == hostcaps.PVM_REASON
    else:
        assert st.hardware
        assert "hardware virtualization" in st.reason
