"""Patching the loaded libunicorn in memory: pages of native code, lookups in the library's ELF file, and the
writes that redirect its pointers and rewrite its code.

* Native code lives in pages that are written while read/write and then sealed read/execute (never both), placed
  within +-1 GiB of the library when asked, so that a rel32 jump patched into the library reaches them.
* The library's own file is read as ELF64 (System V ABI, AMD64 supplement: section headers, .dynsym/.dynstr,
  .symtab, RELA relocations R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT) to find where an exported
  function's address was stored by the dynamic linker (GOT slots, absolute pointers in tables such as QEMU's
  `all_helpers`), and where a local (static) function lies.
* A pointer is replaced only if it still holds the value expected (and is made writable just for the write); a
  code patch makes the page writable and executable for the moment, since other threads may be running it.

Used by uc_native (interrupt hooks, helper wrappers) and uc_codetrack (the write-protection of translated code).
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from ctypes import c_int, c_uint64, c_void_p

from core.hypervisor.uc_internals import UnicornInternalsError, _lib, _require_lib, addr_of

_PAGE = 4096


class _NativePage:
    """One page of machine code: written while writable, then made read+execute (never both)."""

    def __init__(self, near: int | None = None) -> None:
        self.base = _mmap_near(near) if near is not None else 0
        if not self.base:
            self._mem = mmap.mmap(-1, _PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self.base = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        self._used = 0

    def add(self, code: bytes) -> int:
        if self._used + len(code) > _PAGE:
            raise UnicornInternalsError("native code page full")
        addr = self.base + self._used
        ctypes.memmove(addr, code, len(code))
        self._used += (len(code) + 15) & ~15
        return addr

    def seal(self) -> None:
        _mprotect(self.base, _PAGE, mmap.PROT_READ | mmap.PROT_EXEC)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (c_void_p, ctypes.c_size_t, c_int)
_libc.mprotect.restype = c_int


_libc.mmap.argtypes = (c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long)
_libc.mmap.restype = c_void_p
_MAP_PRIVATE_ANONYMOUS = 0x22
_MAP_FIXED_NOREPLACE = 0x100000


def _mmap_near(addr: int) -> int:
    """A read/write page within +-1 GiB of `addr` (so rel32 jumps reach it from there), or 0 if none is free.
    Never unmapped: native code lives as long as the process."""
    for delta in range(1, 64):
        for sign in (-1, 1):
            hint = (addr + sign * delta * (16 << 20)) & ~(_PAGE - 1)
            if hint <= 0:
                continue
            got = _libc.mmap(hint, _PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                             _MAP_PRIVATE_ANONYMOUS | _MAP_FIXED_NOREPLACE, -1, 0)
            if got in (None, ctypes.c_void_p(-1).value):
                continue
            if abs(got - addr) < 1 << 30:
                return got
            _libc.munmap(c_void_p(got), ctypes.c_size_t(_PAGE))     # a kernel that took it as a mere hint
    return 0


def _mprotect(addr: int, length: int, prot: int) -> None:
    start = addr & ~(_PAGE - 1)
    end = (addr + length + _PAGE - 1) & ~(_PAGE - 1)
    if _libc.mprotect(start, end - start, prot) != 0:
        raise UnicornInternalsError(f"mprotect failed: errno {ctypes.get_errno()}")

def _imm64(value: int) -> bytes:
    return struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF)


def _poke_pointer(addr: int, expected: int, value: int) -> None:
    cell = c_uint64.from_address(addr)
    if cell.value == value:
        return
    if cell.value != expected:
        raise UnicornInternalsError(f"libunicorn pointer at {addr:#x} is {cell.value:#x}, expected {expected:#x}")
    _mprotect(addr, 8, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        cell.value = value
    finally:
        _mprotect(addr, 8, mmap.PROT_READ)


def _find_helper_slots(symbols: list[str]) -> dict[str, tuple[int, list[int]]]:
    """For each symbol: (its run-time address, the run-time addresses of every data word the dynamic linker
    filled with it: GOT slots and absolute pointers in tables), read from the library's ELF dynamic relocations."""
    path = _require_lib()._name
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise UnicornInternalsError(f"{path}: not a little-endian ELF64 library")
    e_shoff, = struct.unpack_from("<Q", elf, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    dynsym = next(s for s in sections if s[1] == 11)          # SHT_DYNSYM
    dynstr = sections[dynsym[6]]
    names: dict[int, str] = {}
    values: dict[str, int] = {}
    for i in range(dynsym[5] // 24):
        st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", elf, dynsym[4] + i * 24)
        end = elf.index(b"\0", dynstr[4] + st_name)
        name = elf[dynstr[4] + st_name:end].decode()
        names[i] = name
        values[name] = st_value
    wanted = set(symbols)
    found: dict[str, list[int]] = {s: [] for s in symbols}
    for sec in sections:
        if sec[1] != 4:                                        # SHT_RELA
            continue
        for off in range(sec[4], sec[4] + sec[5], 24):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", elf, off)
            rtype, sym = r_info & 0xFFFFFFFF, r_info >> 32
            if rtype in (1, 6, 7) and names.get(sym) in wanted and r_addend == 0:  # R_X86_64_64/GLOB_DAT/JUMP_SLOT
                found[names[sym]].append(r_offset)
    base = addr_of(_lib.uc_open) - values["uc_open"]
    result = {}
    for s in symbols:
        if s not in values or not found[s]:
            raise UnicornInternalsError(f"{path}: no relocations for {s}; cannot interpose it")
        result[s] = (base + values[s], [base + r for r in found[s]])
    return result


def _local_symbols(name: str) -> list[int]:
    """Run-time addresses of every local (static) function called `name` in the library's .symtab (empty if the
    library is stripped)."""
    elf, sections, base = _elf()
    symtab = next((sec for sec in sections if sec[1] == 2), None)     # SHT_SYMTAB
    if symtab is None:
        return []
    strtab = sections[symtab[6]]
    want = name.encode() + b"\0"
    out = []
    for i in range(symtab[5] // 24):
        st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", elf, symtab[4] + i * 24)
        start = strtab[4] + st_name
        if st_value and elf[start:start + len(want)] == want:
            out.append(base + st_value)
    return out


def _elf() -> tuple[bytes, list[tuple], int]:
    """The library file, its section headers and its load address (from an exported symbol)."""
    path = _require_lib()._name
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise UnicornInternalsError(f"{path}: not a little-endian ELF64 library")
    e_shoff, = struct.unpack_from("<Q", elf, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    dynsym = next(sec for sec in sections if sec[1] == 11)
    dynstr = sections[dynsym[6]]
    for i in range(dynsym[5] // 24):
        st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", elf, dynsym[4] + i * 24)
        if elf[dynstr[4] + st_name:dynstr[4] + st_name + 8] == b"uc_open\0":
            return elf, sections, addr_of(_lib.uc_open) - st_value
    raise UnicornInternalsError(f"{path}: uc_open not in the dynamic symbol table")



def _patch_text(addr: int, code: bytes) -> None:
    """Overwrite library code (made writable for the moment; still executable, for other threads)."""
    rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    _mprotect(addr, len(code), rwx)
    try:
        ctypes.memmove(addr, code, len(code))
    finally:
        _mprotect(addr, len(code), mmap.PROT_READ | mmap.PROT_EXEC)
