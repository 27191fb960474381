"""What kvm_pvm cannot run: the small guests in PVM_CANNOT still fail on it (tests/accel/test_guests.py runs every
small guest on KVM and on the software CPU, skipping these on kvm_pvm; tests/kvm/test_kvm_guests_qemu.py shows
their output under QEMU)."""
from __future__ import annotations

import pytest

from core.hypervisor.hostcaps import is_kvm_pvm
from tests.guests.build import GUESTS
from tests.helpers.accel import PVM_CANNOT, require_accel, run_guest


def test_kvm_pvm_limits_still_hold() -> None:
    """If kvm_pvm learns to run these guests, PVM_CANNOT should shrink: this notices."""
    require_accel("kvm")
    if not is_kvm_pvm():
        pytest.skip("hardware KVM: nothing to check")
    for name in PVM_CANNOT:
        code, out, _ = run_guest(name, "kvm")
        assert out != list(GUESTS[name].expected), f"{name} now runs on kvm_pvm: drop it from PVM_CANNOT"
