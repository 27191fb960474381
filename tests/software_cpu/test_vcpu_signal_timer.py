"""The local APIC timer delivered to its vCPU's own thread (core/hypervisor/vcpu_signal_timer.py): the handler's
bytes, the POSIX timer's signal reaching the bound thread and setting the VIRQ request there, cancel and close,
and Debian's kernel ticking on two parallel vCPUs with no local APIC timer left on the TimerQueue thread."""
from __future__ import annotations

import ctypes
import shutil
import threading
import time

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_internals as ui  # noqa: E402
from core.hypervisor import vcpu_signal_timer as vst  # noqa: E402
from core.hypervisor.uc_native import natives  # noqa: E402
from core.timers import now_ns  # noqa: E402
from tests.software_cpu.test_software_fastpaths import gas  # noqa: E402

VIRQ = ui.CPU_INTERRUPT_VIRQ


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_handler_stub_matches_its_assembly(tmp_path) -> None:
    assert vst.HANDLER_STUB == gas(tmp_path, f"""
            mov 24(%rsi), %rax; test %rax, %rax; jz done
            mov (%rax), %rcx; test %rcx, %rcx; jz done
            lock orl ${VIRQ}, (%rcx)
            mov 8(%rax), %rcx; movw $-1, (%rcx)
        done: ret""")


class Fake:
    """A vCPU's interrupt_request word and icount_decr.high, and a timer aimed at them."""

    def __init__(self) -> None:
        self.request = ctypes.c_uint32(0x4)               # another request bit, which the handler must keep
        self.decr_high = ctypes.c_int16(0)
        self.fired: list[int] = []
        self.foreign_arms = 0
        self.timer = vst.VcpuSignalTimer(lambda: self.fired.append(threading.get_native_id()),
                                         natives().timer_signal_handler, ctypes.addressof(self.request),
                                         ctypes.addressof(self.decr_high), on_foreign_arm=self._foreign)

    def _foreign(self) -> None:
        self.foreign_arms += 1

    def signalled(self) -> bool:
        return bool(self.request.value & VIRQ)


def on_new_thread(body, seconds: float = 10) -> dict:
    """Run body(result) on a new thread (as a vCPU's thread would run) and return result; an exception there is
    raised here."""
    result: dict = {}

    def run() -> None:
        try:
            body(result)
        except BaseException as exc:          # reported by the test, not lost in the thread
            result["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join(seconds)
    assert not t.is_alive()
    if "error" in result:
        raise result["error"]
    return result


def on_own_thread(fake: Fake, body) -> dict:
    """Bind the timer to a new thread and run body(result) there (the thread stays in Python, where the
    signal's handler interrupts it as it would interrupt translated code)."""
    def bound(result: dict) -> None:
        fake.timer.bind_to_current_thread()
        result["tid"] = threading.get_native_id()
        body(result)
    return on_new_thread(bound)


def wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
    return predicate()


def test_the_expiry_sets_the_virq_request_on_the_bound_thread_and_poll_fires_once() -> None:
    fake = Fake()

    def body(result: dict) -> None:
        fake.timer.arm_after(200_000_000)                 # ahead of any preemption between these two lines
        assert not fake.signalled() and not fake.timer.due()
        result["signalled"] = wait_for(fake.signalled, 2)
        result["due"] = fake.timer.due()
        fake.timer.poll()
        fake.timer.poll()
    try:
        result = on_own_thread(fake, body)
    finally:
        fake.timer.close()
    assert result["signalled"], "no signal within 2 s of a 200 ms deadline"
    assert fake.request.value == 0x4 | VIRQ               # OR-ed in: the other bit is kept
    assert fake.decr_high.value == -1                       # the running block chain goes back to QEMU's loop
    assert result["due"] and fake.fired == [result["tid"]]  # fired once, on the vCPU's thread
    assert fake.foreign_arms == 0 and not fake.timer.armed


def test_a_cancelled_or_closed_timer_sends_nothing() -> None:
    fake = Fake()

    def body(result: dict) -> None:
        fake.timer.arm_after(20_000_000)
        fake.timer.cancel()
        result["after cancel"] = wait_for(fake.signalled, 0.1)
        fake.timer.arm_after(20_000_000)
        fake.timer.close()
        result["after close"] = wait_for(fake.signalled, 0.1)
    result = on_own_thread(fake, body)
    assert not result["after cancel"] and not result["after close"]
    assert fake.request.value == 0x4 and fake.fired == []


def test_another_thread_arming_a_past_deadline_signals_the_vcpu_thread_and_says_so() -> None:
    fake = Fake()
    bound, armed = threading.Event(), threading.Event()
    result: dict = {}

    def vcpu_thread() -> None:
        fake.timer.bind_to_current_thread()
        bound.set()
        armed.wait(5)
        result["signalled"] = wait_for(fake.signalled, 2)
    worker = threading.Thread(target=vcpu_thread)
    worker.start()
    try:
        assert bound.wait(5)
        fake.timer.arm(now_ns() - 1_000_000)               # from this thread, and already past
        armed.set()
        worker.join(10)
    finally:
        fake.timer.close()
    assert result.get("signalled"), "a past deadline did not signal the vCPU's thread"
    assert fake.foreign_arms == 1                           # a halted vCPU would look at its deadline again


def test_linux_ticks_on_its_vcpu_threads(debian_kernel, busybox_initramfs, tmp_path) -> None:
    """Debian's kernel on two parallel vCPUs: every local APIC timer expiry of the boot and two hashing jobs
    fires on a vCPU's own thread, none on the TimerQueue thread, and the jobs' sums are right."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers.initrd import initrd_with_current_init

    root = Path(__file__).resolve().parents[2]
    initrd = initrd_with_current_init(busybox_initramfs, tmp_path)
    script = f"""
import collections, sys, threading
sys.path.insert(0, {str(root)!r})
import core.devices.lapic as L
fired = collections.Counter()
original = L.LocalApic._timer_fired
def counted(self):
    fired[threading.current_thread().name.rstrip("0123456789")] += 1
    original(self)
L.LocalApic._timer_fired = counted
import atexit
atexit.register(lambda: print("FIRED", dict(fired), flush=True))
sys.argv = ["main.py", "run", "--kernel", {str(debian_kernel)!r}, "--initrd", {str(initrd)!r},
            "--append", "console=ttyS0 quiet vireo.action=sha256-jobs vireo.jobs=2 vireo.mib=16",
            "--accel", "software", "--cpus", "2", "--timeout", "120"]
import runpy
runpy.run_path({str(root / "main.py")!r}, run_name="__main__")
"""
    # Every expiry through the model (the native tick takes most of them without it: test_native_tick.py).
    env = {**os.environ, "VIREO_PARALLEL_VCPUS": "1", "VIREO_NATIVE_TICK": "0"}
    env.pop(vst.ENV_VAR, None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=root)
    out, err = proc.stdout, proc.stderr
    want = hashlib.sha256(bytes(16 << 20)).hexdigest()
    assert out.count(f"VIREO-SHA256-JOB={want}") == 2, out[-2000:] + err[-2000:]
    fired = eval(out.rsplit("FIRED", 1)[1].strip().splitlines()[0])      # a dict literal printed above
    assert fired.get("vcpu", 0) > 200, fired          # 250 ticks a second per busy vCPU
    assert set(fired) == {"vcpu"}, f"local APIC timers fired off the vCPU threads: {fired}"
