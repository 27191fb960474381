"""virtio-net (virtio 1.2, section 5.1): an Ethernet card for the guest, PCI 1af4:1041 on the modern transport,
with one receive queue (0) and one transmit queue (1), no control queue.

Offered features: MAC (the address in the configuration space, 5.1.4), STATUS (LINK_UP while the backend lives; a
change is a configuration change notification), MTU (the backend's: passt's 65520, 1500 for TAP), MRG_RXBUF
(5.1.6.3.1: a frame spreads over as many receive buffers as it needs, `num_buffers` in the first header), CSUM
(the driver may leave a transmitted frame's TCP/UDP checksum to the device, which completes it here: neither
backend takes partial checksums) and GUEST_CSUM (received frames are marked DATA_VALID: both backends hand over
frames whose checksums the host already made or checked). No segmentation offload is offered: with the 65520-byte
MTU a TCP segment of 64 KiB is already one frame. With VERSION_1 the header is always 12 bytes (5.1.6).

Nothing runs on a vCPU thread but a wake-up: a notification of the transmit queue rings the transmit thread's
doorbell (core/devices/doorbell.py; the accelerator rings it natively, without an exit into Python), and the
thread takes the frames, returns the buffers and sends the frames to the backend; a receive thread reads frames
from the backend and writes them into the driver's receive buffers, waiting (and so not reading, which pushes
back on passt) when there are none, and the receive queue's notification rings the drain thread that delivers
what waited. Ring work happens under the transport lock, so a reset never meets a half-written buffer. For a
state capture (save, live snapshot) quiesce() holds both threads off the rings and guest RAM until thaw(): frames
from the host wait in the backend's socket meanwhile (docs/machine-state.md).

Everything the driver wrote is untrusted: a transmit chain shorter than the header plus an Ethernet header or
longer than the largest frame, a segmentation request that was never offered, a checksum position outside the
frame, receive buffers with a device-readable part or too small to ever hold a frame: DEVICE_NEEDS_RESET for this
card only. Frames from the backend are bounded (core/net/backend.py MAX_FRAME).
"""
from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from collections.abc import Callable

from core.devices.doorbell import Doorbell
from core.devices.virtio.pci import Handoff, VirtioDevice, VirtioPciDevice
from core.devices.virtio.queue import DescriptorChain, Virtqueue, VirtqueueError, gather
from core.memory import GuestMemory, GuestMemoryError
from core.net import checksum
from core.net.backend import ETH_HEADER, MAX_FRAME, NetBackend
from core.net.checksum import inet_checksum

log = logging.getLogger(__name__)

F_CSUM, F_GUEST_CSUM, F_MTU, F_MAC = 1 << 0, 1 << 1, 1 << 3, 1 << 5
F_MRG_RXBUF, F_STATUS = 1 << 15, 1 << 16
S_LINK_UP = 1
HDR_F_NEEDS_CSUM, HDR_F_DATA_VALID = 1, 2
GSO_NONE = 0
UDP_CSUM_OFFSET = 6           # offsetof(struct udphdr, check): 0 there means "no checksum" (RFC 768)
HDR_LEN = 12                  # struct virtio_net_hdr with num_buffers (VERSION_1)
RX, TX = 0, 1
TX_BATCH = 64                 # frames taken per pass of the transmit ring before they are sent
MIN_MTU = 68
RX_BACKLOG_BYTES = 16 << 20   # frames held for the driver while it has no receive buffers (RxBacklog)

Connect = Callable[[], NetBackend]
LinkListener = Callable[[bool, str], None]


class RxBacklog:
    """Frames read from the backend that the ring had no room for yet, oldest first, up to RX_BACKLOG_BYTES (the
    reader then waits, and the backend's own buffer fills: passt stops reading the host socket only when its
    writes to ours fail, so the bound is set well above a guest TCP window)."""

    def __init__(self, limit: int = 0) -> None:
        self.frames: deque[bytes] = deque()
        self.limit = limit or RX_BACKLOG_BYTES
        self._bytes = 0
        self._closed = False
        self._room = threading.Condition(threading.Lock())

    def put(self, frame: bytes) -> bool:
        """Append (waiting while full); False once closed."""
        with self._room:
            while self._bytes >= self.limit and not self._closed:
                self._room.wait()
            if self._closed:
                return False
            self.frames.append(frame)
            self._bytes += len(frame)
            return True

    def pop(self) -> None:
        """Drop the oldest frame (it was delivered)."""
        with self._room:
            self._bytes -= len(self.frames.popleft())
            self._room.notify()

    def close(self) -> None:
        with self._room:
            self._closed = True
            self._room.notify_all()


class VirtioNet(VirtioDevice):
    device_id = 1
    pci_class = 0x020000          # network controller, Ethernet
    num_queues = 2
    # 1024 entries a queue (QEMU's rx_queue_size allows up to 1024; the default is 256): a 64 KiB frame takes 8-45
    # of Linux's mergeable receive buffers, so 256 held only 6-30 frames, and downloads met the ~170 ms loopback
    # stall more often (A/B, docs/net-performance.md "Session 13").
    queue_size = 1024

    def __init__(self, mac: str, connect: Connect, mtu: int = 1500, name: str = "net0") -> None:
        super().__init__()
        self.mac = bytes(int(x, 16) for x in mac.split(":"))
        if len(self.mac) != 6:
            raise ValueError(f"{name}: MAC {mac!r} is not six bytes")
        self.mtu = max(MIN_MTU, min(mtu, MAX_FRAME - ETH_HEADER - 4))
        self.name = name
        self._connect = connect
        checksum.load()
        self.stats = {"rx_bytes": 0, "rx_packets": 0, "tx_bytes": 0, "tx_packets": 0, "rx_dropped": 0,
                      "tx_dropped": 0}
        self.link_up = False
        self.link_reason = "not started"
        # The user's link switch (virsh domif-setlink; the GUI's NIC page): down hides the carrier from the
        # guest and drops frames both ways, as an unplugged cable does, while the backend stays connected.
        self.switch_up = True
        self.on_link_change: LinkListener | None = None
        self.backend: NetBackend | None = None
        self._held: list[DescriptorChain] = []      # receive buffers taken for a frame that did not fit yet
        self._backend_lock = threading.Lock()       # one connect/disconnect at a time
        self._rx_kick = Doorbell()                  # the driver added receive buffers (or the state changed)
        self._tx_kick = Doorbell()                  # the driver added frames to send
        self._notify_exits = 0                      # notifications that reached process() (not rung natively)
        self._stopping = False
        self._rx_threads: list[threading.Thread] = []     # the backend's reader and the backlog's drain
        self._backlog: RxBacklog | None = None
        self._rx_order = threading.Lock()           # one thread at a time puts frames in the ring, in order
        self._tx_thread: threading.Thread | None = None
        # A state capture (quiesce() .. thaw()): neither thread touches the rings, guest RAM or the interrupt
        # lines. Set under _thawed's lock, read by the ring work under the transport lock.
        self._frozen = False
        self._thawed = threading.Condition(threading.Lock())
        self._tx_pass_lock = threading.Lock()       # held by the transmit thread for a whole pass, sends included
        self._config_pending = False                # a link change during a capture, told to the driver at thaw()

    # -- what the driver sees ---------------------------------------------------------------------------------
    def features(self) -> int:
        return F_MAC | F_STATUS | F_MTU | F_MRG_RXBUF | F_CSUM | F_GUEST_CSUM

    def config(self) -> bytes:
        # mac, status, max_virtqueue_pairs, mtu (5.1.4)
        return struct.pack("<6sHHH", self.mac, S_LINK_UP if self.link_up and self.switch_up else 0, 1,
                           self.mtu)

    @property
    def _driver_features(self) -> int:
        # The transport's record, not a copy taken at activate(): a restored machine's transport has the
        # negotiated features back without the driver going through DRIVER_OK again.
        return self.transport.driver_features if self.transport is not None else 0

    def activate(self, driver_features: int) -> None:
        self._rx_kick.ring()

    def reset(self) -> None:
        self._held = []                # the rings are gone: nothing taken from them is ours any more

    def process(self, queue: Virtqueue, memory: GuestMemory, handoff: Handoff | None = None) -> None:
        # On the vCPU thread, for a notification the accelerator did not ring natively: only wake the thread that
        # owns the queue.
        self._notify_exits += 1
        (self._rx_kick if queue.index == RX else self._tx_kick).ring()

    def doorbell(self, index: int) -> Doorbell | None:
        return self._rx_kick if index == RX else self._tx_kick

    # -- the backend ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the transmit thread and connect the backend (a backend that fails leaves the link down)."""
        self._tx_thread = threading.Thread(target=self._tx_loop, name=f"{self.name}-tx", daemon=True)
        self._tx_thread.start()
        self.reconnect()

    def reconnect(self) -> bool:
        """(Re)start the backend: the old one is closed, a new one connected, the link comes up. False (and the
        link down, with the reason in link_reason) when the new backend cannot start."""
        with self._backend_lock:
            if self._stopping:
                return False
            self._disconnect()
            try:
                backend = self._connect()
            except OSError as exc:
                self._set_link(False, str(exc))
                return False
            self.backend = backend
            backlog = self._backlog = RxBacklog()
            self._rx_threads = [threading.Thread(target=loop, args=(backend, backlog), name=f"{self.name}-{what}",
                                                 daemon=True)
                                for loop, what in ((self._rx_loop, "rx"), (self._drain_loop, "rx-drain"))]
            for thread in self._rx_threads:
                thread.start()
            self._set_link(True, backend.description)
            return True

    def _disconnect(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
        with self._thawed:
            self._thawed.notify_all()           # a reader waiting out a capture sees its backend replaced
        threads, self._rx_threads = self._rx_threads, []
        if self._backlog is not None:
            self._backlog.close()
        self._rx_kick.ring()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(5)

    def stop(self) -> None:
        """The machine is going away: stop both threads and close the backend."""
        with self._backend_lock:
            self._stopping = True
            self._disconnect()
        self._tx_kick.ring()
        if self._tx_thread is not None and self._tx_thread is not threading.current_thread():
            self._tx_thread.join(5)
        # Closed once nothing waits on them (a close does not wake a read); an accelerator that bound them holds
        # its own reference for the rest of the machine's life.
        if self._tx_thread is None or not self._tx_thread.is_alive():
            self._tx_kick.close()
        if not any(thread.is_alive() for thread in self._rx_threads):
            self._rx_kick.close()

    def set_switch(self, up: bool) -> None:
        """Plug or unplug the virtual cable: the STATUS field's LINK_UP follows (with the backend's state) and a
        change raises the configuration-change interrupt, so the guest sees its carrier go down or up
        (virtio 1.2, 5.1.4.2)."""
        with self._backend_lock:
            before = self.link_up and self.switch_up
            self.switch_up = bool(up)
            if before != (self.link_up and self.switch_up):
                self._config_changed()
        self._rx_kick.ring()

    def _set_link(self, up: bool, reason: str) -> None:
        changed = up != self.link_up
        self.link_up, self.link_reason = up, reason
        if changed and self.switch_up:
            self._config_changed()
        listener = self.on_link_change
        if listener is None:
            if not up:
                log.warning("%s: link down: %s", self.name, reason)
        else:
            try:
                listener(up, reason)
            except Exception:
                log.exception("%s: link listener failed", self.name)

    def _backend_ended(self, backend: NetBackend) -> None:
        # Not waiting for the lock: whoever holds it (a reconnect, stop) is replacing this backend anyway, and
        # joins this thread.
        if not self._backend_lock.acquire(blocking=False):
            return
        try:
            if self.backend is not backend or self._stopping:
                return                     # replaced or stopped on purpose
            self.backend = None
            backend.close()
            self._set_link(False, backend.why_ended())
        finally:
            self._backend_lock.release()

    # -- machine state (docs/machine-state.md, "Network cards") ----------------------------------------------
    def quiesce(self, timeout: float = 30) -> None:
        """Hold the card still for a state capture (the vCPUs already stopped): until thaw() neither thread
        touches the rings, guest RAM or an interrupt. The reader stops taking frames from the backend (they wait
        in passt's socket or the TAP queue; one it had already read waits in the backlog), the transmit pass
        under way finishes sending what it took, and receive buffers taken for a frame that did not fit yet go
        back to the available ring, so nothing of the card's is in flight in the saved record. A link change
        meanwhile (the backend ended) is told to the driver at thaw(). Idempotent."""
        with self._thawed:
            self._frozen = True
        t = self.transport
        if t is not None:
            with t.lock:                # a delivery holds this lock from its first pop to its interrupt
                self._give_back_held(t.queues[RX])
        if not self._tx_pass_lock.acquire(timeout=timeout):
            self.thaw()
            raise RuntimeError(f"{self.name}: the transmit thread is still sending after {timeout} s")
        self._tx_pass_lock.release()    # any later pass finds the card frozen and takes nothing

    def thaw(self) -> None:
        """End a capture: the card takes frames both ways again (a live snapshot's machine runs on)."""
        with self._thawed:
            self._frozen = False
            pending, self._config_pending = self._config_pending, False
            self._thawed.notify_all()
        if pending and self.transport is not None:
            self.transport.config_changed()
        self._rx_kick.ring()            # the drain thread delivers what waited; the driver's buffers are there
        self._tx_kick.ring()            # frames the driver queued before the pause and we did not take

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _config_changed(self) -> None:
        """The link status the driver reads changed: a configuration change notification (a new generation and
        an interrupt), or, during a capture, one at thaw() -- the interrupt controllers are being saved."""
        t = self.transport
        if t is None:
            return
        with self._thawed:
            if self._frozen:
                self._config_pending = True
                return
        t.config_changed()

    def _give_back_held(self, q: Virtqueue) -> None:
        """Un-take the receive buffers held for a frame that did not fit yet (transport lock held). They are
        always the last chains popped (a delivery frees from the front), and the driver cannot have reused
        their available-ring slots (it has no free descriptor for that while they are out), so moving
        last_avail back over them is the state in which the device had not taken them: a restored machine, or
        this one after thaw(), takes the same chains again."""
        held, self._held = self._held, []
        if not held or not q.ready:
            return
        q.last_avail = (q.last_avail - len(held)) & 0xFFFF
        if q.event_idx:             # avail_event (2.7.10) follows what the device has read
            q.memory.write_u16(q.used_addr + 4 + 8 * q.size, q.last_avail)

    def _wait_thawed(self, backend: NetBackend) -> bool:
        """The reader, before taking the next frame from the backend: wait out a capture. False when the
        backend was replaced or the card stopped meanwhile."""
        with self._thawed:
            while self._frozen and self.backend is backend and not self._stopping:
                self._thawed.wait()
        return self.backend is backend

    # -- receive ----------------------------------------------------------------------------------------------
    def _rx_loop(self, backend: NetBackend, backlog: RxBacklog) -> None:
        """The reader: frames from the backend straight into the ring while nothing is waiting; when the driver
        has no buffers, into the backlog (in order) for the drain thread, and on reading. Reading on keeps the
        backend's socket drained: passt, finding it full, drops the frame and its TCP connection stalls until
        passt's retransmission timer (about a second) fires; a TAP queue drops frames the same way."""
        try:
            while self._wait_thawed(backend) and (frame := backend.recv_frame()) is not None:
                if self.backend is not backend:
                    return
                with self._rx_order:
                    if not backlog.frames and self._deliver(frame):
                        continue
                if not backlog.put(frame):
                    return                               # disconnected while waiting for room
                self._rx_kick.ring()                     # the drain thread looks again (buffers may be there now)
        except Exception as exc:                # a device-model bug stops this card, not the VM
            log.exception("%s: receive failed", self.name)
            self._fail(f"device model failed: {type(exc).__name__}: {exc}")
        self._backend_ended(backend)

    def _drain_loop(self, backend: NetBackend, backlog: RxBacklog) -> None:
        """The drain thread: moves backlogged frames into the ring as the driver adds buffers."""
        try:
            while self.backend is backend:
                with self._rx_order:
                    while backlog.frames and self._deliver(backlog.frames[0]):
                        backlog.pop()
                # Nothing backlogged, or no receive buffers: wait for a frame or the driver's notify (activate,
                # a reset, the link switch and a disconnect ring this too). A ring during the look above makes
                # this return at once: the wait consumes only rings made before it.
                self._rx_kick.wait()
        except Exception as exc:
            log.exception("%s: receive failed", self.name)
            self._fail(f"device model failed: {type(exc).__name__}: {exc}")

    def _fail(self, why: str) -> None:
        if self.transport is not None:
            self.transport.device_error(why)

    def _deliver(self, frame: bytes) -> bool:
        """Put one frame into the receive queue; False when the driver has not given enough buffers yet."""
        t = self.transport
        assert t is not None
        q = t.queues[RX]
        with t.lock:
            if self._frozen:
                return False               # held (the backlog) until thaw(), not dropped
            if not t.may_run() or not q.ready or not (self.link_up and self.switch_up):
                self.stats["rx_dropped"] += 1
                return True
            try:
                return self._deliver_locked(q, t.memory, frame)
            except (VirtqueueError, GuestMemoryError) as exc:
                self._held = []
                self.stats["rx_dropped"] += 1
                t.device_error(str(exc))
                return True

    def _deliver_locked(self, q: Virtqueue, memory: GuestMemory, frame: bytes) -> bool:
        mergeable = bool(self._driver_features & F_MRG_RXBUF)
        need = HDR_LEN + len(frame)
        held = self._held
        room = sum(c.writable_len for c in held)
        popped = False
        while not held or (mergeable and room < need):
            chain = q.pop(event=False)        # avail_event once for the frame's buffers (below), not per buffer
            if chain is None:
                if popped:
                    q.mark_read()
                return False
            popped = True
            if chain.readable:
                raise VirtqueueError(f"queue {q.index}: a receive buffer has a device-readable part")
            size = chain.writable_len
            if size < HDR_LEN:
                raise VirtqueueError(f"queue {q.index}: a receive buffer of {size} bytes cannot hold the header")
            held.append(chain)
            room += size
            if len(held) >= q.size and room < need:
                raise VirtqueueError(f"queue {q.index}: {len(held)} receive buffers of {room} bytes in all cannot "
                                     f"hold a {len(frame)}-byte frame")
        if popped:
            q.mark_read()
        if not mergeable and room < need:
            self.stats["rx_dropped"] += 1          # the buffer stays ours for the next frame
            return True
        # How many buffers the frame takes (only the first carries the header).
        used, total = 0, 0
        while total < need:
            total += held[used].writable_len
            used += 1
        flags = HDR_F_DATA_VALID if self._driver_features & F_GUEST_CSUM else 0
        data = memoryview(struct.pack("<BBHHHHH", flags, GSO_NONE, 0, 0, 0, 0, used) + frame)
        old_used = q.used_idx
        _scatter_frame(memory, q, held[:used], data, need)
        q.publish()                       # all of the frame's buffers at once: num_buffers must be there to read
        del held[:used]
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += len(frame)
        assert self.transport is not None
        self.transport.used(q, old_used)
        return True

    # -- transmit ---------------------------------------------------------------------------------------------
    def _tx_loop(self) -> None:
        while True:
            self._tx_kick.wait()                # a notify during the pass below brings another pass
            if self._stopping:
                return
            try:
                while self._tx_pass():
                    pass
            except Exception as exc:
                log.exception("%s: transmit failed", self.name)
                self._fail(f"device model failed: {type(exc).__name__}: {exc}")

    def _tx_pass(self) -> bool:
        """Take up to TX_BATCH frames off the transmit queue, give the buffers back, send the frames; True when
        there may be more."""
        t = self.transport
        assert t is not None
        with self._tx_pass_lock:        # quiesce() waits for the frames taken to be sent
            return self._tx_pass_locked(t, t.queues[TX])

    def _tx_pass_locked(self, t: VirtioPciDevice, q: Virtqueue) -> bool:
        frames: list[bytes] = []
        with t.lock:
            if self._frozen or not t.may_run() or not q.ready:
                return False
            old_used = q.used_idx
            try:
                while len(frames) < TX_BATCH:
                    chain = q.pop()
                    if chain is None:
                        break
                    frames.append(self._tx_frame(chain, t.memory))
                    q.push(chain, 0)
            except (VirtqueueError, GuestMemoryError) as exc:
                self.stats["tx_dropped"] += len(frames) + 1
                t.device_error(str(exc))
                return False
            pushed, generation = q.used_idx != old_used, t.generation
        backend = self.backend
        for frame in frames:
            if backend is not None and self.link_up and self.switch_up and backend.send_frame(frame):
                self.stats["tx_packets"] += 1
                self.stats["tx_bytes"] += len(frame)
            else:
                self.stats["tx_dropped"] += 1        # no carrier: the frame is lost, as on an unplugged cable
        # The driver hears of the freed buffers after the frames are on their way: the interrupt (~20 us in the
        # device model) is not on the path of the reply the guest waits for. The entries are in the used ring
        # already; a reset since then drops the interrupt.
        if pushed:
            t.used(q, old_used, generation)
        return len(frames) == TX_BATCH

    def _tx_frame(self, chain: DescriptorChain, memory: GuestMemory) -> bytes:
        n = chain.readable_len
        if n < HDR_LEN + ETH_HEADER:
            raise VirtqueueError(f"a transmitted frame of {n} bytes is shorter than the header and an Ethernet "
                                 "header")
        if n > HDR_LEN + MAX_FRAME:
            raise VirtqueueError(f"a transmitted frame of {n - HDR_LEN} bytes is over the {MAX_FRAME}-byte limit")
        data = gather(memory, chain.readable)
        flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset = struct.unpack_from("<BBHHHH", data)
        if gso_type != GSO_NONE:
            raise VirtqueueError(f"the driver asked for segmentation (gso_type {gso_type}), which was not offered")
        if not flags & HDR_F_NEEDS_CSUM:
            return data[HDR_LEN:]
        if not self._driver_features & F_CSUM:
            raise VirtqueueError("the driver left a checksum to the device without negotiating CSUM")
        frame = bytearray(data[HDR_LEN:])
        at = csum_start + csum_offset
        if csum_start >= len(frame) or at + 2 > len(frame):
            raise VirtqueueError(f"checksum at {csum_start}+{csum_offset} lies outside the {len(frame)}-byte frame")
        # The driver put the pseudo-header sum in the checksum field; the sum from csum_start on completes it.
        csum = inet_checksum(memoryview(frame)[csum_start:])
        if csum == 0 and csum_offset == UDP_CSUM_OFFSET:
            csum = 0xFFFF                # RFC 768: a UDP checksum that computes to zero is sent as all ones
        struct.pack_into(">H", frame, at, csum)
        return bytes(frame)

    def counters(self) -> dict[str, int]:
        """The traffic counters, and how the driver's notifications arrived: rung by the accelerator without an
        exit, or through the notification register's MMIO handler."""
        return {**self.stats, "notifies_native": self._rx_kick.rung_natively + self._tx_kick.rung_natively,
                "notify_exits": self._notify_exits}


def _scatter_frame(memory: GuestMemory, q: Virtqueue, chains: list[DescriptorChain], data: memoryview,
                   need: int) -> None:
    """Write `data` (header and frame, `need` bytes) across the chains' writable buffers and push the chains to
    the used ring (not published). Buffers that follow each other in guest RAM get one write: the driver carves
    its receive buffers out of large pages one after another, so a 64 KiB frame over 16-45 buffers is mostly a
    few writes, not one per buffer (each a bounds check and a code-cache notice on the software CPU)."""
    entries: list[tuple[DescriptorChain, int]] = []
    pos = 0
    run_gpa, run_pos, run_end = -1, 0, 0          # the pending write: data[run_pos:pos] to run_gpa
    for chain in chains:
        start = pos
        for gpa, n in chain.writable:
            if pos >= need:
                break
            n = min(n, need - pos)
            if gpa != run_end or run_gpa < 0:
                if run_gpa >= 0:
                    memory.write(run_gpa, data[run_pos:pos])
                run_gpa, run_pos = gpa, pos
            pos += n
            run_end = gpa + n
        entries.append((chain, pos - start))
    if run_gpa >= 0 and pos > run_pos:
        memory.write(run_gpa, data[run_pos:pos])
    q.push_all(entries)

