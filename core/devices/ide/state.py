"""The PIIX IDE controller's channels and drives (core/devices/ide/) as a state record; the PCI function itself
(IDETIM, BMIBA, command register) is saved with the PCI bus.

Only an idle channel is saved: no command executing, no PIO block or DMA transfer under way (a transfer's
continuation is a closure over the command being run, which no file can hold). The Machine stops the vCPUs and
waits for the channels' workers; if the guest had stopped in the middle of a PIO block, saving raises
NotQuiescent and the Machine lets the guest run a moment to finish it (core/state/machine_state.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.devices.ide.ata import AtaDisk
from core.state import fields as f

if TYPE_CHECKING:
    from core.devices.ide.channel import IdeChannel
    from core.devices.ide.piix import PiixIde


class NotQuiescent(RuntimeError):
    """A device is in the middle of something that cannot be saved; let the guest run a moment and retry."""


REGS = {k: f.U8 for k in ("feature", "hob_feature", "nsector", "hob_nsector", "lbal", "hob_lbal", "lbam",
                          "hob_lbam", "lbah", "hob_lbah", "device", "status", "error")}
CHANNEL = {"selected": f.u(1), "control": f.U8, "irq_pending": f.BOOL}
BUS_MASTER = {"command": f.U8, "status": f.U8, "table": f.U32}
ATA = {"multiple": f.U16, "write_cache": f.BOOL, "xfer_mode": f.U8, "current": f.Ints(3, 0, 0xFFFF),
       "standby": f.BOOL}
ATAPI = {"tray_open": f.BOOL, "locked": f.BOOL, "unit_attention": f.BOOL, "media_event": f.U8, "xfer_mode": f.U8,
         "sense_key": f.U8, "asc": f.U8, "ascq": f.U8}


def _busy(ch: IdeChannel) -> bool:
    worker = ch._worker
    return ch._block_done is not None or ch.bm.pending is not None or \
        any(d is not None and d._stream is not None for d in ch.drives) or (worker is not None and not worker.idle())


def _drive_state(drive: Any) -> dict[str, Any] | None:
    if drive is None:
        return None
    if isinstance(drive, AtaDisk):
        state = f.capture(drive, ATA, 0)
        state["kind"] = "ata"
        return state
    key, (asc, ascq) = drive.sense
    state = {k: getattr(drive, k) for k in ATAPI if k not in ("sense_key", "asc", "ascq")}
    state.update(kind="atapi", sense_key=key, asc=asc, ascq=ascq)
    return state


def get_state(ide: PiixIde) -> dict[str, Any]:
    channels = []
    for ch in ide.channels:
        with ch.lock:
            if _busy(ch):
                raise NotQuiescent(f"IDE channel {ch.index} is in the middle of a command")
            channels.append({**f.capture(ch, CHANNEL, 0), "bm": f.capture(ch.bm, BUS_MASTER, 0),
                             "regs": [f.capture(r, REGS, 0) for r in ch.regs],
                             "drives": [_drive_state(d) for d in ch.drives]})
    return {"channels": channels}


def set_state(ide: PiixIde, state: Any) -> None:
    f.expect_record(state, "ide", ("channels",))
    chans = state["channels"]
    if not isinstance(chans, list) or len(chans) != len(ide.channels):
        raise f.StateError(f"ide.channels: expected {len(ide.channels)} channels")
    plan = []
    for i, (ch, c) in enumerate(zip(ide.channels, chans, strict=True)):
        where = f"ide.channels[{i}]"
        f.expect_record(c, where, (*CHANNEL, "bm", "regs", "drives"))
        top = f.validate({k: c[k] for k in CHANNEL}, CHANNEL, where, 0)
        bm = f.validate(c["bm"], BUS_MASTER, f"{where}.bm", 0)
        if not isinstance(c["regs"], list) or len(c["regs"]) != 2 or \
                not isinstance(c["drives"], list) or len(c["drives"]) != 2:
            raise f.StateError(f"{where}: expected two register sets and two drive positions")
        regs = [f.validate(r, REGS, f"{where}.regs[{u}]", 0) for u, r in enumerate(c["regs"])]
        drives = []
        for unit, (drive, saved) in enumerate(zip(ch.drives, c["drives"], strict=True)):
            dwhere = f"{where}.drives[{unit}]"
            kind = None if drive is None else "ata" if isinstance(drive, AtaDisk) else "atapi"
            got = saved.get("kind") if isinstance(saved, dict) else None
            if kind != got or (saved is not None and not isinstance(saved, dict)):
                raise f.StateError(f"{dwhere}: the saved machine has {got or 'no drive'} here, this one "
                                   f"{kind or 'none'}: restore with the VM definition it was saved with")
            if saved is None:
                drives.append(None)
                continue
            spec = ATA if kind == "ata" else ATAPI
            drives.append(f.validate({k: v for k, v in saved.items() if k != "kind"}, spec, dwhere, 0))
        plan.append((ch, top, bm, regs, drives))
    for ch, top, bm, regs, drives in plan:
        with ch.lock:
            f.apply(ch, top, CHANNEL, 0)
            f.apply(ch.bm, bm, BUS_MASTER, 0)
            for r, values in zip(ch.regs, regs, strict=True):
                f.apply(r, values, REGS, 0)
            for drive, values in zip(ch.drives, drives, strict=True):
                if values is None:
                    continue
                if isinstance(drive, AtaDisk):
                    f.apply(drive, values, ATA, 0)
                    drive.current = tuple(values["current"])
                else:
                    for k in ("tray_open", "locked", "unit_attention", "media_event", "xfer_mode"):
                        setattr(drive, k, values[k])
                    drive.sense = (values["sense_key"], (values["asc"], values["ascq"]))
            ch._update_line()
