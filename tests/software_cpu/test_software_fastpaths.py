"""The software CPU's native fast paths: their bytes against GNU as, and guests that fail if they are wrong.

* uc_tbstart's inline exit check at the start of every translated block: a guest spinning in one self-chained
  block (no exits of its own) must still be stopped by a kick, and blocks must actually have been rewritten.
* uc_sysentry's SYSCALL and SYSENTER: a ring-3 guest reports every register they change (Intel SDM vol. 2B),
  and SYSCALL without EFER.SCE still raises #UD through the Python path.
* uc_physread's page-table reads: equal to QEMU's own x86_ldq_phys/x86_ldl_phys wherever they are asked.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_internals as ui  # noqa: E402
from core.hypervisor import uc_native, uc_physread, uc_sysentry, uc_tbstart  # noqa: E402
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
    low = 0x33333333
    assert uc_tbstart.gen_code_wrapper_low(a, b, low, d) == gas(tmp_path, f"""
        push %rbx; mov %rsi, %rbx; movabs ${a}, %rax; call *%rax
        test %eax, %eax; js.d32 done
        mov {uc_tbstart.TB_TC_PTR}(%rbx), %rdx
        cmpw $0xbf48, (%rdx); jne.d32 done
        cmpb $0xf6, 11(%rdx); jne.d32 done
        movzbl 10(%rdx), %ecx; or $2, %ecx; cmp $0x33, %ecx; jne done
        movabs ${b}, %r8
        cmpb $0xe8, 12(%rdx); jne far
        movslq 13(%rdx), %rcx; lea 17(%rdx,%rcx), %rcx; cmp %r8, %rcx; jne done
        movw $0x0b79, 4(%rdx); movl $0x1f0fd0ff, 11(%rdx); movw $0x0040, 15(%rdx)
        jmp common
    far: cmpw $0x15ff, 12(%rdx); jne done
        movslq 14(%rdx), %rcx; cmp %r8, 18(%rdx,%rcx); jne done
        movw $0x0c79, 4(%rdx); movl $0x1f0fd0ff, 11(%rdx); movw $0x0044, 15(%rdx); movb $0, 17(%rdx)
    common: movl $0x00f07d83, (%rdx); movb $0xb8, 6(%rdx); movl ${low}, 7(%rdx)
        movabs ${d}, %rcx; lock incq (%rcx)
    done: pop %rbx; ret""")
    # The prologues the low-stub wrapper writes, for the near and the constant-pool call.
    near = gas(tmp_path, f"cmpl $0, -16(%rbp); jns 1f; mov ${low}, %eax; call *%rax; {{disp8}} nopl 0(%rax); 1:\n")
    assert len(near) == 17 and near[:7] == bytes.fromhex("837df000790bb8")
    assert near[11:] == bytes.fromhex("ffd00f1f4000")
    far = gas(tmp_path, f"cmpl $0, -16(%rbp); jns 1f; mov ${low}, %eax; call *%rax; "
              "{disp8} nopl 0(%rax,%rax,1); 1:\n")
    assert len(far) == 18 and far[:7] == bytes.fromhex("837df000790cb8")
    assert far[11:] == bytes.fromhex("ffd00f1f440000")
    # The prologue the wrapper writes (its immediates above), as the module docstring gives it.
    prologue = gas(tmp_path, "cmpl $0, -16(%rbp); jns 1f; call .+5; {disp8} nopw 0(%rax,%rax,1); 1:\n")
    assert len(prologue) == uc_tbstart.PROLOGUE_BYTES
    assert prologue[:7] == bytes.fromhex("837df000790be8") and prologue[11:] == bytes.fromhex("660f1f440000")


SPIN = r"""
        .code64
1:      inc %rax                        # one block chained to itself: no exit of its own, ever
        jmp 1b
"""


KICK_SPIN = """
import sys, time
sys.path.insert(0, {root!r})
from core.hypervisor import software, uc_native
from core.hypervisor.base import ExitReason
from tests.helpers.software_guest import Rig, assemble, long_mode_setup
# Unicorn's default buffer of 1 GiB: the second instance's then starts more than 2 GiB below the library, so its
# blocks call helpers through the constant pool -- the form this test must also see rewritten.
software.CODE_BUFFER_BYTES = 1 << 30
from tests.software_cpu.test_software_fastpaths import SPIN
exit_check = uc_native.natives().exit_check
assert exit_check.active, exit_check.reason
before = exit_check.rewritten
rig = Rig()
state = long_mode_setup(rig, assemble(SPIN, 64, 0x100000))
start = time.monotonic()
ex = rig.run(state, timeout=0.3)           # the watchdog kicks after 0.3 s
print(ex.reason.name, time.monotonic() - start, rig.vcpus[0].get_state().regs["rax"], exit_check.rewritten - before)
# A second instance, as the parallel engine's second vCPU: its code buffer is out of rel32 reach of the library.
before = exit_check.rewritten
rig2 = Rig()
ex = rig2.run(long_mode_setup(rig2, assemble(SPIN, 64, 0x100000)), timeout=0.3)
print(ex.reason.name, exit_check.rewritten - before)
rig2.close()
rig.close()
"""


def test_kick_stops_a_self_chained_block():
    """In a fresh process, as a VM process is: the inline check is written into the first unicorn instance's
    blocks, and into a second instance's too. The script gives both unicorn's 1 GiB buffer, so the second one is
    out of rel32 reach of the library: its helper calls go through the constant pool, and the stub lies below
    2 GiB. Before that fix it kept unicorn's call, which made this test depend on what ran before it in an xdist
    worker. Vireo's own 256 MiB buffers keep every vCPU within reach (test_code_buffer_reach.py)."""
    from tests.helpers.runner import REPO_ROOT
    run = subprocess.run([sys.executable, "-c", KICK_SPIN.format(root=str(REPO_ROOT))], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    reason, elapsed, rax, rewritten, reason2, rewritten2 = run.stdout.split()
    assert reason == "KICKED"
    assert float(elapsed) < 5, elapsed
    assert int(rax) > 1000
    assert int(rewritten) > 0                  # the block's prologue is the inline test
    assert reason2 == "KICKED" and int(rewritten2) > 0      # a later instance's too (stub below 2 GiB)


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_sysentry_stubs_match_their_assembly(tmp_path):
    assert uc_sysentry.layout_ok()
    a, b, c, d = 0x1111111111111111, 0x2222222222222222, 0x3333333333333333, 0x4444444444444444
    sets = "".join(f".set {name}, {value}\n" for name, value in uc_sysentry.ASSUMED.items())
    sets += (f".set ENV_CS, {ui.ENV_SEGS + ui.R_CS * ui.SEG_SIZE}\n.set ENV_SS, {ui.ENV_SEGS + ui.R_SS * ui.SEG_SIZE}\n"
             f".set CODE64_FLAGS, {uc_sysentry.CODE64_FLAGS}\n.set CODE32_FLAGS, {uc_sysentry.CODE32_FLAGS}\n"
             f".set DATA_FLAGS, {uc_sysentry.DATA_FLAGS}\n.set HF_LMA, 0x4000\n.set HF_CS64, 0x8000\n"
             ".set HF_PE, 0x80\n")

    def from_docstring(fn, read_eflags, write_eflags, update_hflags, slow) -> str:
        body = fn.__doc__.split("\n", 1)[1]
        for name, value in (("read_eflags", read_eflags), ("write_eflags", write_eflags),
                            ("update_hflags", update_hflags), ("movabs slow", f"movabs {slow}")):
            body = body.replace(f"movabs {name}," if name != "movabs slow" else "movabs slow,",
                                f"movabs ${value}," if name != "movabs slow" else f"movabs ${slow},")
        lines = [re.split(r"\s{2,};", line)[0] for line in body.splitlines()]
        return sets + "\n".join(line.replace("slow:", "9:").replace("jz slow", "jz 9f") for line in lines)

    assert uc_sysentry.syscall_code(a, b, c, d) == gas(tmp_path, from_docstring(uc_sysentry.syscall_code, a, b, c, d))
    assert uc_sysentry.sysenter_code(a, b, c, d) == gas(tmp_path,
                                                        from_docstring(uc_sysentry.sysenter_code, a, b, c, d))


# SYSCALL and SYSENTER from ring 3 in 64-bit mode, checked register by register against the SDM, and SYSCALL
# with EFER.SCE clear (#UD, through the Python path the native code falls back to).
SYSENTRY = r"""
        .code64
start:  lea ud(%rip), %rax              # IDT[6] -> ud (interrupt gate, selector 0x10)
        mov %rax, %rbx
        and $0xFFFF, %eax
        or $0x100000, %eax
        mov %rbx, %rdx
        shr $16, %rdx
        shl $48, %rdx
        or %rdx, %rax
        mov $0x8E, %edx
        shl $40, %rdx
        or %rdx, %rax
        mov %rax, 0x7000 + 6 * 16
        movq $0, 0x7000 + 6 * 16 + 8
        mov $0x40, %ax
        ltr %ax
        mov $0xC0000081, %ecx           # STAR: SYSCALL CS 0x10/SS 0x18, SYSRET base 0x23 (CS 0x33, SS 0x2B)
        xor %eax, %eax
        mov $0x00230010, %edx
        wrmsr
        mov $0xC0000082, %ecx           # LSTAR
        lea sys(%rip), %rax
        mov %rax, %rdx
        shr $32, %rdx
        wrmsr
        mov $0xC0000084, %ecx           # FMASK: AC DF IF SF CF
        mov $0x40681, %eax
        xor %edx, %edx
        wrmsr
        mov $0x174, %ecx                # SYSENTER_CS, _ESP, _EIP
        mov $0x10, %eax
        wrmsr
        mov $0x175, %ecx
        mov $0x60000, %eax
        wrmsr
        mov $0x176, %ecx
        lea se(%rip), %rax
        mov %rax, %rdx
        shr $32, %rdx
        wrmsr
no_sce: syscall                         # EFER.SCE still clear: #UD, whose handler sets it and skips this
        lea user(%rip), %rcx
        mov $0x202, %r11
        mov $0x70000, %rsp
        sysretq
user:   mov $-1, %eax
        add $1, %eax                    # CF ZF PF AF set, SF OF clear: RFLAGS 0x257
        mov $0x6FFF0, %rsp
call1:  syscall
back:   mov $0xE9, %dx
        mov %cs, %eax
        out %eax, %dx
        mov %r11, %rax                  # sysretq restored RFLAGS from R11
        out %eax, %dx
        stc
        mov $0x6FFE0, %rsp
        sysenter
sys:    pushfq                          # (first: the reports below change the flags)
        pop %r8
        mov $0xE9, %dx
        mov %rcx, %rax
        out %eax, %dx
        shr $32, %rax
        out %eax, %dx
        mov %r11, %rax
        out %eax, %dx
        mov %r8, %rax
        out %eax, %dx
        mov %cs, %eax
        out %eax, %dx
        mov %ss, %eax
        out %eax, %dx
        mov %rsp, %rax
        out %eax, %dx
        sysretq
se:     mov $0xE9, %dx
        pushfq
        pop %rax
        out %eax, %dx
        mov %cs, %eax
        out %eax, %dx
        mov %ss, %eax
        out %eax, %dx
        mov %rsp, %rax
        out %eax, %dx
        mov $0x510, %dx                 # done
        out %al, %dx
        cli
        hlt
ud:     mov $0xE9, %dx
        mov (%rsp), %rax                # RIP of the faulting SYSCALL
        out %eax, %dx
        mov $0xC0000080, %ecx           # EFER.SCE
        rdmsr
        or $1, %eax
        wrmsr
        addq $2, (%rsp)
        iretq
"""


def test_syscall_and_sysenter_registers_exactly():
    assert uc_native.natives().native_entries == ["syscall", "sysenter"]
    rig = Rig()
    try:
        code = assemble(SYSENTRY, 64, 0x100000)
        ex = rig.run(long_mode_setup(rig, code))
        assert rig.done, ex.detail
        words = rig.debug.words
        labels = {name: 0x100000 + code.index(marker) for name, marker in (
            ("no_sce", bytes.fromhex("0f05 488d0d")), ("back", bytes.fromhex("66bae9008cc8")),
            ("sys", bytes.fromhex("9c4158")))}
        ud_rip, rcx_lo, rcx_hi, r11, rflags, cs, ss, rsp, user_cs, user_rflags, se_rflags, se_cs, se_ss, se_rsp = \
            words
        assert ud_rip == labels["no_sce"]
        assert (rcx_hi << 32 | rcx_lo) == labels["back"]              # RCX: the instruction after SYSCALL
        assert r11 == 0x257                                          # R11: RFLAGS at SYSCALL
        assert rflags == 0x257 & ~0x40681                            # RFLAGS &= ~FMASK
        assert (cs, ss, rsp) == (0x10, 0x18, 0x6FFF0)                # STAR's selectors; RSP untouched
        assert (user_cs, user_rflags) == (0x33, 0x257)
        assert se_rflags == (0x257 & ~0x200) | 1                     # IF cleared, CF (stc) kept
        assert (se_cs, se_ss, se_rsp) == (0x10, 0x18, 0x60000)       # SYSENTER_CS, +8; SYSENTER_ESP
    finally:
        rig.close()


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_page_table_read_stubs_match_their_assembly(tmp_path):
    a, b = 0x1111111111111111, 0x2222222222222222
    for width, reg in ((8, "%rax"), (4, "%eax")):
        assert uc_physread.phys_load_code(a, b, width) == gas(tmp_path, f"""
            testl $0x80000, {ui.X86CPU_ENV + ui.ENV_HFLAGS}(%rdi); jnz 9f
            movabs ${a}, %rax
        1:  mov (%rax), %rcx; test %rcx, %rcx; jz 9f
            cmp %rcx, %rdi; jne 2f
            mov %rsi, %rdx; sub 8(%rax), %rdx
            cmp 16(%rax), %rdx; jae 2f
            lea {width}(%rdx), %rcx; cmp 16(%rax), %rcx; ja 2f
            mov 24(%rax), %rcx; mov (%rcx,%rdx), {reg}; ret
        2:  add $32, %rax; jmp 1b
        9:  movabs ${b}, %rax; jmp *%rax""")


def test_page_table_reads_equal_qemus_own():
    """The fast path against QEMU's x86_ldq_phys/x86_ldl_phys on the same CPU: inside RAM, at its edges, across
    its end, in the VGA hole (MMIO) and above RAM; and the Linux-style guests above ran their walks through it."""
    reads = uc_native.natives().page_table_reads
    assert reads.active, reads.reason
    rig = Rig(mem_mib=4)
    try:
        cpu = rig.accel.view.cpu
        rows = [tuple(reads.table[4 * i:4 * i + 4]) for i in range(uc_physread.RANGE_ENTRIES)]
        assert sum(row[0] == cpu for row in rows) == len(rig.accel.ram_mappings) >= 2
        for gpa in range(0, 4 << 20, 4096):
            rig.memory.write(gpa, (gpa * 0x9E3779B97F4A7C15 & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
                             + bytes(range(1, 9)))
        end = 4 << 20
        addrs = [0, 8, 0x1004, 0x9FFF8, 0x9FFFC, 0x9FFFD, 0xA0000, 0xBFFF8, 0xC0000, end - 8, end - 4, end - 3,
                 end, end + 0x1000, 0x1_0000_0000]
        for width, restype in ((8, ctypes.c_uint64), (4, ctypes.c_uint32)):
            fast, original = (ctypes.CFUNCTYPE(restype, ctypes.c_void_p, ctypes.c_uint64)(f)
                              for f in reads.functions[width])
            for addr in addrs:
                assert fast(cpu, addr) == original(cpu, addr), (width, hex(addr))
            assert fast(cpu, 0x2000) == (0x2000 * 0x9E3779B97F4A7C15) & ((1 << 8 * width) - 1)
    finally:
        rig.close()
