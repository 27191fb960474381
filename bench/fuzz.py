"""Run Vireo's fuzz targets (fuzz/targets/*, issue #18; docs/fuzzing.md) for as long as asked.

    .venv/bin/python bench/fuzz.py --list
    .venv/bin/python bench/fuzz.py --seconds 120                       # every target, 120 s each
    .venv/bin/python bench/fuzz.py --target qcow2 --seconds 28800 --save-corpus   # overnight, keep new coverage

Per target it prints executions, executions per second (and the executions an 8-hour night gives at that rate),
the arcs and lines of core/ reached, corpus size and findings. Crashing inputs go to fuzz/crashes/<target>/
with their traceback; --save-corpus stores inputs that raised coverage in fuzz/corpus/<target>/ (minimised by
truncation). There is no QEMU counterpart to compare against: the numbers are Vireo's own throughput.
Each target runs in its own process so one target's memory growth or address-space cap cannot affect another.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz import harness  # noqa: E402

NIGHT = 8 * 3600


def _run(name: str, seconds: float, seed: int, save_corpus: bool, mem_mib: int, q) -> None:  # noqa: ANN001
    if mem_mib:
        harness.limit_memory(mem_mib)
    targets = harness.load_targets()
    st = harness.fuzz(targets[name], seconds, seed=seed, save_corpus=save_corpus, log=print)
    q.put({"target": name, "execs": st.execs, "seconds": round(st.seconds, 1), "rate": round(st.rate, 1),
           "arcs": st.arcs, "lines": st.lines, "corpus": st.corpus, "added": st.added,
           "rss_mib": [round(x) for x in st.rss_mib], "fds": list(st.fds), "threads": list(st.threads),
           "findings": [f"{f.kind}: {f.summary}" for f in st.findings]})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", action="append", help="target name (repeatable; default: all)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-corpus", action="store_true", help="store inputs that raised coverage in fuzz/corpus")
    ap.add_argument("--memory-mib", type=int, default=4096, help="address-space cap per target process (0: none)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    targets = harness.load_targets()
    if args.list:
        for t in targets.values():
            print(f"{t.name:14} {t.doc}")
        return 0
    names = args.target or sorted(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        print(f"unknown target(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("fork")
    results = []
    for name in names:
        q = ctx.Queue()
        p = ctx.Process(target=_run, args=(name, args.seconds, args.seed, args.save_corpus, args.memory_mib, q))
        p.start()
        p.join()
        results.append(q.get() if not q.empty() else {"target": name, "execs": 0, "seconds": 0, "rate": 0,
                                                        "arcs": 0, "lines": 0, "corpus": 0, "added": 0,
                                                        "findings": [f"process died, exit code {p.exitcode}"]})
    print(f"\n{'target':14} {'execs':>9} {'execs/s':>9} {'8h execs':>11} {'arcs':>7} {'lines':>6} {'corpus':>7} "
          f"{'RSS MiB':>10}  findings")
    for r in results:
        rss = "-".join(str(x) for x in r.get("rss_mib", []))
        print(f"{r['target']:14} {r['execs']:9} {r['rate']:9.1f} {r['rate'] * NIGHT:11.3g} {r['arcs']:7} "
              f"{r['lines']:6} {r['corpus']:7} {rss:>10}  {len(r['findings'])}")
        for f in r["findings"]:
            print(f"    {f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if any(r["findings"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
