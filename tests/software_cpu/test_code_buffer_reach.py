"""Every vCPU's translation buffer lies within rel32 reach of libunicorn (core/hypervisor/software.py,
CODE_BUFFER_BYTES). Otherwise each helper call its blocks make is an indirect call through the constant pool, and
that vCPU runs slower than the first. The check runs in a fresh process, as a VM process is. It reads the
process's own memory map before and after a 4-vCPU parallel VM maps its buffers. With unicorn's default of 1 GiB
a buffer, the second buffer already starts more than 2 GiB below the library. In a long-lived process whose
address space is already crowded (an xdist worker) the kernel may place them anywhere."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("unicorn")

from tests.helpers.runner import REPO_ROOT  # noqa: E402

REL32 = 1 << 31

SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from core.hypervisor.software import CODE_BUFFER_BYTES
from tests.helpers.software_guest import Rig

def executable_mappings():
    found = {{}}
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if "x" in fields[1]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                found[(lo, hi)] = fields[5] if len(fields) > 5 else ""
    return found

before = executable_mappings()
rig = Rig(mem_mib=256, cpus=4)
after = executable_mappings()
rig.close()
library = [list(span) for span, name in after.items() if "libunicorn" in name]
buffers = [list(span) for span, name in after.items()
           if span not in before and not name and span[1] - span[0] >= CODE_BUFFER_BYTES // 2]
print(json.dumps({{"library": library, "buffers": buffers}}))
"""


def test_every_vcpus_code_buffer_is_within_rel32_reach_of_the_library() -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(REPO_ROOT))], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.splitlines()[-1])
    assert found["library"], "libunicorn's text not found in /proc/self/maps"
    lib_lo = min(lo for lo, _ in found["library"])
    lib_hi = max(hi for _, hi in found["library"])
    assert len(found["buffers"]) == 4, [hex(lo) for lo, _ in found["buffers"]]
    for lo, hi in found["buffers"]:
        # The farthest pair: a block at one end calling a helper at the other end of the library.
        assert max(abs(lib_hi - lo), abs(hi - lib_lo)) < REL32, f"buffer {lo:#x}-{hi:#x} out of reach"
