"""LocalHost: the Host API (core/host/api.py) over this machine's engine, with VM definitions in a ConfigStore;
the Vireo service (core/agent/daemon.py) runs one for its user, and every client reaches it through the service
(core/remote/local.py on this machine, core/remote/host.py over SSH).

Each start runs the VM in a process of its own (core.vmproc.handle.VmProcess: `python -m core.vmproc`, one Machine),
as libvirt runs one QEMU per guest, so a VM that dies — a signal, an exception in native code — takes nothing else
with it: it shows as crashed with the reason the process handle gives (the signal and the last lines of its log),
and the service and the other VMs carry on. The VM process's state reports drive the VM's state here; its serial
output is kept (SERIAL_HISTORY bytes) and fanned out to subscribers (the definition's serial log file is the VM
process's to write, core/vmproc/serial_log.py, so it misses nothing while no service runs); its console is a
shared-memory mapping (core.vmproc.shared_console) that any local reader maps itself; statistics are the process's
own (VmProcess.stats).
"""
from __future__ import annotations

import logging
import os
import threading
import time

from core.config import ConfigError, ConfigStore, LoadError, VmConfig, running_vm_takes
from core.host.api import (
    SERIAL_HISTORY,
    TERMINAL_RESET,
    DeleteResult,
    DiskChoice,
    EventKind,
    FileProbe,
    Host,
    HostCapabilities,
    HostError,
    HostEvent,
    KeptDisk,
    Progress,
    SerialListener,
    VmConsole,
    VmInfo,
    VmState,
    VmStats,
)
from core.host.copies import HostCopies
from core.host.disks import backing_chain, chosen_disks, create_disk_image, disk_users, file_key
from core.host.files import LocalFiles
from core.host.hostload import HostLoad
from core.host.images import HostImages
from core.host.net_ops import LocalNetOps
from core.host.process_input import ProcessInput
from core.host.saved import discard as discard_saved
from core.host.saved import managed_state
from core.host.saved import restore as restore_saved
from core.host.saved import save as save_state
from core.host.snapshots import LocalSnapshots, forget_snapshots
from core.host.startcheck import check_startable
from core.host.vm_stats import nic_totals, stats_from_sample
from core.hoststats import HostInfo, local_host_info

log = logging.getLogger(__name__)

FORCE_OFF_WAIT = 10.0      # seconds for a VM process to power off before it is killed


class _LocalVm:
    """Everything LocalHost keeps about one VM."""

    def __init__(self, config: VmConfig) -> None:
        self.config = config
        self.proc = None                        # core.vmproc.handle.VmProcess while started
        self.state = VmState.SHUTOFF
        self.reason = ""
        self.accel = ""
        self.accel_reason = ""
        self.op_lock = threading.RLock()        # one lifecycle request at a time
        self.state_lock = threading.Lock()      # orders the process's reports against start() taking its handle
        self.ended = 0                          # the last session whose process reported its end
        self.serial = bytearray()
        self.serial_lock = threading.Lock()
        self.serial_listeners: list[SerialListener] = []
        self.reboot_pending = False
        self.forcing = False                    # force_off in progress: the process's end is "forced off"
        self.last_sample: tuple | None = None   # (monotonic, cpu seconds, (disk bytes read, written))
        self.session = 0                        # counts starts: names the machine a VmConsole belongs to


class LocalHost(HostImages, HostLoad, LocalNetOps, LocalSnapshots, HostCopies, Host):
    """The engine in this process. VM definitions come from (and go to) a ConfigStore."""

    def __init__(self, store: ConfigStore | None = None, name: str = "Local", *, runtime_dir: str) -> None:
        """`runtime_dir`: the service's private runtime directory (core/agent/paths.py), where the VM processes
        keep their control sockets, logs and shared consoles."""
        self.name = name
        self.store = store or ConfigStore()
        self.runtime_dir = runtime_dir
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
        A running VM only takes changes to its name, notes and autostart, and, for its next start, to the discs in
        its CD-ROM drives and its boot order (core.config.running_vm_takes)."""
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
            if vm is not None and vm.state.active and not running_vm_takes(vm.config, config):
                raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: shut it down before changing "
                                "its hardware (a running VM takes its name, notes, autostart, CD-ROM discs and "
                                "boot order)")
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

    def delete(self, vm_uuid: str, delete_disks: DiskChoice = False) -> DeleteResult:
        """Remove the definition and the chosen disk image files (all, none, or the listed paths of its disks).
        A chosen disk that another VM here lists, or reads as a backing file, is kept and named in the result
        with why: the caller's choice is checked here, whatever the client showed."""
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            if vm.state.active:
                raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: shut it down before deleting it")
            chosen = chosen_disks(vm.config, delete_disks)
            with self._lock:
                others = [(o.config.name, [d.path for d in o.config.disks])
                          for o in self._vms.values() if o.config.uuid != vm_uuid]
            # The VM's own disks left in place count too: a kept overlay still needs its base.
            left = [d.path for d in vm.config.disks if d.path not in chosen]
            users = disk_users(others)
            for overlay in left:
                for base in backing_chain(overlay):
                    users.setdefault(file_key(base), f"backing file of {overlay}, which is kept")
            removed: list[str] = []
            kept: list[KeptDisk] = []
            failed: list[str] = []
            for path in chosen:
                why = users.get(file_key(path))
                if why is not None:
                    kept.append(KeptDisk(path, why))
                    continue
                try:
                    if os.path.isfile(path):
                        os.unlink(path)
                        removed.append(path)
                except OSError as exc:
                    failed.append(f"{path}: {exc.strerror}")
            try:
                self.store.remove(vm_uuid)
            except OSError as exc:
                raise HostError(f"cannot remove {self.store.path_for(vm_uuid)}: {exc.strerror}") from None
            removed.insert(0, str(self.store.path_for(vm_uuid)))
            forget_snapshots(self, vm_uuid)     # its list of VM snapshots goes with the definition (virsh undefine)
            with self._lock:
                self._vms.pop(vm_uuid, None)
        self._emit(HostEvent(EventKind.DELETED, vm_uuid))
        if failed:
            raise HostError(f"{vm.config.name} deleted, but a disk image could not be removed: {failed[0]}")
        return DeleteResult(removed, kept)

    def delete_broken_definition(self, path: str) -> None:
        """Delete a file that failed to load and nothing else (ConfigStore.remove_broken checks), then say so."""
        try:
            self.store.remove_broken(path)
        except ConfigError as exc:
            raise HostError(str(exc)) from None
        self.reload()   # UPDATED, as for an edited definition: listeners re-read the list and the load errors
        self._emit(HostEvent(EventKind.UPDATED, os.path.splitext(os.path.basename(path))[0]))

    def create_disk(self, path: str, size_bytes: int, fmt: str = "raw", preallocate: bool = False,
                    progress: Progress | None = None) -> None:
        create_disk_image(path, size_bytes, fmt, preallocate, progress)

    def files(self) -> LocalFiles:
        return LocalFiles()

    def probe_file(self, path: str, role: str) -> FileProbe:
        """What a file chosen as a kernel, initrd, disk or ISO is (core/host/probe.py); a few KiB are read."""
        from core.host.probe import probe_file

        return probe_file(path, role)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _set(self, vm: _LocalVm, state: VmState, reason: str = "") -> None:
        vm.state, vm.reason = state, reason
        self._emit(HostEvent(EventKind.STATE, vm.config.uuid, state, reason))

    def autostart(self) -> list[str]:
        """Start every shut-off VM whose definition says autostart (the service does at its start); returns the
        one-line reasons of those that failed (each also logged and shown as the VM's reason)."""
        failed = []
        for info in self.list_vms():
            if info.config.autostart and not info.state.active:
                try:
                    self.start(info.uuid)
                except HostError as exc:
                    log.warning("autostart %s: %s", info.name, exc)
                    failed.append(f"{info.name}: {exc}")
        return failed

    def start(self, vm_uuid: str, restore: str | None = None) -> None:
        """Boot the VM, or resume it from its managed save (core/host/saved.py) when it has one, or from the
        state file `restore`."""
        from core.vmproc.handle import VmProcess, VmProcessError

        vm = self._vm(vm_uuid)
        managed = managed_state(self, vm) if restore is None else None
        with vm.op_lock:
            if vm.state.active:
                raise HostError(f"{vm.config.name} is already {vm.state.label.lower()}")
            vm.reboot_pending = vm.forcing = False
            vm.session += 1
            session = vm.session
            self._set(vm, VmState.STARTING)
            try:
                check_startable(vm.config, self.info(), self.capabilities().firmware_boot)
                self._new_boot(vm)
                # The VM process opens the serial log itself: a path it cannot open comes back as its one-line
                # start error, "serial log PATH: reason".
                proc = VmProcess.spawn(vm.config, self.runtime_dir, on_state=self._state_callback(vm, session),
                                       on_serial=lambda data: self._on_serial(vm, data), restore=restore or managed)
            except (HostError, VmProcessError) as exc:
                kept = f" (its saved state stays in {managed}: delete it to boot afresh)" if managed else ""
                self._set(vm, VmState.SHUTOFF, f"failed to start: {exc}{kept}")
                raise HostError(f"{vm.config.name} failed to start: {exc}{kept}") from None
            self._take(vm, session, proc)
            discard_saved(managed)
            self._boot_once_done(vm)

    def _boot_once_done(self, vm: _LocalVm) -> None:
        """The start that boots the CD once has been made: clear boot.cd_once (saved atomically) so the next
        start follows the boot order, as QEMU's -boot once=d. A definition that cannot be saved keeps the flag
        (the next start boots the CD again): logged, the VM runs on."""
        if not vm.config.boot.cd_once:
            return
        cleared = vm.config.copy()
        cleared.boot.cd_once = False
        with self._lock:
            try:
                self.store.save(cleared)
            except (ConfigError, OSError) as exc:
                log.warning("%s: cannot clear boot-once in its definition: %s", cleared.name, exc)
                return
            vm.config = cleared
        self._emit(HostEvent(EventKind.UPDATED, cleared.uuid, vm.state))

    def _state_callback(self, vm: _LocalVm, session: int):
        return lambda state, reason: self._on_proc_state(vm, session, state, reason)

    def _take(self, vm: _LocalVm, session: int, proc) -> None:
        """Hold a started or adopted process's handle, unless it already reported its end (its reports run on
        the handle's thread from the moment spawn/adopt returns)."""
        with vm.state_lock:
            if vm.ended == session:
                return
            vm.proc, vm.last_sample = proc, None
            vm.accel, vm.accel_reason = proc.accel, proc.accel_reason
            starting = vm.state == VmState.STARTING
        if starting:
            self._set(vm, VmState.PAUSED if proc.state == "paused" else VmState.RUNNING, proc.reason)

    def adopt_running(self) -> list[str]:
        """Take over the VM processes an earlier service left running (their sockets in <runtime>/vms/): the
        service does at its start, before autostart. Returns the names of the VMs adopted."""
        from core.vmproc.handle import VmProcess, VmProcessError

        adopted = []
        try:
            sockets = sorted(f for f in os.listdir(os.path.join(self.runtime_dir, "vms")) if f.endswith(".sock"))
        except FileNotFoundError:
            return adopted
        for name in sockets:
            with self._lock:
                vm = self._vms.get(name[:-len(".sock")])
            if vm is None:
                log.warning("a VM process socket %s belongs to no defined VM: left alone", name)
                continue
            with vm.op_lock:
                if vm.state.active:
                    continue
                vm.session += 1
                session = vm.session
                with vm.serial_lock:
                    vm.serial = bytearray()     # the process replays what it kept of the serial output
                vm.state = VmState.STARTING
                try:
                    proc = VmProcess.adopt(vm.config.uuid, self.runtime_dir, self._state_callback(vm, session),
                                           lambda data, vm=vm: self._on_serial(vm, data))
                except VmProcessError as exc:
                    vm.state = VmState.SHUTOFF
                    log.warning("%s: %s", vm.config.name, exc)
                    continue
                self._take(vm, session, proc)
                adopted.append(vm.config.name)
        return adopted

    def _on_proc_state(self, vm: _LocalVm, session: int, state: str, reason: str) -> None:
        # Runs on the VM process handle's thread. A report of an earlier start (a late one) is ignored.
        mapped = {"running": VmState.RUNNING, "paused": VmState.PAUSED, "shutoff": VmState.SHUTOFF,
                  "crashed": VmState.CRASHED}.get(state)
        if mapped is None:
            log.warning("%s: unknown state %r from its process", vm.config.name, state)
            return
        restart = False
        with vm.state_lock:
            if vm.session != session:
                return
            if mapped in (VmState.SHUTOFF, VmState.CRASHED):
                if vm.forcing:
                    mapped, reason = VmState.SHUTOFF, "forced off"
                vm.proc, vm.ended = None, session
                restart = vm.reboot_pending and mapped == VmState.SHUTOFF
                vm.reboot_pending = False
        self._set(vm, mapped, reason)
        if restart:
            # A reboot is a power-off seen through to a fresh start, on a thread of its own (this is the handle's).
            threading.Thread(target=self._restart, args=(vm.config.uuid,), name="vireo-reboot", daemon=True).start()

    def _restart(self, vm_uuid: str) -> None:
        try:
            self.start(vm_uuid)
        except HostError as exc:
            log.warning("reboot: %s", exc)

    def _proc(self, vm: _LocalVm, *allowed: VmState):
        proc = vm.proc
        if proc is None or vm.state not in allowed:
            raise HostError(f"{vm.config.name} is {vm.state.label.lower()}")
        return proc

    def _request(self, vm_uuid: str, action: str, *allowed: VmState) -> None:
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        with vm.op_lock:
            proc = self._proc(vm, *allowed)
            try:
                getattr(proc, action)()
            except VmProcessError as exc:
                raise HostError(f"{vm.config.name}: {exc}") from None

    def pause(self, vm_uuid: str) -> None:
        self._request(vm_uuid, "pause", VmState.RUNNING)

    def save(self, vm_uuid: str, path: str | None = None) -> str:
        return save_state(self, vm_uuid, path)

    def restore(self, path: str) -> VmInfo:
        return restore_saved(self, path)

    def resume(self, vm_uuid: str) -> None:
        self._request(vm_uuid, "resume", VmState.PAUSED)

    def shutdown(self, vm_uuid: str) -> None:
        """Press the ACPI power button; the guest decides (the state changes when it powers off)."""
        self._request(vm_uuid, "shutdown", VmState.RUNNING)

    def reboot(self, vm_uuid: str) -> None:
        """The ACPI power button, then a fresh start once the guest has powered off."""
        vm = self._vm(vm_uuid)
        with vm.op_lock:
            self._proc(vm, VmState.RUNNING)
            vm.reboot_pending = True
            try:
                self._request(vm_uuid, "shutdown", VmState.RUNNING)
            except HostError:
                vm.reboot_pending = False
                raise

    def force_reset(self, vm_uuid: str) -> None:
        self._request(vm_uuid, "reset", VmState.RUNNING, VmState.PAUSED)

    def force_off(self, vm_uuid: str) -> None:
        """Pull the plug, running or paused: the process is asked to power off and, if it does not within
        FORCE_OFF_WAIT seconds, killed. Returns once the VM is shut off."""
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        with vm.op_lock:
            proc = self._proc(vm, VmState.RUNNING, VmState.PAUSED)
            vm.reboot_pending, vm.forcing = False, True
            try:
                proc.power_off()
            except VmProcessError as exc:
                log.warning("%s: power off failed (%s); killing its process", vm.config.name, exc)
            if not proc.wait(FORCE_OFF_WAIT):
                proc.kill()
                proc.wait(FORCE_OFF_WAIT)
            deadline = time.monotonic() + FORCE_OFF_WAIT
            while vm.state.active and time.monotonic() < deadline:    # the handle's report is on its way
                time.sleep(0.01)

    def close(self) -> None:
        """The service is stopping: its VM processes run on without it (each serves whoever connects next), and
        the next service adopts them (adopt_running)."""

    # -- serial console --------------------------------------------------------------------------------------
    def _new_boot(self, vm: _LocalVm) -> None:
        """A new boot: empty history, a fresh screen for subscribers."""
        with vm.serial_lock:
            vm.serial = bytearray()
            listeners = list(vm.serial_listeners)
        for listener in listeners:
            self._call_serial(listener, TERMINAL_RESET)

    def _on_serial(self, vm: _LocalVm, data: bytes) -> None:
        # Runs on the VM process handle's reader thread: keep it short.
        with vm.serial_lock:
            vm.serial += data
            if len(vm.serial) > SERIAL_HISTORY:
                del vm.serial[: len(vm.serial) - SERIAL_HISTORY]
            listeners = list(vm.serial_listeners)
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
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        proc = vm.proc
        if proc is None or vm.state != VmState.RUNNING:
            raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: nothing reads the serial port")
        try:
            proc.serial_input(data)
        except VmProcessError as exc:
            raise HostError(f"{vm.config.name}: {exc}") from None

    # -- graphical console -----------------------------------------------------------------------------------
    def shared_console(self, vm_uuid: str) -> tuple[int, str]:
        """(session, path) of a started VM's console in shared memory, for a reader on this machine to map
        itself (core.vmproc.shared_console.SharedConsoleReader); HostError when it has none."""
        vm = self._vm(vm_uuid)
        # No op_lock: a pause in progress holds it for up to seconds, and a viewer only reads.
        session, proc, state = vm.session, vm.proc, vm.state
        if vm.config.display.type == "none":
            raise HostError(f"{vm.config.name} has no display (its display is set to none)")
        if proc is None or state not in (VmState.RUNNING, VmState.PAUSED):
            raise HostError(f"{vm.config.name} is {state.label.lower()}: it shows no screen")
        if not proc.console_path:
            raise HostError(f"{vm.config.name}'s process offers no console")
        return session, proc.console_path

    def console(self, vm_uuid: str) -> VmConsole:
        """A reader of the VM process's shared console of its own (so several viewers each get their own dirty
        rectangles); input goes to the VM process."""
        from core.vmproc.shared_console import SharedConsoleReader

        session, path = self.shared_console(vm_uuid)
        try:
            frames = SharedConsoleReader(path)
        except (OSError, ValueError) as exc:
            raise HostError(f"cannot map the console of {self._vm(vm_uuid).config.name}: {exc}") from None
        return VmConsole(session=session, frames=frames, input=self.input_sink(vm_uuid))

    def input_sink(self, vm_uuid: str) -> ProcessInput:
        """Where a started VM's keys and mouse motion go (a core.keymap.InputSink into its process)."""
        vm = self._vm(vm_uuid)
        proc = vm.proc
        if proc is None or vm.state not in (VmState.RUNNING, VmState.PAUSED):
            raise HostError(f"{vm.config.name} is {vm.state.label.lower()}: it takes no input")
        return ProcessInput(proc)

    # -- statistics ------------------------------------------------------------------------------------------
    def stats(self, vm_uuid: str) -> VmStats | None:
        """A sample for a started VM (None when it is not running or paused): the process's vCPU time over the
        wall time since the previous sample, its resident guest memory, and disk rates when it counts them."""
        from core.vmproc.handle import VmProcessError

        vm = self._vm(vm_uuid)
        proc = vm.proc
        if proc is None or vm.state not in (VmState.RUNNING, VmState.PAUSED):
            vm.last_sample = None
            return None
        try:
            sample = proc.stats()
            if vm.config.nics:
                sample.update(nic_totals(proc.net_status()))
        except VmProcessError:
            return None         # it is going away: the state report follows
        stats, vm.last_sample = stats_from_sample(sample, vm.last_sample, vm.config.vcpus, vm.config.memory_mib)
        return stats

