"""Machine lifecycle through its supervisor: resets the guest asks for, resets after triple faults, pause/resume."""
import time

import pytest

from core.hypervisor.hostcaps import kvm_status
from core.machine import Machine, MachineConfig, MachineState
from tests.guests.build import guest_path

pytestmark = pytest.mark.skipif(not kvm_status().usable, reason="needs a usable /dev/kvm")


def test_triple_fault_with_reset_policy_keeps_rebooting_until_powered_off():
    out = bytearray()
    m = Machine(MachineConfig(kernel=str(guest_path("triplefault")), accel="kvm", memory_mib=32,
                              on_triple_fault="reset"), serial_output=out.extend)
    m.start()
    deadline = time.monotonic() + 20
    while m.reset_count < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.reset_count >= 4, f"stuck after {m.reset_count} resets"
    assert out.count(b"triplefault: loading an empty IDT") >= 4
    m.power_off()
    assert m.wait(10) == MachineState.SHUTOFF


def test_pause_stops_the_guest_and_resume_continues_it():
    out = bytearray()
    m = Machine(MachineConfig(kernel=str(guest_path("triplefault")), accel="kvm", memory_mib=32,
                              on_triple_fault="reset"), serial_output=out.extend)
    states = []
    m.add_state_listener(lambda _m, state, _r: states.append(state))
    m.start()
    time.sleep(0.2)
    m.pause()
    assert m.state == MachineState.PAUSED
    frozen = (m.reset_count, len(out))
    time.sleep(0.3)
    assert (m.reset_count, len(out)) == frozen          # nothing runs while paused
    m.resume()
    assert m.state == MachineState.RUNNING
    deadline = time.monotonic() + 10
    while m.reset_count == frozen[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.reset_count > frozen[0]
    m.power_off()
    assert m.wait(10) == MachineState.SHUTOFF
    assert states == [MachineState.RUNNING, MachineState.PAUSED, MachineState.RUNNING, MachineState.SHUTOFF]
