"""CI run of every fuzz target (fuzz/targets/*, issue #18): the stored corpus (fuzz/corpus/<target>/, including the
inputs of crashes already fixed) plus a few seconds of new coverage-guided inputs each. Any finding fails the test
with its traceback; the crashing input is saved under fuzz/crashes/<target>/ to replay with
`bench/fuzz.py --target <name>` or `fuzz.harness.replay`.

VIREO_FUZZ_SECONDS sets the seconds per target (default 4: 14 targets stay within the 2-minute fuzz job budget);
VIREO_FUZZ_SEED picks the mutation seed (default: a new one per run, printed on failure, so CI explores).
"""
from __future__ import annotations

import os
import random

import pytest

from fuzz import harness

SECONDS = float(os.environ.get("VIREO_FUZZ_SECONDS", "4"))
TARGETS = harness.load_targets()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target(name: str) -> None:
    seed = int(os.environ.get("VIREO_FUZZ_SEED", random.randrange(1 << 30)))
    stats = harness.fuzz(TARGETS[name], SECONDS, seed=seed)
    assert stats.execs > 0
    assert not stats.findings, f"seed {seed}: " + "\n\n".join(f"{f.kind}: {f.summary}\n{f.detail}"
                                                              for f in stats.findings)


def test_harness_reports_an_undeclared_exception() -> None:
    """The harness itself can fail: a target raising an error it did not declare is a finding, a declared one-line
    error is not, a multi-line one is, and so is a hang."""
    def boom(data: bytes) -> None:
        if data[:1] == b"x":
            raise KeyError("x")
        if data[:1] == b"m":
            raise ValueError("two\nlines")
        if data[:1] == b"h":
            while True:
                pass
        raise ValueError("one line")

    t = harness.Target("selftest", boom, (ValueError,), lambda: [b"a"], hang_seconds=0.2)
    assert harness.replay(t, b"a") is None
    assert harness.replay(t, b"x").kind == "exception"
    assert harness.replay(t, b"m").kind == "multiline"
    assert harness.replay(t, b"h").kind == "hang"


def test_hang_limit_covers_the_target_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Classifying what the target raised is the harness's own work: a slow traceback extraction (source files
    read on a loaded host) is not the target's hang. A CI run once reported it as one."""
    import time
    import traceback

    real_extract = traceback.extract_tb

    def slow_extract(tb, limit=None):  # noqa: ANN001, ANN202
        time.sleep(0.3)
        return real_extract(tb, limit)

    monkeypatch.setattr(traceback, "extract_tb", slow_extract)

    def boom(data: bytes) -> None:
        raise KeyError("x")

    t = harness.Target("selftest", boom, (ValueError,), lambda: [b"a"], hang_seconds=0.1)
    assert harness.replay(t, b"x").kind == "exception"


def test_coverage_guides_the_search() -> None:
    """Inputs that reach new code in core/ join the corpus: from its two seeds, the ELF target's corpus grows."""
    from fuzz.targets import boot
    stats = harness.fuzz(TARGETS["elf"], 3.0, seed=1, save_crashes=False)
    assert stats.corpus > len(boot._seeds_elf()) and stats.arcs > 20


REGRESSIONS = sorted((name, p.name) for name in TARGETS for p in (harness.CORPUS_DIR / name).glob("regress-*"))


@pytest.mark.parametrize(("name", "file"), REGRESSIONS)
def test_fixed_crash_stays_fixed(name: str, file: str) -> None:
    """Each crash the fuzzer found is kept as fuzz/corpus/<target>/regress-*: it must replay without a finding
    (docs/fuzzing.md lists what each one was)."""
    finding = harness.replay(TARGETS[name], (harness.CORPUS_DIR / name / file).read_bytes())
    assert finding is None, f"{finding.kind}: {finding.summary}\n{finding.detail}"
