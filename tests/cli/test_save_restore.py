"""`vireo save NAME [FILE]`, `vireo start` resuming the managed save, and `vireo restore FILE` (core/cli/commands.py
over the Host API: core/host/saved.py in the service, core/vmproc for the VM process), on the local service and
over SSH. The guest is tests/guests/counter.s, whose serial log shows the counter carrying on."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from tests.cli.conftest import Vireo, one_error_line
from tests.guests.build import guest_path


def _counters(log: Path) -> list[int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [int(n) for n in re.findall(r"counter: (\d+)", text)]


def _wait_counter(log: Path, above: int, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _counters(log)
        if got and got[-1] > above:
            return got
        time.sleep(0.05)
    raise AssertionError(f"the counter did not pass {above}: {_counters(log)[-5:]}")


def test_save_start_and_restore(vireo: Vireo, tmp_path: Path) -> None:
    name = f"saver-{vireo.kind}"
    log = tmp_path / "serial.log"
    definition = tmp_path / f"{name}.json"
    definition.write_text(json.dumps({"name": name, "memory_mib": 32, "accel": "software",
                                      "boot": {"kernel": str(guest_path("counter"))}, "display": {"type": "none"},
                                      "serial": {"log_file": str(log)}}))
    vireo.ok("define", str(definition))
    try:
        vireo.ok("start", name)
        first = _wait_counter(log, 3)
        # Managed save: the VM shuts off; start resumes it (the counter goes on) and uses the save up.
        assert f"Domain '{name}' saved" in vireo.ok("save", name)
        assert vireo.states()[name] == "shut off"
        saved_at = _counters(log)[-1]
        assert saved_at >= first[-1]
        vireo.ok("start", name)
        after = _wait_counter(log, saved_at + 2)
        resumed = after[len(_counters_upto(after, saved_at)):]
        assert resumed[:3] == [saved_at + 1, saved_at + 2, saved_at + 3], after[-12:]
        # A save to a file of one's own, then restore from it.
        state = tmp_path / "by-hand.state"
        vireo.ok("save", name, str(state))
        assert state.is_file() and vireo.states()[name] == "shut off"
        at = _counters(log)[-1]
        assert f"Domain '{name}' restored" in vireo.ok("restore", str(state))
        again = _wait_counter(log, at + 2)
        assert again[again.index(at) + 1] == at + 1
        # The managed save was used up: saving by hand does not make one, so a start now boots afresh.
        vireo.ok("destroy", name)
        vireo.ok("start", name)
        deadline = time.monotonic() + 20
        while log.read_text().count("counter: started") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().count("counter: started") == 2
    finally:
        if vireo.states().get(name) in ("running", "paused"):
            vireo.cli("destroy", name)
        vireo.cli("undefine", name)


def _counters_upto(values: list[int], last: int) -> list[int]:
    """The prefix of `values` up to and including the first `last`."""
    return values[:values.index(last) + 1]


def test_save_and_restore_errors(local_vireo: Vireo, tmp_path: Path) -> None:
    one_error_line(local_vireo.cli("save", "no-such-vm"), 2, "no-such-vm")
    bad = tmp_path / "junk.state"
    bad.write_bytes(b"not a state file at all")
    one_error_line(local_vireo.cli("restore", str(bad)), 1, str(bad), "not a Vireo machine-state file")
