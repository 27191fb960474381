"""virtio-net's transmit notification served on the notifying vCPU (core/devices/virtio/net.py, `_tx_inline`):
small frames leave before the notifying write returns; a bulk frame, a full socket or a busy transmit thread leave
the rest to the thread, and the peer still gets every frame once, in the order the driver queued them."""
from __future__ import annotations

import socket
import struct
import threading

from core.devices.virtio.net import HDR_LEN, INLINE_FRAME_BYTES, INLINE_FRAMES
from tests.net.test_virtio_net import RING, NetDriver, _frame, _wait_for, drv  # noqa: F401  (fixture)

PLAIN_HDR = bytes(HDR_LEN)


def _queue_frames(drv, frames: list[bytes]) -> None:
    for frame in frames:
        drv.submit(1, [(*drv.buf(PLAIN_HDR + frame), False)])


def _numbered(n: int, size: int) -> list[bytes]:
    return [_frame(struct.pack(">I", i) + bytes(size - 18)) for i in range(n)]


def test_small_frames_are_sent_and_used_before_the_notify_returns(drv):   # noqa: F811
    frames = _numbered(3, 66)                        # three TCP-acknowledgement-sized frames
    _queue_frames(drv, frames)
    drv.kick(1)
    _, _, used = RING[1]
    assert drv.mem.read_u16(used + 2) == 3           # no wait: the vCPU's write did the work
    assert [drv.peer.recv() for _ in frames] == frames
    assert drv.net.stats["tx_packets"] == 3 and drv.net.stats["tx_bytes"] == 3 * 66


def test_more_than_the_inline_share_and_bulk_frames_reach_the_thread_in_order(drv):   # noqa: F811
    small = _numbered(INLINE_FRAMES + 4, 100)
    bulk = _frame(b"B" * (INLINE_FRAME_BYTES + 1000))
    frames = small[:2] + [bulk] + small[2:]
    _queue_frames(drv, frames)
    drv.kick(1)
    assert [drv.peer.recv() for _ in frames] == frames
    assert _wait_for(lambda: drv.net.stats["tx_packets"] == len(frames)), drv.net.stats


def test_a_full_socket_leaves_frames_to_the_thread_and_none_is_lost_or_reordered(drv):   # noqa: F811
    drv.net.backend.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    drv.peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # 22 KB, several times what the socket holds while the peer waits; 16 frames fill the test's ring.
    frames = _numbered(16, 1400)
    for start in range(0, len(frames), 4):           # notified as the driver adds them
        _queue_frames(drv, frames[start:start + 4])
        drv.kick(1)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(drv.peer.recv() for _ in frames))
    reader.start()
    reader.join(10)
    assert got == frames
    assert _wait_for(lambda: drv.net.stats["tx_packets"] == len(frames)), drv.net.stats
    assert drv.net.stats["tx_dropped"] == 0
