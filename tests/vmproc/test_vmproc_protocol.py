"""A VM process is untrusted: a malformed or oversized control message gets it killed and reported as crashed
with a protocol error (a hostile stand-in, tests/vmproc/hostile_vmproc.py, plays the VM process)."""
from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from core.vmproc.handle import VmProcess, VmProcessError
from tests.helpers.vmproc import Recorder

HOSTILE = Path(__file__).with_name("hostile_vmproc.py")


@pytest.mark.parametrize("kind, words", [
    ("oversized", "over the 1048576-byte limit"),
    ("not-json", "not UTF-8 JSON"),
    ("bad-state", "unknown state 'exploded'"),
    ("unknown", "unexpected message 'launch'"),
    ("huge-header", "header length 300000"),
])
def test_a_malformed_message_kills_the_vm_process_with_a_protocol_error(tmp_path, kind, words):
    runtime_dir, vm_uuid = str(tmp_path), str(uuid.uuid4())
    peer = subprocess.Popen([sys.executable, str(HOSTILE), runtime_dir, vm_uuid, kind], stdout=subprocess.PIPE)
    try:
        assert peer.stdout.readline() == b"ready\n"
        rec = Recorder()
        vm = VmProcess.adopt(vm_uuid, runtime_dir, rec.on_state, rec.on_serial)
        reason = rec.state("crashed", timeout=20)
        assert reason.startswith("protocol error: ") and words in reason, reason
        assert peer.wait(10) == -signal.SIGKILL          # the handle killed it
        assert vm.wait(5)
        with pytest.raises(VmProcessError):
            vm.pause()
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()


def test_adopting_where_no_vm_process_runs_fails_with_one_line(tmp_path):
    vm_uuid = str(uuid.uuid4())
    with pytest.raises(VmProcessError, match=f"no VM process runs for {vm_uuid}"):
        VmProcess.adopt(vm_uuid, str(tmp_path), print, print)
    with pytest.raises(VmProcessError, match="not a lower-case RFC 4122 UUID"):
        VmProcess.adopt("../../etc", str(tmp_path), print, print)
