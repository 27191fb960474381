"""virtio-net (core/devices/virtio/net.py) driven as Linux's virtio_net drives it, against a real StreamBackend
whose far end is this test speaking passt's protocol (4-byte big-endian length, frame): frames both ways, the
checksum the device completes, mergeable receive buffers, link status and its change notification, and hostile
drivers that stop the card only."""
from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.bus import MmioBus, PortIoBus
from core.devices.pci import PciBus
from core.devices.virtio.net import (
    F_CSUM,
    F_GUEST_CSUM,
    F_MAC,
    F_MRG_RXBUF,
    F_MTU,
    F_STATUS,
    HDR_F_DATA_VALID,
    HDR_F_NEEDS_CSUM,
    VirtioNet,
    inet_checksum,
)
from core.devices.virtio.pci import STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VirtioPciDevice
from core.memory import GuestMemory
from core.net.backend import StreamBackend

BAR4 = 0xFE00_0000
RING = {0: (0x10000, 0x11000, 0x12000), 1: (0x14000, 0x15000, 0x16000)}
QSIZE = 64
MAC = "52:54:00:ab:cd:ef"


def _wait_for(check, timeout: float = 5) -> bool:
    """Poll `check` until it holds or `timeout` passes (the device's threads update counters after the frame is
    on the wire, so a test that reads them at once races with them)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _frame(payload: bytes) -> bytes:
    return b"\xff" * 6 + bytes.fromhex("525400abcdef") + b"\x08\x00" + payload


class Peer:
    """The host side of the socket pair: what passt would do."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(5)

    def send(self, frame: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(frame)) + frame)

    def recv(self) -> bytes:
        n = struct.unpack(">I", self._exact(4))[0]
        return self._exact(n)

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "the device closed the connection"
            out += chunk
        return out


class NetDriver:
    def __init__(self, features: int = F_MAC | F_STATUS | F_MTU | F_MRG_RXBUF | F_CSUM | F_GUEST_CSUM) -> None:
        self.mem = GuestMemory(4 << 20)
        self.pio, self.mmio, self.irqs = PortIoBus(), MmioBus(), []
        self.bus = PciBus(self.pio, self.mmio, lambda g, lvl: self.irqs.append((g, lvl)))
        self.bus.attach(self.pio)
        self.peers: list[Peer] = []
        self.net = VirtioNet(MAC, self._connect, mtu=65520)
        self.dev = VirtioPciDevice(self.net, self.mem)
        self.slot = self.bus.add(self.dev)
        self._cfg_write(0x20, BAR4)
        self._cfg_write(0x24, 0)
        self._cfg_write(0x04, 0x6)
        self.features = features | VIRTIO_F_VERSION_1
        self.avail = {0: 0, 1: 0}
        self.used_seen = {0: 0, 1: 0}
        self.next_buf = 0x40000
        self.rx_addr: dict[int, int] = {}

    def _connect(self) -> StreamBackend:
        ours, theirs = socket.socketpair()
        self.peers.append(Peer(theirs))
        return StreamBackend(ours, "test peer")

    @property
    def peer(self) -> Peer:
        return self.peers[-1]

    def _cfg_write(self, reg, val):
        self.pio.write(0xCF8, 4, 0x8000_0000 | self.slot << 11 | reg)
        self.pio.write(0xCFC, 4, val)

    def setup(self) -> None:
        w, r = self.mmio.write, self.mmio.read
        self.common, self.notify, self.devcfg = BAR4, BAR4 + 0x3000, BAR4 + 0x2000
        w(self.common + 0x14, 1, 0)
        w(self.common + 0x14, 1, 3)
        for sel in (0, 1):
            w(self.common + 0x00, 4, sel)
            offered = r(self.common + 0x04, 4)
            w(self.common + 0x08, 4, sel)
            w(self.common + 0x0C, 4, (self.features >> (32 * sel)) & offered)
        w(self.common + 0x14, 1, 3 | 8)
        assert r(self.common + 0x14, 1) & 8
        for q, (desc, avail, used) in RING.items():
            w(self.common + 0x16, 2, q)
            w(self.common + 0x18, 2, QSIZE)
            for off, addr in ((0x20, desc), (0x28, avail), (0x30, used)):
                w(self.common + off, 4, addr)
                w(self.common + off + 4, 4, 0)
            w(self.common + 0x1C, 2, 1)
        w(self.common + 0x14, 1, 3 | 4 | 8)

    def status(self) -> int:
        return self.mmio.read(self.common + 0x14, 1)

    def config(self) -> tuple[bytes, int, int, int]:
        raw = bytes(self.mmio.read(self.devcfg + i, 1) for i in range(12))
        mac, status, pairs, mtu = struct.unpack("<6sHHH", raw)
        return mac, status, pairs, mtu

    def buf(self, data_or_len) -> tuple[int, int]:
        addr = self.next_buf
        n = data_or_len if isinstance(data_or_len, int) else len(data_or_len)
        if not isinstance(data_or_len, int):
            self.mem.write(addr, data_or_len)
        self.next_buf += (n + 15) & ~15
        return addr, n

    def submit(self, q: int, parts: list[tuple[int, int, bool]], head: int | None = None) -> int:
        desc, avail, _ = RING[q]
        if head is None:
            head = (self.avail[q] * 4) % QSIZE
        for i, (addr, n, wr) in enumerate(parts):
            flags = (1 if i + 1 < len(parts) else 0) | (2 if wr else 0)
            self.mem.write(desc + 16 * ((head + i) % QSIZE), struct.pack("<QIHH", addr, n, flags,
                                                                         (head + i + 1) % QSIZE))
        self.mem.write_u16(avail + 4 + 2 * (self.avail[q] % QSIZE), head)
        self.avail[q] += 1
        self.mem.write_u16(avail + 2, self.avail[q] & 0xFFFF)
        return head

    def kick(self, q: int) -> None:
        self.mmio.write(self.notify + 4 * q, 2, q)

    def used(self, q: int, timeout: float = 5) -> list[tuple[int, int]]:
        """Wait for new used entries on queue q; return (head, length) of each."""
        _, _, used = RING[q]
        deadline = time.monotonic() + timeout
        while self.mem.read_u16(used + 2) == self.used_seen[q] and time.monotonic() < deadline:
            time.sleep(0.005)
        out = []
        while self.used_seen[q] != self.mem.read_u16(used + 2):
            slot = self.used_seen[q] % QSIZE
            out.append(struct.unpack("<II", self.mem.read(used + 4 + 8 * slot, 8)))
            self.used_seen[q] = (self.used_seen[q] + 1) & 0xFFFF
        return out

    def post_rx(self, size: int) -> tuple[int, int]:
        addr, n = self.buf(size)
        self.rx_addr[self.submit(0, [(addr, n, True)], head=self.avail[0] % QSIZE)] = addr
        return addr, n


@pytest.fixture
def drv():
    d = NetDriver()
    d.setup()
    d.net.start()
    yield d
    d.net.stop()


def test_config_space_carries_mac_link_and_mtu(drv):
    mac, status, pairs, mtu = drv.config()
    assert (mac.hex(":"), status, pairs, mtu) == (MAC, 1, 1, 65520)
    assert drv.dev.driver_features & (F_MRG_RXBUF | F_CSUM | F_GUEST_CSUM) == F_MRG_RXBUF | F_CSUM | F_GUEST_CSUM


def test_pci_identity_is_the_modern_network_device(drv):
    drv.pio.write(0xCF8, 4, 0x8000_0000 | drv.slot << 11)
    assert drv.pio.read(0xCFC, 4) == 0x1041_1AF4
    drv.pio.write(0xCF8, 4, 0x8000_0000 | drv.slot << 11 | 0x08)
    assert drv.pio.read(0xCFC, 4) >> 8 == 0x020000


def test_transmit_sends_the_frame_and_completes_a_partial_checksum(drv):
    # A UDP datagram whose checksum the driver left to the device: the pseudo-header sum sits in the field.
    src, dst, payload = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), b"hello, vireo" * 7
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack(">BBH", 0, 17, udp_len)
    pseudo_sum = (~inet_checksum(pseudo)) & 0xFFFF
    udp = struct.pack(">HHHH", 1234, 5678, udp_len, pseudo_sum) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack(">H", inet_checksum(ip)) + ip[12:]
    frame = _frame(ip + udp)
    hdr = struct.pack("<BBHHHHH", HDR_F_NEEDS_CSUM, 0, 0, 0, 14 + 20, 6, 0)
    # Header and frame split over three descriptors, as the driver's scatter-gather may.
    parts = [(*drv.buf(hdr), False), (*drv.buf(frame[:30]), False), (*drv.buf(frame[30:]), False)]
    drv.submit(1, parts)
    drv.kick(1)
    sent = drv.peer.recv()
    assert drv.used(1) and len(sent) == len(frame)
    # The receiver's check: the checksum over pseudo-header and datagram comes out as zero.
    assert inet_checksum(pseudo + sent[34:]) == 0
    assert sent[:40] == frame[:40] and sent[42:] == frame[42:]
    # The transmit thread counts the frame after send_frame() returned, i.e. after the peer may have read it.
    assert _wait_for(lambda: drv.net.stats["tx_packets"] == 1), drv.net.stats
    assert drv.net.stats["tx_bytes"] == len(frame) and drv.net.stats["tx_dropped"] == 0


def test_receive_spreads_a_large_frame_over_mergeable_buffers(drv):
    bufs = [drv.post_rx(1536) for _ in range(50)]
    drv.kick(0)
    # Every value the device gives the used ring's index: the driver reads entries as soon as the index covers
    # them, so one frame's 34 buffers must appear in one step (Linux counts a frame whose later buffers are not
    # there yet as a length error and drops it).
    used_idx_at, write_u16, published = RING[0][2] + 2, drv.mem.write_u16, []

    def watch(addr: int, value: int) -> None:
        if addr == used_idx_at:
            published.append(value)
        write_u16(addr, value)

    drv.mem.write_u16 = watch
    frame = _frame(bytes(range(256)) * 200)            # 51214 bytes: 34 buffers of 1536
    drv.peer.send(frame)
    used = drv.used(0)
    need = 12 + len(frame)
    assert published == [-(-need // 1536)]
    assert len(used) == -(-need // 1536)
    assert sum(n for _, n in used) == need
    assert [drv.rx_addr[h] for h, _ in used] == [a for a, _ in bufs[:len(used)]]
    data = b"".join(drv.mem.read(drv.rx_addr[h], n) for h, n in used)
    flags, gso, _, _, _, _, num_buffers = struct.unpack_from("<BBHHHHH", data)
    assert (flags, gso, num_buffers) == (HDR_F_DATA_VALID, 0, len(used))
    assert data[12:] == frame


@pytest.mark.parametrize("gap", [0, 64])
def test_a_frame_over_buffers_next_to_each_other_is_one_write_and_over_scattered_ones_lands_the_same(drv, gap):
    """The device writes a frame's consecutive receive buffers (Linux carves them one after another out of large
    pages) with one guest-memory write, and the used entries with one more: a 64 KiB frame over ~43 buffers was
    ~87 writes, each a bounds check and a code-cache notice on the software CPU. Buffers with gaps between them
    get one write each, and the bytes land the same either way."""
    bufs = []
    for _ in range(50):
        bufs.append(drv.post_rx(1536))
        drv.next_buf += gap
    drv.kick(0)
    writes: list[tuple[int, int]] = []
    drv.mem.add_write_listener(lambda gpa, n: writes.append((gpa, n)))
    frame = _frame(bytes(range(256)) * 200)            # 51214 bytes: 34 buffers of 1536
    drv.peer.send(frame)
    used = drv.used(0)
    need = 12 + len(frame)
    assert len(used) == -(-need // 1536) and sum(n for _, n in used) == need
    data = b"".join(drv.mem.read(drv.rx_addr[h], n) for h, n in used)
    assert struct.unpack_from("<BBHHHHH", data)[6] == len(used) and data[12:] == frame
    ring = RING[0][2]
    into_buffers = [w for w in writes if bufs[0][0] <= w[0] < bufs[-1][0] + 1536]
    into_used = [w for w in writes if ring <= w[0] < ring + 6 + 8 * QSIZE]
    assert len(into_buffers) == (1 if gap == 0 else len(used)), into_buffers
    assert sum(n for _, n in into_buffers) == need
    assert len(into_used) == 2, into_used                # the entries, then the index

def test_receive_waits_for_buffers_instead_of_dropping(drv):
    drv.peer.send(_frame(b"early"))
    time.sleep(0.2)
    assert drv.used(0, timeout=0.1) == []
    addr, _ = drv.post_rx(2048)
    drv.kick(0)
    (head, n), = drv.used(0)
    assert drv.mem.read(addr + 12, n - 12) == _frame(b"early")
    assert drv.net.stats["rx_dropped"] == 0


def test_receive_buffers_added_while_the_thread_looks_are_never_missed(drv):
    """The lost-wake-up race: the receive thread finds no buffer, and the driver adds one and notifies between
    that look and the thread's wait. Here the driver does exactly that, every time: right after the device's
    look at the ring came back empty (and before the thread waits), another thread posts one buffer and kicks.
    A wake-up lost in that window is a frame that never arrives (no poll timeout behind the wait rescues it)."""
    frames = [_frame(i.to_bytes(4, "big") * 16) for i in range(300)]
    deliver = drv.net._deliver
    windows, posted = [], []                    # posted: buffer addresses in ring order (heads recur mod QSIZE)

    def deliver_with_a_notify_in_the_window(frame: bytes) -> bool:
        done = deliver(frame)
        if not done:
            windows.append(frame)
            poster = threading.Thread(target=lambda: (posted.append(drv.post_rx(2048)[0]), drv.kick(0)))
            poster.start()
            poster.join()
        return done

    drv.net._deliver = deliver_with_a_notify_in_the_window
    for f in frames:
        drv.peer.send(f)
    got = []
    while len(got) < len(frames):
        used = drv.used(0, timeout=2)
        assert used, f"frame {len(got)}: the receive thread missed the buffer the driver added"
        got += [drv.mem.read(posted[len(got) + i] + 12, n - 12) for i, (_, n) in enumerate(used)]
    assert got == frames
    assert len(windows) == len(frames)          # every frame went through the window
    assert drv.net.stats["rx_packets"] == len(frames) and drv.net.stats["rx_dropped"] == 0


def test_a_doorbell_ring_is_not_lost_between_a_wait_and_the_next():
    """The card's doorbells (core/devices/doorbell.py), hammered from two threads: a ring made while the waiter
    is between two waits (looking at its ring) is still seen, so ping-pong over many rounds never stalls; a
    closed doorbell ignores rings."""
    from core.devices.doorbell import Doorbell
    ping, pong = Doorbell(), Doorbell()
    rounds = 5000
    def echo() -> None:
        for _ in range(rounds):
            ping.wait()
            pong.ring()
    t = threading.Thread(target=echo, daemon=True)
    t.start()
    done = threading.Event()
    def play() -> None:
        for _ in range(rounds):
            ping.ring()
            pong.wait()
        done.set()
    threading.Thread(target=play, daemon=True).start()
    assert done.wait(30), "a ring was lost"
    t.join(5)
    ping.ring()
    ping.ring()
    assert ping.wait() == 2                             # one wait takes every ring since the last
    ping.close()
    ping.ring()                                         # closed: a no-op, not an error
    pong.close()


def test_the_backend_is_read_on_while_the_driver_has_no_buffers(drv):
    """With no receive buffers the card keeps reading the backend (into its backlog), so a burst from passt
    never finds the socket full: passt drops what it cannot write and the guest's TCP then stalls for seconds.
    The peer's whole 4 MiB burst is taken while the ring is empty (the peer's socket times out after 5 s if
    not), and the frames then arrive in order as the driver adds buffers."""
    frames = [_frame(i.to_bytes(4, "big") * 8000) for i in range(128)]       # 32 KiB each, 4 MiB in all
    for f in frames:
        drv.peer.send(f)
    assert drv.used(0, timeout=0.1) == []
    got = []
    while len(got) < len(frames):
        drv.next_buf = 0x40000
        posted = [drv.post_rx(65536)[0] for _ in range(16)]
        drv.kick(0)
        used = []
        while len(used) < 16 and len(got) + len(used) < len(frames):
            more = drv.used(0, timeout=2)
            assert more, "frames stopped arriving"
            used += more
        got += [drv.mem.read(posted[i] + 12, n - 12) for i, (_, n) in enumerate(used)]
    assert got == frames and drv.net.stats["rx_dropped"] == 0


def test_a_restored_card_keeps_the_negotiated_features(drv):
    """A machine restored from a state file: the transport's record carries the driver's features, and the card
    uses them (mergeable buffers, checksum flags) without the driver negotiating again."""
    d2 = NetDriver()
    d2.mem.write(0, drv.mem.read(0, 4 << 20))
    d2.dev.set_state(drv.dev.get_state())
    d2.common, d2.notify, d2.devcfg = drv.common, drv.notify, drv.devcfg
    d2.avail, d2.used_seen = dict(drv.avail), dict(drv.used_seen)
    d2.net.start()
    try:
        posted = [d2.post_rx(1536)[0] for _ in range(8)]
        d2.kick(0)
        frame = _frame(bytes(range(256)) * 20)           # 5134 bytes: 4 buffers of 1536
        d2.peer.send(frame)
        used = d2.used(0)
        assert len(used) == 4, used
        data = b"".join(d2.mem.read(posted[i], n) for i, (_, n) in enumerate(used))
        assert struct.unpack_from("<BBHHHHH", data)[::6] == (HDR_F_DATA_VALID, 4) and data[12:] == frame
    finally:
        d2.net.stop()


def test_a_quiesced_card_leaves_guest_memory_and_interrupts_alone(drv):
    """A state capture (docs/machine-state.md, "Network cards"): between quiesce() and thaw() frames queued at
    the backend are not written into the receive buffers the driver posted, the used rings, the counters and
    the interrupt lines do not move, and a frame the driver queued for sending stays in its ring. After thaw()
    everything arrives, in order, with nothing dropped or repeated."""
    posted = [drv.post_rx(2048)[0] for _ in range(16)]
    drv.kick(0)
    drv.peer.send(_frame(b"before"))
    (head, n), = drv.used(0)
    assert drv.mem.read(drv.rx_addr[head] + 12, n - 12) == _frame(b"before")
    drv.net.quiesce()
    stats, irqs, ram = dict(drv.net.stats), list(drv.irqs), drv.mem.read(0, 4 << 20)
    frames = [_frame(i.to_bytes(2, "big") * 500) for i in range(40)]
    # From a thread: once the socket's buffer is full the sender waits, as passt does, until the card reads on.
    sender = threading.Thread(target=lambda: [drv.peer.send(f) for f in frames], daemon=True)
    sender.start()
    tx = _frame(b"queued while frozen" * 4)
    drv.submit(1, [(*drv.buf(bytes(12) + tx), False)])
    drv.kick(1)
    ram_with_tx = drv.mem.read(0, 4 << 20)
    time.sleep(0.5)
    assert drv.mem.read(0, 4 << 20) == ram_with_tx and ram_with_tx != ram      # only the driver wrote
    assert drv.net.stats == stats and drv.irqs == irqs
    assert drv.dev.queues[1].last_avail == 0 and drv.dev.queues[0].last_avail == 1
    assert not select.select([drv.peer.sock], [], [], 0.2)[0]       # nothing was sent
    drv.net.thaw()
    assert drv.peer.recv() == tx
    got = []
    while len(got) < len(frames):
        used = drv.used(0, timeout=2)
        if not used:
            drv.next_buf = 0x100000
            posted += [drv.post_rx(2048)[0] for _ in range(16)]
            drv.kick(0)
            continue
        got += [drv.mem.read(drv.rx_addr[h] + 12, n - 12) for h, n in used]
    sender.join(5)
    assert got == frames
    assert drv.net.stats["rx_packets"] == 1 + len(frames) and drv.net.stats["rx_dropped"] == 0


def test_receive_buffers_held_for_a_frame_go_back_to_the_ring_for_the_saved_state(drv):
    """Mergeable buffers taken for a frame that does not fit yet are the device's until the frame goes in. A
    capture gives them back (last_avail moves back over them), so the restored card takes the same buffers
    again: none is lost to the driver, and the first frame after the restore lands in the first buffer posted."""
    first = drv.post_rx(1536)[0]
    drv.kick(0)
    drv.peer.send(_frame(bytes(range(256)) * 20))           # 5134 bytes: the one buffer is taken and held
    assert _wait_for(lambda: drv.dev.queues[0].last_avail == 1)
    assert drv.used(0, timeout=0.2) == []
    drv.net.quiesce()
    state = drv.dev.get_state()
    assert state["virtio"]["queues"][0]["last_avail"] == 0
    d2 = NetDriver()
    d2.mem.write(0, drv.mem.read(0, 4 << 20))
    d2.dev.set_state(state)
    d2.common, d2.notify, d2.devcfg = drv.common, drv.notify, drv.devcfg
    d2.avail, d2.used_seen, d2.next_buf, d2.rx_addr = dict(drv.avail), dict(drv.used_seen), drv.next_buf, \
        dict(drv.rx_addr)
    d2.net.start()
    try:
        posted = [first] + [d2.post_rx(1536)[0] for _ in range(3)]
        d2.kick(0)
        frame = _frame(bytes(range(255, -1, -1)) * 20)
        d2.peer.send(frame)
        used = d2.used(0)
        assert [d2.rx_addr[h] for h, _ in used] == posted, used
        data = b"".join(d2.mem.read(d2.rx_addr[h], n) for h, n in used)
        assert data[12:] == frame
    finally:
        d2.net.stop()
    drv.net.thaw()                 # the original carries on (a live snapshot): its frame goes in after all
    drv.post_rx(1536)
    drv.post_rx(1536)
    drv.post_rx(1536)
    drv.kick(0)
    used = drv.used(0)
    assert len(used) == 4 and drv.rx_addr[used[0][0]] == first


def test_a_link_change_during_a_capture_is_told_to_the_driver_after_it(drv):
    """passt dies while the card is held still for a capture: the link goes down at once (the card's own state),
    but the configuration generation and the interrupt, which are the saved transport's and interrupt
    controllers', wait for thaw()."""
    generation = drv.mmio.read(drv.common + 0x15, 1)
    drv.mmio.read(BAR4 + 0x1000, 1)                     # the driver reads (and so clears) the ISR
    drv.irqs.clear()
    drv.net.quiesce()
    drv.peer.sock.close()                               # passt died; the reader was waiting in the backend
    assert _wait_for(lambda: not drv.net.link_up)
    time.sleep(0.1)
    assert drv.mmio.read(drv.common + 0x15, 1) == generation and drv.irqs == []
    drv.net.thaw()
    assert drv.mmio.read(drv.common + 0x15, 1) != generation
    assert drv.irqs and drv.irqs[-1][1] and drv.mmio.read(BAR4 + 0x1000, 1) & 2
    assert drv.config()[1] == 0


def test_backend_gone_is_link_down_with_a_config_interrupt_and_reconnect_brings_it_back(drv):
    generation = drv.mmio.read(drv.common + 0x15, 1)
    drv.mmio.read(BAR4 + 0x1000, 1)                     # the driver reads (and so clears) the ISR
    drv.irqs.clear()
    drv.peer.sock.close()                               # passt died
    # The reader thread clears the link, then announces the change: wait for both (a check between the two saw
    # the old generation once in a full run).
    assert _wait_for(lambda: not drv.config()[1] & 1 and drv.mmio.read(drv.common + 0x15, 1) != generation)
    assert drv.config()[1] == 0 and not drv.net.link_up
    assert drv.irqs[-1][1] and drv.mmio.read(BAR4 + 0x1000, 1) & 2    # INTx, ISR: configuration change
    assert "closed" in drv.net.link_reason
    assert drv.status() & STATUS_NEEDS_RESET == 0        # the card is fine, only its cable is out
    assert drv.net.reconnect()
    assert drv.config()[1] == 1
    addr, _ = drv.post_rx(2048)
    drv.kick(0)
    drv.peer.send(_frame(b"back"))
    (_, n), = drv.used(0)
    assert drv.mem.read(addr + 12, n - 12) == _frame(b"back")


def test_a_backend_that_cannot_start_leaves_the_link_down():
    def broken():
        raise OSError("passt cannot listen on host tcp port 127.0.0.1:2222 (is it in use?)")
    d = NetDriver()
    d.net._connect = broken
    d.setup()
    d.net.start()
    try:
        assert d.config()[1] == 0 and "2222" in d.net.link_reason
    finally:
        d.net.stop()


@pytest.mark.parametrize("bad", ["truncated", "oversized", "gso", "csum_outside", "rx_readable", "rx_tiny"])
def test_malformed_frames_and_buffers_stop_only_the_card(drv, bad):
    if bad == "truncated":
        drv.submit(1, [(*drv.buf(bytes(12) + b"short"), False)])
    elif bad == "oversized":
        drv.submit(1, [(0x100000, 12 + 70000, False)])
    elif bad == "gso":
        drv.submit(1, [(*drv.buf(struct.pack("<BBHHHHH", 0, 1, 54, 1448, 0, 0, 0) + _frame(bytes(100))), False)])
    elif bad == "csum_outside":
        drv.submit(1, [(*drv.buf(struct.pack("<BBHHHHH", 1, 0, 0, 0, 100, 6, 0) + _frame(bytes(40))), False)])
    elif bad == "rx_readable":
        drv.submit(0, [(*drv.buf(64), False), (*drv.buf(2048), True)])
    else:
        drv.submit(0, [(*drv.buf(4), True)])
    q = 0 if bad.startswith("rx") else 1
    drv.kick(q)
    if q == 0:
        drv.peer.send(_frame(b"x" * 100))
    deadline = time.monotonic() + 5
    while not drv.status() & STATUS_NEEDS_RESET and time.monotonic() < deadline:
        time.sleep(0.01)
    assert drv.status() & STATUS_NEEDS_RESET
    # The driver resets and sets the card up again: it works.
    drv.avail, drv.used_seen = {0: 0, 1: 0}, {0: 0, 1: 0}
    for _desc, avail, used in RING.values():
        drv.mem.fill(avail, 0x1000)
        drv.mem.fill(used, 0x1000)
    drv.setup()
    addr, _ = drv.post_rx(2048)
    drv.kick(0)
    drv.peer.send(_frame(b"after reset"))
    deadline = time.monotonic() + 5
    got = []
    while not got and time.monotonic() < deadline:
        got = drv.used(0, 0.5)
    (_, n), = got
    assert drv.mem.read(addr + 12, n - 12) == _frame(b"after reset")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descs=st.lists(st.tuples(st.integers(0, (4 << 20) + 4096), st.integers(0, 1 << 17), st.integers(0, 7),
                                st.integers(0, QSIZE + 2)), min_size=1, max_size=8),
       heads=st.lists(st.integers(0, QSIZE + 2), min_size=1, max_size=4), queue=st.sampled_from([0, 1]))
def test_fuzzed_descriptors_never_harm_the_host(descs, heads, queue):
    """Random descriptor tables and heads on either queue: the card serves them or needs a reset; the host
    process neither raises nor touches memory outside guest RAM (GuestMemory would raise)."""
    d = NetDriver()
    d.setup()
    d.net.start()
    try:
        desc_table, avail, _ = RING[queue]
        for i, (addr, n, flags, nxt) in enumerate(descs):
            d.mem.write(desc_table + 16 * i, struct.pack("<QIHH", addr, n, flags, nxt))
        for i, head in enumerate(heads):
            d.mem.write_u16(avail + 4 + 2 * i, head)
        d.mem.write_u16(avail + 2, len(heads))
        d.kick(queue)
        if queue == 0:
            d.peer.send(_frame(b"z" * 1000))
        time.sleep(0.02)
        # Whatever happened, the device answers register reads and the machine goes on.
        assert d.status() & 4
        assert threading.active_count() < 200
    finally:
        d.net.stop()
