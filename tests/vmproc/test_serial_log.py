"""The VM process's serial log writer (core/vmproc/serial_log.py) on its own: a file created 0600 and appended to,
output in the file promptly without a close, one-line errors for a path that cannot be opened, a full disk ending
the logging without ending anything else, and a file that does not keep up losing its oldest output, never
stalling the writer. Then a VM process with a serial log (the serialecho guest, tests/guests/): the process
writes the log itself, and a log it cannot open fails its start with one line. (That the log misses nothing while
no service runs is tests/service/test_serial_log.py's.)"""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from core.config import BootConfig, DisplayConfig, SerialConfig, VmConfig
from core.vmproc import serial_log
from core.vmproc.handle import VmProcessError
from core.vmproc.serial_log import SerialLog, SerialLogError
from tests.guests.build import guest_path
from tests.helpers.vmproc import Spawner, holds_open, without_echo_ticks


def wait_for_text(path: Path, needle: str, timeout: float = 30) -> str:
    """The file's text once it contains `needle`; fails with what it holds after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_bytes().decode(errors="replace") if path.exists() else ""
        if needle in text or needle in without_echo_ticks(text):
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{needle!r} not in {path} within {timeout} s; it holds:\n{text[-2000:]}", pytrace=False)
        time.sleep(0.05)


def test_created_0600_appended_to_and_written_promptly(tmp_path: Path) -> None:
    path = tmp_path / "new.log"
    old = os.umask(0o022)
    try:
        log = SerialLog.open(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for byte in b"boot line\r\n":            # as the UART delivers it: one byte per call
        log.write(bytes((byte,)))
    wait_for_text(path, "boot line\r\n", timeout=2)      # no close or flush needed: `tail -f` sees it
    log.write(b"login: ")
    assert log.close()
    log.write(b"after close")                # ignored, not an error
    assert path.read_bytes() == b"boot line\r\nlogin: "

    second = SerialLog.open(str(path))       # a later boot appends
    second.write(b"second boot\r\n")
    assert second.close()
    assert path.read_bytes() == b"boot line\r\nlogin: second boot\r\n"


def test_an_existing_files_mode_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    path.write_bytes(b"kept\n")
    path.chmod(0o640)
    log = SerialLog.open(str(path))
    log.write(b"more\n")
    assert log.close()
    assert path.read_bytes() == b"kept\nmore\n" and stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("kind, reason", [
    ("missing-dir", "No such file or directory"),
    ("directory", "Is a directory"),
    ("fifo-without-reader", "No such device or address"),
])
def test_a_path_that_cannot_be_opened_is_one_line_naming_it(tmp_path: Path, kind: str, reason: str) -> None:
    path = tmp_path / "no-such-dir" / "vm.log"
    if kind == "directory":
        path = tmp_path
    elif kind == "fifo-without-reader":
        path = tmp_path / "fifo"
        os.mkfifo(path)                      # opening it must fail at once, not wait for a reader
    started = time.monotonic()
    with pytest.raises(SerialLogError) as exc:
        SerialLog.open(str(path))
    assert str(exc.value) == f"serial log {path}: {reason}"
    assert time.monotonic() - started < 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file whatever its mode")
def test_a_file_without_write_permission_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "read-only.log"
    path.write_bytes(b"")
    path.chmod(0o400)
    with pytest.raises(SerialLogError, match=re.escape(f"serial log {path}: Permission denied")):
        SerialLog.open(str(path))


def test_a_full_disk_ends_the_logging_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    log = SerialLog.open("/dev/full")        # every write fails with ENOSPC
    with caplog.at_level(logging.WARNING, logger=serial_log.__name__):
        log.write(b"lost")
        assert log.flush(5)
        log.write(b"ignored from now on")
        assert log.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["serial log /dev/full: No space left on device; not logging any more"], warnings


def test_a_file_that_does_not_keep_up_loses_the_oldest_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(serial_log, "PENDING_LIMIT", 4096)
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)     # there, but not reading yet: the pipe fills up
    try:
        log = SerialLog.open(str(fifo))
        chunk = b"x" * 1024
        started = time.monotonic()
        for _ in range(200):                                 # far more than the pipe and the buffer hold
            log.write(chunk)
        assert time.monotonic() - started < 1                # the writer (a vCPU) never waited for the file
        log.write(b"THE-END")
        deadline = time.monotonic() + 10
        while log.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.dropped > 0
        got = bytearray()
        done = threading.Event()

        def drain() -> None:
            os.set_blocking(reader, True)
            while chunk_read := os.read(reader, 65536):
                got.extend(chunk_read)
            done.set()

        threading.Thread(target=drain, daemon=True).start()
        assert log.close()
        assert done.wait(10)
    finally:
        os.close(reader)
    assert got.endswith(b"THE-END")                          # the newest output is what is kept
    assert len(got) + log.dropped == 200 * 1024 + len(b"THE-END")


# -- a VM process with a serial log ------------------------------------------------------------------------------
@pytest.fixture
def spawn(tmp_path):
    spawner = Spawner(str(tmp_path / "run"))
    yield spawner
    spawner.close()


def echo_vm(log_file: Path | str) -> VmConfig:
    """The serialecho guest: prints "serialecho: ready", a tick a second, and echoes what it is sent."""
    return VmConfig(name="serial-log", memory_mib=32, accel="software", display=DisplayConfig("none"),
                    boot=BootConfig(kernel=str(guest_path("serialecho"))), serial=SerialConfig(log_file=str(log_file)))


def test_the_vm_process_writes_the_log_itself(spawn, tmp_path: Path) -> None:
    path = tmp_path / "vm.log"
    vm, rec = spawn(echo_vm(path))
    rec.expect(b"serialecho: ready")
    wait_for_text(path, "serialecho: ready")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert holds_open(vm.pid, path)             # the VM process's own file
    vm.serial_input(b"typed-in\n")
    wait_for_text(path, "typed-in\r\n")
    wait_for_text(path, "serialecho: tick 2\r\n")
    vm.power_off()
    text = path.read_bytes().decode()
    assert text == rec.text()                  # the log is exactly what the guest printed
    got = _ticks(text.encode())
    assert got == list(range(1, len(got) + 1))


def test_an_unopenable_log_fails_the_start_and_leaves_no_process(spawn, tmp_path: Path) -> None:
    path = tmp_path / "missing" / "vm.log"
    cfg = echo_vm(path)
    with pytest.raises(VmProcessError) as exc:
        spawn(cfg)
    assert str(exc.value) == f"serial log {path}: No such file or directory"
    assert not os.path.exists(tmp_path / "run" / "vms" / f"{cfg.uuid}.sock")
    assert not spawn.processes                 # spawn raised: no handle, and the process has exited (reaped)


def _ticks(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"serialecho: tick (\d+)\r\n", data)]
