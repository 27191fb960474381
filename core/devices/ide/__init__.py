"""The PIIX3 IDE controller with ATA disks and ATAPI CD-ROM drives.

Modules, one job each:
  defs       register bits, opcodes, signatures and sense codes (ATA/ATAPI-6, ATA8-ACS, SPC-3/MMC-5)
  channel    one channel: task-file registers, device selection, SRST, INTRQ, the PIO data port
  drive      what devices share: reset, the PIO data-in/data-out protocols
  ata        the ATA disk over a core/storage image
  identify   the IDENTIFY DEVICE / IDENTIFY PACKET DEVICE data
  atapi      the ATAPI CD/DVD-ROM (the PACKET protocol, SCSI/MMC command set, media change)
  mmc        the SCSI/MMC answers (INQUIRY, TOC, mode pages, configuration, events ...)
  busmaster  bus-master DMA: the BAR4 registers and the PRD-table engine
  worker     the thread that runs I/O which may block, off the vCPU thread
  piix       the PCI function 8086:7010 (IDETIM decode, BAR4) and where drives sit

    ide = PiixIde(memory, interrupt_sink)              # a PciDevice: pci.add(ide, slot, function=1)
    ide.attach(pio)                                    # legacy ports, while IDETIM and I/O decode are on
    ide.attach_drive(0, AtaDisk(image, serial="d0"))   # positions 0-3 (see piix.drive_positions)
    ide.attach_drive(2, AtapiCdrom(iso_image))
"""
from core.devices.ide.ata import AtaDisk
from core.devices.ide.atapi import AtapiCdrom
from core.devices.ide.piix import POSITION_NAMES, PiixIde, drive_positions

__all__ = ["AtaDisk", "AtapiCdrom", "POSITION_NAMES", "PiixIde", "drive_positions"]
