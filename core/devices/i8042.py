"""The i8042 keyboard controller with a PS/2 keyboard and a PS/2 mouse behind it (IBM PC/AT and PS/2 Technical
References, "Keyboard/Auxiliary Device Controller"; the PS/2 keyboard and mouse command sets).

Port 0x60 is the data port (output buffer / input to the devices), port 0x64 the status register and command
port. Modelled: the status register, the command byte and the rest of the controller RAM (0x20-0x3F read, 0x60-0x7F
write), self-test (0xAA -> 0x55) and the interface tests, enabling and disabling each port (0xA7/0xA8/0xAD/0xAE),
the output port (0xD0/0xD1) with the A20 gate and the system reset line, pulse-output commands (0xFE resets the
machine), writing the output buffer as if from either device (0xD2/0xD3, which Linux uses to test the AUX IRQ),
and forwarding to the mouse (0xD4). With translation on (command byte bit 6) bytes from the keyboard are converted
from scan code set 2 to set 1 by the controller's fixed table, as the 8042 does.

The controller holds one output byte at a time; bytes from the devices wait in their own queues and move to the
output buffer when it is free and the port is enabled. IRQ1 / IRQ12 follow "output buffer full" with the byte's
source and the command byte's interrupt enables, so each new byte makes a fresh edge.

The keyboard answers reset (0xFF -> FA AA), identify (0xF2 -> FA AB 83), LEDs (0xED), scan code set (0xF0; sets 1
and 2), typematic (0xF3), enable/disable/defaults, echo and resend. Host keys arrive as set-2 make/break sequences
through `press_key`. The mouse implements the PS/2 command set Linux's psmouse probes with (reset -> FA AA 00,
identify, sample rate, resolution, scaling, stream/remote/wrap modes, status request) plus the IntelliMouse wheel
extension (sample rates 200, 100, 80 -> ID 3), and reports `mouse_event` movement as 3- or 4-byte packets.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from core.bus import PortIoBus
from core.devices import i8042_state as ps2
from core.irq import IrqLine
from core.platform import I8042_CMD_PORT, I8042_DATA_PORT
from core.timers import TimerQueue, now_ns

log = logging.getLogger(__name__)

# Status register bits.
ST_OBF, ST_IBF, ST_SYS, ST_CMD, ST_UNLOCKED, ST_AUX = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# Command byte bits.
CTR_KBDINT, CTR_AUXINT, CTR_SYS, CTR_KBDDIS, CTR_AUXDIS, CTR_XLATE = 0x01, 0x02, 0x04, 0x10, 0x20, 0x40

# Output port bits.
OUT_RESET, OUT_A20, OUT_KBD_OBF, OUT_AUX_OBF, OUT_KBD_CLOCK, OUT_KBD_DATA = 0x01, 0x02, 0x10, 0x20, 0x40, 0x80

ACK, RESEND, BAT_OK, ECHO = 0xFA, 0xFE, 0xAA, 0xEE
DEVICE_QUEUE_LIMIT = 1024
# A keyboard buffers only a few keystrokes (16 bytes on the original AT keyboard). Here its scan-code buffer holds
# at most 14 bytes, so with the controller's own output byte fewer than 16 are ever pending: Linux's i8042 probe
# reads up to 16 to flush the controller and takes a full 16 to mean "no controller", which keys typed during early
# boot must not trigger. What the host types beyond that waits in a host-side type-ahead queue (as a person's
# fingers would) and enters the buffer as the guest drains it, so pasted text is not lost.
KEYBOARD_BUFFER = 14
TYPEAHEAD_LIMIT = 4096         # key events
# Key events leave the type-ahead queue no faster than a PS/2 link carries a scan code (11 bits at 10-16.7 kHz:
# about 1 ms a byte), so a guest draining the controller in a tight loop, as Linux's probe does, finds it empty.
KEY_INTERVAL_NS = 1_000_000

# The 8042's set 2 -> set 1 translation table for codes below 0x80 (codes from 0x80 up pass unchanged except
# 0x83 (F7) and 0x84 (Alt+SysRq)). This is fixed in the controller's firmware; an 0xF0 break prefix is absorbed and
# sets bit 7 of the next translated code.
_XLATE_LOW = bytes((
    0xFF, 0x43, 0x41, 0x3F, 0x3D, 0x3B, 0x3C, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3E, 0x0F, 0x29, 0x59,
    0x65, 0x38, 0x2A, 0x70, 0x1D, 0x10, 0x02, 0x5A, 0x66, 0x71, 0x2C, 0x1F, 0x1E, 0x11, 0x03, 0x5B,
    0x67, 0x2E, 0x2D, 0x20, 0x12, 0x05, 0x04, 0x5C, 0x68, 0x39, 0x2F, 0x21, 0x14, 0x13, 0x06, 0x5D,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5E, 0x6A, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5F,
    0x6B, 0x33, 0x25, 0x17, 0x18, 0x0B, 0x0A, 0x60, 0x6C, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0C, 0x61,
    0x6D, 0x73, 0x28, 0x74, 0x1A, 0x0D, 0x62, 0x6E, 0x3A, 0x36, 0x1C, 0x1B, 0x75, 0x2B, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7A, 0x0E, 0x7B, 0x7C, 0x4F, 0x7D, 0x4B, 0x47, 0x7E, 0x7F, 0x6F,
    0x52, 0x53, 0x50, 0x4C, 0x4D, 0x48, 0x01, 0x45, 0x57, 0x4E, 0x51, 0x4A, 0x37, 0x49, 0x46, 0x54,
))


def translate_byte(code: int) -> int:
    if code < 0x80:
        return _XLATE_LOW[code]
    return {0x83: 0x41, 0x84: 0x54}.get(code, code)


def set2_to_set1(data: bytes) -> bytes:
    """Translate a set-2 byte sequence to set 1 the way the controller does (F0 prefix -> break bit)."""
    out = bytearray()
    brk = False
    for b in data:
        if b == 0xF0:
            brk = True
            continue
        out.append(translate_byte(b) | (0x80 if brk else 0))
        brk = False
    return bytes(out)


class _Ps2Keyboard:
    def __init__(self) -> None:
        self.queue: deque[int] = deque()
        self.typeahead: deque[bytes] = deque()
        self.reset()

    def reset(self) -> None:
        self.queue.clear()
        self.typeahead.clear()
        self.scanning = True
        self.scan_set = 2
        self.leds = 0
        self.typematic = 0x2B          # 10.9 cps, 500 ms: the power-on default
        self.awaiting: int | None = None
        self.last_sent = BAT_OK

    def _send(self, *data: int) -> None:
        self.queue.extend(data)
        self.last_sent = data[-1]

    def write(self, value: int) -> None:
        if self.awaiting is not None and value < 0xED:
            self._parameter(self.awaiting, value)
            return
        self.awaiting = None
        if value == 0xED or value == 0xF3 or value == 0xF0:
            self.awaiting = value
            self._send(ACK)
        elif value == 0xEE:
            self._send(ECHO)
        elif value == 0xF2:
            self._send(ACK, 0xAB, 0x83)
        elif value == 0xF4:
            self.scanning = True
            self._send(ACK)
        elif value in (0xF5, 0xF6):
            # Both restore the defaults; 0xF5 also stops scanning until 0xF4.
            self.typematic, self.scan_set = 0x2B, 2
            self.scanning = value == 0xF6
            self.queue.clear()
            self._send(ACK)
        elif 0xF7 <= value <= 0xFD:
            self._send(ACK)            # set-3 key-type commands: accepted, no effect in sets 1 and 2
        elif value == 0xFE:
            self.queue.append(self.last_sent)
        elif value == 0xFF:
            self.reset()
            self._send(ACK, BAT_OK)
        else:
            self._send(RESEND)

    def _parameter(self, command: int, value: int) -> None:
        self.awaiting = None
        if command == 0xED:
            self.leds = value & 7
            self._send(ACK)
        elif command == 0xF3:
            self.typematic = value & 0x7F
            self._send(ACK)
        elif value == 0:               # 0xF0 0: report the current set
            self._send(ACK, self.scan_set)
        elif value in (1, 2):
            self.scan_set = value
            self._send(ACK)
        else:
            self._send(RESEND)         # set 3 is not offered; Linux's atkbd then stays in set 2

    def key(self, set2: bytes) -> bool:
        if not self.scanning:
            return False
        if len(self.typeahead) >= TYPEAHEAD_LIMIT:
            return False
        self.typeahead.append(set2)
        return True

    def refill_one(self) -> bool:
        """Move the next key event from the type-ahead queue into the keyboard's buffer if it fits."""
        if not self.typeahead or not self.scanning:
            return False
        set2 = self.typeahead[0]
        data = set2 if self.scan_set == 2 else set2_to_set1(set2)
        if len(self.queue) + len(data) > KEYBOARD_BUFFER:
            return False
        self.typeahead.popleft()
        self.queue.extend(data)
        return True


def _scale_2to1(d: int) -> int:
    magnitude = abs(d)
    scaled = {0: 0, 1: 1, 2: 1, 3: 3, 4: 6, 5: 9}.get(magnitude, 2 * magnitude)
    return scaled if d >= 0 else -scaled


class _Ps2Mouse:
    def __init__(self) -> None:
        self.queue: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        self.queue.clear()
        self._defaults()
        self.device_id = 0
        self.wrap = False
        self.awaiting: int | None = None
        self.last_sent = 0
        self.rate_history: deque[int] = deque(maxlen=3)
        self.buttons = 0
        self.acc_dx = self.acc_dy = self.acc_dz = 0

    def _defaults(self) -> None:
        self.sample_rate = 100
        self.resolution = 2
        self.scaling_2to1 = False
        self.remote = False
        self.reporting = False

    def _send(self, *data: int) -> None:
        self.queue.extend(data)
        self.last_sent = data[-1]

    def write(self, value: int) -> None:
        if self.awaiting is not None:
            command, self.awaiting = self.awaiting, None
            if command == 0xF3:
                self.sample_rate = value
                self.rate_history.append(value)
                if tuple(self.rate_history) == (200, 100, 80):
                    self.device_id = 3     # IntelliMouse: wheel packets from now on
            else:
                self.resolution = value & 3
            self._send(ACK)
            return
        if self.wrap and value not in (0xEC, 0xFF):
            self._send(value)
            return
        if value in (0xE8, 0xF3):
            self.awaiting = value
            self._send(ACK)
        elif value in (0xE6, 0xE7):
            self.scaling_2to1 = value == 0xE7
            self._send(ACK)
        elif value == 0xE9:
            status = (self.remote << 6) | (self.reporting << 5) | (self.scaling_2to1 << 4) | \
                ((self.buttons & 1) << 2) | ((self.buttons & 4) >> 1) | ((self.buttons & 2) >> 1)
            self._send(ACK, status, self.resolution, self.sample_rate)
        elif value == 0xEA:
            self.remote = False
            self._send(ACK)
        elif value == 0xEB:
            self._send(ACK)
            self._emit(force=True)
        elif value == 0xEC:
            self.wrap = False
            self._send(ACK)
        elif value == 0xEE:
            self.wrap = True
            self._send(ACK)
        elif value == 0xF0:
            self.remote = True
            self._send(ACK)
        elif value == 0xF2:
            self._send(ACK, self.device_id)
        elif value == 0xF4:
            self.reporting = True
            self._send(ACK)
        elif value == 0xF5:
            self.reporting = False
            self._send(ACK)
        elif value == 0xF6:
            self._defaults()
            self._send(ACK)
        elif value == 0xFE:
            self.queue.append(self.last_sent)
        elif value == 0xFF:
            self.reset()
            self._send(ACK, BAT_OK, 0x00)
        else:
            self._send(RESEND)

    def event(self, dx: int, dy: int, dz: int, buttons: int) -> int:
        """Accumulate movement; in stream mode with reporting on, send it. Returns packets dropped."""
        self.acc_dx += dx
        self.acc_dy += dy
        self.acc_dz += dz
        changed = buttons != self.buttons
        self.buttons = buttons & 7
        if self.remote or not self.reporting:
            return 0
        return self._emit(force=changed)

    def _emit(self, force: bool) -> int:
        dropped = 0
        packet_len = 4 if self.device_id == 3 else 3
        while force or self.acc_dx or self.acc_dy or self.acc_dz:
            force = False
            dx = max(-256, min(255, self.acc_dx))
            dy = max(-256, min(255, self.acc_dy))
            dz = max(-8, min(7, self.acc_dz)) if packet_len == 4 else 0
            self.acc_dx -= dx
            self.acc_dy -= dy
            self.acc_dz = self.acc_dz - dz if packet_len == 4 else 0
            if self.scaling_2to1 and not self.remote:
                dx, dy = max(-256, min(255, _scale_2to1(dx))), max(-256, min(255, _scale_2to1(dy)))
            b0 = 0x08 | self.buttons | ((dx < 0) << 4) | ((dy < 0) << 5)
            packet = [b0, dx & 0xFF, dy & 0xFF] + ([dz & 0xFF] if packet_len == 4 else [])
            if len(self.queue) + packet_len > DEVICE_QUEUE_LIMIT:
                dropped += 1
                continue
            self.queue.extend(packet)
        return dropped


class I8042:
    """The keyboard controller at 0x60/0x64 with its keyboard (IRQ1) and mouse (IRQ12).

    `on_reset` is called (outside the controller's lock) when the guest pulses the reset line.
    `on_a20` is called with the new gate state when the guest changes A20 through the output port.
    """

    def __init__(self, on_reset: Callable[[], None], kbd_irq: IrqLine, mouse_irq: IrqLine,
                 on_a20: Callable[[bool], None] | None = None, timers: TimerQueue | None = None) -> None:
        self.on_reset = on_reset
        # Without a timer queue (unit tests of the register interface) typed keys enter the keyboard at once.
        self._typeahead_timer = timers.timer(self._on_typeahead_timer) if timers is not None else None
        self._next_key_ns = 0
        self.on_a20 = on_a20
        self.kbd_irq = kbd_irq
        self.mouse_irq = mouse_irq
        self._lock = threading.Lock()
        self.keyboard = _Ps2Keyboard()
        self.mouse = _Ps2Mouse()
        self.dropped_keys = 0
        self.dropped_mouse_packets = 0
        self.resets_requested = 0
        self._power_on()

    def _power_on(self) -> None:
        self.ram = bytearray(32)
        self.ram[0] = CTR_KBDINT | CTR_AUXINT
        self.sys_flag = False
        self.last_was_command = True
        self.out_byte: int | None = None
        self.out_aux = False
        self.last_read = 0
        self.pending_command: int | None = None
        self.controller_queue: deque[tuple[int, bool]] = deque()
        self.output_port = OUT_RESET | OUT_A20
        self._xlate_break = False
        self.keyboard.reset()
        self.mouse.reset()

    @property
    def ctr(self) -> int:
        return self.ram[0]

    @property
    def a20_enabled(self) -> bool:
        with self._lock:
            return bool(self.output_port & OUT_A20)

    def attach(self, pio: PortIoBus) -> None:
        pio.register(I8042_DATA_PORT, 1, self)
        pio.register(I8042_CMD_PORT, 1, self)

    def reset(self) -> None:
        with self._lock:
            self._power_on()
            self._update_irqs()

    def get_state(self) -> dict:
        """Machine state (docs/machine-state.md; the record is core/state/ps2.py's)."""
        return ps2.get_state(self)

    def set_state(self, state: dict) -> None:
        ps2.set_state(self, state)

    # -- host input ----------------------------------------------------------------------------------------------

    def press_key(self, set2_scancode_bytes: bytes) -> None:
        """Queue a key event as its set-2 scan code bytes (e.g. b"\\x1c" make, b"\\xf0\\x1c" break of A)."""
        with self._lock:
            if not self.keyboard.key(bytes(set2_scancode_bytes)):
                self.dropped_keys += 1
                if self.dropped_keys == 1 or self.dropped_keys % 1000 == 0:
                    why = "the type-ahead queue is full" if self.keyboard.scanning else "the guest disabled scanning"
                    log.warning("keyboard: a typed key was dropped (%s; %d so far)", why, self.dropped_keys)
            self._feed_typeahead()
            self._pump()

    def _feed_typeahead(self) -> None:
        """Move typed keys into the keyboard at the link's pace (called with the lock held)."""
        if self._typeahead_timer is None:
            while self.keyboard.refill_one():
                pass
            return
        if not self.keyboard.typeahead or self._typeahead_timer.armed:
            return
        now = now_ns()
        retry = now + 4 * KEY_INTERVAL_NS          # the buffer is full: the guest is not reading yet
        if now >= self._next_key_ns and self.keyboard.refill_one():
            self._next_key_ns = retry = now + KEY_INTERVAL_NS
        elif now < self._next_key_ns:
            retry = self._next_key_ns
        if self.keyboard.typeahead:
            self._typeahead_timer.arm(retry)

    def _on_typeahead_timer(self) -> None:
        with self._lock:
            self._feed_typeahead()
            self._pump()

    def mouse_event(self, dx: int, dy: int, buttons: int, dz: int = 0) -> None:
        """Relative movement (dy > 0 is up, as PS/2 reports it), buttons bit 0 left, 1 right, 2 middle;
        dz is the wheel (IntelliMouse mode only)."""
        with self._lock:
            self.dropped_mouse_packets += self.mouse.event(dx, dy, dz, buttons)
            self._pump()

    # -- port I/O ----------------------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            if port == I8042_CMD_PORT:
                return self._status()
            if self.out_byte is None:
                return self.last_read      # reading an empty buffer returns the last byte again
            value = self.out_byte
            self.last_read = value
            self.out_byte = None
            # Drop the IRQ before the next byte moves in, so that byte makes its own edge on the 8259A.
            self._update_irqs()
            self._pump()
            return value

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if port == I8042_CMD_PORT:
                self.last_was_command = True
                reset = self._command(value)
            else:
                self.last_was_command = False
                reset = self._data(value)
            self._pump()
        if reset:
            self.resets_requested += 1
            self.on_reset()

    def _status(self) -> int:
        status = ST_UNLOCKED
        if self.out_byte is not None:
            status |= ST_OBF | (ST_AUX if self.out_aux else 0)
        if self.sys_flag:
            status |= ST_SYS
        if self.last_was_command:
            status |= ST_CMD
        return status

    # -- controller commands ---------------------------------------------------------------------------------------

    def _reply(self, value: int, aux: bool = False) -> None:
        self.controller_queue.append((value & 0xFF, aux))

    def _command(self, cmd: int) -> bool:
        """Returns True when the command pulses the reset line."""
        self.pending_command = None
        if 0x20 <= cmd <= 0x3F:
            self._reply(self.ram[cmd & 0x1F])
        elif 0x60 <= cmd <= 0x7F or cmd in (0xD1, 0xD2, 0xD3, 0xD4, 0xA5):
            self.pending_command = cmd
        elif cmd == 0xA4:
            self._reply(0xF1)                  # no password installed
        elif cmd == 0xA7:
            self.ram[0] |= CTR_AUXDIS
        elif cmd == 0xA8:
            self.ram[0] &= ~CTR_AUXDIS
        elif cmd in (0xA9, 0xAB):
            self._reply(0x00)                  # interface test passed
        elif cmd == 0xAA:
            self.sys_flag = True
            self._reply(0x55)
        elif cmd == 0xAD:
            self.ram[0] |= CTR_KBDDIS
        elif cmd == 0xAE:
            self.ram[0] &= ~CTR_KBDDIS
        elif cmd == 0xC0:
            self._reply(0x80)                  # input port: keyboard not inhibited
        elif cmd == 0xD0:
            self._reply(self._output_port_value())
        elif cmd == 0xDD:
            self._set_output_port(self.output_port & ~OUT_A20)
        elif cmd == 0xDF:
            self._set_output_port(self.output_port | OUT_A20)
        elif cmd == 0xE0:
            self._reply(0x00)                  # test inputs: clock and data low
        elif cmd >= 0xF0:
            # Pulse the output port lines whose bit is 0 in the low nibble; bit 0 is the CPU reset line.
            return not cmd & 0x01
        return False

    def _data(self, value: int) -> bool:
        cmd = self.pending_command
        if cmd is None:
            self.keyboard.write(value)
            return False
        if cmd == 0xA5:
            if value == 0:                     # the password string ends with a zero byte
                self.pending_command = None
            return False
        self.pending_command = None
        if 0x60 <= cmd <= 0x7F:
            self.ram[cmd & 0x1F] = value
            if cmd == 0x60:
                self.sys_flag = bool(value & CTR_SYS)
        elif cmd == 0xD1:
            return self._set_output_port(value)
        elif cmd == 0xD2:
            self._reply(value, aux=False)
        elif cmd == 0xD3:
            self._reply(value, aux=True)
        elif cmd == 0xD4:
            self.mouse.write(value)
        return False

    def _output_port_value(self) -> int:
        value = self.output_port & (OUT_RESET | OUT_A20) | OUT_KBD_CLOCK | OUT_KBD_DATA
        if self.out_byte is not None:
            value |= OUT_AUX_OBF if self.out_aux else OUT_KBD_OBF
        return value

    def _set_output_port(self, value: int) -> bool:
        old = self.output_port
        self.output_port = (value & (OUT_RESET | OUT_A20)) | OUT_RESET
        if (old ^ value) & OUT_A20 and self.on_a20 is not None:
            self.on_a20(bool(value & OUT_A20))
        return not value & OUT_RESET           # driving the reset line low resets the CPU

    # -- output buffer -----------------------------------------------------------------------------------------------

    def _pump(self) -> None:
        if self.out_byte is None:
            if self.controller_queue:
                self.out_byte, self.out_aux = self.controller_queue.popleft()
            elif not self.ctr & CTR_KBDDIS and self.keyboard.queue:
                self._take_keyboard_byte()
            elif not self.ctr & CTR_AUXDIS and self.mouse.queue:
                self.out_byte, self.out_aux = self.mouse.queue.popleft(), True
        self._update_irqs()

    def _take_keyboard_byte(self) -> None:
        queue = self.keyboard.queue
        while queue:
            code = queue.popleft()
            if not self.ctr & CTR_XLATE:
                self.out_byte, self.out_aux = code, False
                return
            if code == 0xF0:
                self._xlate_break = True
                continue
            self.out_byte = translate_byte(code) | (0x80 if self._xlate_break else 0)
            self.out_aux = False
            self._xlate_break = False
            return

    def _update_irqs(self) -> None:
        full = self.out_byte is not None
        self.kbd_irq.set(full and not self.out_aux and bool(self.ctr & CTR_KBDINT))
        self.mouse_irq.set(full and self.out_aux and bool(self.ctr & CTR_AUXINT))
