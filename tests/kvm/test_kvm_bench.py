"""bench/exits.py keeps working: a short run of its Vireo side, and its marker timing."""
from __future__ import annotations

import importlib.util

import pytest

from core.hypervisor.hostcaps import kvm_status
from tests.guests.build import guest_path
from tests.helpers.runner import REPO_ROOT

_spec = importlib.util.spec_from_file_location("bench_exits", REPO_ROOT / "bench" / "exits.py")
exits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exits)


def test_marker_clock_times_each_phase_from_first_bytes() -> None:
    clock = exits.MarkerClock()
    clock.feed(b"bench: n=5\nbench: st", now=1.0)
    clock.feed(b"art\n", now=2.0)
    t = 3.0
    for _, marker in exits.PHASES:    # each marker arrives in two pieces, 0.5 s apart
        clock.feed(marker.encode()[:3], now=t)
        clock.feed(marker.encode()[3:] + b"\r\n", now=t + 0.5)
        t += 2.0
    assert clock.done.is_set()
    # start ends at 2.0; out-done spans 3.0-3.5; in-done 5.0-5.5; ...
    assert clock.phase_seconds() == {name: (1.0 if i == 0 else 1.5) for i, (name, _) in enumerate(exits.PHASES)}


@pytest.mark.skipif(not kvm_status().usable, reason="KVM not usable here")
def test_vireo_side_runs_every_phase() -> None:
    phases = exits.run_vireo(guest_path("bench_exits"), 300, 64)
    assert set(phases) == {name for name, _ in exits.PHASES}
    assert all(0 < seconds < 5 for seconds in phases.values())
