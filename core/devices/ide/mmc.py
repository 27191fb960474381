"""The data a CD/DVD-ROM drive returns to SCSI/MMC commands, built from what the drive knows (the disc's size, the
tray, the lock). Pure functions: the ATAPI device (atapi.py) runs the protocol, these make the bytes.

Formats: SPC-3 (T10/1416-D) for INQUIRY (6.4, with the vital product data pages 00h and 80h of 7.6) and REQUEST
SENSE's fixed sense data (4.5.3); MMC-5 (T10/1675-D) for READ CAPACITY (6.23), MODE SENSE's CD/DVD capabilities
page 2Ah (7.8, with SFF-8020i's layout) and read error recovery page 01h, READ TOC/PMA/ATIP formats 0, 1 and 2
(6.26), GET CONFIGURATION (6.6) with its profile list, core, morphing, removable medium, random readable, CD read
and DVD read features (5.3), GET EVENT STATUS NOTIFICATION's media class (6.7), READ DISC INFORMATION (6.22) and
MECHANISM STATUS (6.11). A disc of more than CD_MAX_BLOCKS blocks is a DVD-ROM, anything smaller a CD-ROM.

Each builder returns the whole answer cut to the command's allocation length; a field it cannot honour raises
CheckCondition with the sense an MMC drive reports.
"""
from __future__ import annotations

import struct

import core.devices.ide.defs as d

BLOCK = 2048
CD_MAX_BLOCKS = 405_000          # a 90-minute CD; larger images are DVDs
PROFILE_CD_ROM, PROFILE_DVD_ROM = 0x0008, 0x0010
EVENT_NONE, EVENT_EJECT_REQUEST, EVENT_NEW_MEDIA, EVENT_MEDIA_REMOVAL = 0, 1, 2, 3


class CheckCondition(Exception):
    """A command ends in CHECK CONDITION with this sense key and additional sense code."""

    def __init__(self, key: int, asc: tuple[int, int]) -> None:
        super().__init__(f"sense {key:#x}/{asc[0]:#04x}/{asc[1]:#04x}")
        self.key = key
        self.asc = asc


def invalid_field() -> CheckCondition:
    return CheckCondition(d.SENSE_ILLEGAL_REQUEST, d.ASC_INVALID_FIELD_IN_CDB)


def _be16(cdb: bytes, at: int) -> int:
    return cdb[at] << 8 | cdb[at + 1]


def profile(blocks: int) -> int:
    return PROFILE_DVD_ROM if blocks > CD_MAX_BLOCKS else PROFILE_CD_ROM


def msf(lba: int) -> bytes:
    """An address as minute/second/frame, 75 frames a second, counting the 2-second pregap (MMC-5 4.2.3.2)."""
    frames = lba + 150
    return bytes((0, min(frames // 4500, 0xFF), (frames // 75) % 60, frames % 75))


def _address(lba: int, use_msf: bool) -> bytes:
    return msf(lba) if use_msf else struct.pack(">I", lba)


def _ascii(text: str, n: int) -> bytes:
    return text.encode("ascii", "replace")[:n].ljust(n, b" ")


def inquiry(cdb: bytes, vendor: str, product: str, revision: str, serial: str) -> bytes:
    alloc = _be16(cdb, 3)
    if cdb[1] & 0x01:                                   # EVPD: vital product data
        page = cdb[2]
        if page == 0x00:
            body = bytes((0x00, 0x80))
        elif page == 0x80:
            body = _ascii(serial, len(serial))
        else:
            raise invalid_field()
        return (bytes((0x05, page)) + struct.pack(">H", len(body)) + body)[:alloc]
    if cdb[2]:
        raise invalid_field()
    # CD/DVD device, removable, SPC-3, response data format 2, 31 more bytes.
    data = bytes((0x05, 0x80, 0x05, 0x02, 31, 0, 0, 0)) + _ascii(vendor, 8) + _ascii(product, 16) \
        + _ascii(revision, 4)
    return data[:alloc]


def request_sense(cdb: bytes, key: int, asc: tuple[int, int]) -> bytes:
    data = bytearray(18)
    data[0] = 0x70                                      # current error, fixed format
    data[2] = key
    data[7] = 10                                        # additional sense length
    data[12], data[13] = asc
    return bytes(data[:cdb[4]])


def read_capacity(blocks: int) -> bytes:
    return struct.pack(">II", max(blocks - 1, 0), BLOCK)


def _capabilities_page(locked: bool) -> bytes:
    page = bytearray(22)
    page[0], page[1] = 0x2A, 20
    page[2] = 0x0B                                      # reads CD-R, CD-RW, DVD-ROM
    page[4] = 0x50                                      # mode 2 form 1, multi-session
    page[6] = 0x20 | 0x08 | 0x01 | (0x02 if locked else 0)    # tray, eject, lock (and its state)
    struct.pack_into(">HHHH", page, 8, 706, 0, 512, 706)   # max speed (kB/s), volume levels, buffer KiB, speed
    return bytes(page)


def _error_recovery_page() -> bytes:
    return bytes((0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0))      # read retry count 5


def mode_sense(cdb: bytes, ten: bool, present: bool, tray_open: bool, locked: bool) -> bytes:
    """MODE SENSE (6) or (10): pages 01h, 2Ah or all (3Fh); current, changeable (all zero) or default values."""
    control, page = cdb[2] >> 6, cdb[2] & 0x3F
    if control == 3:
        raise CheckCondition(d.SENSE_ILLEGAL_REQUEST, d.ASC_SAVING_PARAMETERS_NOT_SUPPORTED)
    pages = {0x01: _error_recovery_page(), 0x2A: _capabilities_page(locked)}
    if page == 0x3F:
        body = b"".join(pages[p] for p in sorted(pages))
    elif page in pages:
        body = pages[page]
    else:
        raise invalid_field()
    if control == 1:                                    # changeable: nothing is
        body = b"".join(bytes((chunk[0], chunk[1])) + bytes(chunk[1]) for chunk in _split_pages(body))
    medium = 0x01 if present else (0x71 if tray_open else 0x70)   # data CD, or no disc with the door shut/open
    if ten:
        header = struct.pack(">HBBxxH", 6 + len(body), medium, 0, 0)
        return (header + body)[:_be16(cdb, 7)]
    header = bytes((3 + len(body), medium, 0, 0))
    return (header + body)[:cdb[4]]


def _split_pages(body: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 2 <= len(body):
        n = 2 + body[i + 1]
        out.append(body[i:i + n])
        i += n
    return out


def read_toc(cdb: bytes, blocks: int) -> bytes:
    use_msf = bool(cdb[1] & 0x02)
    fmt = cdb[2] & 0x0F or cdb[9] >> 6                  # SFF-8020i drivers put the format in the control byte
    track = cdb[6]
    alloc = _be16(cdb, 7)
    if fmt == 0:
        if track > 1 and track != 0xAA:
            raise invalid_field()
        body = b""
        if track <= 1:
            body += bytes((0, 0x14, 1, 0)) + _address(0, use_msf)      # track 1: data, ADR 1
        body += bytes((0, 0x14, 0xAA, 0)) + _address(blocks, use_msf)  # the lead-out
        return (struct.pack(">HBB", 2 + len(body), 1, 1) + body)[:alloc]
    if fmt == 1:                                        # session information: one session, starting at track 1
        body = bytes((0, 0x14, 1, 0)) + _address(0, use_msf)
        return (struct.pack(">HBB", 2 + len(body), 1, 1) + body)[:alloc]
    if fmt == 2:                                        # full TOC: points A0 (first track), A1 (last), A2 (lead-out), 1
        entries = [(0xA0, bytes((1, 0x00, 0))), (0xA1, bytes((1, 0, 0))), (0xA2, msf(blocks)[1:]),
                   (0x01, msf(0)[1:])]
        body = b"".join(bytes((1, 0x14, 0, point, 0, 0, 0, 0)) + pmsf for point, pmsf in entries)
        return (struct.pack(">HBB", 2 + len(body), 1, 1) + body)[:alloc]
    raise invalid_field()


def _feature(code: int, version: int, persistent: bool, current: bool, data: bytes) -> bytes:
    flags = version << 2 | (0x02 if persistent else 0) | (0x01 if current else 0)
    return struct.pack(">HBB", code, flags, len(data)) + data


def get_configuration(cdb: bytes, blocks: int, present: bool) -> bytes:
    rt, start, alloc = cdb[1] & 0x03, _be16(cdb, 2), _be16(cdb, 7)
    if rt == 3:
        raise invalid_field()
    current = profile(blocks) if present else 0
    dvd, cd = present and current == PROFILE_DVD_ROM, present and current == PROFILE_CD_ROM
    features = [
        (0x0000, _feature(0x0000, 0, True, True,
                          struct.pack(">HBxHBx", PROFILE_DVD_ROM, dvd, PROFILE_CD_ROM, cd))),
        (0x0001, _feature(0x0001, 0, True, True, struct.pack(">I", 2))),          # core: ATAPI
        (0x0002, _feature(0x0002, 1, True, True, bytes((0x02, 0, 0, 0)))),       # morphing: operational change
        (0x0003, _feature(0x0003, 0, True, True, bytes((0x29, 0, 0, 0)))),       # removable: tray, eject, lock
        (0x0010, _feature(0x0010, 0, False, present, struct.pack(">IHBx", BLOCK, 16 if dvd else 1, 0))),
        (0x001E, _feature(0x001E, 0, False, cd, bytes(4))),                      # CD read
        (0x001F, _feature(0x001F, 0, False, dvd, b"")),                          # DVD read
    ]
    if rt == 2:
        chosen = [f for code, f in features if code == start]
    else:
        chosen = [f for code, f in features if code >= start and (rt == 0 or f[2] & 0x01)]
    body = struct.pack(">xxH", current) + b"".join(chosen)
    return (struct.pack(">I", len(body)) + body)[:alloc]


def event_status(cdb: bytes, event: int, present: bool, tray_open: bool) -> bytes:
    """GET EVENT STATUS NOTIFICATION, polled only: the media class (4) when asked, with the pending event."""
    if not cdb[1] & 0x01:
        raise invalid_field()                           # asynchronous notification is not supported
    alloc = _be16(cdb, 7)
    supported = 0x10
    if cdb[4] & supported:
        status = (0x02 if present else 0) | (0x01 if tray_open else 0)
        data = struct.pack(">HBB", 6, 4, supported) + bytes((event & 0x0F, status, 0, 0))
    else:
        data = struct.pack(">HBB", 2, 0x80, supported)   # no event class asked that the drive has (NEA)
    return data[:alloc]


def disc_information(cdb: bytes, blocks: int) -> bytes:
    if cdb[1] & 0x07:
        raise invalid_field()                           # only standard disc information
    data = bytearray(34)
    struct.pack_into(">H", data, 0, 32)
    data[2] = 0x0E                                      # last session complete, disc complete, not erasable
    data[3] = data[4] = data[5] = data[6] = 1           # first track, sessions, first and last track of the last
    data[7] = 0x20                                      # unrestricted use
    data[16:24] = b"\xff" * 8                           # no lead-in / lead-out to write: the disc is complete
    return bytes(data[:_be16(cdb, 7)])


def mechanism_status(cdb: bytes, tray_open: bool) -> bytes:
    data = bytes((0, 0x10 if tray_open else 0, 0, 0, 0, 0, 0, 0))
    return data[:_be16(cdb, 8)]
