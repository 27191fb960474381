"""The on-disk cache of libunicorn lookups (core/hypervisor/uc_lookup_cache.py): a second lookup is answered from
it with the same addresses the ELF search gives, a cache for another file or with slots that do not hold the
helper is not trusted, and a fresh process installs the software CPU's hooks from it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_lookup_cache, uc_patch  # noqa: E402

# Exported helpers the engine does not interpose (uc_parallel interposes PAUSE), so their slots still hold the
# helpers' addresses here.
SYMBOLS = ["helper_hlt_x86_64", "helper_invlpg_x86_64"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIREO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(uc_lookup_cache, "_loaded", {})
    return tmp_path


def _reload(monkeypatch) -> None:
    monkeypatch.setattr(uc_lookup_cache, "_loaded", {})       # as a new process would read it


def test_second_lookup_comes_from_the_cache(cache_dir, monkeypatch):
    searched = uc_patch._search_helper_slots(SYMBOLS)
    assert uc_patch._find_helper_slots(SYMBOLS) == searched
    assert (cache_dir / "unicorn-lookups.json").exists()
    _reload(monkeypatch)
    monkeypatch.setattr(uc_patch, "_search_helper_slots", lambda symbols: pytest.fail("searched again"))
    assert uc_patch._find_helper_slots(SYMBOLS) == searched


def test_cache_for_another_file_is_ignored(cache_dir, monkeypatch):
    uc_patch._find_helper_slots(SYMBOLS)
    path = cache_dir / "unicorn-lookups.json"
    data = json.loads(path.read_text())
    data["lib"][2] += 1                                        # another modification time
    path.write_text(json.dumps(data))
    _reload(monkeypatch)
    calls = []
    real = uc_patch._search_helper_slots
    monkeypatch.setattr(uc_patch, "_search_helper_slots", lambda symbols: calls.append(symbols) or real(symbols))
    assert uc_patch._find_helper_slots(SYMBOLS) == real(SYMBOLS)
    assert calls == [SYMBOLS]


def test_cached_slots_that_do_not_hold_the_helper_are_searched_again(cache_dir, monkeypatch):
    searched = uc_patch._find_helper_slots(SYMBOLS)
    path = cache_dir / "unicorn-lookups.json"
    data = json.loads(path.read_text())
    key = "slots:" + ",".join(SYMBOLS)
    value, slots = data["entries"][key][SYMBOLS[0]]
    other_value, other_slots = data["entries"][key][SYMBOLS[1]]
    data["entries"][key][SYMBOLS[0]] = [value, other_slots]    # the other helper's slots
    path.write_text(json.dumps(data))
    _reload(monkeypatch)
    calls = []
    real = uc_patch._search_helper_slots
    monkeypatch.setattr(uc_patch, "_search_helper_slots", lambda symbols: calls.append(symbols) or real(symbols))
    assert uc_patch._find_helper_slots(SYMBOLS) == searched
    assert calls == [SYMBOLS]


def test_a_fresh_process_runs_a_guest_from_the_cache(cache_dir):
    """Two processes: the first fills the cache, the second installs the hooks from it and runs a guest whose
    CPUID and RDMSR go through the interposed helpers (the Rig tests of test_software_internals do the same)."""
    code = ("import sys; sys.path.insert(0, '.')\n"
            "from core.hypervisor import uc_lookup_cache, uc_native, uc_patch\n"
            "searched = []\n"
            "real = uc_patch._search_helper_slots\n"
            "uc_patch._search_helper_slots = lambda s: searched.append(s) or real(s)\n"
            "uc_native.natives()\n"
            "from tests.software_cpu import test_software_internals as t\n"
            "t.test_interposed_rdmsr_reaches_the_apic_and_raises_gp()\n"
            "print('searched', len(searched))\n")
    outs = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "VIREO_CACHE_DIR": str(cache_dir)})
        assert run.returncode == 0, run.stderr[-3000:]
        outs.append(run.stdout.strip().splitlines()[-1])
    # uc_native, uc_codetrack, uc_tbstart, uc_physread, uc_tb_cache; then none
    assert outs == ["searched 5", "searched 0"]
