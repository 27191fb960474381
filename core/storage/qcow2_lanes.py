"""Whole-table arithmetic on qcow2 metadata without numpy: refcount blocks and L2 tables as rows of big-endian
unsigned "lanes" (QEMU docs/interop/qcow2.txt: refcount blocks hold 2^refcount_order-bit big-endian entries, L2
tables 64-bit big-endian entries).

Snapshot create, apply and delete touch every entry of every L2 table and of the refcount blocks they reach
(65,536 of each on a fully allocated 4 GiB image). A Python loop over them costs milliseconds, and importing
numpy for it costs ~50 ms, most of `vireo img snapshot`'s time against `qemu-img snapshot` (bench/snapshot.py).
Most of that work is on runs: an L2 table maps consecutive host clusters, and a refcount update adds ±1 to a
run of consecutive entries. Such a run is done at C speed on the bytes themselves: a slice read as one big
integer, plus or minus an integer with 1 in every lane (no lane may carry or borrow: checked first, by looking
for an all-ones or all-zeros lane), and lanes found with bytes.find at lane-aligned offsets. Tables that are
not runs go entry by entry through array.array.
"""
from __future__ import annotations

import struct
import sys

# array typecodes by lane width in bits ('I' is 4 bytes and 'Q' 8 on the platforms we run on; to_array checks).
TYPECODES = {8: "B", 16: "H", 32: "I", 64: "Q"}
TYPE_CHECKING = False
if TYPE_CHECKING:
    from array import array
_SWAP = sys.byteorder == "little"


def to_array(raw: bytes | bytearray | memoryview, bits: int) -> array:
    """The lanes of `raw` (`bits` wide, big-endian, a whole number of bytes) as native integers."""
    from array import array  # here: the module imports collections.abc, which `img snapshot` starts without
    out = array(TYPECODES[bits], raw)
    assert out.itemsize * 8 == bits
    if _SWAP and bits > 8:
        out.byteswap()
    return out


def from_array(values: array) -> bytes:
    """The inverse of to_array (the array is left as it was)."""
    if _SWAP and values.itemsize > 1:
        values = type(values)(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def find_lane(data: bytes | bytearray, lane: bytes, start: int = 0, end: int | None = None) -> int:
    """Byte offset of the first lane-aligned copy of `lane` in data[start:end] (start aligned), or -1."""
    nb = len(lane)
    end = len(data) if end is None else end
    pos = start
    while True:
        p = data.find(lane, pos, end)
        if p < 0 or p % nb == 0:
            return p
        pos = p + nb - p % nb             # a match across two lanes: go on from the next lane


def lanes_equal_to(data: bytes | bytearray, lane: bytes, start: int = 0, end: int | None = None) -> list[int]:
    """Byte offsets of every lane-aligned copy of `lane` in data[start:end], ascending."""
    nb = len(lane)
    out = []
    end = len(data) if end is None else end
    pos = start
    while (p := find_lane(data, lane, pos, end)) >= 0:
        out.append(p)
        pos = p + nb
    return out


_ONES: dict[tuple[int, int], int] = {}


def add_one_each(data: bytes | bytearray, nb: int, delta: int) -> bytes:
    """`data` (lanes of `nb` bytes) with `delta` (+1 or -1) added to every lane; the caller has checked that no
    lane is all ones (+1) or zero (-1), so no lane carries into or borrows from its neighbour."""
    ones = _ONES.get((nb, len(data)))
    if ones is None:
        ones = _ONES[(nb, len(data))] = int.from_bytes((bytes(nb - 1) + b"\x01") * (len(data) // nb), "big")
    return (int.from_bytes(data, "big") + delta * ones).to_bytes(len(data), "big")


def zero_runs(data: bytes | bytearray, nb: int, start: int = 0):
    """(first, end) lane indices of each run of zero lanes in data from lane `start`, in order (a generator)."""
    zero = bytes(nb)
    pos = start * nb
    zeros = memoryview(bytes(len(data)))
    while (p := find_lane(data, zero, pos)) >= 0:
        q = _zeros_end(data, p, zeros)
        q -= q % nb
        yield p // nb, q // nb
        pos = q + nb


def _zeros_end(data: bytes | bytearray, p: int, zeros: memoryview) -> int:
    """The offset of the first non-zero byte of data at or after `p` (len(data) if none): a galloping then
    binary search over all-zero prefixes, each one memcmp (no module re, which `img snapshot` leaves out)."""
    size = len(data)
    good, step = 0, 1                         # data[p:p+good] is all zeros
    while p + good < size:
        n = min(step, size - p - good)
        if not data.startswith(zeros[:n], p + good):
            break
        good += n
        step *= 2
    else:
        return size
    lo, hi = good, good + min(step, size - p - good)   # the first non-zero byte is in data[p+lo:p+hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if data.startswith(zeros[:mid - lo], p + lo):
            lo = mid
        else:
            hi = mid
    return p + lo


_RAMPS: dict[tuple[int, int], tuple[int, int]] = {}
_RUNS: dict[tuple[int, int, int], bytes] = {}     # (lanes, step, first) -> the table of that run, recently used
_RUNS_BUDGET = 8 << 20                            # bytes of tables kept (128 tables of 64 KiB clusters)


def sequential_run(raw: bytes | bytearray, step: int) -> int | None:
    """If the 64-bit lanes of `raw` are e, e+step, e+2*step, … (an L2 table mapping consecutive host clusters, all
    with the same flags), return e; else None. The run's table is made with two big-integer operations (the ramp
    0, step, 2*step, … plus e in every lane) and compared with `raw` as bytes, instead of a loop over the entries;
    it is kept, as snapshot operations look at the same tables more than once."""
    n = len(raw) // 8
    if not n:
        return None
    first = int.from_bytes(raw[:8], "big")
    last = first + (n - 1) * step
    if last >= 1 << 64 or int.from_bytes(raw[-8:], "big") != last:
        return None                 # not a run (or the last lane would carry out of 64 bits)
    key = (n, step, first)
    expected = _RUNS.get(key)
    if expected is None:
        ramp = _RAMPS.get((n, step))
        if ramp is None:
            ramp = _RAMPS[(n, step)] = (int.from_bytes(struct.pack(f">{n}Q", *range(0, n * step, step)), "big"),
                                        int.from_bytes((bytes(7) + b"\x01") * n, "big"))
        expected = _RUNS[key] = (ramp[0] + first * ramp[1]).to_bytes(n * 8, "big")
        while len(_RUNS) > max(2, _RUNS_BUDGET // len(expected)):
            del _RUNS[next(iter(_RUNS))]
    return first if raw == expected else None
