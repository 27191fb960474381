"""virtio-net (core/devices/virtio/net.py, virtio 1.1 section 5.1) under virtio-pci, against a real StreamBackend
whose far end speaks passt's framing: a hostile driver's transmit chains and headers (checksum offload, GSO
fields), receive buffers, raw descriptors, ring entries, register and device-configuration writes, and hostile
frames from the network, must end as served requests or DEVICE_NEEDS_RESET for this card: never an exception to
the vCPU or a logged device-model failure ("transmit failed", "receive failed")."""
from __future__ import annotations

import socket
import struct
import threading
import time

from fuzz.harness import Program, target, untraced

TX, RX_POST, FROM_NET, DESC_RAW, PUSH, COMMON, DEVCFG, SETUP = range(8)
DATA = 0x40000


def _seeds() -> list[bytes]:
    eth = b"\xff" * 6 + bytes.fromhex("525400abcdef") + b"\x08\x00"
    ip = bytes.fromhex("45000030000000004011") + b"\0\0" + bytes([10, 0, 2, 15, 10, 0, 2, 2])
    udp = struct.pack(">HHHH", 1234, 53, 28, 0) + b"x" * 20
    frame = eth + ip + udp
    hdr_csum = struct.pack("<BBHHHHH", 1, 0, 0, 0, 34, 6, 0)          # NEEDS_CSUM at the UDP checksum
    hdr_gso = struct.pack("<BBHHHHH", 1, 1, 54, 1400, 34, 16, 0)        # GSO TCPv4
    return [bytes([TX, 0]) + struct.pack("<H", len(frame)) + struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 0) + frame,
            bytes([TX, 1]) + struct.pack("<H", len(frame)) + hdr_csum + frame,
            bytes([TX, 2]) + struct.pack("<H", len(frame)) + hdr_gso + frame,
            bytes([RX_POST]) + struct.pack("<H", 2048) + bytes([RX_POST]) + struct.pack("<H", 100)
            + bytes([FROM_NET]) + struct.pack("<H", len(frame)) + frame,
            bytes([FROM_NET]) + struct.pack("<H", 3000) + frame * 40 + bytes([RX_POST]) + struct.pack("<H", 64),
            bytes([DEVCFG, 6, 2, 0, 0, 0, 0, SETUP, 0]) + bytes([TX, 0, 20, 0]) + bytes(32)]


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass


@target("virtio_net", allowed=(), seeds=_seeds, max_len=8192, hang_seconds=10.0)
def fuzz_virtio_net(data: bytes) -> None:
    """A driver program (transmit, receive buffers, raw descriptors, ring entries, registers) and network frames."""
    from core.devices.virtio.pci import STATUS_NEEDS_RESET
    from tests.net.test_virtio_net import QSIZE, RING, NetDriver
    with untraced():
        d = NetDriver()
        d.setup()
        d.net.start()
    drains = []
    p = Program(data)
    try:
        peer = d.peer
        t = threading.Thread(target=_drain, args=(peer.sock,), daemon=True)
        t.start()
        drains.append(t)
        while p.more():
            op = p.u8() % 8
            if op == TX:
                split, n = p.u8(), p.uint(2) % 4096
                hdr = p.take(12)
                frame = p.take(n)
                d.next_buf = DATA + 0x10000 * (split % 8)
                parts = [d.buf(hdr + frame)] if split & 1 else [d.buf(hdr), d.buf(frame)]
                d.submit(1, [(a, k, False) for a, k in parts])
                d.kick(1)
            elif op == RX_POST:
                d.next_buf = DATA + 0x80000
                d.post_rx(p.uint(2) % 9000)
                d.kick(0)
            elif op == FROM_NET:
                n = p.uint(2) % 9000
                try:
                    peer.send(p.take(n))
                except OSError:
                    pass
            elif op == DESC_RAW:
                q = p.u8() & 1
                i = p.u8() % QSIZE
                d.mem.write(RING[q][0] + 16 * i, p.take(16))
            elif op == PUSH:
                q, head = p.u8() & 1, p.uint(2)
                avail = RING[q][1]
                d.mem.write_u16(avail + 4 + 2 * (d.avail[q] % QSIZE), head)
                d.avail[q] += 1
                d.mem.write_u16(avail + 2, d.avail[q] & 0xFFFF)
                d.kick(q)
            elif op == COMMON:
                reg, size = p.u8() % 0x38, p.choice((1, 2, 4))
                d.mmio.write(d.common + reg, size, p.uint(4) & ((1 << (8 * size)) - 1))
            elif op == DEVCFG:
                reg, size = p.u8() % 16, p.choice((1, 2, 4))
                d.mmio.write(d.devcfg + reg, size, p.uint(4) & ((1 << (8 * size)) - 1))
            else:
                p.u8()
                d.setup()
                d.avail = {0: 0, 1: 0}
                d.used_seen = {0: 0, 1: 0}
            if d.status() & STATUS_NEEDS_RESET:
                d.setup()
                d.avail = {0: 0, 1: 0}
                d.used_seen = {0: 0, 1: 0}
        d.dev.wait_idle(5)
        time.sleep(0.002)      # the receive thread delivers frames from the network on its own
    finally:
        d.net.stop()
        d.dev.close()
        for peer in d.peers:
            peer.sock.close()
        for t in drains:
            t.join(5)
        d.mem.close()
