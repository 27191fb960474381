"""The software CPU's native fast paths: their bytes against GNU as, and guests that fail if they are wrong.

* uc_tbstart's inline exit check at the start of every translated block: a guest spinning in one self-chained
  block (no exits of its own) must still be stopped by a kick, and blocks must actually have been rewritten.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_native, uc_tbstart  # noqa: E402
from core.hypervisor.base import ExitReason  # noqa: E402
from tests.helpers.software_guest import Rig, assemble, long_mode_setup  # noqa: E402


def gas(tmp_path, src: str) -> bytes:
    obj = tmp_path / "s.o"
    subprocess.run(["as", "--64", "-o", str(obj), "-"], input=(src + "\n").encode(), check=True)
    out = tmp_path / "s.bin"
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)], check=True)
    return out.read_bytes()


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_exit_check_stubs_match_their_assembly(tmp_path):
    a, b, c, d = 0x1111111111111111, 0x2222222222222222, 0x3333333333333333, 0x4444444444444444
    assert uc_tbstart.check_stub_code(b) == gas(tmp_path, f"""
        mov {uc_tbstart.ENV_UC}(%rbp), %rdi; xor %esi, %esi; movabs ${b}, %rax; jmp *%rax""")
    assert uc_tbstart.gen_code_wrapper(a, b, c, d) == gas(tmp_path, f"""
        push %rbx; mov %rsi, %rbx; movabs ${a}, %rax; call *%rax
        test %eax, %eax; js.d32 done
        mov {uc_tbstart.TB_TC_PTR}(%rbx), %rdx
        cmpw $0xbf48, (%rdx); jne done
        cmpb $0xf6, 11(%rdx); jne done
        movzbl 10(%rdx), %ecx; or $2, %ecx; cmp $0x33, %ecx; jne done
        cmpb $0xe8, 12(%rdx); jne done
        movslq 13(%rdx), %rcx; lea 17(%rdx,%rcx), %rcx
        movabs ${b}, %r8; cmp %r8, %rcx; jne done
        movabs ${c}, %r8; lea 11(%rdx), %rcx; sub %rcx, %r8
        movslq %r8d, %rcx; cmp %r8, %rcx; jne done
        movl $0x00f07d83, (%rdx); movw $0x0b79, 4(%rdx); movb $0xe8, 6(%rdx); mov %r8d, 7(%rdx)
        movl $0x441f0f66, 11(%rdx); movw $0, 15(%rdx)
        movabs ${d}, %rcx; lock incq (%rcx)
    done: pop %rbx; ret""")
    # The prologue the wrapper writes (its immediates above), as the module docstring gives it.
    prologue = gas(tmp_path, "cmpl $0, -16(%rbp); jns 1f; call .+5; {disp8} nopw 0(%rax,%rax,1); 1:\n")
    assert len(prologue) == uc_tbstart.PROLOGUE_BYTES
    assert prologue[:7] == bytes.fromhex("837df000790be8") and prologue[11:] == bytes.fromhex("660f1f440000")


SPIN = r"""
        .code64
1:      inc %rax                        # one block chained to itself: no exit of its own, ever
        jmp 1b
"""


def test_kick_stops_a_self_chained_block():
    exit_check = uc_native.natives().exit_check
    assert exit_check.active, exit_check.reason
    before = exit_check.rewritten
    rig = Rig()
    try:
        state = long_mode_setup(rig, assemble(SPIN, 64, 0x100000))
        start = time.monotonic()
        ex = rig.run(state, timeout=0.3)           # the watchdog kicks after 0.3 s
        elapsed = time.monotonic() - start
        assert ex.reason == ExitReason.KICKED
        assert elapsed < 5, elapsed
        assert rig.vcpus[0].get_state().regs["rax"] > 1000
        assert exit_check.rewritten > before        # the block's prologue is the inline test
    finally:
        rig.close()

