"""A 16550A UART (National Semiconductor PC16550D datasheet, "Registers" and "FIFO Interrupt Mode Operation").

Eight registers at base..base+7: RBR/THR (DLL with DLAB), IER (DLM with DLAB), IIR/FCR, LCR, MCR, LSR, MSR, SCR.
Modelled in full: 16-byte receive and transmit FIFOs with the four receive trigger levels, the prioritised
interrupt identification (line status > received data / character timeout > THR empty > modem status), loopback
mode with the modem outputs wired back to the inputs, and OUT2 gating the interrupt output onto the ISA IRQ as a PC
motherboard does.

Transmission is instantaneous: a byte written to THR leaves at once (to `on_output`, or back into the receiver in
loopback), so THRE and TEMT are set again as soon as the write returns. The THRE interrupt is re-armed when IER's
ETBEI bit goes 0 -> 1 while THR is empty; Linux's 8250 driver checks for exactly that at start-up (UART_BUG_THRE)
and Windows relies on it too.

Host input (`receive`) waits in a bounded host-side queue and reaches the receive FIFO a FIFO at a time, paced
like a line: a batch (up to 16 characters) goes into an empty FIFO once its characters would have arrived at the
programmed rate (start, data, parity and stop bits at the divisor's baud rate, but never slower than 115200 baud:
Linux leaves `console=ttyS0` at 9600, where a 128 KiB paste would take two minutes). After the guest empties the
FIFO, the next batch waits until it has read IIR and seen no interrupt pending (its interrupt handler is
leaving), or 20 ms for a guest that polls. While the FIFO is full the host holds the rest back, the way a sender
with hardware flow control would, so pasted text is not lost; it honours RTS the same way once the guest has
raised it (Linux drops RTS to throttle a `crtscts` port whose line discipline is full; a guest that never drives
RTS, such as a boot loader polling the port, is sent to anyway).

Why (issue 18, defect 12): a FIFO refilled on every read never empties, so IRQ 4 never drops; Linux's 8250
interrupt handler loops while IIR shows an interrupt and gives up after 512 passes, and, the edge-triggered ISA
line never rising again, ttyS0 went silent for good after a paste of 128 KiB. Pacing by host time alone is not
enough for a guest on the software CPU of a busy host, slower than any line: every handler pass would find a new
batch. Waiting for the guest's "no interrupt" guarantees each handler call ends after one batch, and each batch
raises a new edge. The character timeout interrupt (IIR 0x0C) fires whenever the FIFO holds fewer bytes than the
trigger level, since nothing more arrives into a non-empty FIFO: the line is idle, which is what four character
times of silence mean on real hardware.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from core.bus import PortIoBus
from core.irq import IrqLine
from core.platform import COM1_PORT
from core.state import fields as f
from core.timers import TimerQueue, now_ns

FIFO_SIZE = 16
HOST_QUEUE_LIMIT = 1 << 20     # bytes of host input held back while the guest is not reading
MIN_RX_BAUD = 115200           # host input never arrives slower than this, whatever divisor the guest programmed
GATE_FALLBACK_NS = 20_000_000  # a guest that never reads IIR (polling) gets the next batch after 20 ms anyway

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7

# IER bits.
IER_ERBFI, IER_ETBEI, IER_ELSI, IER_EDSSI = 0x01, 0x02, 0x04, 0x08

# IIR values (bits 3-1 plus "no interrupt pending" bit 0; bits 7-6 report the FIFOs enabled).
IIR_NONE, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_CTI = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO_ENABLED = 0xC0

# FCR bits.
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX, FCR_DMA = 0x01, 0x02, 0x04, 0x08
RX_TRIGGER_LEVELS = (1, 4, 8, 14)

LCR_DLAB = 0x80
LCR_BREAK = 0x40

# MCR bits.
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10

# LSR bits.
LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI, LSR_THRE, LSR_TEMT, LSR_FIFO_ERR = 1, 2, 4, 8, 16, 32, 64, 128
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# MSR bits: deltas in the low nibble, line states in the high nibble.
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

# The host end behaves like a terminal that is switched on: clear-to-send, data-set-ready and carrier present.
HOST_MODEM_LINES = MSR_CTS | MSR_DSR | MSR_DCD


class Uart16550:
    """A PC16550D at `base` (8 ports) raising `irq`; transmitted bytes go to `on_output`.

    `on_output` is called with the UART's lock held (so output from several vCPUs stays in order); it must not
    call back into this UART.
    """

    def __init__(self, irq: IrqLine, on_output: Callable[[bytes], None], base: int = COM1_PORT,
                 timers: TimerQueue | None = None) -> None:
        self.irq = irq
        self.on_output = on_output
        self.base = base
        self._lock = threading.Lock()
        self._host_queue: deque[int] = deque()
        # The machine's timer thread paces host input; a UART built alone (unit tests) gets its own on first input.
        self._timers = timers
        self._rx_timer = timers.timer(self._on_rx_timer) if timers is not None else None
        self._rx_clock = 0           # host-monotonic ns at which the line is free for the next batch
        self._rx_gate_open = True    # the guest acknowledged the last batch (see _rx_drained)
        self._rx_gate_deadline = 0
        self._rts_seen = False       # the guest has raised RTS since reset: from then on RTS low holds input back
        self.dropped_input = 0       # host bytes discarded because the host-side queue was full
        self.overruns = 0            # receiver overruns (only possible in loopback, where the guest feeds itself)
        self._reset_registers()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def attach(self, pio: PortIoBus) -> None:
        pio.register(self.base, 8, self)

    def reset(self) -> None:
        with self._lock:
            self._host_queue.clear()
            if self._rx_timer is not None:
                self._rx_timer.cancel()
            self._reset_registers()
            self._update_irq()

    def _reset_registers(self) -> None:
        # Power-on values from the datasheet's "UART Reset Configuration" table; the divisor latch and scratch
        # register are undefined there, so they start at 9600 baud (divisor 12) and 0.
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr_deltas = 0
        self.scr = 0
        self.dll, self.dlm = 12, 0
        self.fcr = 0
        self.rx_fifo: deque[tuple[int, int]] = deque()   # (byte, error bits that came with it)
        self._rts_seen = False
        self._rx_gate_open = True
        self.thre_pending = False
        self._prev_modem_inputs = self._modem_inputs()

    # -- machine state (docs/machine-state.md) ---------------------------------------------------------------

    _STATE = {"ier": f.u(4), "lcr": f.U8, "mcr": f.u(5), "lsr": f.U8, "msr_deltas": f.u(4), "scr": f.U8,
              "dll": f.U8, "dlm": f.U8, "fcr": f.U8, "thre_pending": f.BOOL, "_prev_modem_inputs": f.U8}
    STATE_VERSION = 1

    def get_state(self) -> dict:
        with self._lock:
            state = f.capture(self, self._STATE, 0)
            state["rx_fifo"] = [[b, e] for b, e in self.rx_fifo]
            state["host_queue"] = bytes(self._host_queue)
            return state

    def set_state(self, state: dict) -> None:
        extra = {"rx_fifo": None, "host_queue": None}
        checked = f.validate({k: v for k, v in f.expect_record(state, "uart", (*self._STATE, *extra)).items()
                              if k not in extra}, self._STATE, "uart", 0)
        if not isinstance(state["rx_fifo"], list) or len(state["rx_fifo"]) > FIFO_SIZE:
            raise f.StateError(f"uart.rx_fifo: expected a list of at most {FIFO_SIZE} entries")
        pairs = [tuple(f.check(item, f.Ints(2, 0, 0xFF), f"uart.rx_fifo[{i}]"))
                 for i, item in enumerate(state["rx_fifo"])]
        host = f.check(state["host_queue"], f.Bytes(max_length=HOST_QUEUE_LIMIT), "uart.host_queue")
        with self._lock:
            f.apply(self, checked, self._STATE, 0)
            self.rx_fifo = deque(pairs)
            self._host_queue = deque(host)
            self._rx_clock = 0
            self._rx_gate_open = True
            self._rts_seen = bool(self.mcr & MCR_RTS)
            self._schedule_rx()
            self._update_irq()

    # -- host side -------------------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Queue bytes typed or pasted on the host; safe to call from any thread."""
        if not data:
            return
        with self._lock:
            room = HOST_QUEUE_LIMIT - len(self._host_queue)
            if room < len(data):
                self.dropped_input += len(data) - max(room, 0)
                data = data[: max(room, 0)]
            self._host_queue.extend(data)
            self._schedule_rx()

    @property
    def pending_input(self) -> int:
        """Host bytes not yet in the guest's receive FIFO."""
        with self._lock:
            return len(self._host_queue)

    @property
    def baud(self) -> int:
        """The line speed the guest programmed (1.8432 MHz crystal / 16 / divisor)."""
        with self._lock:
            divisor = self.dll | (self.dlm << 8)
        return 115200 // divisor if divisor else 0

    # -- port I/O --------------------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        # A wider access on the ISA bus is split into consecutive byte cycles.
        value = 0
        for i in range(size):
            offset = port - self.base + i
            byte = self._read(offset) if 0 <= offset < 8 else 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            offset = port - self.base + i
            if 0 <= offset < 8:
                self._write(offset, (value >> (8 * i)) & 0xFF)

    def _read(self, offset: int) -> int:
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == RBR:
                if dlab:
                    return self.dll
                value = self._pop_rx()
            elif offset == IER:
                return self.dlm if dlab else self.ier
            elif offset == IIR:
                value = self._iir()
                if value & IIR_NONE and not self._rx_gate_open:
                    # The guest's handler saw "no interrupt" and is leaving: the next batch raises a new edge.
                    self._rx_gate_open = True
                    if self._rx_timer is not None:
                        self._rx_timer.cancel()  # the fallback wake-up is not needed any more
                    self._schedule_rx()
                # Reading IIR while it reports THR empty is one of the two ways to clear that interrupt.
                if value & 0x0F == IIR_THRI:
                    self.thre_pending = False
            elif offset == LCR:
                return self.lcr
            elif offset == MCR:
                return self.mcr
            elif offset == LSR:
                value = self._lsr()
                self.lsr &= ~(LSR_ERRORS | LSR_FIFO_ERR)
            elif offset == MSR:
                value = self._msr()
                self.msr_deltas = 0
            else:
                return self.scr
            self._update_irq()
            return value

    def _write(self, offset: int, value: int) -> None:
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == THR:
                if dlab:
                    self.dll = value
                    return
                self._transmit(value)
            elif offset == IER:
                if dlab:
                    self.dlm = value
                    return
                old = self.ier
                self.ier = value & 0x0F
                if not old & IER_ETBEI and self.ier & IER_ETBEI and self.lsr & LSR_THRE:
                    self.thre_pending = True
            elif offset == FCR:
                self._write_fcr(value)
            elif offset == LCR:
                self.lcr = value
                return
            elif offset == MCR:
                self.mcr = value & 0x1F
                self._rts_seen = self._rts_seen or bool(self.mcr & MCR_RTS)
                self._latch_modem_deltas()
                self._schedule_rx()
            elif offset == LSR:
                return                      # factory test register on the 16550D; writes have no defined effect
            elif offset == MSR:
                return
            else:
                self.scr = value
                return
            self._update_irq()

    # -- registers ------------------------------------------------------------------------------------------------

    @property
    def _fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_ENABLE)

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _rx_trigger(self) -> int:
        return RX_TRIGGER_LEVELS[self.fcr >> 6] if self._fifo_enabled else 1

    def _write_fcr(self, value: int) -> None:
        was_enabled = self._fifo_enabled
        enable = bool(value & FCR_ENABLE)
        if enable != was_enabled:
            # Switching between 16450 and FIFO mode empties both FIFOs (datasheet, FCR bit 0).
            self.rx_fifo.clear()
        elif enable and value & FCR_CLEAR_RX:
            self.rx_fifo.clear()
        # The transmitter never holds bytes here, so clearing its FIFO leaves THR empty as before.
        self.fcr = value & (FCR_ENABLE | FCR_DMA | 0xC0) if enable else 0
        self.lsr &= ~LSR_FIFO_ERR
        self._schedule_rx()

    def _lsr(self) -> int:
        value = self.lsr
        if self.rx_fifo:
            value |= LSR_DR
        if self._fifo_enabled and any(err for _, err in self.rx_fifo):
            value |= LSR_FIFO_ERR
        return value

    def _modem_inputs(self) -> int:
        if self.mcr & MCR_LOOP:
            # Loopback: RTS -> CTS, DTR -> DSR, OUT1 -> RI, OUT2 -> DCD (datasheet, MCR bit 4).
            m = self.mcr
            return ((m & MCR_RTS) and MSR_CTS) | ((m & MCR_DTR) and MSR_DSR) | \
                ((m & MCR_OUT1) and MSR_RI) | ((m & MCR_OUT2) and MSR_DCD)
        return HOST_MODEM_LINES

    def _latch_modem_deltas(self) -> None:
        now = self._modem_inputs()
        changed = now ^ self._prev_modem_inputs
        if changed & MSR_CTS:
            self.msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self.msr_deltas |= MSR_DDSR
        if changed & MSR_DCD:
            self.msr_deltas |= MSR_DDCD
        if self._prev_modem_inputs & MSR_RI and not now & MSR_RI:
            self.msr_deltas |= MSR_TERI          # trailing edge of ring indicator only
        self._prev_modem_inputs = now

    def _msr(self) -> int:
        return self._modem_inputs() | self.msr_deltas

    # -- data paths -----------------------------------------------------------------------------------------------

    def _transmit(self, value: int) -> None:
        self.thre_pending = False                # writing THR is the other way to clear the THRE interrupt
        if self.mcr & MCR_LOOP:
            self._push_rx(value, self.lcr & LCR_BREAK and LSR_BI)
        elif not self.lcr & LCR_BREAK:           # while a break is being sent the TX line is held low
            self.on_output(bytes((value,)))
        # The byte has left: THR and the shift register are empty again, which raises the THRE interrupt.
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thre_pending = True

    def _push_rx(self, value: int, errors: int = 0) -> None:
        if len(self.rx_fifo) >= self._rx_capacity():
            # Overrun: the character in the shift register is lost and OE is set (datasheet, LSR bit 1).
            self.lsr |= LSR_OE
            self.overruns += 1
            return
        self.rx_fifo.append((value, errors))
        self.lsr |= errors

    def _pop_rx(self) -> int:
        if not self.rx_fifo:
            return 0
        value, _ = self.rx_fifo.popleft()
        if not self.rx_fifo:
            self._rx_drained()
            self._schedule_rx()
        return value

    def _char_ns(self) -> int:
        """One character time on the line: start bit, data bits, parity and stop bits (LCR) at the baud rate."""
        lcr = self.lcr
        bits = 1 + 5 + (lcr & 3) + (1 if lcr & 0x08 else 0) + (2 if lcr & 0x04 else 1)
        baud = max(115200 // ((self.dll | (self.dlm << 8)) or 1), MIN_RX_BAUD)
        return bits * 1_000_000_000 // baud

    def _held_back(self) -> bool:
        """No host input moves: loopback disconnects the receiver, or the guest holds RTS low (flow control)."""
        return bool(self.mcr & MCR_LOOP) or (self._rts_seen and not self.mcr & MCR_RTS)

    def _schedule_rx(self) -> None:
        """Arm the receive timer for the next batch of host input, if one may come: the FIFO is empty and the
        guest has acknowledged the previous batch (or the fallback delay for a guest that polls has passed)."""
        if not self._host_queue or self._held_back() or self.rx_fifo:
            return
        if self._rx_timer is None:
            self._timers = TimerQueue(name="vireo-uart-timer")
            self._rx_timer = self._timers.timer(self._on_rx_timer)
        if self._rx_timer.armed:
            return
        now = now_ns()
        if not self._rx_gate_open:
            self._rx_timer.arm(self._rx_gate_deadline)
            return
        batch = min(self._rx_capacity(), len(self._host_queue))
        # The batch's characters follow each other on the line; they are all in once the last one has arrived.
        self._rx_clock = max(self._rx_clock, now) + batch * self._char_ns()
        self._rx_timer.arm(self._rx_clock)

    def _on_rx_timer(self) -> None:
        with self._lock:
            now = now_ns()
            if not self._rx_gate_open and now >= self._rx_gate_deadline:
                self._rx_gate_open = True        # a guest that polls LSR and never reads IIR: go on anyway
                self._rx_clock = now
            if self._rx_gate_open and not self.rx_fifo and not self._held_back() and now >= self._rx_clock:
                capacity = self._rx_capacity()
                queue = self._host_queue
                while queue and len(self.rx_fifo) < capacity:
                    self.rx_fifo.append((queue.popleft(), 0))
            self._schedule_rx()
            self._update_irq()

    def _rx_drained(self) -> None:
        """The guest has emptied the receive FIFO: hold the next batch until it has seen its interrupt go away."""
        if self._host_queue:
            self._rx_gate_open = False
            self._rx_gate_deadline = now_ns() + GATE_FALLBACK_NS

    # -- interrupts -----------------------------------------------------------------------------------------------

    def _iir(self) -> int:
        fifo_bits = IIR_FIFO_ENABLED if self._fifo_enabled else 0
        ier = self.ier
        if ier & IER_ELSI and self.lsr & LSR_ERRORS:
            return fifo_bits | IIR_RLSI
        if ier & IER_ERBFI and self.rx_fifo:
            # Below the trigger level the character timeout: nothing more arrives while the FIFO holds bytes
            # (host input comes a FIFO at a time, into an empty FIFO only).
            return fifo_bits | (IIR_RDI if len(self.rx_fifo) >= self._rx_trigger() else IIR_CTI)
        if ier & IER_ETBEI and self.thre_pending:
            return fifo_bits | IIR_THRI
        if ier & IER_EDSSI and self.msr_deltas:
            return fifo_bits | IIR_MSI
        return fifo_bits | IIR_NONE

    def _update_irq(self) -> None:
        pending = not self._iir() & IIR_NONE
        # On a PC the INTR pin reaches the bus only through a buffer enabled by OUT2; in loopback the OUT2 pin is
        # forced inactive, so the interrupt never leaves the chip.
        gated = bool(self.mcr & MCR_OUT2) and not self.mcr & MCR_LOOP
        self.irq.set(pending and gated)
