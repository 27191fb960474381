"""The local APIC timer's tick taken natively (core/hypervisor/uc_native_tick.py; Intel SDM vol. 3, 10.5.4.1 and
10.8.4): the stubs' bytes against GNU as; on a one-vCPU instance, the acknowledge stub called directly -- a due
tick of an armed word returns the timer's vector, anything else reaches the Python callback -- the WRMSR stub
re-arming IA32_TSC_DEADLINE and the vCPU's POSIX timer, the native EOI between them, and the model applying all
of it at its next use; a vCPU owing a serializing invalidation leaving the acknowledge to Python; a device's
interrupt accepted on another thread acknowledged natively when it is alone, edge-triggered and deliverable, and
left to the model otherwise; and Debian's kernel taking most of its ticks this way on one vCPU and on two
parallel vCPUs, with the jobs' sums right."""
from __future__ import annotations

import ctypes
import threading
import time
from ctypes import c_int, c_uint32, c_uint64, c_void_p

import pytest

pytest.importorskip("unicorn")

from core.devices.lapic import DM_FIXED, REG_ISR  # noqa: E402
from core.hypervisor import uc_internals as ui  # noqa: E402
from core.hypervisor import uc_native_tick as nt  # noqa: E402
from core.hypervisor.base import CpuState  # noqa: E402
from tests.helpers.software_guest import Rig  # noqa: E402
from tests.software_cpu.test_software_fastpaths import gas  # noqa: E402
from tests.software_cpu.test_vcpu_signal_timer import on_new_thread  # noqa: E402

_READ = ctypes.CFUNCTYPE(c_uint64, c_void_p, c_uint64, c_uint32, c_void_p)
_WRITE = ctypes.CFUNCTYPE(None, c_void_p, c_uint64, c_uint32, c_uint64, c_void_p)
_HELPER = ctypes.CFUNCTYPE(None, c_void_p, c_int)
APIC = 0xFEE0_0000
TIMER_VECTOR = 0xEC
SLOW = 0x77                  # what the recorded Python acknowledge returns


def test_stubs_match_their_assembly(tmp_path) -> None:
    assert nt.INTA_STUB == gas(tmp_path, """
            mov %rdx, %r11
            mov 40(%rcx), %r8; cmpq $0, (%r8); jne slow
            mov (%rcx), %r10; mov (%r10), %rax
        retry: bt $58, %rax; jc pend
            bt $62, %rax; jnc slow
            bt $57, %rax; jc slow
            mov 8(%rcx), %r9; test %r9, %r9; jz slow
            mov %rax, %r8; rdtsc; shl $32, %rdx; or %rdx, %rax; cmp %r9, %rax; mov %r8, %rax; jb slow
            mov %rax, %r9; shr $32, %r9; and $0xFFFF, %r9d; bt $61, %rax; adc $0, %r9d
            cmp %r9d, %eax; jne slow
            cmp $0xFFFF, %r9d; jae slow
            mov %rax, %r9; btr $59, %r9; movabs $0x100000000, %r8; add %r8, %r9
            lock cmpxchg %r9, (%r10); jne retry
            movq $0, 8(%rcx); mov 24(%rcx), %rax; ret
        pend: mov %rax, %r9; shr $32, %r9; and $0xFFFF, %r9d; bt $61, %rax; adc $0, %r9d
            cmp %r9d, %eax; jne slow
            mov %rax, %r9; btr $58, %r9; bts $57, %r9
            lock cmpxchg %r9, (%r10); jne retry
            shr $48, %rax; movzbl %al, %eax; ret
        slow: mov %r11, %rdx; jmp *32(%rcx)""")
    table, wrapper = 0x1111_1111_1111_1111, 0x2222_2222_2222_2222
    assert nt.wrmsr_stub_code(table, wrapper) == gas(tmp_path, f"""
            cmpl $0x6E0, 8(%rdi); jne py
            movabs ${table}, %r8
        find: mov (%r8), %rax; test %rax, %rax; jz py; cmp %rdi, %rax; je found; add $16, %r8; jmp find
        found: mov 8(%r8), %r8
            mov (%rdi), %ecx; mov 16(%rdi), %edx; shl $32, %rdx; or %rdx, %rcx
            xor %r9d, %r9d; test %rcx, %rcx; jz publish
            mov %rcx, %r9; sub {ui.ENV_TSC_OFFSET}(%rdi), %r9; jnz publish; inc %r9
        publish: mov %rcx, 16(%r8); mov %r9, 8(%r8)
            mov (%r8), %r10; mov (%r10), %rax
        retry: bt $60, %rax; jnc py
            mov %rax, %r11; bts $59, %r11; lock cmpxchg %r11, (%r10); jne retry
            xor %eax, %eax; test %r9, %r9; jz set
            rdtsc; shl $32, %rdx; or %rdx, %rax; mov %r9, %rcx; sub %rax, %rcx; jbe past
            movabs ${nt.MAX_DELTA}, %rax; cmp %rax, %rcx; ja py
            mov 64(%r8), %rax; mul %rcx; shrd $32, %rdx, %rax; inc %rax; jmp set
        past: mov $1, %eax
        set: xor %edx, %edx; mov $1000000000, %ecx; div %rcx; mov %rax, 88(%r8); mov %rdx, 96(%r8)
            push %rdi; mov 56(%r8), %rdi; xor %esi, %esi; lea 72(%r8), %rdx; xor %r10d, %r10d
            mov ${nt.SYS_TIMER_SETTIME}, %eax; syscall; pop %rdi
            test %rax, %rax; jnz py
            incq 104(%r8); ret
        py: movabs ${wrapper}, %rax; jmp *%rax""")


class TickRig:
    """A one-vCPU software instance whose timer belongs to a thread of the test (as the vCPU's thread would own
    it), with the stubs callable directly and the Python acknowledge recorded instead of run."""

    def __init__(self) -> None:
        self.rig = Rig(cpus=1)
        self.vcpu = self.rig.vcpus[0]
        self.lapic = self.vcpu.lapic
        self.accel = self.rig.accel
        self.vcpu.set_state(CpuState())                 # the TSC offset the guest's RDTSC adds, among others
        self.tick = self.accel.native_tick
        assert self.tick is not None, "a one-vCPU software instance has a native tick"
        self.slow_reads = 0

        def recorded(_uc, _offset, _size, _ud) -> int:
            self.slow_reads += 1
            return SLOW
        self._recorder = _READ(recorded)
        self.tick.block[nt.PY_INTA] = ctypes.cast(self._recorder, c_void_p).value
        self._inta = _READ(self.accel.natives.native_tick.inta_stub)
        self._wrmsr = _HELPER(self.accel.natives.native_tick.wrmsr_stub)
        self._eoi = _WRITE(self.accel.natives.fast_eoi.write_stub)

    @property
    def word(self) -> int:
        return c_uint64.from_address(self.tick.block[nt.WORD]).value

    def set_up_on_this_thread(self) -> None:
        """What Linux does before its first tick: the APIC on, the timer in TSC-deadline mode."""
        self.vcpu.bind_timer_to_current_thread()
        self.lapic.mmio_write(0xF0, 4, 0x1FF)                       # SVR: software-enabled
        self.lapic.mmio_write(0x350, 4, 1 << 16)                    # LINT0 masked (no ExtINT source)
        self.lapic.mmio_write(0x320, 4, 2 << 17 | TIMER_VECTOR)     # LVT timer: TSC-deadline mode

    def acknowledge(self) -> int:
        return self._inta(None, 0x100, 4, self.tick.address)

    def eoi(self) -> None:
        self._eoi(None, 0xB0, 4, 0, self.accel.fast_eoi.user_for(APIC))

    def wrmsr_deadline(self, value: int) -> None:
        v = self.accel.view
        v.set_reg(1, 0x6E0)                                     # ECX: IA32_TSC_DEADLINE
        v.set_reg(0, value & 0xFFFF_FFFF)
        v.set_reg(2, value >> 32)
        self._wrmsr(v.env, 0)

    def tsc_after(self, seconds: float) -> int:
        return self.vcpu._read_tsc() + int(seconds * self.accel.tsc_hz)

    def close(self) -> None:
        self.rig.close()


def on_vcpu_thread(rig: TickRig, body) -> dict:
    def set_up_then(result: dict) -> None:
        rig.set_up_on_this_thread()
        body(result)
    return on_new_thread(set_up_then, seconds=20)


def wait_until_tsc(rig: TickRig, tsc: int) -> None:
    while rig.vcpu._read_tsc() < tsc:
        time.sleep(0.001)


def _isr(lapic) -> int:
    return sum(lapic.mmio_read(REG_ISR + 16 * i, 4) << (32 * i) for i in range(8))


@pytest.fixture
def tick_rig():
    rig = TickRig()
    yield rig
    rig.close()


def test_ticks_eois_and_deadlines_natively_then_applied_by_the_model(tick_rig) -> None:
    rig = tick_rig
    request = c_uint32.from_address(rig.accel._interrupt_request_addr)

    def body(r: dict) -> None:
        # Deadlines far enough ahead that a preempted thread (tens of ms on a loaded CI host) still acts before them.
        first = rig.tsc_after(0.3)
        rig.lapic.msr_write(0x6E0, first)                       # through the model, as a slow WRMSR would
        r["armed"] = rig.word
        r["early"] = rig.acknowledge()                          # not due yet: Python's
        wait_until_tsc(rig, first)
        posted = c_uint64(1)                                    # another vCPU wrote code this one translated
        rig.tick.watch(ctypes.addressof(posted))
        r["posted"] = rig.acknowledge()                         # Python's: it owes a serializing invalidation
        posted.value = 0
        r["tick"] = rig.acknowledge()
        r["after tick"] = rig.word
        r["again"] = rig.acknowledge()                          # in service: Python's
        rig.eoi()                                               # the handler's EOI, natively
        request.value = 0
        second = rig.tsc_after(0.3)
        rig.wrmsr_deadline(second)                              # and its next deadline, natively
        r["after wrmsr"] = rig.word
        r["guest deadline"] = rig.tick.guest_deadline
        end = time.monotonic() + 2
        while not request.value & ui.CPU_INTERRUPT_VIRQ and time.monotonic() < end:
            time.sleep(0.001)
        r["signalled at"] = rig.vcpu._read_tsc()
        r["second"] = second
        r["tick 2"] = rig.acknowledge()
    r = on_vcpu_thread(rig, body)
    assert r["armed"] & (nt.FAST | nt.TICK | nt.DEADLINE) == nt.FAST | nt.TICK | nt.DEADLINE
    assert r["early"] == SLOW and r["posted"] == SLOW and r["tick"] == TIMER_VECTOR and r["again"] == SLOW
    assert rig.slow_reads == 3
    assert (r["after tick"] >> nt.TICKS_SHIFT) & nt.TICKS_MASK == 1 and rig.tick.block[nt.EXPIRY] == 0
    assert r["after wrmsr"] & nt.NEWDL and r["guest deadline"] == r["second"] and rig.tick.native_writes == 1
    assert r["signalled at"] >= r["second"], "the timer's signal came before the deadline"
    assert r["tick 2"] == TIMER_VECTOR
    # The model, at its next use: two ticks taken, the second not yet EOI'd; the deadline consumed.
    assert _isr(rig.lapic) == 1 << TIMER_VECTOR
    assert rig.tick.taken_ticks == 2 and rig.lapic.tsc_deadline == 0
    # Re-armed by this (not the vCPU's) thread: EOI and deadline writes, counts from 0, no TICK.
    assert rig.word == nt.FAST | nt.BASE | nt.DEADLINE
    assert not rig.lapic.has_interrupt()


def test_a_device_interrupt_from_another_thread_is_acknowledged_natively_the_tick_after_it_not(tick_rig) -> None:
    rig = tick_rig
    ready, accepted = threading.Event(), threading.Event()
    result: dict = {}

    def body(r: dict) -> None:
        # The other thread must accept 0x41 before this deadline: leave room for its wake-up on a loaded host.
        deadline = rig.tsc_after(0.5)
        rig.lapic.msr_write(0x6E0, deadline)
        r["armed"] = rig.word
        ready.set()
        accepted.wait(5)
        r["word"] = rig.word
        r["device"] = rig.acknowledge()                          # the device's vector, natively
        wait_until_tsc(rig, deadline)
        r["tick"] = rig.acknowledge()                            # 0x41 in service: the model decides
    worker = threading.Thread(target=lambda: result.update(on_vcpu_thread(rig, body)))
    worker.start()
    assert ready.wait(5)
    rig.lapic.accept(DM_FIXED, 0x41)                            # a device's interrupt, from this thread
    accepted.set()
    worker.join(20)
    assert result["armed"] & nt.TICK
    word = result["word"]                                       # re-armed by this thread's exit: no TICK
    assert word & nt.PEND and (word >> nt.PEND_SHIFT) & 0xFF == 0x41 and not word & nt.TICK
    assert result["device"] == 0x41 and result["tick"] == SLOW and rig.slow_reads == 1
    assert _isr(rig.lapic) == 1 << 0x41 and rig.tick.taken_vectors == 1
    assert rig.lapic.irr == 1 << TIMER_VECTOR                   # the expiry, found by the model's poll


@pytest.mark.parametrize("case", ["level", "two requested", "masked by TPR"])
def test_a_device_interrupt_is_left_to_the_model_unless_alone_edge_and_deliverable(tick_rig, case: str) -> None:
    rig = tick_rig

    def body(r: dict) -> None:
        if case == "level":
            rig.lapic.accept(DM_FIXED, 0x41, level_trigger=True)
        elif case == "two requested":
            rig.lapic.accept(DM_FIXED, 0x41)
            rig.lapic.accept(DM_FIXED, 0x51)
        else:
            rig.lapic.mmio_write(0x80, 4, 0x50)                # TPR: class 5 and below wait
            rig.lapic.accept(DM_FIXED, 0x41)
        r["word"] = rig.word
        r["vector"] = rig.acknowledge()
    r = on_vcpu_thread(rig, body)
    assert not r["word"] & nt.PEND and r["vector"] == SLOW


def test_a_native_eoi_of_a_device_vector_is_applied(tick_rig) -> None:
    rig = tick_rig

    def body(r: dict) -> None:
        rig.lapic.accept(DM_FIXED, 0x41)
        r["vector"] = rig.acknowledge()
        rig.eoi()
    on_vcpu_thread(rig, body)
    assert _isr(rig.lapic) == 0 and rig.lapic.irr == 0 and rig.slow_reads == 0


def test_a_wrmsr_of_another_msr_or_outside_tsc_deadline_mode_is_not_taken(tick_rig) -> None:
    rig = tick_rig
    seen: list[int] = []
    python = ctypes.CFUNCTYPE(c_uint64, c_void_p, c_int)(lambda env, arg: seen.append(env) or 0)
    # The process's stub falls back to the real Python wrapper; a copy falls back to a recorder instead.
    from core.hypervisor.uc_patch import _NativePage
    page = _NativePage()
    stub = _HELPER(page.add(nt.wrmsr_stub_code(ctypes.addressof(rig.accel.natives.native_tick.table),
                                               ctypes.cast(python, c_void_p).value)))
    page.seal()
    v = rig.accel.view

    def call(msr: int, value: int) -> None:
        v.set_reg(1, msr)
        v.set_reg(0, value & 0xFFFF_FFFF)
        v.set_reg(2, value >> 32)
        stub(v.env, 0)

    def body(r: dict) -> None:
        rig.lapic.msr_write(0x6E0, rig.tsc_after(10))
        call(0x10, 1234)                                        # IA32_TSC: not this stub's
        r["other msr"] = (len(seen), rig.tick.native_writes)
        call(0x6E0, rig.tsc_after(5))                           # armed: native
        r["armed"] = (len(seen), rig.tick.native_writes)
        rig.lapic.mmio_write(0x320, 4, TIMER_VECTOR)            # one-shot mode: the deadline MSR is the model's
        call(0x6E0, rig.tsc_after(5))
        r["one-shot"] = (len(seen), rig.tick.native_writes)
    r = on_vcpu_thread(rig, body)
    assert r["other msr"] == (1, 0) and r["armed"] == (1, 1) and r["one-shot"] == (2, 1)
    assert seen == [v.env, v.env]


def test_linux_takes_its_ticks_natively(debian_kernel, busybox_initramfs, tmp_path) -> None:
    """Debian's kernel, on one vCPU and on two parallel vCPUs: hundreds of timer ticks of the boot and two hashing
    jobs are acknowledged and re-armed natively (on one vCPU, most of them), and the jobs' sums are right."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers.initrd import initrd_with_current_init

    root = Path(__file__).resolve().parents[2]
    initrd = initrd_with_current_init(busybox_initramfs, tmp_path)
    want = hashlib.sha256(bytes(16 << 20)).hexdigest()
    for cpus in (1, 2):
        script = f"""
import sys
sys.path.insert(0, {str(root)!r})
import core.devices.lapic as L
import core.hypervisor.uc_native_tick as N
counts = {{"native": 0, "writes": 0, "python": 0}}
detach, fired = N.NativeTick.detach, L.LocalApic._timer_fired
def counted_detach(self):
    counts["native"] += self.taken_ticks
    counts["writes"] += self.native_writes
    detach(self)
def counted_fired(self):
    counts["python"] += 1
    fired(self)
N.NativeTick.detach, L.LocalApic._timer_fired = counted_detach, counted_fired
import atexit
atexit.register(lambda: print("TICKS", counts["native"], counts["writes"], counts["python"], flush=True))
sys.argv = ["main.py", "run", "--kernel", {str(debian_kernel)!r}, "--initrd", {str(initrd)!r},
            "--append", "console=ttyS0 quiet vireo.action=sha256-jobs vireo.jobs=2 vireo.mib=16",
            "--accel", "software", "--cpus", "{cpus}", "--timeout", "120"]
import runpy
runpy.run_path({str(root / "main.py")!r}, run_name="__main__")
"""
        env = {**os.environ, "VIREO_PARALLEL_VCPUS": "1"}
        env.pop(nt.ENV_VAR, None)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env=env, cwd=root)
        out, err = proc.stdout, proc.stderr
        assert out.count(f"VIREO-SHA256-JOB={want}") == 2, out[-2000:] + err[-2000:]
        native, writes, python = (int(n) for n in out.rsplit("TICKS", 1)[1].split())
        # 250 ticks a second per busy vCPU; the boot's first ticks, and those that meet another interrupt or a
        # code write by the other vCPU, go through the model.
        assert native > 150 * cpus and writes > 150 * cpus, (cpus, native, writes, python)
        if cpus == 1:
            assert python < native, f"{cpus} vCPU(s): {native} ticks taken natively, {python} by the model"
        # With two vCPUs the boot idles one of them, and a halted vCPU's ticks are the model's (its thread waits
        # in Python): how many depends on the host's load -- 0.6 to 1.5 times the native count here, 1.02 in a
        # full CI run -- so only the native counts above are checked.


def test_a_full_table_leaves_further_vcpus_to_python() -> None:
    from core.hypervisor.uc_patch import _NativePage
    stubs = nt.NativeTickStubs(_NativePage())
    envs = [0x1000 * (i + 1) for i in range(nt.TABLE_SLOTS)]
    assert all(stubs.register(env, env + 8) for env in envs)
    tick = nt.NativeTick(stubs, python_inta=0)
    word = c_uint64(0)
    assert not tick.attach(ctypes.addressof(word), 0xDEAD000, lambda: 0, 2_000_000_000)
    assert tick.env is None and tick.block[nt.WORD] == tick.address + 8 * nt.ZERO   # every acknowledge: Python's
    stubs.unregister(envs[5])                                                       # a tombstone is reused
    assert tick.attach(ctypes.addressof(word), 0xDEAD000, lambda: 0, 2_000_000_000)
    assert stubs.table[2 * 5] == 0xDEAD000 and stubs.table[2 * 5 + 1] == tick.address
