"""PC firmware in guest memory: the BIOS image (SeaBIOS by default) at the top of the 4 GiB space, its last 128 KiB
below 1 MiB, and the shadow RAM at 0xC0000-0xFFFFF that the i440FX's PAM registers control.

What is modelled, per the i440FX datasheet (290549, 3.2.18 PAM) and the way QEMU's pc machine places firmware:

* The image, read-only, at [4 GiB - size, 4 GiB): the reset vector 0xFFFFFFF0 is its last 16 bytes. Guest writes
  there are discarded.
* Below 1 MiB, each PAM range (twelve 16 KiB segments 0xC0000-0xEFFFF, one 64 KiB segment 0xF0000-0xFFFFF;
  core/devices/i440fx.py) decodes by its RE/WE bits:
    - RE=1: reads (and instruction fetches) come from guest RAM; RE=0: from the ROM side, which is the image's last
      128 KiB for 0xE0000-0xFFFFF and zeros for 0xC0000-0xDFFFF (QEMU's empty pc.rom; option ROMs are copied into
      shadow RAM by the firmware itself, from PCI expansion-ROM BARs);
    - WE=1: writes go to guest RAM; WE=0: they are discarded.
  All zero at power-on and after every reset, so the CPU starts in the pristine image whatever RAM holds.
* The VGA window 0xA0000-0xBFFFF is not part of it: it stays the VGA's.

How each backend realises it (`Accelerator.map_ram`, with `readonly` for the ROM-like cases): a range that reads
RAM and takes writes is mapped as plain RAM (the guest RAM's own pages, no copy); one that reads RAM but discards
writes is the same pages mapped read-only; one that reads the ROM side is the ROM's host buffer mapped read-only.
KVM does read-only as memory slots with KVM_MEM_READONLY; the software CPU as a unicorn mapping without write
permission. Either way a write to a read-only mapping leaves the CPU as an MMIO write to this module, which
applies the WE bit: into guest RAM through GuestMemory (bounds-checked) or nowhere. The same MMIO handler serves
every access while a backend has not yet applied a mapping change, so the behaviour never depends on the backend.
Guest writes can only ever reach guest RAM: the ROM buffers are never mapped writable.

Not modelled: DMA by devices into 0xC0000-0xFFFFF goes to guest RAM whatever the PAM bits say (nothing the
firmware or an OS does depends on DMA into shadowed ROM); SMRAM (0x72) is not implemented (no SMM).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
from dataclasses import dataclass

from core.boot.errors import BootError
from core.bus import MmioBus
from core.devices.i440fx import PAM_RE, PAM_SEGMENTS, PAM_WE, SHADOW_END, SHADOW_START, segment_mode
from core.memory import GuestMemory

log = logging.getLogger(__name__)

DEFAULT_FIRMWARE = "/usr/share/seabios/bios-256k.bin"   # QEMU 7.2's default for its pc machines
FOUR_GIB = 1 << 32
ROM_GRANULE = 64 * 1024
MAX_FIRMWARE = 16 << 20
LOW_ALIAS_SIZE = 128 * 1024                 # the image's last 128 KiB appear at 0xE0000-0xFFFFF
SHADOW_SIZE = SHADOW_END - SHADOW_START
_INSTALL_HINT = "install Debian's seabios package (apt-get install seabios) or give --firmware PATH"


class FirmwareError(BootError):
    """A firmware image Vireo cannot use (one line naming the file and what to do)."""


def load_firmware_image(path: str | None) -> tuple[str, bytes]:
    """Read the firmware image at `path` (None: Debian's SeaBIOS); return (path, bytes). A missing, unreadable
    or wrongly sized file is a FirmwareError."""
    path = path or DEFAULT_FIRMWARE
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FIRMWARE + 1)
    except FileNotFoundError:
        raise FirmwareError(f"firmware {path} does not exist: {_INSTALL_HINT}") from None
    except IsADirectoryError:
        raise FirmwareError(f"firmware {path} is a directory, not a file: {_INSTALL_HINT}") from None
    except OSError as exc:
        raise FirmwareError(f"cannot read firmware {path}: {exc.strerror or exc}; {_INSTALL_HINT}") from None
    if not data or len(data) % ROM_GRANULE or len(data) > MAX_FIRMWARE:
        raise FirmwareError(f"firmware {path} is {len(data)} bytes; a BIOS image is a multiple of 64 KiB up to "
                            f"16 MiB (e.g. SeaBIOS's bios-256k.bin): {_INSTALL_HINT}")
    return path, data


class _HostBuffer:
    """Anonymous host memory holding ROM contents, mappable into the guest read-only."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self.map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.map[:] = data
        self._anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(self._anchor)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.map[offset:offset + size], "little")


@dataclass(frozen=True)
class Mapping:
    """One range the backend maps: guest-physical start and size, host memory, read-only or not."""

    gpa: int
    size: int
    host: int
    readonly: bool


class FirmwareMemory:
    """The firmware's part of the memory map of one machine (see the module docstring). `mapper` is the CPU
    backend (an Accelerator with map_ram/unmap_ram), or None to serve everything as MMIO."""

    def __init__(self, image: bytes, memory: GuestMemory, mmio: MmioBus, mapper=None) -> None:
        self.memory = memory
        self.mapper = mapper
        self.rom = _HostBuffer(image)
        self.rom_base = FOUR_GIB - self.rom.size
        alias = image[-LOW_ALIAS_SIZE:]
        self.isa_rom = _HostBuffer(bytes(SHADOW_SIZE - len(alias)) + alias)
        self._lock = threading.Lock()
        self.pam = bytes(7)
        self.mappings: list[Mapping] = []
        if not memory.contains(SHADOW_START, SHADOW_SIZE):
            raise FirmwareError("firmware boot needs at least 1 MiB of guest RAM")
        mmio.register(self.rom_base, self.rom.size, _RomHandler(self))
        mmio.register(SHADOW_START, SHADOW_SIZE, _ShadowHandler(self))
        self.high_mapped = self._map(Mapping(self.rom_base, self.rom.size, self.rom.address, True))
        self.set_pam(self.pam, force=True)

    # -- PAM --------------------------------------------------------------------------------------------------
    def set_pam(self, pam: bytes, force: bool = False) -> None:
        """The i440FX's PAM registers changed (I440fxHostBridge.on_pam_change): remap 0xC0000-0xFFFFF."""
        with self._lock:
            if pam == self.pam and not force:
                return
            self.pam = bytes(pam)
            wanted = self._mappings_for(self.pam)
            if wanted == self.mappings and not force:
                return
            # Only the mappings that change are redone: unmapping drops the translated code in the range, so an
            # untouched segment (the BIOS's own, while an option ROM's is locked) keeps running without retranslation.
            keep = [] if force else [m for m in self.mappings if m in wanted]
            for m in self.mappings:
                if m not in keep:
                    self._unmap(m)
            self.mappings = sorted(keep + [m for m in wanted if m not in keep and self._map(m)], key=lambda m: m.gpa)

    def _mappings_for(self, pam: bytes) -> list[Mapping]:
        """Adjacent segments served from the same memory with the same writability become one mapping."""
        out: list[Mapping] = []
        ram_base = self.memory.host_base
        for index, (start, size, _, _) in enumerate(PAM_SEGMENTS):
            mode = segment_mode(pam, index)
            if mode & PAM_RE:
                host, readonly = ram_base + self._ram_offset(start), not mode & PAM_WE
            else:
                host, readonly = self.isa_rom.address + (start - SHADOW_START), True
            if out and out[-1].gpa + out[-1].size == start and out[-1].readonly == readonly \
                    and out[-1].host + out[-1].size == host:
                last = out.pop()
                out.append(Mapping(last.gpa, last.size + size, last.host, readonly))
            else:
                out.append(Mapping(start, size, host, readonly))
        return out

    def _ram_offset(self, gpa: int) -> int:
        region = self.memory.regions[0]
        return region.offset + gpa - region.gpa

    def _map(self, m: Mapping) -> bool:
        if self.mapper is None:
            return False
        try:
            self.mapper.map_ram(m.gpa, m.host, m.size, readonly=m.readonly)
        except (ValueError, NotImplementedError) as exc:
            log.info("firmware range %#x+%#x stays MMIO: %s", m.gpa, m.size, exc)
            return False
        return True

    def _unmap(self, m: Mapping) -> None:
        try:
            self.mapper.unmap_ram(m.gpa)
        except (ValueError, NotImplementedError):
            log.exception("unmapping firmware range %#x failed", m.gpa)

    def reset(self) -> None:
        """Power-on: every PAM range reads the ROM side (the i440FX resets its registers to 0)."""
        self.set_pam(bytes(7))

    # -- the MMIO path (see the module docstring) ------------------------------------------------------------
    def _segment_mode(self, gpa: int) -> int:
        for index, (start, size, _, _) in enumerate(PAM_SEGMENTS):
            if start <= gpa < start + size:
                return segment_mode(self.pam, index)
        return 0

    def shadow_read(self, gpa: int, size: int) -> int:
        value = 0
        for i in range(size):
            addr = gpa + i
            if not SHADOW_START <= addr < SHADOW_END:
                break
            if self._segment_mode(addr) & PAM_RE:
                byte = self.memory.read_u8(addr)
            else:
                byte = self.isa_rom.map[addr - SHADOW_START]
            value |= byte << (8 * i)
        return value

    def shadow_write(self, gpa: int, size: int, value: int) -> None:
        for i in range(size):
            addr = gpa + i
            if SHADOW_START <= addr < SHADOW_END and self._segment_mode(addr) & PAM_WE:
                self.memory.write_u8(addr, (value >> (8 * i)) & 0xFF)

    def close(self) -> None:
        """Nothing to give back beyond the buffers, which live as long as the backend may map them."""


class _RomHandler:
    def __init__(self, fw: FirmwareMemory) -> None:
        self.fw = fw

    def mmio_read(self, addr: int, size: int) -> int:
        off = addr - self.fw.rom_base
        return self.fw.rom.read(off, min(size, self.fw.rom.size - off))

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        pass                 # flash without a write protocol: writes are discarded


class _ShadowHandler:
    def __init__(self, fw: FirmwareMemory) -> None:
        self.fw = fw

    def mmio_read(self, addr: int, size: int) -> int:
        return self.fw.shadow_read(addr, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.fw.shadow_write(addr, size, value)


def firmware_path_ok(path: str | None) -> bool:
    """Whether the firmware file exists (for callers that want to say so before building a machine)."""
    return os.path.isfile(path or DEFAULT_FIRMWARE)
