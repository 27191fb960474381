"""QEMU's firmware configuration device (fw_cfg), as QEMU's docs/specs/fw_cfg.rst specifies it for x86.

The guest (SeaBIOS, and the linuxboot option ROM) reads configuration items through it:

* the selector register at port 0x510 (16-bit write: the item key), the data register at port 0x511 (8-bit reads
  return the selected item's bytes one after the other; past the end, and for a key nobody provides, they read
  as 0; data writes are ignored, as since QEMU 2.4);
* the DMA interface at 0x514: an 8-byte big-endian address register (the high half at 0x514, the low half at
  0x518; writing the low half starts the transfer) of a FWCfgDmaAccess structure in guest memory -- be32
  control, be32 length, be64 address. Control bits: error (0x01), read (0x02), skip (0x04), select (0x08, the key
  in bits 31:16), write (0x10). When done the device writes back the control word: 0, or the error bit alone.
  Reading the DMA address register returns the signature "QEMU CFG";
* FW_CFG_ID (0x01) reports the traditional interface (bit 0) and DMA (bit 1); FW_CFG_FILE_DIR (0x19) lists the
  named files (be32 count, then per file be32 size, be16 key, be16 reserved, 56 bytes of NUL-padded name), whose
  keys start at 0x20.

Every guest-memory access goes through GuestMemory: a structure or a buffer outside RAM makes the transfer fail
with the error bit (or, when the structure itself is unreachable, leaves it untouched), never an exception out
of the device. Writes through DMA are refused (error bit) except to items registered as writable.
"""
from __future__ import annotations

import logging
import struct
import threading

from core.bus import PortIoBus
from core.memory import GuestMemory, GuestMemoryError
from core.state import fields as f

log = logging.getLogger(__name__)

PORT_SELECTOR, PORT_DATA, PORT_DMA = 0x510, 0x511, 0x514
DMA_REGISTER_LEN = 8

# Item keys (fw_cfg.rst, "Selector Register" and the list of items; arch-local keys have bit 15 set).
SIGNATURE, ID, UUID, RAM_SIZE, NOGRAPHIC, NB_CPUS = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
KERNEL_ADDR, KERNEL_SIZE, KERNEL_CMDLINE, INITRD_ADDR, INITRD_SIZE = 0x07, 0x08, 0x09, 0x0A, 0x0B
BOOT_DEVICE, NUMA, BOOT_MENU, MAX_CPUS, KERNEL_ENTRY, KERNEL_DATA, INITRD_DATA = 0x0C, 0x0D, 0x0E, 0x0F, 0x10, \
    0x11, 0x12
CMDLINE_ADDR, CMDLINE_SIZE, CMDLINE_DATA, SETUP_ADDR, SETUP_SIZE, SETUP_DATA = 0x13, 0x14, 0x15, 0x16, 0x17, 0x18
FILE_DIR = 0x19
FILE_FIRST = 0x20
WRITE_CHANNEL = 0x4000
ARCH_LOCAL = 0x8000
E820_TABLE = ARCH_LOCAL + 3
KEY_MASK = 0xFFFF & ~WRITE_CHANNEL

ID_TRADITIONAL, ID_DMA = 0x01, 0x02
DMA_SIGNATURE = b"QEMU CFG"
DMA_CTL_ERROR, DMA_CTL_READ, DMA_CTL_SKIP, DMA_CTL_SELECT, DMA_CTL_WRITE = 0x01, 0x02, 0x04, 0x08, 0x10
_DMA_ACCESS = struct.Struct(">IIQ")              # control, length, address
FILE_NAME_LEN = 56
MAX_FILES = 0x1000


class FwCfgError(ValueError):
    """A bad item or file set up by the machine (a bug of the caller, not of the guest)."""


class FwCfg:
    """The fw_cfg device. Items are bytes keyed by selector; files get keys from FILE_FIRST in the order added
    (the directory lists them sorted by name, as QEMU does, so a guest sees the same listing whatever the
    order of set-up)."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self._lock = threading.Lock()
        self._items: dict[int, bytes] = {}
        self._writable: dict[int, bytearray] = {}
        self._files: dict[str, int] = {}
        self._key = SIGNATURE
        self._offset = 0
        self._dma_address = bytearray(DMA_REGISTER_LEN)
        self.dma_errors = 0
        self.add_item(SIGNATURE, b"QEMU")
        self.add_item(ID, struct.pack("<I", ID_TRADITIONAL | ID_DMA))
        self._update_directory()

    # -- set-up ------------------------------------------------------------------------------------------
    def add_item(self, key: int, data: bytes) -> None:
        """Provide (or replace) the numbered item `key`."""
        if not 0 <= key < FILE_FIRST and not ARCH_LOCAL <= key < ARCH_LOCAL + FILE_FIRST:
            raise FwCfgError(f"fw_cfg key {key:#x} is not a numbered item")
        with self._lock:
            self._items[key] = bytes(data)

    def add_u16(self, key: int, value: int) -> None:
        self.add_item(key, struct.pack("<H", value))

    def add_u32(self, key: int, value: int) -> None:
        self.add_item(key, struct.pack("<I", value))

    def add_u64(self, key: int, value: int) -> None:
        self.add_item(key, struct.pack("<Q", value))

    def add_file(self, name: str, data: bytes, writable: bool = False) -> int:
        """Provide (or replace) the named file; return its key. A writable file takes DMA writes from the guest
        (fw_cfg.rst, "write" control bit), kept in `file_data`."""
        raw = name.encode()
        if not raw or len(raw) >= FILE_NAME_LEN:
            raise FwCfgError(f"fw_cfg file name {name!r} must be 1-55 bytes")
        with self._lock:
            key = self._files.get(name)
            if key is None:
                if len(self._files) >= MAX_FILES:
                    raise FwCfgError(f"fw_cfg has no room for file {name!r}")
                key = FILE_FIRST + len(self._files)
                self._files[name] = key
            self._items[key] = bytes(data)
            if writable:
                self._writable[key] = bytearray(data)
            else:
                self._writable.pop(key, None)
        self._update_directory()
        return key

    def has_file(self, name: str) -> bool:
        return name in self._files

    def file_data(self, name: str) -> bytes:
        """The current contents of a file (including what the guest wrote to a writable one)."""
        key = self._files[name]
        with self._lock:
            if key in self._writable:
                return bytes(self._writable[key])
            return self._items[key]

    def item(self, key: int) -> bytes:
        """The contents of item `key` as the guest reads it (b"" for a key nobody provides)."""
        with self._lock:
            return bytes(self._writable.get(key, self._items.get(key, b"")))

    def file_names(self) -> list[str]:
        return sorted(self._files)

    def _update_directory(self) -> None:
        with self._lock:
            entries = [struct.pack(">I", len(self._files))]
            for name in sorted(self._files):
                key = self._files[name]
                entries.append(struct.pack(">IHH", len(self._items[key]), key, 0)
                               + name.encode().ljust(FILE_NAME_LEN, b"\0"))
            self._items[FILE_DIR] = b"".join(entries)

    # -- guest interface ---------------------------------------------------------------------------------
    def attach(self, pio: PortIoBus) -> None:
        pio.register(PORT_SELECTOR, 2, self)
        pio.register(PORT_DMA, DMA_REGISTER_LEN, self)

    def reset(self) -> None:
        with self._lock:
            self._key = SIGNATURE
            self._offset = 0
            self._dma_address[:] = bytes(DMA_REGISTER_LEN)

    # -- machine state (docs/machine-state.md): the selector, read offset, DMA address latch and the contents
    # of the guest-writable files; the rest is built again from the VM definition.
    STATE_VERSION = 1

    def get_state(self) -> dict:
        with self._lock:
            return {"key": self._key, "offset": self._offset, "dma_address": bytes(self._dma_address),
                    "writable": {str(k): bytes(v) for k, v in self._writable.items()}}

    def set_state(self, state: dict) -> None:
        f.expect_record(state, "fw_cfg", ("key", "offset", "dma_address", "writable"))
        key = f.check(state["key"], f.Int(0, KEY_MASK), "fw_cfg.key")
        offset = f.check(state["offset"], f.Int(0, 1 << 32), "fw_cfg.offset")
        dma = f.check(state["dma_address"], f.Bytes(DMA_REGISTER_LEN), "fw_cfg.dma_address")
        writable = state["writable"]
        if not isinstance(writable, dict) or sorted(writable) != sorted(str(k) for k in self._writable):
            raise f.StateError("fw_cfg.writable: the saved machine's writable files are not this one's")
        contents = {int(k): f.check(v, f.Bytes(len(self._writable[int(k)])), f"fw_cfg.writable[{k}]")
                    for k, v in writable.items()}
        with self._lock:
            self._key, self._offset = key, offset
            self._dma_address[:] = dma
            for k, data in contents.items():
                self._writable[k][:] = data

    def _select(self, key: int) -> None:
        # The write-channel bit selects the same item (writes go through DMA only); the data offset restarts.
        self._key = key & KEY_MASK
        self._offset = 0

    def _current(self) -> bytes | bytearray:
        key = self._key
        if key in self._writable:
            return self._writable[key]
        return self._items.get(key, b"")

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            if port == PORT_DATA:
                data = self._current()
                out = 0
                for i in range(size):
                    if self._offset < len(data):
                        out |= data[self._offset] << (8 * i)
                        self._offset += 1
                return out
            if PORT_DMA <= port < PORT_DMA + DMA_REGISTER_LEN:
                off = port - PORT_DMA
                return int.from_bytes(DMA_SIGNATURE[off:off + size].ljust(size, b"\0"), "little")
            return 0       # the selector reads as 0 (QEMU's x86 selector is write-only)

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == PORT_SELECTOR:
            with self._lock:
                self._select(value & 0xFFFF)
            return
        if port == PORT_DATA:
            return         # data-register writes have no effect (fw_cfg.rst)
        off = port - PORT_DMA
        if not 0 <= off < DMA_REGISTER_LEN or off + size > DMA_REGISTER_LEN:
            return
        with self._lock:
            # The register is big-endian: the guest stores cpu_to_be32(address), so the bytes as they sit in the
            # register are the port value's little-endian bytes.
            self._dma_address[off:off + size] = value.to_bytes(size, "little")
            start = off + size == DMA_REGISTER_LEN and off <= 4
            address = int.from_bytes(self._dma_address, "big")
            if start:
                self._dma_address[:] = bytes(DMA_REGISTER_LEN)
        if start:
            self.run_dma(address)

    # -- DMA ---------------------------------------------------------------------------------------------
    def run_dma(self, address: int) -> None:
        """Carry out the FWCfgDmaAccess at guest-physical `address`, then write its control word back."""
        try:
            control, length, target = _DMA_ACCESS.unpack(self.memory.read(address, _DMA_ACCESS.size))
        except GuestMemoryError:
            self.dma_errors += 1
            log.debug("fw_cfg: DMA access structure at %#x is outside RAM", address)
            return
        with self._lock:
            ok = self._transfer(control, length, target)
        if not ok:
            self.dma_errors += 1
        try:
            self.memory.write(address, struct.pack(">I", 0 if ok else DMA_CTL_ERROR))
        except GuestMemoryError:
            self.dma_errors += 1

    def _transfer(self, control: int, length: int, target: int) -> bool:
        if control & DMA_CTL_SELECT:
            self._select(control >> 16)
        data = self._current()
        avail = max(0, len(data) - self._offset)
        try:
            if control & DMA_CTL_READ:
                # The length is the guest's 32-bit field: check the range before touching anything, and write
                # the zeros past the item's end in place (never a host buffer of the guest's chosen size).
                if not self.memory.contains(target, length):
                    return False
                n = min(length, avail)
                self.memory.write(target, data[self._offset:self._offset + n])
                if length > n:
                    self.memory.fill(target + n, length - n)     # past the end of the item: zeros
                self._offset += n
            elif control & DMA_CTL_WRITE:
                if self._key not in self._writable or length > avail:
                    return False
                self._writable[self._key][self._offset:self._offset + length] = self.memory.read(target, length)
                self._offset += length
            elif control & DMA_CTL_SKIP:
                self._offset += min(length, avail)
        except GuestMemoryError:
            return False
        return True
