"""A small coverage-guided fuzzer for pure-Python targets: one harness shared by every target in fuzz.targets.

Design (after libFuzzer's loop, written from its documented behaviour, no code copied):
- a target is a function taking bytes; it may raise only the error types it declares (the one-line errors the
  code documents, e.g. ImageError, BootError, ConfigError). Anything else is a finding, and so is an allowed error
  whose message spans lines, a run longer than `hang_seconds`, or a host RSS growth beyond `rss_mib`.
- coverage is the set of (code, previous line, line) arcs executed in core/, collected with sys.settrace (Python
  3.11 has no sys.monitoring). An input that reaches a new arc joins the corpus after a cheap minimisation
  (truncation keeping the new arcs), so the stored corpus holds small inputs that each raised coverage.
- mutations: bit flips, random bytes, interesting integers (8/16/32/64 bit, both byte orders), chunk
  insert/delete/duplicate/copy, truncation, and splicing with another corpus entry.
The loop is deterministic for a given seed, so a reported crash can be replayed from its saved input alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import pkgutil
import random
import resource
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = str(ROOT / "core") + os.sep
CORPUS_DIR = ROOT / "fuzz" / "corpus"
CRASH_DIR = ROOT / "fuzz" / "crashes"


class MultiLineError(AssertionError):
    """An allowed error whose message spans lines (the documented errors are one line, shown as they are)."""


class Allow:
    """`with Allow(ImageError):` inside a target swallows the designed errors of one step, so the target can go on
    to the next step, but still flags a multi-line message."""

    def __init__(self, *types: type[BaseException]) -> None:
        self.types = types

    def __enter__(self) -> Allow:
        return self

    def __exit__(self, et, exc, tb) -> bool:  # noqa: ANN001
        if exc is None or not isinstance(exc, self.types):
            return False
        if "\n" in str(exc):
            raise MultiLineError(f"{type(exc).__name__} spans lines: {exc}") from exc
        return True


class LoggedError(Exception):
    """A model bug caught and logged (with its traceback) by core/ during the run, re-raised as a finding."""


class Hang(BaseException):
    """Raised by the alarm in the fuzzed call when it runs longer than the target's bound."""


@dataclass
class Target:
    name: str
    func: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    max_len: int = 4096
    hang_seconds: float = 2.0
    rss_mib: int = 256
    doc: str = ""
    dictionary: tuple[bytes, ...] = ()     # tokens the mutator inserts (JSON keys, magic numbers)


TARGETS: dict[str, Target] = {}


def target(name: str, *, allowed: tuple[type[BaseException], ...], seeds: Callable[[], list[bytes]],
           max_len: int = 4096, hang_seconds: float = 2.0, rss_mib: int = 256,
           dictionary: tuple[bytes, ...] = ()) -> Callable:
    """Register `func(data: bytes)` as fuzz target `name`."""
    def wrap(func: Callable[[bytes], object]) -> Callable[[bytes], object]:
        TARGETS[name] = Target(name, func, allowed, seeds, max_len, hang_seconds, rss_mib,
                               (func.__doc__ or "").strip().split("\n")[0], dictionary)
        return func
    return wrap


def load_targets() -> dict[str, Target]:
    """Import every module in fuzz.targets (each registers its targets on import)."""
    import fuzz.targets as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"fuzz.targets.{info.name}")
    return TARGETS


class Program:
    """Reads a fuzz input as a little program for a device rig: each read takes the next bytes (zeros once the
    input is used up), so every byte string is a valid program and mutations change operations locally."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out.ljust(n, b"\0")

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def u8(self) -> int:
        return self.uint(1)

    def choice(self, seq):  # noqa: ANN001, ANN201 - any sequence
        return seq[self.u8() % len(seq)]


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run a block without coverage tracing: a target builds its device rig in here, since the constructors are
    the same for every input and tracing them would cost most of the time of a short input."""
    old = sys.gettrace()
    sys.settrace(None)
    try:
        yield
    finally:
        sys.settrace(old)


def scratch_dir(name: str) -> str:
    """A private directory for a target's files (in /dev/shm when there is one: no disk writes per input),
    removed when the process exits."""
    import atexit
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix=f"vireo-fuzz-{name}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    atexit.register(shutil.rmtree, path, True)
    return path


# --- coverage ---------------------------------------------------------------------------------------------------

class Coverage:
    """Arcs (code object, previous line, line) executed in core/ while tracing; everything else is not traced."""

    def __init__(self) -> None:
        self.arcs: set[tuple] = set()
        self._want: dict[object, bool] = {}
        self._new: set[tuple] = set()

    def _global(self, frame, event, arg):  # noqa: ANN001 - sys.settrace signature
        code = frame.f_code
        want = self._want.get(code)
        if want is None:
            want = self._want[code] = code.co_filename.startswith(CORE)
        if not want:
            return None
        prev = [-1]
        new, arcs = self._new, self.arcs

        def local(frame, event, arg):  # noqa: ANN001
            if event == "line":
                arc = (code, prev[0], frame.f_lineno)
                prev[0] = frame.f_lineno
                if arc not in arcs:
                    new.add(arc)
            return local
        return local

    def start(self) -> None:
        self._new = set()
        threading.settrace(self._global)
        sys.settrace(self._global)

    def stop(self) -> set[tuple]:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
        new, self._new = self._new, set()
        return new

    def lines(self) -> int:
        return len({(a[0].co_filename, a[2]) for a in self.arcs})


# --- running one input ------------------------------------------------------------------------------------------

@dataclass
class Finding:
    target: str
    data: bytes
    kind: str          # "exception", "multiline", "hang", "memory"
    summary: str
    detail: str

    @property
    def key(self) -> str:
        return hashlib.sha1(self.data).hexdigest()[:16]


class _LoggedErrors(logging.Handler):
    """Collects records logged with a traceback (log.exception) while a target runs: core/ catches model bugs at
    thread boundaries (the IDE worker, the agent's call pool, timers) and logs them; the fuzzer counts them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.active = False         # only while a target runs (other tests in the process log as they like)

    def emit(self, record: logging.LogRecord) -> None:
        et = record.exc_info[0] if record.exc_info else None
        if self.active and et is not None and not issubclass(et, Hang):
            self.records.append(record)


_logged = _LoggedErrors()
logging.getLogger().addHandler(_logged)


LEAK_FDS = 64
LEAK_THREADS = 16


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _alarm(signum, frame):  # noqa: ANN001
    raise Hang()


def run_one(t: Target, data: bytes, cov: Coverage | None = None) -> tuple[Finding | None, set]:
    """Run `t` on `data`; return a Finding (or None) and the arcs it reached that were new."""
    before = _rss_mib()
    use_alarm = threading.current_thread() is threading.main_thread()
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, t.hang_seconds)
    if cov:
        cov.start()
    finding = None
    caught: BaseException | None = None
    _logged.records = []
    _logged.active = True
    try:
        # The timer is disarmed as soon as the target returns or raises: classifying what it raised reads source
        # files for the traceback, and on a loaded host that alone can outlast a short hang limit (a CI run
        # reported its own traceback extraction as the target's hang).
        try:
            t.func(data)
            if _logged.records:
                rec = _logged.records[0]
                raise LoggedError(f"logged by {rec.name}: {rec.getMessage()[:100]}") from rec.exc_info[1]
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
            _logged.active = False
    except BaseException as exc:  # noqa: BLE001 - anything else is what we are looking for
        caught = exc
    finally:
        _logged.active = False          # again: an alarm due just as the target ended may skip the inner finally
        new = cov.stop() if cov else set()
        if use_alarm:
            signal.signal(signal.SIGALRM, old)
    if isinstance(caught, KeyboardInterrupt):
        raise caught
    if isinstance(caught, Hang):
        finding = Finding(t.name, data, "hang", f"ran longer than {t.hang_seconds}s",
                          "".join(traceback.format_exception(caught)))
    elif isinstance(caught, t.allowed):
        if "\n" in str(caught):
            finding = Finding(t.name, data, "multiline", f"{type(caught).__name__} spans lines",
                              f"{type(caught).__name__}: {caught}")
    elif caught is not None:
        cause = caught.__cause__ if isinstance(caught, LoggedError) and caught.__cause__ else caught
        tb = traceback.extract_tb(cause.__traceback__)
        where = next((f"{Path(fr.filename).name}:{fr.lineno}" for fr in reversed(tb)
                      if fr.filename.startswith(CORE)), "?")
        finding = Finding(t.name, data, "exception", f"{type(cause).__name__} at {where}: {str(caught)[:120]}",
                          "".join(traceback.format_exception(caught)))
    if finding is None and _rss_mib() - before > t.rss_mib:
        finding = Finding(t.name, data, "memory", f"RSS grew by more than {t.rss_mib} MiB", "")
    return finding, new


# --- mutation ---------------------------------------------------------------------------------------------------

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 0x10, 0x1F, 0x20, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0x1000, 0x7FFF,
               0x8000, 0xFFFF, 0x10000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000,
               0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF]


class Mutator:
    def __init__(self, rng: random.Random, max_len: int, dictionary: tuple[bytes, ...] = ()) -> None:
        self.rng = rng
        self.max_len = max_len
        self.dictionary = dictionary

    def mutate(self, data: bytes, other: bytes | None = None) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(1 + int(rng.expovariate(0.7))):
            self._one(buf, other)
        return bytes(buf[:self.max_len])

    def _one(self, buf: bytearray, other: bytes | None) -> None:
        rng = self.rng
        op = rng.randrange(12 if self.dictionary else 10)
        n = len(buf)
        if op >= 10:
            token = rng.choice(self.dictionary)
            pos = rng.randint(0, n)
            if op == 10:
                buf[pos:pos] = token
            else:
                buf[pos:pos + len(token)] = token
            return
        if n == 0 or op == 9:
            pos = rng.randint(0, n)
            buf[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
            return
        if op == 0:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[rng.randrange(n)] = rng.getrandbits(8)
        elif op in (2, 3):
            size = rng.choice((1, 2, 4, 8))
            value = rng.choice(INTERESTING)
            value = (value + rng.choice((0, 0, 0, 1, -1))) % (1 << (8 * size))
            pos = rng.randrange(n)
            if size > 1 and pos + size <= n and rng.random() < 0.7:
                pos -= pos % size  # fields are usually aligned
            raw = value.to_bytes(size, rng.choice(("little", "big")))
            buf[pos:pos + size] = raw[:max(0, n - pos)]
        elif op == 4:
            a = rng.randrange(n)
            del buf[a:a + rng.randint(1, min(64, n - a))]
        elif op == 5:
            a = rng.randrange(n)
            chunk = buf[a:a + rng.randint(1, 32)]
            pos = rng.randint(0, n)
            buf[pos:pos] = chunk
        elif op == 6:
            a, b = rng.randrange(n), rng.randrange(n)
            k = rng.randint(1, 16)
            buf[b:b + k] = buf[a:a + k]
        elif op == 7:
            del buf[rng.randint(0, n):]
        elif op == 8 and other:
            a = rng.randrange(len(other))
            chunk = other[a:a + rng.randint(1, 256)]
            pos = rng.randrange(n)
            if rng.random() < 0.5:
                buf[pos:pos + len(chunk)] = chunk
            else:
                buf[pos:pos] = chunk


# --- the loop ---------------------------------------------------------------------------------------------------

@dataclass
class Stats:
    target: str
    execs: int = 0
    seconds: float = 0.0
    corpus: int = 0
    added: int = 0
    arcs: int = 0
    lines: int = 0
    rss_mib: tuple[float, float] = (0.0, 0.0)     # after replaying the corpus, at the end
    fds: tuple[int, int] = (0, 0)
    threads: tuple[int, int] = (0, 0)
    findings: list[Finding] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.execs / self.seconds if self.seconds else 0.0


def stored_corpus(name: str) -> list[bytes]:
    d = CORPUS_DIR / name
    return [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


def _minimise(t: Target, data: bytes, wanted: set, cov: Coverage) -> bytes:
    """Shorten `data` from the end while it still reaches every arc in `wanted` (a few tries, cheap)."""
    keys = {a for a in wanted}
    best = data
    for frac in (0.5, 0.75, 0.9):
        cut = best[:int(len(best) * frac)]
        if len(cut) == len(best):
            continue
        saved = cov.arcs
        cov.arcs = set()  # report every arc this input reaches
        finding, reached = run_one(t, cut, cov)
        cov.arcs = saved
        if finding is None and keys <= reached:
            best = cut
    return best


def fuzz(t: Target, seconds: float, *, seed: int = 0, save_corpus: bool = False, save_crashes: bool = True,
         max_execs: int | None = None, log: Callable[[str], None] | None = None,
         extra: Iterable[bytes] = ()) -> Stats:
    """Run target `t` for `seconds` (or `max_execs`): replay seeds and stored corpus, then mutate."""
    rng = random.Random(seed)
    mut = Mutator(rng, t.max_len, t.dictionary)
    cov = Coverage()
    stats = Stats(t.name)
    corpus: list[bytes] = []
    seen_crashes: set[str] = set()
    start = time.monotonic()

    def record(finding: Finding) -> None:
        if finding.summary in seen_crashes:
            return
        seen_crashes.add(finding.summary)
        stats.findings.append(finding)
        if save_crashes:
            d = CRASH_DIR / t.name
            d.mkdir(parents=True, exist_ok=True)
            (d / f"crash-{finding.key}").write_bytes(finding.data)
            (d / f"crash-{finding.key}.txt").write_text(f"{finding.kind}: {finding.summary}\n\n{finding.detail}")
        if log:
            log(f"[{t.name}] FINDING {finding.kind}: {finding.summary}")

    initial = [*t.seeds(), *stored_corpus(t.name), *extra]
    for data in initial:
        finding, new = run_one(t, data[:t.max_len], cov)
        stats.execs += 1
        if finding:
            record(finding)
        elif new or not corpus:
            cov.arcs |= new
            corpus.append(data[:t.max_len])
        else:
            cov.arcs |= new
    base = (_rss_mib(), _fd_count(), threading.active_count())
    last_log = time.monotonic()
    while time.monotonic() - start < seconds and (max_execs is None or stats.execs < max_execs):
        parent = rng.choice(corpus)
        other = rng.choice(corpus) if rng.random() < 0.2 else None
        data = mut.mutate(parent, other)
        finding, new = run_one(t, data, cov)
        stats.execs += 1
        if finding:
            record(finding)
            continue
        if new:
            small = _minimise(t, data, new, cov) if len(data) > 64 else data
            cov.arcs |= new
            corpus.append(small)
            stats.added += 1
            if save_corpus:
                d = CORPUS_DIR / t.name
                d.mkdir(parents=True, exist_ok=True)
                (d / hashlib.sha1(small).hexdigest()[:16]).write_bytes(small)
        if log and time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            el = last_log - start
            log(f"[{t.name}] {stats.execs} execs, {stats.execs / el:.0f}/s, corpus {len(corpus)}, "
                f"arcs {len(cov.arcs)}")
    stats.seconds = time.monotonic() - start
    end = (_rss_mib(), _fd_count(), threading.active_count())
    stats.rss_mib, stats.fds, stats.threads = (base[0], end[0]), (base[1], end[1]), (base[2], end[2])
    # Leaks across executions: each input is bounded on its own, but descriptors, threads or memory that pile up
    # would end an overnight run (and a long-running VM) all the same.
    if end[1] - base[1] > LEAK_FDS or end[2] - base[2] > LEAK_THREADS or end[0] - base[0] > t.rss_mib:
        record(Finding(t.name, b"", "leak", f"over {stats.execs} execs: descriptors {base[1]} -> {end[1]}, "
                       f"threads {base[2]} -> {end[2]}, RSS {base[0]:.0f} -> {end[0]:.0f} MiB", ""))
    stats.corpus = len(corpus)
    stats.arcs = len(cov.arcs)
    stats.lines = cov.lines()
    return stats


def replay(t: Target, data: bytes) -> Finding | None:
    """Run one input without coverage (for regression tests and crash triage)."""
    return run_one(t, data)[0]


def limit_memory(mib: int) -> None:
    """Cap the address space, so an allocation bomb fails as MemoryError (a finding) instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (mib << 20, resource.getrlimit(resource.RLIMIT_AS)[1]))


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFF_FFFF)
