"""The codes the IDE controller and its drives share: task-file register bits, command opcodes, device signatures,
and the SCSI/MMC sense codes ATAPI reports.

Sources: ATA/ATAPI-6 (T13/1410D) section 7 (registers: 7.9 Error, 7.15 Status, 7.8 Device Control, 7.7 Device),
section 8 (commands) and 9.12 (signatures after reset); ATA8-ACS (T13/1699-D) for the 48-bit (EXT) commands; the
ATAPI interrupt reason of SFF-8020i section 5.13 / ATA-6 8.23; SPC-3 / MMC-5 for sense keys and codes.
"""
from __future__ import annotations

# Status register (ATA-6 7.15).
BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01

# Error register (ATA-6 7.9): interface CRC, uncorrectable data, ID not found (address out of range), aborted.
ICRC, UNC, IDNF, ABRT = 0x80, 0x40, 0x10, 0x04

# Device Control register (ATA-6 7.8).
CTL_HOB, CTL_SRST, CTL_NIEN = 0x80, 0x04, 0x02

# Device register (ATA-6 7.7): the device select bit and LBA addressing.
DEV_SELECT, DEV_LBA = 0x10, 0x40

# ATAPI interrupt reason, read in the Sector Count register (ATA-6 8.23.7): command/data, direction (to host).
IR_COD, IR_IO = 0x01, 0x02

# Signatures in LBA Mid/High after a reset or EXECUTE DEVICE DIAGNOSTIC (ATA-6 9.12).
SIG_ATA = (0x00, 0x00)
SIG_ATAPI = (0x14, 0xEB)
# A position with no device: neither signature, so a driver classifies it as absent.
SIG_NONE = (0xFF, 0xFF)
# The Error register after a reset: diagnostic code "device 0 passed, device 1 passed or not present".
DIAG_PASSED = 0x01

# Commands (ATA-6 section 8, ATA8-ACS for EXT).
CMD_NOP = 0x00
CMD_DEVICE_RESET = 0x08
CMD_RECALIBRATE = 0x10
CMD_READ_SECTORS, CMD_READ_SECTORS_NORETRY = 0x20, 0x21
CMD_READ_SECTORS_EXT, CMD_READ_DMA_EXT, CMD_READ_MULTIPLE_EXT = 0x24, 0x25, 0x29
CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_NORETRY = 0x30, 0x31
CMD_WRITE_SECTORS_EXT, CMD_WRITE_DMA_EXT, CMD_WRITE_MULTIPLE_EXT = 0x34, 0x35, 0x39
CMD_READ_VERIFY, CMD_READ_VERIFY_NORETRY, CMD_READ_VERIFY_EXT = 0x40, 0x41, 0x42
CMD_EXECUTE_DEVICE_DIAGNOSTIC = 0x90
CMD_INITIALIZE_DEVICE_PARAMETERS = 0x91
CMD_PACKET, CMD_IDENTIFY_PACKET_DEVICE = 0xA0, 0xA1
CMD_READ_MULTIPLE, CMD_WRITE_MULTIPLE, CMD_SET_MULTIPLE_MODE = 0xC4, 0xC5, 0xC6
CMD_READ_DMA, CMD_READ_DMA_NORETRY, CMD_WRITE_DMA, CMD_WRITE_DMA_NORETRY = 0xC8, 0xC9, 0xCA, 0xCB
# Power management (ATA-6 8.8-8.11, 8.37-8.39, 8.46-8.48), with the ATA-1 opcodes some BIOSes still send.
CMD_STANDBY_IMMEDIATE, CMD_IDLE_IMMEDIATE, CMD_STANDBY, CMD_IDLE = 0xE0, 0xE1, 0xE2, 0xE3
CMD_CHECK_POWER_MODE, CMD_SLEEP = 0xE5, 0xE6
CMD_STANDBY_IMMEDIATE_OLD, CMD_IDLE_IMMEDIATE_OLD, CMD_STANDBY_OLD, CMD_IDLE_OLD = 0x94, 0x95, 0x96, 0x97
CMD_CHECK_POWER_MODE_OLD, CMD_SLEEP_OLD = 0x98, 0x99
CMD_FLUSH_CACHE, CMD_FLUSH_CACHE_EXT = 0xE7, 0xEA
CMD_IDENTIFY_DEVICE = 0xEC
CMD_SET_FEATURES = 0xEF

# SET FEATURES subcommands (ATA-6 8.36): enable/disable write cache, set transfer mode, and the ones drivers send
# that change nothing here (read look-ahead, reverting to power-on defaults).
SF_ENABLE_WCACHE, SF_XFER_MODE, SF_DISABLE_WCACHE = 0x02, 0x03, 0x82
SF_DISABLE_LOOKAHEAD, SF_ENABLE_LOOKAHEAD, SF_DISABLE_REVERT, SF_ENABLE_REVERT = 0x55, 0xAA, 0x66, 0xCC

# Transfer modes of SET FEATURES 03h (ATA-6 table 44): PIO default/flow-control, multiword DMA, Ultra DMA.
XFER_PIO_DEFAULT, XFER_PIO_FLOW, XFER_MWDMA, XFER_UDMA = 0x00, 0x08, 0x20, 0x40

# Sense keys (SPC-3 4.5.6) and additional sense codes (ASC, ASCQ) the CD-ROM reports.
SENSE_NONE, SENSE_NOT_READY, SENSE_MEDIUM_ERROR, SENSE_ILLEGAL_REQUEST, SENSE_UNIT_ATTENTION = 0x0, 0x2, 0x3, 0x5, 0x6
ASC_NO_SENSE = (0x00, 0x00)
ASC_INVALID_OPCODE = (0x20, 0x00)
ASC_LBA_OUT_OF_RANGE = (0x21, 0x00)
ASC_INVALID_FIELD_IN_CDB = (0x24, 0x00)
ASC_MEDIUM_MAY_HAVE_CHANGED = (0x28, 0x00)
ASC_SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00)
ASC_MEDIUM_NOT_PRESENT = (0x3A, 0x00)
ASC_UNRECOVERED_READ_ERROR = (0x11, 0x00)
ASC_MEDIUM_REMOVAL_PREVENTED = (0x53, 0x02)
