"""Atomic LOCK across unicorn instances on their own threads (core/hypervisor/uc_parallel.py): two instances over
the same host memory increment one counter with `lock xadd` or a `lock cmpxchg` retry loop; with the parallel
translation every increment counts, without it updates are lost (the check below can fail, and does when the
parallel translation is off); a misaligned LOCK operand goes through the stop-the-world step and still counts
exactly (Intel SDM vol. 3, 8.1.2.2)."""
from __future__ import annotations

import ctypes
import subprocess
import threading

import pytest

pytest.importorskip("unicorn")

import unicorn  # noqa: E402

from core.hypervisor import uc_internals as ui  # noqa: E402
from core.hypervisor import uc_parallel as up  # noqa: E402
from core.hypervisor.uc_native import natives  # noqa: E402
from tests.helpers.software_guest import assemble  # noqa: E402

CODE, COUNTER = 0x1000, 0x8000

LOOPS = {
    "lock xadd": """
        mov ${n}, %ecx
    1:  mov $1, %eax
        lock xadd %eax, {addr}
        dec %ecx
        jnz 1b
        nop""",
    "lock cmpxchg": """
        mov ${n}, %ecx
    1:  mov {addr}, %eax
    2:  lea 1(%rax), %edx
        lock cmpxchg %edx, {addr}
        jnz 2b
        dec %ecx
        jnz 1b
        nop""",
    # A spinlock taken with xchg (implicitly locked) around a plain increment: a non-atomic xchg lets two
    # instances in at once (lost increments) or loses a release (both spin for ever).
    "xchg spinlock": """
        mov ${n}, %ecx
    1:  mov $1, %eax
        xchg %eax, {addr} + 64
        test %eax, %eax
        jz 2f
        pause
        jmp 1b
    2:  incl {addr}
        movl $0, {addr} + 64
        dec %ecx
        jnz 1b
        nop""",
}


def _count(kind: str, n: int, offset: int = 0, parallel: bool = True, threads: int = 2) -> tuple[int, int]:
    """Run `kind` n times on each of `threads` instances at once; (the counter's final value, atomic steps)."""
    natives()
    par = up.parallel_translation()
    code = assemble(".code64\n" + LOOPS[kind].format(n=n, addr=hex(COUNTER + offset)), 64, CODE)
    mem = ctypes.create_string_buffer(0x10000)
    ctypes.memmove(ctypes.addressof(mem) + CODE, code, len(code))
    end = CODE + len(code) - 1                          # the final nop: emu_start's `until`
    q = ui.qemu()
    world = up.World()
    views = []
    for _ in range(threads):
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        uc.mem_map_ptr(0, 0x10000, unicorn.UC_PROT_ALL, ctypes.addressof(mem))
        v = ui.CpuView(uc)
        ui.disable_mid_instruction_exits(v)        # as the engine: a stop lands at block starts only
        if parallel:
            par.register(v.uch)
        views.append(v)
    steps = [0] * threads
    errors: list = []

    def run(i: int) -> None:
        v = views[i]
        others = [w for w in views if w is not v]
        try:
            pc = CODE
            while pc != end:
                world.enter(i)
                err = q.uc_emu_start(v.uch, pc, end, 0, 0)
                world.leave(i)
                assert err == 0, err
                if par.take_atomic_exit(v.uch):
                    steps[i] += 1
                    world.start_exclusive(i, lambda: [lambda w=w: q.uc_emu_stop(w.uch) for w in others])
                    try:
                        up.step_atomic(v.cpu, lambda: q.uc_emu_start(v.uch, v.rip, end, 0, 0),
                                       lambda: q.uc_emu_stop(v.uch))
                    finally:
                        world.end_exclusive()
                pc = v.rip
        except BaseException as exc:            # noqa: BLE001 - reported by the test
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    for v in views:
        par.unregister(v.uch)
    return ctypes.c_uint32.from_address(ctypes.addressof(mem) + COUNTER + offset).value, sum(steps)


def test_wrapper_bytes_match_their_assembly(tmp_path):
    def gas(src: str) -> bytes:
        obj, out = tmp_path / "s.o", tmp_path / "s.bin"
        subprocess.run(["as", "--64", "-o", str(obj), "-"], input=(".intel_syntax noprefix\n" + src).encode(),
                       check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)], check=True)
        return out.read_bytes()
    t, o = 0x1111222233334444, 0x5555666677778888
    lookup = f"""mov rax, [rdi + {ui.CPU_UC}]; movabs rcx, {t}
    1:  mov r8, [rcx]; test r8, r8; jz 3f; cmp r8, rax; je 2f; add rcx, 32; jmp 1b
    2:  """
    assert up.gen_wrapper_code(t, o) == gas(lookup + f"""test byte ptr [rcx + 8], 1; jz 3f
        mov r8d, [rsi + 0x18]; and r8d, 0xffff; cmp r8d, {up.STEP_CFLAGS}; je 3f
        mov rax, [rax + {up.UC_TCG_CTX}]; or dword ptr [rax + 0x64], {up.CF_PARALLEL}
        or dword ptr [rsi + 0x18], {up.CF_PARALLEL}
        mov r9, rdx; rdtsc; shl rdx, 32; or rax, rdx; mov [rcx + 24], rax; mov rdx, r9
        push rsi; movabs rax, {o}; call rax
        pop rsi; and dword ptr [rsi + 0x18], {~up.CF_PARALLEL & 0xFFFFFFFF}; ret
    3:  movabs rax, {o}; jmp rax""")
    assert up.pause_wrapper_code(t, 0x7777888899990000, o) == gas(lookup.replace(str(ui.CPU_UC), str(ui.ENV_UC)) + f"""
        push rdi; push rsi; sub rsp, 8; movabs rax, {0x7777888899990000}; call rax; add rsp, 8; pop rsi; pop rdi
    3:  movabs rax, {o}; jmp rax""")
    assert up.atomic_exit_wrapper_code(t, o) == gas(lookup + f"""mov qword ptr [rcx + 16], 1
        mov byte ptr [rax + {ui.UC_STOP_REQUEST}], 1
    3:  movabs rax, {o}; jmp rax""")


@pytest.mark.parametrize("kind", sorted(LOOPS))
def test_locked_counter_is_exact_across_two_instances_on_two_threads(kind):
    n = 100_000 if kind == "xchg spinlock" else 300_000
    total, steps = _count(kind, n)
    assert (total, steps) == (2 * n, 0)


def test_xchg_helpers_are_host_atomics_once_installed():
    """unicorn 2.1.4 compiled QEMU's xchg helpers as a plain load and store; uc_parallel rewrites them."""
    from core.hypervisor.uc_internals import _fn, addr_of
    up.parallel_translation()
    for name, off, _old, new in up.XCHG_HELPER_PATCHES:
        assert ctypes.string_at(addr_of(_fn(name, None)) + off, len(new) // 2) == bytes.fromhex(new)


def test_without_parallel_translation_the_same_loop_loses_updates():
    """The check above can fail: the same two instances without CF_PARALLEL lose increments (a plain load, add
    and store). On a host that happens not to overlap the two threads a run may come out exact, so a few tries."""
    results = [_count("lock xadd", 1_000_000, parallel=False)[0] for _ in range(4)]
    assert min(results) < 2_000_000, results


@pytest.mark.parametrize(("kind", "offset"), [("lock xadd", 1), ("lock cmpxchg", 2)])
def test_misaligned_lock_operand_steps_with_the_world_stopped_and_counts_exactly(kind, offset):
    """atomic_mmu_lookup cannot make a misaligned operand atomic (EXCP_ATOMIC); before uc_parallel's handling
    unicorn retried it forever. Every such instruction runs alone while the other instance is held out."""
    total, steps = _count(kind, 500, offset=offset)
    assert total == 1000
    assert steps >= 1000


def test_code_share_stub_bytes_match_their_assembly(tmp_path):
    from core.hypervisor import uc_codeshare as cs

    def gas(src: str) -> bytes:
        obj, out = tmp_path / "c.o", tmp_path / "c.bin"
        subprocess.run(["as", "--64", "-o", str(obj), "-"], input=(".intel_syntax noprefix\n" + src).encode(),
                       check=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)], check=True)
        return out.read_bytes()
    t, a, b, c, d = (0x1111222233334444, 0x5555666677778888, 0x1212343456567878, 0x2323454567678989,
                     0x3434565678789A9A)
    lookup = "1: mov r8, [rdx]; test r8, r8; jz {miss}; cmp r8, {reg}; je 2f; add rdx, 32; jmp 1b\n"
    assert cs.gate_stub_code(t, a, b, c, d) == gas(f"""
        test byte ptr [r9 + 0x88], 4; jz 9f
        mov rcx, [r15 + {ui.CPU_UC}]; movabs rdx, {t}
        """ + lookup.format(miss="9f", reg="rcx") + f"""
    2:  mov r10, [rsp + 0x10]; shr r10, 12; cmp r10, [rdx + 16]; jae 8f
        mov r11, rdx; rdtsc; shl rdx, 32; or rax, rdx
        mov r8, [r11 + 8]; mov rdx, [r11 + 16]; lea rdx, [r8 + rdx*8 + 8]
        xchg [rdx + r10*8], rax
        mov r8, [r8 + r10*8]
        mov rax, [r11 + 24]; bts rax, 63; not rax; test r8, rax; jnz 7f
        test r8, r8; jnz 8f
        mov r8, [r11 + 8]; mov rdx, [r11 + 16]; lea rdx, [rdx*2 + 2]; lea rdx, [r8 + rdx*8]
        mov rax, [r11 + 24]; lock or [rdx + r10*8], rax
        movabs rax, {a}; jmp rax
    7:  mov rdi, rcx; mov rsi, [rsp + 0x10]; mov edx, r14d; movabs rax, {b}; call rax
    8:  movabs rax, {c}; jmp rax
    9:  movabs rax, {d}; jmp rax""")
    assert cs.protect_stub_code(t, a, b) == gas(f"movabs rdx, {t}\n" + lookup.format(miss="3f", reg="rdi") + f"""
    2:  movabs rax, {a}; jmp rax
    3:  movabs rax, {b}; jmp rax""")
    assert cs.unprotect_stub_code(t, a, b) == gas(f"movabs rdx, {t}\n" + lookup.format(miss="4f", reg="rdi") + f"""
    2:  mov rax, rsi; shr rax, 12; cmp rax, [rdx + 16]; jae 3f
        mov r8, [rdx + 8]; mov rax, [r8 + rax*8]; test rax, [rdx + 24]; jz 3f
        movabs rax, {a}; jmp rax
    3:  ret
    4:  movabs rax, {b}; jmp rax""")
