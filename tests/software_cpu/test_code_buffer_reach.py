"""Every vCPU's translation buffer lies within rel32 reach of libunicorn (core/hypervisor/software.py,
CODE_BUFFER_BYTES). Otherwise each helper call its blocks make is an indirect call through the constant pool, and
that vCPU runs slower than the first. The check reads the process's own memory map before and after a 4-vCPU
parallel VM maps its buffers. With unicorn's default of 1 GiB a buffer, the second buffer already starts more
than 2 GiB below the library."""
from __future__ import annotations

import pytest

pytest.importorskip("unicorn")

from core.hypervisor.software import CODE_BUFFER_BYTES  # noqa: E402
from tests.helpers.software_guest import Rig  # noqa: E402

REL32 = 1 << 31


def _executable_mappings() -> dict[tuple[int, int], str]:
    found = {}
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if "x" not in fields[1]:
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            found[(lo, hi)] = fields[5] if len(fields) > 5 else ""
    return found


def test_every_vcpus_code_buffer_is_within_rel32_reach_of_the_library() -> None:
    before = _executable_mappings()
    rig = Rig(mem_mib=64, cpus=4)
    try:
        after = _executable_mappings()
        library = [span for span, name in after.items() if "libunicorn" in name]
        assert library, "libunicorn's text not found in /proc/self/maps"
        lib_lo, lib_hi = min(lo for lo, _ in library), max(hi for _, hi in library)
        buffers = [span for span, name in after.items()
                   if span not in before and not name and span[1] - span[0] >= CODE_BUFFER_BYTES // 2]
        assert len(buffers) == 4, [hex(lo) for lo, _ in buffers]
        for lo, hi in buffers:
            # The farthest pair: a block at one end calling a helper at the other end of the library.
            assert max(abs(lib_hi - lo), abs(hi - lib_lo)) < REL32, f"buffer {lo:#x}-{hi:#x} out of reach"
    finally:
        rig.close()
