"""bench/software_cpu.py's steadiness report: a run whose reference (QEMU) varied widely between its own runs is
called out, so that a ratio measured on a busy host is not read as a result."""
from __future__ import annotations

import pytest

from bench.software_cpu import steadiness


def test_a_busy_host_is_called_out(capsys: pytest.CaptureFixture[str]) -> None:
    # session 18's 21:27 --smp run: QEMU's 1-job time went from 3.14 to 4.45 s between runs
    steadiness({"vireo-parallel N=1": [2.72, 3.04, 2.70, 2.95, 2.59],
                "qemu-mttcg N=1": [3.25, 4.45, 3.76, 3.62, 3.14]}, "qemu")
    out = capsys.readouterr().out
    assert "qemu-mttcg N=1 1.42" in out and "vireo-parallel N=1 1.17" in out
    assert "HOST NOT STEADY: qemu-mttcg N=1 varied 1.42x" in out


def test_a_steady_run_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    steadiness({"vireo sha256": [6.60, 6.64, 6.71], "qemu-tcg-pvh sha256": [8.20, 8.27, 8.31],
                "qemu-tcg sha256": [8.4, 8.5, 10.08]}, "qemu")
    out = capsys.readouterr().out
    assert "NOT STEADY" not in out
    assert "host steady: the reference's runs varied at most 1.20x" in out
