"""The software CPU with vCPUs in parallel on the host's cores (the default with --cpus 2 or more;
VIREO_PARALLEL_VCPUS=0 keeps the time-shared engine of software.py/software_sched.py).

One unicorn 2.1.4 instance per vCPU, each run by its vCPU's thread without a lock around emulation (ctypes
releases the interpreter lock inside uc_emu_start; Python hooks take it back):

* Shared by the instances: guest RAM (each maps the Machine's GuestMemory in place, in the same order, so their
  ram_addr numbering agrees -- checked), the devices (port I/O and MMIO buses, the board's interrupt controllers
  and APIC bus), the TimerQueue, the TSC offset, and the union of their translated-code pages (uc_codeshare).
* Per vCPU: the instance (CPU state, translation cache, soft TLB, hooks, memory map), its local APIC, its run
  loop and HLT/INIT/SIPI/kick state (software_vcpu, unchanged: each instance has one vCPU, so the time-sharing
  lock of software_sched is only ever taken by that vCPU's own thread, and by get_state/set_state).
* Atomicity (Intel SDM vol. 3, 8.1.2.2): every instance translates for a parallel context, so LOCK-prefixed
  read-modify-writes and XCHG are host atomics (uc_parallel). A LOCK operand QEMU cannot make atomic
  (misaligned, MMIO) stops the world: the other vCPUs are held out of emulation while this one runs that
  instruction alone (World, step_atomic), as QEMU's cpu_exec_step_atomic does.
* Cross-modifying code (vol. 3, 8.1.3): a store to a page another instance has translated is posted to that
  instance, which invalidates the page on its own thread before it runs again (uc_codeshare).
* Devices: every exit into a device model -- port I/O, MMIO, the local APIC's MMIO and MSRs, the interrupt
  acknowledge, the write-protect hook -- runs under one per-VM device lock (QEMU's BQL), since two vCPUs may now
  exit at the same moment. Timer callbacks run on the TimerQueue thread as before (the local APIC and the
  board's controllers lock themselves).
* Memory-map changes (map_ram/unmap_ram: BARs, shadow RAM) go to every instance, each applying them on its own
  thread before its next slice (software_memory).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time

from core.bus import MmioBus, PortIoBus
from core.devices.apic_bus import ApicBus
from core.hypervisor import uc_internals as ui
from core.hypervisor.base import Accelerator, AcceleratorUnavailable, Vcpu
from core.hypervisor.software import SoftwareAccelerator
from core.hypervisor.uc_codeshare import Member, code_share
from core.hypervisor.uc_parallel import World, parallel_translation, step_atomic
from core.memory import GuestMemory
from core.timers import TimerQueue

ENV_VAR = "VIREO_PARALLEL_VCPUS"


def parallel_requested(num_cpus: int) -> bool:
    """Whether this VM's software CPU runs its vCPUs in parallel: the default with more than one vCPU (as fast to
    boot as time-sharing, and it uses the host's cores: docs/software-cpu.md); VIREO_PARALLEL_VCPUS=0 in the
    environment keeps the time-shared engine."""
    return num_cpus > 1 and os.environ.get(ENV_VAR, "").strip() != "0"


class _Core(SoftwareAccelerator):
    """One vCPU's unicorn instance: a SoftwareAccelerator holding that one vCPU, its exits serialised with the
    other instances' by the VM's device lock."""

    def __init__(self, parent: ParallelSoftwareAccelerator, memory: GuestMemory, pio: PortIoBus, mmio: MmioBus,
                 num_cpus: int, timers: TimerQueue) -> None:
        self.parent = parent
        self.device_lock = parent.device_lock
        self._ram_top = 0
        super().__init__(memory, pio, mmio, num_cpus, timers)
        # A fresh instance's CPU is "stopped" until its first emu_start resumes it; the vCPU reads a stopped CPU
        # after a slice as a triple fault, and an AP's first slice may end before it starts (an IPI pending).
        # The time-shared engine never sees that: its one instance has run the BSP by then.
        ctypes.c_bool.from_address(self.view.cpu + ui.CPU_STOPPED).value = False

    one_vcpu_per_instance = True     # its vCPU's thread alone runs it (vcpu_signal_timer)

    def _track_code_pages(self) -> None:
        """As for any instance (uc_codetrack's bitmap goes unused: uc_codeshare's stubs take this instance's
        code-page tracking before it), and note the top of its ram_addr space for the group's masks."""
        super()._track_code_pages()
        top = 0
        for region in self.ram_mappings:
            last = self.q.ram_addr_from_host(self.uch, self.memory.host_address(region) + region.size - 1)
            if last != 0xFFFF_FFFF_FFFF_FFFF:
                top = max(top, last + 1)
        self._ram_top = top

    # -- emulation: the world and the atomic step ----------------------------------------------------------
    def emu_start_slice(self, v: ui.CpuView) -> int:
        parent = self.parent
        parent.world.enter(self)
        try:
            err = self.q.uc_emu_start(self.uch, v.rip, 0, 0, 0)
        finally:
            parent.world.leave(self)
        if err == 0 and parent.translation.take_atomic_exit(self.uch):
            err = parent.step_atomic(self, v)
        return err

    def _drain_invalidations(self) -> None:
        super()._drain_invalidations()
        self._invalidate_posted(False)

    def _invalidate_posted(self, serializing: bool) -> None:
        """What other vCPUs wrote into code this instance translated (uc_codeshare), on this vCPU's thread."""
        inval, uch = self.q.tb_invalidate_phys_range, self.uch
        self.parent.share.invalidate_posted(uch, lambda page: inval(uch, page << 12, (page + 1) << 12),
                                            time.monotonic_ns(),
                                            serializing)

    def _kick_for_code(self) -> None:
        """Code this vCPU translated was written: leave the block chain to invalidate it. A halted vCPU is not
        woken for that: it invalidates before its next slice, or when it takes the interrupt that wakes it."""
        for vcpu in self.vcpus.values():
            if not vcpu.halted:
                vcpu.kick_for_interrupt()

    def _stop_for_world(self) -> None:
        self.q.uc_emu_stop(self.uch)

    # -- exits into device models, under the device lock ----------------------------------------------------
    def _io_in(self, uc, port: int, size: int, ud) -> int:
        # The port-I/O fallback is the bus's, shared: the instance that exited is the one whose handle came in.
        core = self.parent.core_of(uc) or self
        with self.device_lock:
            return SoftwareAccelerator._io_in(core, uc, port, size, ud)

    def _io_out(self, uc, port: int, size: int, value: int, ud) -> None:
        core = self.parent.core_of(uc) or self
        with self.device_lock:
            SoftwareAccelerator._io_out(core, uc, port, size, value, ud)

    def _mmio_read(self, uc, offset: int, size: int, base: int) -> int:
        with self.device_lock:
            return super()._mmio_read(uc, offset, size, base)

    def _mmio_write(self, uc, offset: int, size: int, value: int, base: int) -> None:
        with self.device_lock:
            super()._mmio_write(uc, offset, size, value, base)

    def _write_protected(self, uc, type_: int, addr: int, size: int, value: int, ud) -> bool:
        with self.device_lock:
            return super()._write_protected(uc, type_, addr, size, value, ud)

    def _inta_read(self, uc, offset: int, size: int, ud) -> int:
        self._invalidate_posted(True)               # taking an interrupt: code written by others is seen after
        with self.device_lock:
            return super()._inta_read(uc, offset, size, ud)

    def _cpuid(self, env: int, arg: int) -> int:
        self._invalidate_posted(True)               # CPUID serializes (SDM vol. 3, 8.1.3)
        return super()._cpuid(env, arg)

    def _rdmsr(self, env: int, arg: int) -> int:
        with self.device_lock:
            return super()._rdmsr(env, arg)

    def _wrmsr(self, env: int, arg: int) -> int:
        with self.device_lock:
            return super()._wrmsr(env, arg)


class ParallelSoftwareAccelerator(Accelerator):
    """The software CPU, one unicorn instance per vCPU (see the module docstring)."""

    name = "software"
    supports_ram_mapping = True
    supports_readonly_mapping = True

    def __init__(self, memory: GuestMemory, pio: PortIoBus, mmio: MmioBus, num_cpus: int,
                 timers: TimerQueue) -> None:
        super().__init__(memory, pio, mmio, num_cpus, timers)
        self.device_lock = threading.RLock()
        self.world = World()
        try:
            self.translation = parallel_translation()
            self.share = code_share()
        except ui.UnicornInternalsError as exc:
            raise AcceleratorUnavailable(f"parallel vCPUs on the software CPU cannot start: {exc}") from exc
        self.cores: list[_Core] = []
        self._by_uch: dict[int, _Core] = {}
        try:
            for _ in range(num_cpus):
                core = _Core(self, memory, pio, mmio, num_cpus, timers)
                self.cores.append(core)
                self._by_uch[core.uch] = core
            self._check_ram_numbering()
            self.group = self.share.new_group(max(c._ram_top for c in self.cores) + (64 << 20))
            offset = self.cores[0]._tsc_offset
            for core in self.cores:
                core._tsc_offset = offset
                self.translation.register(core.uch)
                member = Member(core.uch, core.view.cpu, core._kick_for_code,
                                self.translation.translation_start_cell(core.uch))
                self.share.register(self.group, member)
                if core.native_tick is not None:
                    # A native acknowledge skips _inta_read's serializing invalidation: only while none is due.
                    core.native_tick.watch(ctypes.addressof(member.attention))
        except Exception:
            self.close()
            raise
        self._closed = False

    def _check_ram_numbering(self) -> None:
        """Every instance must number guest RAM alike: the code-page union is indexed by ram_addr."""
        first = self.cores[0]
        for region in first.ram_mappings:
            host = self.memory.host_address(region)
            want = first.q.ram_addr_from_host(first.uch, host)
            for core in self.cores[1:]:
                if core.q.ram_addr_from_host(core.uch, host) != want:
                    raise AcceleratorUnavailable("the software CPU's instances number guest RAM differently; "
                                                 "parallel vCPUs cannot track code pages")

    def core_of(self, uch) -> _Core | None:
        return self._by_uch.get(uch)

    def step_atomic(self, core: _Core, v: ui.CpuView) -> int:
        """EXCP_ATOMIC: run the instruction alone, every other vCPU held out of emulation."""
        others = [c for c in self.cores if c is not core]
        self.world.start_exclusive(core, lambda: [c._stop_for_world for c in others])
        try:
            return step_atomic(v.cpu, lambda: core.q.uc_emu_start(core.uch, v.rip, 0, 0, 0),
                               core._stop_for_world)
        finally:
            self.world.end_exclusive()

    @property
    def tsc_hz(self) -> int:
        return self.cores[0].tsc_hz

    # -- the Accelerator interface --------------------------------------------------------------------------
    def connect_apic_bus(self, bus: ApicBus) -> None:
        for core in self.cores:
            core.connect_apic_bus(bus)

    def create_vcpu(self, index: int) -> Vcpu:
        return self.cores[index].create_vcpu(index)

    def map_ram(self, gpa: int, host_addr: int, size: int, readonly: bool = False) -> None:
        for core in self.cores:
            core.map_ram(gpa, host_addr, size, readonly)

    def unmap_ram(self, gpa: int) -> None:
        for core in self.cores:
            core.unmap_ram(gpa)

    def add_ioeventfd(self, gpa: int, fd: int) -> None:
        for core in self.cores:
            core.add_ioeventfd(gpa, fd)

    def remove_ioeventfd(self, gpa: int) -> None:
        for core in self.cores:
            core.remove_ioeventfd(gpa)

    def ram_mappings_settled(self) -> bool:
        me = threading.current_thread()
        for core in self.cores:
            if core.owner is me:
                return core.ram_mappings_settled()
        return all(core.ram_mappings_settled() for core in self.cores)

    def reset_platform(self) -> None:
        for core in self.cores:
            core.reset_platform()
        offset = self.cores[0]._tsc_offset
        for core in self.cores:
            core._tsc_offset = offset

    def quiesce(self, timeout: float = 2.0) -> bool:
        return all([core.quiesce(timeout) for core in self.cores])

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for core in self.cores:
            self.share.unregister(core.uch)
            self.translation.unregister(core.uch)
            core.close()
