"""Plumbing shared by the tests: where the repository and the guest fixtures are, and helpers that drive the runner.

Import from any test folder as `from tests.helpers.runner import run_vireo, VireoSession` (tests/ is a package, see
tests/__init__.py):
  REPO_ROOT, FIXTURES_OUT (tests/fixtures/out/, built by tests/fixtures/build.py)
  in_ci() -> True under CI=true, where a missing fixture is a failure, not a skip
  require_fixture(path, what) -> path, or skip (fail under CI)
  run_vireo(args, timeout, input=None) -> (exit status, stdout, stderr) of `python main.py run ARGS`
  run_vireo_interactive(args, lines, timeout, prompt) -> the same, typing each line after a shell prompt
  VireoSession(args, prefix=None)  a running `main.py run` (under `prefix`, a command, if given) with
                      expect()/send() for longer conversations
  SHELL_PROMPT  the test initramfs's shell prompt
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES_OUT = REPO_ROOT / "tests" / "fixtures" / "out"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_fixture(path: Path | str, what: str) -> Path:
    """Return `path` if it exists; otherwise skip (or fail under CI=true) saying what is missing and how to build it."""
    path = Path(path)
    if path.exists():
        return path
    reason = f"{what} not found at {path}; build it with: .venv/bin/python tests/fixtures/build.py"
    if in_ci():
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _runner_command(args: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "main.py"), "run", *[str(a) for a in args]]


def run_vireo(args: list[str], timeout: float, input: str | bytes | None = None) -> tuple[int, str, str]:
    """Run `python main.py run ARGS` from the repo root; return (exit status, stdout, stderr) as text.

    `timeout` is the harness's guard, not the runner's --timeout: when it passes the process is killed and the
    test fails showing what the guest printed so far.
    """
    if isinstance(input, str):
        input = input.encode()
    proc = subprocess.Popen(
        _runner_command(args), cwd=REPO_ROOT, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"main.py run {' '.join(map(str, args))} still running after {timeout} s\n"
                    f"--- stdout ---\n{_text(out)[-4000:]}\n--- stderr ---\n{_text(err)[-4000:]}", pytrace=False)
    return proc.returncode, _text(out), _text(err)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


class VireoSession:
    """A running `main.py run ARGS` whose serial console (stdin/stdout pipes) a test converses with.

    expect() waits for a string or regex in the output produced since the previous match; send() types a line.
    Used as a context manager, the process is killed on exit if it is still running.
    """

    def __init__(self, args: list[str], prefix: list[str] | None = None) -> None:
        self.args = [str(a) for a in args]
        # `prefix` runs the runner under another command (e.g. `unshare --mount ... sh -c '...; exec "$@"'`).
        self.proc = subprocess.Popen(
            [*(prefix or []), *_runner_command(self.args)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._out = bytearray()
        self._err = bytearray()
        self._pos = 0                   # expect() searches output after the previous match only
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _pump(self, stream, sink: bytearray) -> None:
        # read1 returns whatever is there (a prompt has no newline), so the test sees it at once.
        while chunk := stream.read1(65536):
            with self._cond:
                sink += chunk
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stdout(self) -> str:
        with self._cond:
            return _text(bytes(self._out))

    @property
    def stderr(self) -> str:
        with self._cond:
            return _text(bytes(self._err))

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until `pattern` (plain text or compiled regex) appears in the output after the last match."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = _text(bytes(self._out))
                match = regex.search(text, self._pos)
                if match:
                    self._pos = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)):
                    break
                self._cond.wait(min(left, 0.5))
        why = "timed out" if self.proc.poll() is None else f"runner exited with {self.proc.returncode}"
        pytest.fail(f"waiting for {regex.pattern!r}: {why}\n--- stdout ---\n{self.stdout[-4000:]}\n"
                    f"--- stderr ---\n{self.stderr[-4000:]}", pytrace=False)

    def send(self, line: str) -> None:
        """Type `line` and Enter on the guest's serial console."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        """Wait for the runner to exit; fail the test (showing the output) if it does not in time."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"runner did not exit within {timeout} s\n--- stdout ---\n{self.stdout[-4000:]}\n"
                        f"--- stderr ---\n{self.stderr[-4000:]}", pytrace=False)
        for t in self._readers:
            t.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(5)
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def __enter__(self) -> VireoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The test initramfs's prompt (PS1 in tests/fixtures/init.sh). busybox may follow it with ESC[6n, a cursor query.
SHELL_PROMPT = re.compile(r"vireo:[^\n#]*# ")


def run_vireo_interactive(args: list[str], lines: list[str], timeout: float,
                          prompt: str | re.Pattern[str] = SHELL_PROMPT) -> tuple[int, str, str]:
    """Run the runner, typing each of `lines` after the guest's shell shows `prompt`; wait for it to exit.

    The last line should end the guest (e.g. "poweroff"); returns (exit status, stdout, stderr).
    Example: run_vireo_interactive([... "--append", "console=ttyS0 vireo.action=shell"],
    ["echo $((6*7))", "poweroff"], timeout=120) and look for a line "42" in stdout.
    """
    deadline = time.monotonic() + timeout
    with VireoSession(args) as session:
        for line in lines:
            session.expect(prompt, max(0.1, deadline - time.monotonic()))
            session.send(line)
        code = session.wait(max(0.1, deadline - time.monotonic()))
        return code, session.stdout, session.stderr
