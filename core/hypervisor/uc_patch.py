"""Patching the loaded libunicorn in memory: pages of native code, lookups in the library's ELF file, and the
writes that redirect its pointers and rewrite its code.

* Native code lives in pages that are written while read/write and then sealed read/execute (never both), placed
  within +-1 GiB of the library when asked, so that a rel32 jump patched into the library reaches them.
* The library's own file is read as ELF64 (System V ABI, AMD64 supplement: section headers, .dynsym/.dynstr,
  .symtab, RELA relocations R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT) to find where an exported
  function's address was stored by the dynamic linker (GOT slots, absolute pointers in tables such as QEMU's
  `all_helpers`), and where a local (static) function lies.
* The lookups' answers are kept on disk for the library file (uc_lookup_cache), checked before use.
* A pointer is replaced only if it still holds the value expected (and is made writable just for the write); a
  code patch makes the page writable and executable for the moment, since other threads may be running it.

Used by uc_native (interrupt hooks, helper wrappers) and uc_codetrack (the write-protection of translated code).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
from ctypes import c_int, c_uint64, c_void_p

from core.hypervisor import uc_lookup_cache
from core.hypervisor.uc_internals import UnicornInternalsError, _lib, _require_lib, addr_of

_PAGE = 4096


class _NativePage:
    """One page of machine code: written while writable, then made read+execute (never both)."""

    def __init__(self, near: int | None = None, base: int = 0) -> None:
        """Near `near` if a page is free there; at `base` when given one already mapped (see _mmap_low)."""
        self.base = base or (_mmap_near(near) if near is not None else 0)
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


_MAP_32BIT = 0x40


def _mmap_low() -> int:
    """A read/write page in the first 2 GiB of the address space (MAP_32BIT, x86-64 Linux), or 0: code anywhere
    reaches it with a zero-extended 32-bit immediate. Never unmapped, as above."""
    got = _libc.mmap(None, _PAGE, mmap.PROT_READ | mmap.PROT_WRITE, _MAP_PRIVATE_ANONYMOUS | _MAP_32BIT, -1, 0)
    if got in (None, ctypes.c_void_p(-1).value):
        return 0
    if got >= 1 << 31:
        _libc.munmap(c_void_p(got), ctypes.c_size_t(_PAGE))
        return 0
    return got


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


class _LibImage:
    """The library's file, mapped read-only (it is tens of MB; only the tables searched are paged in), with its
    section headers and its load address. Lookups search the tables for the bytes of the entries wanted
    (bytes.find on the mapping) instead of decoding every entry in Python: the file is opened at every start."""

    def __init__(self) -> None:
        path = self.path = _require_lib()._name
        with open(path, "rb") as f:
            self.data = data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise UnicornInternalsError(f"{path}: not a little-endian ELF64 library")
        e_shoff, = struct.unpack_from("<Q", data, 0x28)
        e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
        # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize)
        self.sections = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
        self.dynsym = next(sec for sec in self.sections if sec[1] == 11)       # SHT_DYNSYM
        self.symtab = next((sec for sec in self.sections if sec[1] == 2), None)   # SHT_SYMTAB (absent if stripped)
        uc_open = self.dynamic_symbol("uc_open")
        if not uc_open:
            raise UnicornInternalsError(f"{path}: uc_open not in the dynamic symbol table")
        self.base = addr_of(_lib.uc_open) - uc_open[0][1]
        self._relas: list[tuple[memoryview, bytes]] | None = None

    def _entries(self, sec: tuple, field: int, value: bytes) -> list[int]:
        """File offsets of the entries of table `sec` whose bytes at `field` are `value`."""
        data, start, end, size = self.data, sec[4], sec[4] + sec[5], sec[9]
        out = []
        pos = data.find(value, start + field, end)
        while pos != -1:
            if (pos - start - field) % size == 0:
                out.append(pos - field)
            pos = data.find(value, pos + 1, end)
        return out

    def dynamic_relocations(self) -> list[tuple[memoryview, bytes]]:
        """Each RELA table linked to .dynsym (entries r_offset, r_info, r_addend) as its 64-bit words and its
        column of r_info words alone: a search for one r_info then scans a third of the bytes, all aligned."""
        if self._relas is None:
            dynsym = self.sections.index(self.dynsym)
            self._relas = []
            for sec in self.sections:
                if sec[1] == 4 and sec[6] == dynsym and sec[9] == 24:          # SHT_RELA
                    words = memoryview(self.data[sec[4]:sec[4] + sec[5]]).cast("Q")
                    self._relas.append((words, words[1::3].tobytes()))
        return self._relas

    def dynamic_symbol(self, name: str) -> list[tuple[int, int]]:
        """[(index, st_value)] of the exported symbol `name`, found through the library's GNU hash table (the
        dynamic linker's own lookup: Bloom filter skipped, bucket, then the chain of equal hashes); a library
        without one is searched as .symtab is."""
        gnu_hash = next((sec for sec in self.sections if sec[1] == 0x6FFFFFF6), None)     # SHT_GNU_HASH
        if gnu_hash is None:
            return self.symbols(self.dynsym, name)
        data, off = self.data, gnu_hash[4]
        nbuckets, symoffset, bloom_size, _shift = struct.unpack_from("<IIII", data, off)
        buckets = off + 16 + 8 * bloom_size
        chains = buckets + 4 * nbuckets
        want = name.encode()
        h = 5381
        for c in want:
            h = (h * 33 + c) & 0xFFFF_FFFF
        index, = struct.unpack_from("<I", data, buckets + 4 * (h % nbuckets))
        if index < symoffset:
            return []
        strtab = self.sections[self.dynsym[6]][4]
        while True:
            chain, = struct.unpack_from("<I", data, chains + 4 * (index - symoffset))
            if chain | 1 == h | 1:
                st_name, = struct.unpack_from("<I", data, self.dynsym[4] + index * 24)
                if data[strtab + st_name:strtab + st_name + len(want) + 1] == want + b"\0":
                    st_value, = struct.unpack_from("<Q", data, self.dynsym[4] + index * 24 + 8)
                    return [(index, st_value)]
            if chain & 1:
                return []
            index += 1

    def symbols(self, table: tuple, name: str) -> list[tuple[int, int]]:
        """(index, st_value) of every symbol of `table` (.dynsym or .symtab) called `name`. Its string table may
        share tails between names, so every place `name` ends a string there is a candidate st_name."""
        strtab = self.sections[table[6]]
        want = name.encode() + b"\0"
        out = []
        pos = self.data.find(want, strtab[4], strtab[4] + strtab[5])
        while pos != -1:
            for entry in self._entries(table, 0, struct.pack("<I", pos - strtab[4])):
                st_value, = struct.unpack_from("<Q", self.data, entry + 8)
                out.append(((entry - table[4]) // table[9], st_value))
            pos = self.data.find(want, pos + 1, strtab[4] + strtab[5])
        return out


_image: _LibImage | None = None


def _lib_image() -> _LibImage:
    global _image
    if _image is None:
        _image = _LibImage()
    return _image


def _search_helper_slots(symbols: list[str]) -> dict[str, tuple[int, list[int]]]:
    """For each symbol: (its run-time address, the run-time addresses of every data word the dynamic linker
    filled with it: GOT slots and absolute pointers in tables), read from the library's ELF dynamic relocations
    (R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT without addend)."""
    img = _lib_image()
    relas = img.dynamic_relocations()
    result = {}
    for s in symbols:
        slots = []
        found = img.dynamic_symbol(s)
        for index, _value in found:
            sym = struct.pack("<I", index)                     # the upper half of r_info: one search per table
            for words, infos in relas:
                pos = infos.find(sym)
                while pos != -1:
                    if pos % 8 == 4:
                        entry = 3 * (pos // 8)
                        if words[entry + 1] & 0xFFFF_FFFF in (1, 6, 7) and words[entry + 2] == 0:  # r_addend 0
                            slots.append(words[entry])
                    pos = infos.find(sym, pos + 1)
        if not found or not slots:
            raise UnicornInternalsError(f"{img.path}: no relocations for {s}; cannot interpose it")
        result[s] = (img.base + found[0][1], [img.base + r for r in sorted(slots)])
    return result


def _search_local_symbols(name: str) -> list[int]:
    """Run-time addresses of every local (static) function called `name` in the library's .symtab (empty if the
    library is stripped)."""
    img = _lib_image()
    if img.symtab is None:
        return []
    return [img.base + value for _index, value in img.symbols(img.symtab, name) if value]


def _find_helper_slots(symbols: list[str]) -> dict[str, tuple[int, list[int]]]:
    """_search_helper_slots, answered from the lookup cache (uc_lookup_cache) when it has this library's answer
    and that answer holds: each helper's address is what the dynamic linker gives for its name, and each slot
    holds that address."""
    path = _require_lib()._name
    key = "slots:" + ",".join(symbols)
    cached = uc_lookup_cache.get(path, key)
    if cached is not None:
        found = _cached_slots(path, symbols, cached)
        if found is not None:
            return found
    result = _search_helper_slots(symbols)
    base = _lib_image().base
    uc_lookup_cache.put(path, key, {s: [addr - base, [slot - base for slot in slots]]
                                    for s, (addr, slots) in result.items()})
    return result


def _cached_slots(path: str, symbols: list[str], cached) -> dict[str, tuple[int, list[int]]] | None:
    try:
        size = os.path.getsize(path)
        base = None
        result = {}
        for s in symbols:
            value, slots = cached[s]
            original = addr_of(getattr(_lib, s))
            if base is None:
                base = original - value
            if original != base + value or not slots:
                return None
            addrs = []
            for off in slots:
                if not isinstance(off, int) or not 0 <= off < size:
                    return None
                addrs.append(base + off)
            if any(c_uint64.from_address(a).value != original for a in addrs):
                return None
            result[s] = (original, addrs)
        return result
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        return None


def _local_symbols(name: str) -> list[int]:
    """_search_local_symbols, answered from the lookup cache when it has this library's answer (offsets from
    the load address, found through the exported uc_open's)."""
    path = _require_lib()._name
    key = "local:" + name
    cached = uc_lookup_cache.get(path, key)
    uc_open = uc_lookup_cache.get(path, "uc_open")
    if isinstance(cached, list) and isinstance(uc_open, int):
        size = os.path.getsize(path)
        if all(isinstance(off, int) and 0 < off < size for off in cached) and 0 < uc_open < size:
            base = addr_of(_lib.uc_open) - uc_open
            return [base + off for off in cached]
    img = _lib_image()
    result = _search_local_symbols(name)
    uc_lookup_cache.put(path, "uc_open", addr_of(_lib.uc_open) - img.base)
    uc_lookup_cache.put(path, key, [addr - img.base for addr in result])
    return result


def _patch_text(addr: int, code: bytes) -> None:
    """Overwrite library code (made writable for the moment; still executable, for other threads)."""
    rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    _mprotect(addr, len(code), rwx)
    try:
        ctypes.memmove(addr, code, len(code))
    finally:
        _mprotect(addr, len(code), mmap.PROT_READ | mmap.PROT_EXEC)
