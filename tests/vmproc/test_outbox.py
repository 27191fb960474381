"""The VM process's outbox (core/vmproc/outbox.py): a vCPU thread printing to the serial port never waits for a
controller that does not read, the backlog stays bounded (oldest output dropped), and states are never dropped."""
from __future__ import annotations

import socket
import time

from core.vmproc.outbox import SERIAL_LIMIT, Outbox
from core.vmproc.wire import SERIAL_BATCH, receive


def test_serial_output_never_blocks_on_a_controller_that_does_not_read():
    ours, theirs = socket.socketpair()
    outbox = Outbox()
    try:
        outbox.attach(ours, [({"t": "hello"}, b"")])
        outbox.put({"t": "state", "state": "running", "reason": ""})
        chunk = bytes(range(256)) * 16                  # 4 KiB, as a chatty guest prints
        start = time.perf_counter()
        for _ in range(2048):                           # 8 MiB: far more than the socket and the backlog hold
            outbox.serial(chunk)
        assert time.perf_counter() - start < 2.0        # never waited for the reader
        assert outbox.dropped > 0
        outbox.put({"t": "state", "state": "shutoff", "reason": "guest powered off"})
        # Now the controller reads: hello, the first state, serial, and the final state is there, not dropped.
        theirs.settimeout(10)
        kinds, serial = [], 0
        while not kinds or kinds[-1] != "state:shutoff":
            header, payload = receive(theirs)
            kinds.append(header["t"] + (f":{header['state']}" if header["t"] == "state" else ""))
            assert len(payload) <= SERIAL_BATCH
            serial += len(payload)
        assert kinds[:2] == ["hello", "state:running"]
        assert serial <= SERIAL_LIMIT + 2 * 1024 * 1024  # the backlog plus what the socket buffers held
        assert serial + outbox.dropped == 2048 * len(chunk)
    finally:
        outbox.close()
        ours.close()
        theirs.close()


def test_a_new_controller_replaces_the_old_one_which_is_told():
    old_ours, old_theirs = socket.socketpair()
    new_ours, new_theirs = socket.socketpair()
    outbox = Outbox()
    try:
        outbox.attach(old_ours, [({"t": "hello"}, b"")])
        outbox.attach(new_ours, [({"t": "hello", "n": 2}, b"")])
        old_theirs.settimeout(5)
        new_theirs.settimeout(5)
        seen = []
        while not seen or seen[-1] != "replaced":       # (its hello may have been dropped, never sent)
            seen.append(receive(old_theirs)[0]["t"])
        assert old_theirs.recv(1) == b""                # and its connection was shut down
        assert receive(new_theirs)[0] == {"t": "hello", "n": 2}
        assert outbox.is_current(new_ours) and not outbox.is_current(old_ours)
    finally:
        outbox.close()
        for s in (old_ours, old_theirs, new_ours, new_theirs):
            s.close()


def test_a_connection_closed_under_the_writer_does_not_stop_it():
    ours, theirs = socket.socketpair()
    outbox = Outbox()
    try:
        outbox.attach(ours, [])
        ours.close()                                     # its reader thread closed it, as at a controller's end
        outbox.put({"t": "state", "state": "running", "reason": ""})
        deadline = time.monotonic() + 5
        while outbox.is_current(ours) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not outbox.is_current(ours)               # given up on ...
        again, other = socket.socketpair()
        outbox.attach(again, [({"t": "hello"}, b"")])    # ... and the next controller is served
        other.settimeout(5)
        assert receive(other)[0] == {"t": "hello"}
        again.close()
        other.close()
    finally:
        outbox.close()
        theirs.close()
