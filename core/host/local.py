"""LocalHost: the Host API (core/host/api.py) over this machine's engine, with VM definitions in a ConfigStore.

The service (core/agent/daemon.py) runs one LocalHost for its user; every client reaches it through the service
(core/host/service.py locally, core/remote/host.py over SSH).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

from core.config import ConfigError, ConfigStore, LoadError, VmConfig
from core.host.api import (
    SERIAL_HISTORY,
    TERMINAL_RESET,
    EventKind,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    Progress,
    SerialListener,
    VmConsole,
    VmInfo,
    VmState,
    VmStats,
)
from core.hoststats import HostInfo, local_host_info, resident_bytes, thread_cpu_seconds

log = logging.getLogger(__name__)


class _LocalVm:
    """Everything LocalHost keeps about one VM."""

    def __init__(self, config: VmConfig) -> None:
        self.config = config
        self.machine = None                     # core.machine.Machine while started
        self.state = VmState.SHUTOFF
        self.reason = ""
        self.accel = ""
        self.accel_reason = ""
        self.op_lock = threading.RLock()        # one lifecycle request at a time
        self.serial = bytearray()
        self.serial_lock = threading.Lock()
        self.serial_listeners: list[SerialListener] = []
        self.serial_log = None
        self.reboot_pending = False
        self.last_sample: tuple[float, float] | None = None   # (monotonic, cpu seconds)
        self.session = 0                        # counts starts: names the machine a VmConsole belongs to


class LocalHost(Host):
    """The engine in this process. VM definitions come from (and go to) a ConfigStore."""

    def __init__(self, store: ConfigStore | None = None, name: str = "Local") -> None:
        self.name = name
        self.store = store or ConfigStore()
        self._lock = threading.RLock()
        self._vms: dict[str, _LocalVm] = {}
        self._errors: list[LoadError] = []
        self._info: HostInfo | None = None
        self._accel_cache: dict[str, tuple[str, str]] = {}
        self.reload()

    # -- host ------------------------------------------------------------------------------------------------
    def info(self) -> HostInfo:
        if self._info is None:
            self._info = local_host_info()
        return self._info

    def reload(self) -> None:
        """Re-read the definition files; VMs that are running keep their in-memory definition."""
        configs, errors = self.store.load_all()
        with self._lock:
            seen = set()
            for cfg in configs:
                seen.add(cfg.uuid)
                vm = self._vms.get(cfg.uuid)
                if vm is None:
                    self._vms[cfg.uuid] = _LocalVm(cfg)
                elif not vm.state.active:
                    vm.config = cfg
            for vm_uuid in list(self._vms):
                if vm_uuid not in seen and not self._vms[vm_uuid].state.active:
                    del self._vms[vm_uuid]
            self._errors = errors

    def load_errors(self) -> list[LoadError]:
        with self._lock:
            return list(self._errors)

    def list_vms(self) -> list[VmInfo]:
        with self._lock:
            vms = list(self._vms.values())
        return sorted((self._snapshot(vm) for vm in vms), key=lambda i: i.name.casefold())

    def get(self, vm_uuid: str) -> VmInfo:
        return self._snapshot(self._vm(vm_uuid))

    def _vm(self, vm_uuid: str) -> _LocalVm:
        with self._lock:
            vm = self._vms.get(vm_uuid)
        if vm is None:
            raise HostError(f"no VM with uuid {vm_uuid} on {self.name}")
        return vm

    def _snapshot(self, vm: _LocalVm) -> VmInfo:
        accel, why = vm.accel, vm.accel_reason
        if not vm.state.active and not accel:
            try:
                accel, why = self.accel_preview(vm.config.accel)
            except HostError as exc:
                accel, why = "", str(exc)
        return VmInfo(config=vm.config.copy(), state=vm.state, reason=vm.reason, accel=accel, accel_reason=why)

    def accel_preview(self, requested: str) -> tuple[str, str]:
        """What `requested` (auto/kvm/software) resolves to on this host now, and why."""
        cached = self._accel_cache.get(requested)
        if cached is not None:
            return cached
        from core.hypervisor.base import AcceleratorUnavailable
        from core.hypervisor.select import choose_accelerator

        try:
            choice = choose_accelerator(requested)
        except AcceleratorUnavailable as exc:
            raise HostError(str(exc)) from None
        result = self._accel_cache[requested] = (choice.name, choice.warning or choice.reason)
        return result

    def capabilities(self) -> HostCapabilities:
        """What the engine declares it supports (core.machine.ENGINE_FEATURES)."""
        from core.machine import ENGINE_FEATURES

        return HostCapabilities(**{name: True for name in ENGINE_FEATURES})

    # -- definitions -----------------------------------------------------------------------------------------
    def define(self, config: VmConfig) -> VmInfo:
        """Add a new VM or replace the definition of a shut-off one (saved atomically before it takes effect).
        A running VM only takes changes to its name, notes and autostart."""
        config = config.copy()
        try:
            config.validate()
            info = self.info()
            config.validate_for_host(info.memory_mib, info.cpus)
        except ConfigError as exc:
            raise HostError(str(exc)) from None
        with self._lock:
            for other in self._vms.values():
                if other.config.uuid != config.uuid and other.config.name.casefold() == config.name.casefold():
                    raise HostError(f"a VM named {other.config.name!r} already exists on {self.name}")
            vm = self._vms.get(config.uuid)
            if vm is not None and vm.state.active:
                light = dataclasses.replace(vm.config, name=config.name, notes=config.notes,
                                            autostart=config.autostart)
                if light != config:
                    raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: shut it down before changing "
                                    "its hardware")
            try:
                self.store.save(config)
            except ConfigError as exc:
                raise HostError(str(exc)) from None
            except OSError as exc:
                raise HostError(f"cannot save {self.store.path_for(config.uuid)}: {exc.strerror or exc}") from None
            if vm is None:
                vm = self._vms[config.uuid] = _LocalVm(config)
                kind = EventKind.DEFINED
            else:
                vm.config = config
                kind = EventKind.UPDATED
        self._emit(HostEvent(kind, config.uuid, vm.state))
        return self._snapshot(vm)

    def delete(self, vm_uuid: str, delete_disks: bool = False) -> list[str]:
        """Remove the definition (and, when asked, its disk image files). Returns the files removed."""
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            if vm.state.active:
                raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: shut it down before deleting it")
            removed: list[str] = []
            failed: list[str] = []
            if delete_disks:
                for disk in vm.config.disks:
                    try:
                        if os.path.isfile(disk.path):
                            os.unlink(disk.path)
                            removed.append(disk.path)
                    except OSError as exc:
                        failed.append(f"{disk.path}: {exc.strerror}")
            try:
                self.store.remove(vm_uuid)
            except OSError as exc:
                raise HostError(f"cannot remove {self.store.path_for(vm_uuid)}: {exc.strerror}") from None
            removed.insert(0, str(self.store.path_for(vm_uuid)))
            with self._lock:
                self._vms.pop(vm_uuid, None)
        self._emit(HostEvent(EventKind.DELETED, vm_uuid))
        if failed:
            raise HostError(f"{vm.config.name} deleted, but a disk image could not be removed: {failed[0]}")
        return removed

    def create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                    progress: Progress | None = None) -> None:
        """Create a new disk image: raw (sparse unless `preallocate`) or qcow2 (thin, through core/storage, the
        same layout qemu-img makes); never replaces an existing file."""
        from core.storage import ImageError, create_image

        if fmt not in ("raw", "qcow2"):
            raise HostError(f"unknown disk format {fmt!r}: use raw or qcow2")
        if fmt == "qcow2" and preallocate:
            raise HostError("preallocation applies to raw images; a qcow2 image grows as the guest writes")
        if size_bytes <= 0 or size_bytes % 512:
            raise HostError(f"disk size {size_bytes} bytes: give a positive multiple of 512")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL claims the name, so an existing file (maybe another VM's disk) is never replaced.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise HostError(f"{path} already exists: choose another name") from None
        except OSError as exc:
            raise HostError(f"cannot create {path}: {exc.strerror}") from None
        if progress:
            progress(0, size_bytes)
        if fmt == "qcow2":
            os.close(fd)
            try:
                create_image(path, "qcow2", size_bytes)
            except ImageError as exc:
                os.unlink(path)
                raise HostError(str(exc)) from None
            if progress:
                progress(size_bytes, size_bytes)
            return
        try:
            os.ftruncate(fd, size_bytes)
            if preallocate:
                chunk = 64 * 1024 * 1024
                for offset in range(0, size_bytes, chunk):
                    os.posix_fallocate(fd, offset, min(chunk, size_bytes - offset))
                    if progress:
                        progress(min(offset + chunk, size_bytes), size_bytes)
            os.fsync(fd)
            if progress:
                progress(size_bytes, size_bytes)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            raise HostError(f"cannot create {path}: {exc.strerror}") from None
        os.close(fd)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _set(self, vm: _LocalVm, state: VmState, reason: str = "") -> None:
        vm.state, vm.reason = state, reason
        self._emit(HostEvent(EventKind.STATE, vm.config.uuid, state, reason))

    def start(self, vm_uuid: str) -> None:
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            if vm.state.active:
                raise HostError(f"{vm.config.name} is already {vm.state.label.lower()}")
            vm.reboot_pending = False
            self._set(vm, VmState.STARTING)
            try:
                machine = self._build_machine(vm)
            except HostError as exc:
                self._set(vm, VmState.SHUTOFF, f"failed to start: {exc}")
                raise
            vm.machine = machine
            vm.session += 1
            vm.last_sample = None
            machine.add_state_listener(lambda m, state, reason: self._on_machine_state(vm, m, state, reason))
            try:
                machine.start()
            except Exception as exc:
                vm.machine = None
                self._set(vm, VmState.SHUTOFF, f"failed to start: {exc}")
                raise HostError(f"{vm.config.name} failed to start: {exc}") from None

    def _build_machine(self, vm: _LocalVm):
        cfg = vm.config
        try:
            info = self.info()
            cfg.validate()
            cfg.validate_for_host(info.memory_mib, info.cpus)
        except ConfigError as exc:
            raise HostError(str(exc)) from None
        for what, path in (("kernel", cfg.boot.kernel), ("initrd", cfg.boot.initrd)):
            if path and not os.path.isfile(path):
                raise HostError(f"{what} {path}: no such file")
            if path and not os.access(path, os.R_OK):
                raise HostError(f"{what} {path}: not readable")
        from core.hypervisor.base import AcceleratorUnavailable
        from core.hypervisor.select import choose_accelerator
        from core.machine import ConfigError as MachineConfigError
        from core.machine import Machine, MachineConfig

        try:
            choice = choose_accelerator(cfg.accel)
        except AcceleratorUnavailable as exc:
            raise HostError(str(exc)) from None
        vm.accel, vm.accel_reason = choice.name, choice.warning or choice.reason
        with vm.serial_lock:
            vm.serial = bytearray()
            listeners = list(vm.serial_listeners)
            if vm.serial_log is not None:
                vm.serial_log.close()
                vm.serial_log = None
            if cfg.serial.log_file:
                try:
                    vm.serial_log = open(cfg.serial.log_file, "ab", buffering=0)
                except OSError as exc:
                    raise HostError(f"serial log {cfg.serial.log_file}: {exc.strerror}") from None
        for listener in listeners:
            self._call_serial(listener, TERMINAL_RESET)
        mc = MachineConfig(kernel=cfg.boot.kernel, initrd=cfg.boot.initrd or None, cmdline=cfg.boot.cmdline,
                           memory_mib=cfg.memory_mib, cpus=cfg.vcpus, accel=choice.name)
        try:
            return Machine(mc, serial_output=lambda data: self._on_serial(vm, data), accel_choice=choice)
        except (MachineConfigError, AcceleratorUnavailable, OSError, ValueError) as exc:
            raise HostError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except Exception as exc:  # BootError and friends: one line for the dialog, the rest in the log
            log.exception("building %s failed", cfg.name)
            raise HostError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _on_machine_state(self, vm: _LocalVm, machine, state, reason: str) -> None:
        if vm.machine is not machine:
            return
        mapped = {"running": VmState.RUNNING, "paused": VmState.PAUSED, "shutoff": VmState.SHUTOFF,
                  "crashed": VmState.CRASHED}.get(state.value)
        if mapped is None:
            return
        restart = False
        if mapped in (VmState.SHUTOFF, VmState.CRASHED):
            vm.machine = None
            restart = vm.reboot_pending and mapped == VmState.SHUTOFF and reason == "guest powered off"
            vm.reboot_pending = False
            with vm.serial_lock:
                if vm.serial_log is not None:
                    vm.serial_log.close()
                    vm.serial_log = None
        self._set(vm, mapped, reason)
        if restart:
            # This runs on the old Machine's supervisor thread; the new Machine starts on a fresh thread.
            threading.Thread(target=self._restart, args=(vm.config.uuid,), name="vireo-reboot", daemon=True).start()

    def _restart(self, vm_uuid: str) -> None:
        try:
            self.start(vm_uuid)
        except HostError as exc:
            log.warning("reboot: %s", exc)

    def _machine(self, vm: _LocalVm, *allowed: VmState):
        machine = vm.machine
        if machine is None or vm.state not in allowed:
            raise HostError(f"{vm.config.name} is {vm.state.label.lower()}")
        return machine

    def pause(self, vm_uuid: str) -> None:
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            self._machine(vm, VmState.RUNNING).pause()

    def resume(self, vm_uuid: str) -> None:
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            self._machine(vm, VmState.PAUSED).resume()

    def shutdown(self, vm_uuid: str) -> None:
        """Press the ACPI power button; the guest decides (the state changes when it powers off)."""
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            self._machine(vm, VmState.RUNNING).shutdown()

    def reboot(self, vm_uuid: str) -> None:
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            machine = self._machine(vm, VmState.RUNNING)
            vm.reboot_pending = True
            machine.shutdown()

    def force_reset(self, vm_uuid: str) -> None:
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            self._machine(vm, VmState.RUNNING, VmState.PAUSED).reset()

    def force_off(self, vm_uuid: str) -> None:
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            machine = self._machine(vm, VmState.RUNNING, VmState.PAUSED)
            vm.reboot_pending = False
            machine.power_off()
            machine.wait(10)

    def close(self) -> None:
        """Power off every VM still running (they live in this process)."""
        for vm in list(self._vms.values()):
            machine = vm.machine
            if machine is not None:
                vm.reboot_pending = False
                machine.power_off()
                machine.wait(10)

    # -- serial console --------------------------------------------------------------------------------------
    def _on_serial(self, vm: _LocalVm, data: bytes) -> None:
        # Runs on a vCPU thread: keep it short.
        with vm.serial_lock:
            vm.serial += data
            if len(vm.serial) > SERIAL_HISTORY:
                del vm.serial[: len(vm.serial) - SERIAL_HISTORY]
            listeners = list(vm.serial_listeners)
            if vm.serial_log is not None:
                try:
                    vm.serial_log.write(data)
                except OSError:
                    log.warning("serial log for %s failed; not logging any more", vm.config.name)
                    vm.serial_log.close()
                    vm.serial_log = None
        for listener in listeners:
            self._call_serial(listener, data)

    @staticmethod
    def _call_serial(listener: SerialListener, data: bytes) -> None:
        try:
            listener(data)
        except Exception:
            log.exception("serial listener failed")

    def subscribe_serial(self, vm_uuid: str, listener: SerialListener) -> bytes:
        vm = self._vm(vm_uuid)
        with vm.serial_lock:
            vm.serial_listeners.append(listener)
            return bytes(vm.serial)

    def unsubscribe_serial(self, vm_uuid: str, listener: SerialListener) -> None:
        with self._lock:
            vm = self._vms.get(vm_uuid)
        if vm is None:
            return
        with vm.serial_lock:
            if listener in vm.serial_listeners:
                vm.serial_listeners.remove(listener)

    def send_serial(self, vm_uuid: str, data: bytes) -> None:
        vm = self._vm(vm_uuid)
        machine = vm.machine
        if machine is None or vm.state != VmState.RUNNING:
            raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: nothing reads the serial port")
        machine.serial_input(data)

    # -- graphical console -----------------------------------------------------------------------------------
    def console(self, vm_uuid: str) -> VmConsole:
        """Frames straight from the VM's VGA model (a Renderer of its own for each caller, so several viewers
        each get their own dirty rectangles) and input into its i8042."""
        vm = self._vm(vm_uuid)
        # No op_lock: a pause in progress holds it for up to seconds, and a viewer only reads.
        session, machine, state = vm.session, vm.machine, vm.state
        if vm.config.display.type == "none":
            raise HostError(f"{vm.config.name} has no display (its display is set to none)")
        if machine is None or state not in (VmState.RUNNING, VmState.PAUSED):
            raise HostError(f"{vm.config.name} is {state.label.lower()}: it shows no screen")
        vga, kbc = getattr(machine, "vga", None), getattr(machine, "i8042", None)
        if vga is None or kbc is None:
            raise HostError("the engine's machine has no display adapter or keyboard controller")
        from core.display.renderer import Renderer
        from core.keymap import Ps2InputSink
        return VmConsole(session=session, frames=Renderer(vga), input=Ps2InputSink(kbc))

    def shared_console(self, vm_uuid: str) -> tuple[int, str] | None:
        """(session, path) of the VM's console in shared memory, for a client on this machine to map itself;
        None when the machine draws it in this process."""
        self.console(vm_uuid)       # the same refusals as console(): shut off, no display
        return None

    # -- statistics ------------------------------------------------------------------------------------------
    def stats(self, vm_uuid: str) -> VmStats | None:
        """A sample for a started VM (None when it is not running or paused)."""
        vm = self._vm(vm_uuid)
        machine = vm.machine
        if machine is None or vm.state not in (VmState.RUNNING, VmState.PAUSED):
            vm.last_sample = None
            return None
        now = time.monotonic()
        cpu = 0.0
        for tid in _vcpu_native_ids(machine):
            seconds = thread_cpu_seconds(tid)
            if seconds is not None:
                cpu += seconds
        percent = 0.0
        previous = vm.last_sample
        if previous is not None and now > previous[0]:
            percent = max(0.0, min(100.0, (cpu - previous[1]) / (now - previous[0]) / vm.config.vcpus * 100))
        vm.last_sample = (now, cpu)
        resident = None
        memory = getattr(machine, "memory", None)
        if memory is not None:
            used = resident_bytes(memory.host_base, memory.size)
            resident = None if used is None else used / (1024 * 1024)
        # Disk and network rates stay None until the engine has virtio-blk/net devices that count bytes.
        return VmStats(timestamp=now, cpu_percent=percent, cpu_seconds=cpu, memory_mib=vm.config.memory_mib,
                       memory_resident_mib=resident)


def _vcpu_native_ids(machine) -> list[int]:
    # The vCPU threads are the Machine's own; their kernel thread ids name their /proc/self/task entries.
    threads = getattr(machine, "vcpu_threads", None) or getattr(machine, "_threads", [])
    return [t.native_id for t in threads if t.native_id is not None]
