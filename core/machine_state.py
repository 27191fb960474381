"""A whole machine's state: collected from a stopped Board into a state file, and put back into a freshly built
Board before its vCPUs first run (docs/machine-state.md has the sections and their order).

Saving: the Machine has paused the vCPUs and the device timers; `quiesce_board` holds the network cards' threads
off the rings and RAM and lets the disks' worker threads finish every request they had taken (completed into the
used rings, interrupts raised), so no request is in flight; then the records are written in the order restoring
needs them, and RAM last; `release_board` lets the cards run again.

Restoring: the machine is built from the definition saved in the file (or the VM's own), nothing is loaded into
it; RAM comes first, then the PCI functions (BARs mapped again, INTx re-driven), the other devices, the
firmware's PAM mapping, the interrupt controllers (whichever accelerator owns them: the board's models, or KVM's
in-kernel chips through the same records), the TSC, and the vCPUs with their local APICs. A record that does not
fit this machine or this accelerator stops the restore with one line saying why; the machine is then discarded.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from core.devices.ide.state import NotQuiescent
from core.devices.pic import Pic8259Pair
from core.devices.pit import Pit8254
from core.devices.virtio.state import resume_queues
from core.hypervisor import cpu_record as C
from core.state import fields as f
from core.state.container import StateReader, StateWriter

if TYPE_CHECKING:
    from core.board import Board
    from core.machine import MachineConfig

MACHINE_VERSION = 1
CHIPS_VERSION = 1

__all__ = ["NotQuiescent", "quiesce_board", "release_board", "save_board", "read_header", "restore_board",
           "resume_board"]


def state_devices(board: Board) -> dict[str, Any]:
    """The board's devices that save state outside the PCI bus, by their section name."""
    devices = {"uart": board.serial, "rtc": board.rtc, "i8042": board.i8042, "post": board.post,
               "acpi_pm": board.acpi_pm, "reset_control": board.reset_control}
    if board.fw_cfg is not None:
        devices["fw_cfg"] = board.fw_cfg
    if board.debugcon is not None:
        devices["debugcon"] = board.debugcon
    if board.port92 is not None:
        devices["port92"] = board.port92
    if board.vga is not None:
        devices["vga"] = board.vga
    return devices


def quiesce_board(board: Board) -> None:
    """Hold every network card still (until release_board) and let every disk worker finish what it has taken
    (vCPUs and timers already stopped): nothing writes guest RAM, a ring or an interrupt while the state is
    captured. On failure the cards are released again."""
    try:
        for nic in board.nics:
            nic.quiesce()
    except BaseException:
        release_board(board)
        raise
    for transport in board.disk_transports:
        transport.quiesce()
    if board.ide is not None:
        for ch in board.ide.channels:
            if ch._worker is not None and not ch._worker.wait_idle(30):
                raise NotQuiescent(f"IDE channel {ch.index} is still busy after 30 s")


def release_board(board: Board) -> None:
    """After the capture (saved, or given up for a retry): the network cards take frames again. Idempotent."""
    for nic in board.nics:
        nic.thaw()


def _chips(board: Board) -> dict[str, Any]:
    accel = board.accel
    if board.interrupt_controllers is not None:
        ic = board.interrupt_controllers
        return {"pic": ic.pic.get_state(), "ioapic": ic.ioapic.get_state(), "pit": ic.pit.get_state(),
                "kvm_clock": None}
    from core.hypervisor.kvm_state import capture_chips
    return capture_chips(accel)


def _vcpu_record(board: Board, index: int) -> dict[str, Any]:
    vcpu = board.vcpus[index]
    if board.accel.name == "kvm":
        from core.hypervisor.kvm_state import capture
    else:
        from core.hypervisor.software_state import capture
    return capture(vcpu)


def save_board(board: Board, config: MachineConfig, path: str, *, reset_count: int = 0,
               vm: dict[str, str] | None = None) -> int:
    """Write the stopped, quiesced board's state to `path` (atomically). Returns the RAM bytes written.
    Raises NotQuiescent if a device cannot be saved at this instant (let the guest run a moment and retry)."""
    records: list[tuple[str, int, Any]] = [
        ("machine", MACHINE_VERSION, {"config": asdict(config), "accel": board.accel.name,
                                      "reset_count": reset_count, "cpus": len(board.vcpus),
                                      "memory": board.memory.size, "saved_at": time.time(),
                                      "vm": vm})]
    # Collect everything before writing anything: a NotQuiescent leaves no file behind.
    records.append(("pci", board.pci.STATE_VERSION, board.pci.get_state()))
    for name, dev in state_devices(board).items():
        records.append((f"dev.{name}", getattr(dev, "STATE_VERSION", 1), dev.get_state()))
    records.append(("chips", CHIPS_VERSION, _chips(board)))
    for i in range(len(board.vcpus)):
        records.append((f"cpu.{i}", C.VERSION, _vcpu_record(board, i)))
    with StateWriter(path) as writer:
        for name, version, value in records:
            writer.record(name, version, value)
        writer.ram(board.memory)
        return writer.bytes_ram


def read_header(reader: StateReader) -> tuple[dict[str, Any], dict[str, tuple[int, Any]]]:
    """The machine record (with the saved definition, unchecked: MachineConfig.from_record checks it) and every
    other record of a state file (RAM not yet read)."""
    records: dict[str, tuple[int, Any]] = {}
    for name, version, value in reader.records():
        if name in records:
            raise f.StateError(f"state file {reader.path}: section {name!r} appears twice")
        records[name] = (version, value)
    if "machine" not in records:
        raise f.StateError(f"state file {reader.path}: no machine section")
    version, machine = records.pop("machine")
    if version != MACHINE_VERSION:
        raise f.StateError(f"state file {reader.path}: machine section version {version} is not supported")
    f.expect_record(machine, "machine", ("config", "accel", "reset_count", "cpus", "memory", "saved_at", "vm"))
    vm = machine["vm"]
    if vm is not None and (not isinstance(vm, dict) or set(vm) != {"uuid", "name"}
                           or not all(isinstance(v, str) and len(v) < 256 for v in vm.values())):
        raise f.StateError(f"state file {reader.path}: machine.vm is not a VM's uuid and name")
    return machine, records


def _take(records: dict[str, tuple[int, Any]], name: str, version: int) -> Any:
    if name not in records:
        raise f.StateError(f"state file: section {name!r} is missing: restore with the VM definition it was "
                           f"saved with")
    got, value = records.pop(name)
    if got != version:
        raise f.StateError(f"state file: section {name!r} has version {got}, this Vireo reads {version}")
    return value


def restore_board(board: Board, reader: StateReader, machine: dict[str, Any],
                  records: dict[str, tuple[int, Any]]) -> None:
    """Put a state file's records and RAM into a freshly built board whose vCPUs have never run."""
    if machine["cpus"] != len(board.vcpus) or machine["memory"] != board.memory.size:
        raise f.StateError(f"state file {reader.path}: saved with {machine['cpus']} CPUs and "
                           f"{machine['memory'] >> 20} MiB, this machine has {len(board.vcpus)} and "
                           f"{board.memory.size >> 20} MiB")
    cpus = [C.validate(_take(records, f"cpu.{i}", C.VERSION), f"cpu.{i}") for i in range(len(board.vcpus))]
    chips = f.expect_record(_take(records, "chips", CHIPS_VERSION), "chips", ("pic", "ioapic", "pit", "kvm_clock"))
    pci = _take(records, "pci", board.pci.STATE_VERSION)
    devices = {name: _take(records, f"dev.{name}", getattr(dev, "STATE_VERSION", 1))
               for name, dev in state_devices(board).items()}
    if records:
        raise f.StateError(f"state file {reader.path}: section {sorted(records)[0]!r} belongs to a device this "
                           f"machine does not have: restore with the VM definition it was saved with")
    if board.accel.name == "software":
        from core.hypervisor.software_state import check_supported
        for i, rec in enumerate(cpus):
            check_supported(rec, f"cpu.{i}")
    reader.load_ram(board.memory)
    board.pci.set_state(pci)
    for name, dev in state_devices(board).items():
        dev.set_state(devices[name])
    if board.firmware is not None:
        board.firmware.set_pam(board.host_bridge.pam, force=True)
    _restore_chips(board, chips)
    tsc = cpus[0]["msrs"].get(C.MSR_TSC, 0)
    if board.accel.name == "kvm":
        from core.hypervisor import kvm_state
        kvm_state.set_tsc(board.vcpus, tsc)
        for i, (vcpu, rec) in enumerate(zip(board.vcpus, cpus, strict=True)):
            kvm_state.restore(vcpu, rec, f"cpu.{i}")
    else:
        from core.hypervisor import software_state
        software_state.set_tsc(board.vcpus[0], tsc)
        for i, (vcpu, rec) in enumerate(zip(board.vcpus, cpus, strict=True)):
            software_state.restore(vcpu, rec, f"cpu.{i}")


def _restore_chips(board: Board, chips: dict[str, Any]) -> None:
    clock = chips["kvm_clock"]
    if clock is not None and (type(clock) is not int or not 0 <= clock < 1 << 64):
        raise f.StateError("chips.kvm_clock: not a 64-bit value")
    if board.interrupt_controllers is not None:
        ic = board.interrupt_controllers
        ic.pic.set_state(chips["pic"])
        ic.ioapic.set_state(chips["ioapic"])
        ic.pit.set_state(chips["pit"])
        return
    # KVM: the same records, checked by the models' own specs, then converted for the kernel.
    pic = f.expect_record(chips["pic"], "pic", ("master", "slave"))
    checked_pic = {n: f.validate(pic[n], Pic8259Pair.CHIP_STATE, f"pic.{n}", 0) for n in ("master", "slave")}
    ioapic = f.validate(chips["ioapic"], {"regsel": f.U8, "id": f.u(4), "redirection": f.Ints(24),
                                          "levels": f.u(24)}, "ioapic", 0)
    pit = f.expect_record(chips["pit"], "pit", ("port61", "counters"))
    if not isinstance(pit["counters"], list) or len(pit["counters"]) != 3:
        raise f.StateError("pit.counters: expected a list of the 3 counters")
    counters = [f.validate(c, Pit8254.COUNTER_STATE, f"pit.counters[{i}]", 0) for i, c in enumerate(pit["counters"])]
    port61 = f.check(pit["port61"], f.u(4), "pit.port61")
    from core.hypervisor.kvm_state import restore_chips
    restore_chips(board.accel, checked_pic, ioapic, {"port61": port61, "counters": counters}, clock)


def resume_board(board: Board) -> None:
    """After a restore, once the machine runs: serve what the drivers queued that the devices had not taken (a
    driver using EVENT_IDX does not notify again for buffers it already announced)."""
    for transport in board.disk_transports:
        resume_queues(transport)
    for nic in board.nics:
        if nic.transport is not None:
            resume_queues(nic.transport)
