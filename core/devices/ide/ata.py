"""An ATA hard disk over any core/storage image (raw or qcow2, read-write or read-only).

Commands (ATA/ATAPI-6 section 8; the EXT forms from ATA8-ACS): IDENTIFY DEVICE; READ/WRITE SECTORS (EXT), READ/
WRITE MULTIPLE (EXT) with SET MULTIPLE MODE, READ/WRITE DMA (EXT) through the bus master, READ VERIFY SECTORS
(EXT), FLUSH CACHE (EXT), SET FEATURES (transfer mode, write cache, look-ahead, reverting to defaults),
INITIALIZE DEVICE PARAMETERS (the CHS translation old software addresses the disk with), CHECK POWER MODE, the
IDLE/STANDBY/SLEEP family (the power state is remembered, the disk never spins), RECALIBRATE; IDENTIFY PACKET
DEVICE, PACKET and DEVICE RESET are aborted, as an ATA device must (SeaBIOS tells disks from CD-ROMs that way), and
so is every other opcode.

Errors are the device's, never an exception out of it: an address past the end (or an invalid CHS address) is
IDNF, an image read error UNC, a write to a read-only image or a failed write ABRT, each with ERR in Status and the
failing address in the LBA registers. A cache mode that makes I/O wait on the host's disk (none, writethrough)
sends DMA to the channel's worker; FLUSH CACHE always goes there (it is an fsync) unless the cache is unsafe.
"""
from __future__ import annotations

import core.devices.ide.defs as d
from core.devices.ide.busmaster import DMA_BUS_ERROR, DMA_OK, DmaRequest
from core.devices.ide.drive import IdeDrive
from core.devices.ide.identify import MAX_MULTIPLE, ata_identify
from core.storage.errors import ImageError

SECTOR = 512
BLOCKING_CACHES = ("writethrough", "none")


def default_geometry(sectors: int) -> tuple[int, int, int]:
    """The CHS geometry reported for `sectors`: 16 heads, 63 sectors a track, at most 16383 cylinders (ATA-6
    annex B's convention for disks past 8 GB)."""
    cylinders = max(1, min(sectors // (16 * 63), 16383))
    return cylinders, 16, 63


class AtaDisk(IdeDrive):
    """An ATA disk backed by `backend` (a BlockDevice: size, read_only, readinto/readv, write/writev, flush)."""

    packet = False
    signature = d.SIG_ATA

    def __init__(self, backend, *, model: str = "VIREO HARDDISK", serial: str = "", firmware: str = "1.0") -> None:
        super().__init__()
        self.backend = backend
        self.sectors = backend.size // SECTOR
        self.model, self.serial, self.firmware = model, serial or "VIREO-DISK", firmware
        self.geometry = default_geometry(self.sectors)
        self._defaults()
        self._handlers = {
            d.CMD_IDENTIFY_DEVICE: self._identify,
            d.CMD_READ_SECTORS: lambda: self._pio(False, ext=False, multiple=False),
            d.CMD_READ_SECTORS_NORETRY: lambda: self._pio(False, ext=False, multiple=False),
            d.CMD_READ_SECTORS_EXT: lambda: self._pio(False, ext=True, multiple=False),
            d.CMD_READ_MULTIPLE: lambda: self._pio(False, ext=False, multiple=True),
            d.CMD_READ_MULTIPLE_EXT: lambda: self._pio(False, ext=True, multiple=True),
            d.CMD_WRITE_SECTORS: lambda: self._pio(True, ext=False, multiple=False),
            d.CMD_WRITE_SECTORS_NORETRY: lambda: self._pio(True, ext=False, multiple=False),
            d.CMD_WRITE_SECTORS_EXT: lambda: self._pio(True, ext=True, multiple=False),
            d.CMD_WRITE_MULTIPLE: lambda: self._pio(True, ext=False, multiple=True),
            d.CMD_WRITE_MULTIPLE_EXT: lambda: self._pio(True, ext=True, multiple=True),
            d.CMD_READ_DMA: lambda: self._dma(False, ext=False),
            d.CMD_READ_DMA_NORETRY: lambda: self._dma(False, ext=False),
            d.CMD_READ_DMA_EXT: lambda: self._dma(False, ext=True),
            d.CMD_WRITE_DMA: lambda: self._dma(True, ext=False),
            d.CMD_WRITE_DMA_NORETRY: lambda: self._dma(True, ext=False),
            d.CMD_WRITE_DMA_EXT: lambda: self._dma(True, ext=True),
            d.CMD_READ_VERIFY: lambda: self._verify(ext=False),
            d.CMD_READ_VERIFY_NORETRY: lambda: self._verify(ext=False),
            d.CMD_READ_VERIFY_EXT: lambda: self._verify(ext=True),
            d.CMD_FLUSH_CACHE: self._flush,
            d.CMD_FLUSH_CACHE_EXT: self._flush,
            d.CMD_SET_MULTIPLE_MODE: self._set_multiple,
            d.CMD_SET_FEATURES: self._set_features,
            d.CMD_INITIALIZE_DEVICE_PARAMETERS: self._initialize_parameters,
            d.CMD_CHECK_POWER_MODE: self._check_power_mode,
            d.CMD_CHECK_POWER_MODE_OLD: self._check_power_mode,
            d.CMD_RECALIBRATE: self._complete,
        }
        for op in (d.CMD_IDLE, d.CMD_IDLE_IMMEDIATE, d.CMD_IDLE_OLD, d.CMD_IDLE_IMMEDIATE_OLD):
            self._handlers[op] = lambda: self._power(standby=False)
        for op in (d.CMD_STANDBY, d.CMD_STANDBY_IMMEDIATE, d.CMD_STANDBY_OLD, d.CMD_STANDBY_IMMEDIATE_OLD,
                   d.CMD_SLEEP, d.CMD_SLEEP_OLD):
            self._handlers[op] = lambda: self._power(standby=True)

    def _defaults(self) -> None:
        """Power-on settings (ATA-6 leaves them to the device; these are what a BIOS would leave)."""
        self.multiple = MAX_MULTIPLE
        self.write_cache = True
        self.xfer_mode = d.XFER_MWDMA | 2
        self.current = self.geometry
        self.standby = False

    def power_on(self) -> None:
        self._defaults()
        super().power_on()

    def ready_status(self) -> int:
        return d.DRDY | d.DSC

    def identify_data(self) -> bytes:
        assert self.channel is not None
        return ata_identify(sectors=self.sectors, model=self.model, serial=self.serial, firmware=self.firmware,
                            multiple=self.multiple, write_cache=self.write_cache, xfer_mode=self.xfer_mode,
                            geometry=self.geometry, current=self.current,
                            reset_result=self.channel.reset_result(self.unit))

    # -- command dispatch -------------------------------------------------------------------------------------
    def execute(self, command: int) -> None:
        self.stats["commands"] += 1
        self.regs.error = 0
        handler = self._handlers.get(command)
        if handler is None:
            self._fail(d.ABRT)
        else:
            handler()

    def _complete(self) -> None:
        """A command without data (or the end of one) succeeded: ready, and an interrupt."""
        assert self.channel is not None
        self.regs.status = d.DRDY | d.DSC
        self.channel.raise_irq()

    def _fail(self, error: int, lba: int | None = None, ext: bool = False) -> None:
        assert self.channel is not None
        self.stats["errors"] += 1
        regs = self.regs
        regs.error = error
        regs.status = d.DRDY | d.DSC | d.ERR
        if lba is not None:
            regs.set_lba(lba, ext)
        self.channel.pio_stop()
        self.channel.raise_irq()

    def io_error(self, offset: int, exc: Exception) -> None:
        lba = self._lba + offset // SECTOR
        self._fail(d.ABRT if self._writing else d.UNC, lba, self._ext)

    # -- addressing -------------------------------------------------------------------------------------------
    def _address(self, ext: bool) -> tuple[int, int] | None:
        """(first sector, count) of the command in the registers, or None (and IDNF reported) if it does not fit
        the disk or names an invalid CHS address."""
        regs = self.regs
        if ext:
            lba, count = regs.lba48(), regs.count48()
        elif regs.device & d.DEV_LBA:
            lba, count = regs.lba28(), regs.count28()
        else:
            cyl, heads, spt = self.current
            cylinder, head, sector = regs.lbah << 8 | regs.lbam, regs.device & 0x0F, regs.lbal
            if not (1 <= sector <= spt and head < heads):
                self._fail(d.IDNF)
                return None
            lba, count = (cylinder * heads + head) * spt + sector - 1, regs.count28()
        if lba + count > self.sectors:
            self._fail(d.IDNF, min(lba, self.sectors), ext)
            return None
        self.standby = False
        self._lba, self._ext = lba, ext
        return lba, count

    _lba, _ext, _writing = 0, False, False

    # -- data commands ----------------------------------------------------------------------------------------
    def _identify(self) -> None:
        data = self.identify_data()
        self._writing = False

        def fill(offset: int, buf: memoryview) -> None:
            buf[:] = data[offset:offset + len(buf)]

        self.data_in(len(data), len(data), fill, self._announce_in, self._end_in)

    def _announce_in(self, n: int) -> None:
        """A DRQ block is ready for the host: DRQ, and an interrupt (PIO data-in, ATA-6 9.5)."""
        assert self.channel is not None
        self.regs.status = d.DRDY | d.DSC | d.DRQ
        self.channel.raise_irq()

    def _end_in(self) -> None:
        """The host has read the last block: the command is done, without an interrupt (ATA-6 9.5)."""
        self.regs.status = d.DRDY | d.DSC

    def _announce_out(self, n: int, first: bool) -> None:
        """Ready for the host's next block: DRQ; an interrupt for every block but the first (ATA-6 9.6)."""
        assert self.channel is not None
        self.regs.status = d.DRDY | d.DSC | d.DRQ
        if not first:
            self.channel.raise_irq()

    def _pio(self, write: bool, *, ext: bool, multiple: bool) -> None:
        if multiple and not self.multiple:
            self._fail(d.ABRT)                    # READ/WRITE MULTIPLE before SET MULTIPLE MODE
            return
        if write and self.backend.read_only:
            self._fail(d.ABRT)
            return
        address = self._address(ext)
        if address is None:
            return
        lba, count = address
        self._writing = write
        block = SECTOR * (self.multiple if multiple else 1)
        base = lba * SECTOR
        backend = self.backend
        if write:
            self.data_out(count * SECTOR, block, lambda off, buf: backend.write(base + off, buf),
                          self._announce_out, self._complete)
        else:
            self.data_in(count * SECTOR, block, lambda off, buf: backend.readinto(base + off, buf),
                         self._announce_in, self._end_in)

    def _dma(self, write: bool, *, ext: bool) -> None:
        if write and self.backend.read_only:
            self._fail(d.ABRT)
            return
        address = self._address(ext)
        if address is None:
            return
        lba, count = address
        self._writing = write
        base = lba * SECTOR
        backend = self.backend
        assert self.channel is not None

        def io(offset: int, views: list[memoryview]) -> None:
            if write:
                backend.writev(base + offset, views)
            else:
                backend.readv(base + offset, views)

        def complete(result: str) -> None:
            if result == DMA_OK:
                self.stats["dma_bytes"] += count * SECTOR
                self._complete()
            elif result == DMA_BUS_ERROR:
                self._fail(d.ABRT)
            else:
                self._fail(d.ABRT if write else d.UNC, lba, ext)

        # DRQ while the data waits for the bus master (the driver starts it after writing the command).
        self.regs.status = d.DRDY | d.DSC | d.DRQ
        self.channel.bm.request(DmaRequest(not write, count * SECTOR, io, complete,
                                           may_block=getattr(backend, "cache", "writeback") in BLOCKING_CACHES))

    def _verify(self, *, ext: bool) -> None:
        if self._address(ext) is not None:
            self._complete()                      # the image has no media to verify: every sector reads

    def _flush(self) -> None:
        assert self.channel is not None
        backend = self.backend
        if backend.read_only:
            self._complete()
            return
        if getattr(backend, "cache", "writeback") == "unsafe":
            self._complete()                      # unsafe: flushes are ignored by the image anyway
            return
        channel = self.channel
        generation = channel.generation
        self.regs.status = d.BSY | d.DRDY | d.DSC

        def job() -> None:
            error: Exception | None = None
            try:
                backend.flush()
            except (ImageError, OSError) as exc:
                error = exc
            with channel.lock:
                if channel.generation != generation:
                    return
                if error is None:
                    self._complete()
                else:
                    self._fail(d.ABRT)

        channel.worker().submit(job)

    # -- settings ---------------------------------------------------------------------------------------------
    def _set_multiple(self) -> None:
        count = self.regs.nsector
        if count == 0 or (count <= MAX_MULTIPLE and count & (count - 1) == 0):
            self.multiple = count                 # 0 turns READ/WRITE MULTIPLE off
            self._complete()
        else:
            self._fail(d.ABRT)

    def _set_features(self) -> None:
        regs = self.regs
        sub = regs.feature
        if sub == d.SF_XFER_MODE:
            mode = regs.nsector
            kind, level = mode & 0xF8, mode & 0x07
            if (mode in (d.XFER_PIO_DEFAULT, 0x01) or (kind == d.XFER_PIO_FLOW and level <= 4)
                    or (kind == d.XFER_MWDMA and level <= 2) or (kind == d.XFER_UDMA and level <= 5)):
                if kind in (d.XFER_MWDMA, d.XFER_UDMA):
                    self.xfer_mode = mode
                self._complete()
            else:
                self._fail(d.ABRT)
        elif sub in (d.SF_ENABLE_WCACHE, d.SF_DISABLE_WCACHE):
            self.write_cache = sub == d.SF_ENABLE_WCACHE
            self._complete()
        elif sub in (d.SF_ENABLE_LOOKAHEAD, d.SF_DISABLE_LOOKAHEAD, d.SF_ENABLE_REVERT, d.SF_DISABLE_REVERT):
            self._complete()
        else:
            self._fail(d.ABRT)

    def _initialize_parameters(self) -> None:
        regs = self.regs
        heads, spt = (regs.device & 0x0F) + 1, regs.nsector
        if spt == 0:
            self._fail(d.ABRT)
            return
        cylinders = max(1, min(self.sectors // (heads * spt), 0xFFFF))
        self.current = (cylinders, heads, spt)
        self._complete()

    def _check_power_mode(self) -> None:
        self.regs.nsector = 0x00 if self.standby else 0xFF      # standby, or active/idle (ATA-6 8.6)
        self._complete()

    def _power(self, standby: bool) -> None:
        self.standby = standby
        self._complete()
