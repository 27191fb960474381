"""An ATAPI CD/DVD-ROM drive backed by an ISO image (read-only), or empty.

The PACKET protocol (ATA/ATAPI-6 8.23 and 9.8-9.9; SFF-8020i section 5): the host writes the features (bit 0:
data by DMA), the byte count limit (LBA Mid/High) and PACKET; the drive asks for the 12-byte command with DRQ and
interrupt reason C/D (no interrupt: IDENTIFY PACKET DEVICE word 0 says DRQ comes within 50 us), runs it, and
- sends data by PIO in chunks of at most the byte count limit, each announced by its size in LBA Mid/High,
  interrupt reason I/O and an interrupt, or by DMA through the bus master;
- completes with interrupt reason I/O + C/D and an interrupt; a failed command has ERR in Status and the sense key
  in the upper nibble of the Error register with ABRT, and its sense data waits for REQUEST SENSE.

Commands (SPC-3, MMC-5; the data formats are in mmc.py): TEST UNIT READY, REQUEST SENSE, INQUIRY, READ CAPACITY,
READ(10), READ(12), MODE SENSE(6)/(10), GET CONFIGURATION, READ TOC, GET EVENT STATUS NOTIFICATION, START STOP
UNIT, PREVENT ALLOW MEDIUM REMOVAL, READ DISC INFORMATION, MECHANISM STATUS, SET CD SPEED; anything else is
ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE. Without a disc the media commands report NOT READY / MEDIUM NOT
PRESENT. ATA commands: IDENTIFY PACKET DEVICE, DEVICE RESET, SET FEATURES, CHECK POWER MODE, the IDLE/STANDBY
family; IDENTIFY DEVICE is aborted with the ATAPI signature in the registers (how old drivers find ATAPI).

Media change (the host's side, change_medium()): inserting a disc posts UNIT ATTENTION / MEDIUM MAY HAVE CHANGED
for the next command and a NewMedia event for GET EVENT STATUS NOTIFICATION; removing one posts MediaRemoval.
The guest ejects with START STOP UNIT (refused while it has locked the tray with PREVENT ALLOW MEDIUM REMOVAL)
and loads the tray again the same way.
"""
from __future__ import annotations

import struct

import core.devices.ide.defs as d
import core.devices.ide.mmc as mmc
from core.devices.ide.busmaster import DMA_IO_ERROR, DMA_OK, DmaRequest
from core.devices.ide.drive import IdeDrive
from core.devices.ide.identify import atapi_identify
from core.devices.ide.mmc import BLOCK, CheckCondition

CDB_SIZE = 12
# Flags of a command: it needs a disc; it reports a pending UNIT ATTENTION (all but a few status commands do).
NEEDS_MEDIUM, REPORTS_ATTENTION = 1, 2


class AtapiCdrom(IdeDrive):
    """A CD/DVD-ROM drive; `backend` is the disc's image (a BlockDevice opened read-only), None when empty."""

    packet = True
    signature = d.SIG_ATAPI

    def __init__(self, backend=None, *, vendor: str = "VIREO", model: str = "VIREO DVD-ROM", serial: str = "",
                 firmware: str = "1.0") -> None:
        super().__init__()
        self.backend = backend
        self.vendor, self.model, self.serial, self.firmware = vendor, model, serial or "VIREO-CD", firmware
        self.tray_open = False
        self.locked = False
        self.sense: tuple[int, tuple[int, int]] = (d.SENSE_NONE, d.ASC_NO_SENSE)
        self.unit_attention = False
        self.media_event = mmc.EVENT_NONE
        self.xfer_mode = d.XFER_MWDMA | 2
        self._dma = False
        self._limit = 0
        self._commands = {
            0x00: (self._test_unit_ready, NEEDS_MEDIUM | REPORTS_ATTENTION),
            0x03: (self._request_sense, 0),
            0x12: (self._inquiry, 0),
            0x1A: (lambda cdb: self._mode_sense(cdb, ten=False), REPORTS_ATTENTION),
            0x1B: (self._start_stop, REPORTS_ATTENTION),
            0x1E: (self._prevent_allow, REPORTS_ATTENTION),
            0x25: (self._read_capacity, NEEDS_MEDIUM | REPORTS_ATTENTION),
            0x28: (lambda cdb: self._read(cdb, struct.unpack_from(">I", cdb, 2)[0], cdb[7] << 8 | cdb[8]),
                   NEEDS_MEDIUM | REPORTS_ATTENTION),
            0xA8: (lambda cdb: self._read(cdb, *struct.unpack_from(">II", cdb, 2)), NEEDS_MEDIUM | REPORTS_ATTENTION),
            0x43: (lambda cdb: mmc.read_toc(cdb, self.blocks), NEEDS_MEDIUM | REPORTS_ATTENTION),
            0x46: (lambda cdb: mmc.get_configuration(cdb, self.blocks, self.medium_present), 0),
            0x4A: (self._event_status, 0),
            0x51: (lambda cdb: mmc.disc_information(cdb, self.blocks), NEEDS_MEDIUM | REPORTS_ATTENTION),
            0x5A: (lambda cdb: self._mode_sense(cdb, ten=True), REPORTS_ATTENTION),
            0xBB: (lambda cdb: None, REPORTS_ATTENTION),                        # SET CD SPEED: any speed is fine
            0xBD: (lambda cdb: mmc.mechanism_status(cdb, self.tray_open), 0),
        }

    # -- the disc -----------------------------------------------------------------------------------------------
    @property
    def medium_present(self) -> bool:
        return self.backend is not None and not self.tray_open

    @property
    def blocks(self) -> int:
        return self.backend.size // BLOCK if self.medium_present else 0

    def change_medium(self, backend) -> object:
        """The host inserts `backend` (an image opened read-only) or, with None, takes the disc out; returns the
        previous image, for the caller to close once the channel is idle. A command running is ended first."""
        assert self.channel is not None
        with self.channel.lock:
            old = self.backend
            if self.regs.status & (d.BSY | d.DRQ):
                self.channel.cancel_command(self)
                self.abort()
                self._check_condition(d.SENSE_UNIT_ATTENTION, d.ASC_MEDIUM_MAY_HAVE_CHANGED)
            self.backend = backend
            self.tray_open = False
            if backend is not None:
                self.unit_attention = True
                self.media_event = mmc.EVENT_NEW_MEDIA
            elif old is not None:
                self.media_event = mmc.EVENT_MEDIA_REMOVAL
            return old

    def eject_request(self) -> bool:
        """The eject button: opens the tray unless the guest locked it, in which case the guest is told someone
        asked (an EjectRequest event). True if the tray opened."""
        assert self.channel is not None
        with self.channel.lock:
            if self.locked:
                self.media_event = mmc.EVENT_EJECT_REQUEST
                return False
            if not self.tray_open and self.backend is not None:
                self.media_event = mmc.EVENT_MEDIA_REMOVAL
            self.tray_open = True
            return True

    # -- reset and ATA commands -------------------------------------------------------------------------------
    def power_on(self) -> None:
        self.locked = False
        self.sense = (d.SENSE_NONE, d.ASC_NO_SENSE)
        self.xfer_mode = d.XFER_MWDMA | 2
        super().power_on()

    def ready_status(self) -> int:
        return 0                        # a PACKET device leaves DRDY clear after reset (ATA-6 9.12)

    def identify_data(self) -> bytes:
        assert self.channel is not None
        return atapi_identify(model=self.model, serial=self.serial, firmware=self.firmware,
                              xfer_mode=self.xfer_mode, reset_result=self.channel.reset_result(self.unit))

    def execute(self, command: int) -> None:
        assert self.channel is not None
        self.stats["commands"] += 1
        regs = self.regs
        regs.error = 0
        if command == d.CMD_PACKET:
            self._packet()
        elif command == d.CMD_IDENTIFY_PACKET_DEVICE:
            data = self.identify_data()

            def fill(offset: int, buf: memoryview) -> None:
                buf[:] = data[offset:offset + len(buf)]

            self.data_in(len(data), len(data), fill, self._announce_ata_block, self._ata_done_quietly)
        elif command == d.CMD_DEVICE_RESET:
            self.channel.cancel_command(self)
            self.soft_reset()           # no interrupt (ATA-6 8.10)
        elif command == d.CMD_SET_FEATURES and regs.feature == d.SF_XFER_MODE:
            mode = regs.nsector
            if mode & 0xF8 in (d.XFER_MWDMA, d.XFER_UDMA):
                self.xfer_mode = mode
            self._ata_done()
        elif command in (d.CMD_SET_FEATURES, d.CMD_IDLE_IMMEDIATE, d.CMD_STANDBY_IMMEDIATE, d.CMD_IDLE,
                         d.CMD_STANDBY, d.CMD_SLEEP):
            self._ata_done()
        elif command == d.CMD_CHECK_POWER_MODE:
            regs.nsector = 0xFF
            self._ata_done()
        else:
            # IDENTIFY DEVICE and the rest: aborted, with the signature so the driver sees what this is.
            if command == d.CMD_IDENTIFY_DEVICE:
                regs.lbam, regs.lbah = self.signature
                regs.nsector = regs.lbal = 1
            self.stats["errors"] += 1
            regs.error = d.ABRT
            regs.status = d.DRDY | d.ERR
            self.channel.raise_irq()

    def _announce_ata_block(self, n: int) -> None:
        assert self.channel is not None
        self.regs.status = d.DRDY | d.DRQ
        self.channel.raise_irq()

    def _ata_done_quietly(self) -> None:
        self.regs.status = d.DRDY

    def _ata_done(self) -> None:
        assert self.channel is not None
        self.regs.status = d.DRDY
        self.channel.raise_irq()

    # -- the packet protocol ----------------------------------------------------------------------------------
    def _packet(self) -> None:
        assert self.channel is not None
        regs = self.regs
        self._dma = bool(regs.feature & 0x01)
        self._limit = regs.lbam | regs.lbah << 8
        regs.nsector = d.IR_COD
        regs.status = d.DRDY | d.DRQ
        self.channel.pio_out(0, CDB_SIZE, self._cdb_received)

    def _cdb_received(self) -> None:
        assert self.channel is not None
        cdb = bytes(self.channel.buf[:CDB_SIZE])
        entry = self._commands.get(cdb[0])
        try:
            if entry is None:
                raise CheckCondition(d.SENSE_ILLEGAL_REQUEST, d.ASC_INVALID_OPCODE)
            handler, flags = entry
            if cdb[0] != 0x03:
                self.sense = (d.SENSE_NONE, d.ASC_NO_SENSE)   # a new command replaces the sense data
            if flags & REPORTS_ATTENTION and self.unit_attention:
                self.unit_attention = False
                raise CheckCondition(d.SENSE_UNIT_ATTENTION, d.ASC_MEDIUM_MAY_HAVE_CHANGED)
            if flags & NEEDS_MEDIUM and not self.medium_present:
                raise CheckCondition(d.SENSE_NOT_READY, d.ASC_MEDIUM_NOT_PRESENT)
            result = handler(cdb)
        except CheckCondition as cc:
            self._check_condition(cc.key, cc.asc)
            return
        if result is None:
            self._good()
        elif isinstance(result, tuple):
            self._send_blocks(*result)
        else:
            self._send(result)

    def _good(self) -> None:
        assert self.channel is not None
        regs = self.regs
        regs.nsector = d.IR_IO | d.IR_COD
        regs.status = d.DRDY | d.DSC
        self.channel.raise_irq()

    def _check_condition(self, key: int, asc: tuple[int, int]) -> None:
        assert self.channel is not None
        self.stats["errors"] += 1
        self.sense = (key, asc)
        regs = self.regs
        regs.error = key << 4 | d.ABRT
        regs.nsector = d.IR_IO | d.IR_COD
        regs.status = d.DRDY | d.DSC | d.ERR
        self.channel.pio_stop()
        self.channel.raise_irq()

    def io_error(self, offset: int, exc: Exception) -> None:
        self._check_condition(d.SENSE_MEDIUM_ERROR, d.ASC_UNRECOVERED_READ_ERROR)

    def _announce_chunk(self, n: int) -> None:
        """A chunk of n bytes waits in the data register: its size, reason "data to the host", an interrupt."""
        assert self.channel is not None
        regs = self.regs
        regs.lbam, regs.lbah = n & 0xFF, n >> 8
        regs.nsector = d.IR_IO
        regs.status = d.DRDY | d.DSC | d.DRQ
        self.channel.raise_irq()

    def _chunk(self, total: int) -> int:
        """The largest PIO chunk the byte count limit allows: an odd limit less one when more must follow
        (ATA-6 8.23.4), and 0 taken as the largest even count."""
        limit = self._limit or 0xFFFE
        return limit if total <= limit else max(2, limit & ~1)

    def _send(self, data: bytes) -> None:
        """Data-in of a command's answer (already cut to its allocation length)."""
        if not data:
            self._good()
            return

        def io(offset: int, views: list[memoryview]) -> None:
            for view in views:
                view[:] = data[offset:offset + len(view)]
                offset += len(view)

        def fill(offset: int, buf: memoryview) -> None:
            buf[:] = data[offset:offset + len(buf)]

        self._transfer(len(data), io, fill)

    def _send_blocks(self, lba: int, count: int) -> None:
        if count == 0:
            self._good()
            return
        backend = self.backend
        base = lba * BLOCK
        self._transfer(count * BLOCK, lambda offset, views: backend.readv(base + offset, views),
                       lambda offset, buf: backend.readinto(base + offset, buf))

    def _transfer(self, total: int, io, fill) -> None:
        assert self.channel is not None
        if not self._dma:
            self.data_in(total, self._chunk(total), fill, self._announce_chunk, self._good)
            return

        def complete(result: str) -> None:
            if result == DMA_OK:
                self.stats["dma_bytes"] += total
                self._good()
            elif result == DMA_IO_ERROR:
                self._check_condition(d.SENSE_MEDIUM_ERROR, d.ASC_UNRECOVERED_READ_ERROR)
            else:
                self.stats["errors"] += 1
                regs = self.regs
                regs.error = d.ABRT
                regs.nsector = d.IR_IO | d.IR_COD
                regs.status = d.DRDY | d.ERR
                self.channel.raise_irq()

        regs = self.regs
        regs.nsector = d.IR_IO
        regs.status = d.DRDY | d.DSC | d.DRQ
        self.channel.bm.request(DmaRequest(True, total, io, complete))

    # -- SCSI/MMC commands ------------------------------------------------------------------------------------
    def _test_unit_ready(self, cdb: bytes) -> None:
        return None

    def _request_sense(self, cdb: bytes) -> bytes:
        key, asc = self.sense
        self.sense = (d.SENSE_NONE, d.ASC_NO_SENSE)
        return mmc.request_sense(cdb, key, asc)

    def _inquiry(self, cdb: bytes) -> bytes:
        return mmc.inquiry(cdb, self.vendor, self.model, self.firmware, self.serial)

    def _read_capacity(self, cdb: bytes) -> bytes:
        return mmc.read_capacity(self.blocks)

    def _read(self, cdb: bytes, lba: int, count: int) -> tuple[int, int]:
        if lba + count > self.blocks:
            raise CheckCondition(d.SENSE_ILLEGAL_REQUEST, d.ASC_LBA_OUT_OF_RANGE)
        return lba, count

    def _mode_sense(self, cdb: bytes, ten: bool) -> bytes:
        return mmc.mode_sense(cdb, ten, self.medium_present, self.tray_open, self.locked)

    def _event_status(self, cdb: bytes) -> bytes:
        data = mmc.event_status(cdb, self.media_event, self.medium_present, self.tray_open)
        if cdb[4] & 0x10:
            self.media_event = mmc.EVENT_NONE                  # reported: the event is consumed
        return data

    def _start_stop(self, cdb: bytes) -> None:
        load_eject, start = cdb[4] & 0x02, cdb[4] & 0x01
        if not load_eject:
            return None
        if not start:
            if self.locked:
                raise CheckCondition(d.SENSE_ILLEGAL_REQUEST, d.ASC_MEDIUM_REMOVAL_PREVENTED)
            if not self.tray_open and self.backend is not None:
                self.media_event = mmc.EVENT_MEDIA_REMOVAL
            self.tray_open = True
        elif self.tray_open:
            self.tray_open = False
            if self.backend is not None:
                self.media_event = mmc.EVENT_NEW_MEDIA
        return None

    def _prevent_allow(self, cdb: bytes) -> None:
        self.locked = bool(cdb[4] & 0x01)
        return None
