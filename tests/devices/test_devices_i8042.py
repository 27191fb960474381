"""i8042 controller, PS/2 keyboard and mouse: the sequences Linux's i8042, atkbd and psmouse drivers use."""
from __future__ import annotations

from core.bus import PortIoBus
from core.devices.i8042 import I8042, set2_to_set1
from core.irq import IrqLine


class FakeSink:
    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}
        self.rises: dict[int, int] = {}

    def set_irq(self, gsi: int, level: bool) -> None:
        if level and not self.levels.get(gsi):
            self.rises[gsi] = self.rises.get(gsi, 0) + 1
        self.levels[gsi] = level


def make() -> tuple[I8042, PortIoBus, FakeSink, list[int], list[bool]]:
    sink = FakeSink()
    resets: list[int] = []
    a20: list[bool] = []
    dev = I8042(lambda: resets.append(1), IrqLine(sink, 1), IrqLine(sink, 12), on_a20=a20.append)
    bus = PortIoBus()
    dev.attach(bus)
    return dev, bus, sink, resets, a20


def command(bus: PortIoBus, cmd: int, *data: int) -> None:
    bus.write(0x64, 1, cmd)
    for d in data:
        bus.write(0x60, 1, d)


def drain(bus: PortIoBus) -> list[int]:
    out = []
    while bus.read(0x64, 1) & 0x01:
        out.append(bus.read(0x60, 1))
    return out


def test_self_test_and_interface_tests() -> None:
    _, bus, _, _, _ = make()
    command(bus, 0xAA)
    status = bus.read(0x64, 1)
    assert status & 0x01 and status & 0x04    # OBF and the system flag
    assert drain(bus) == [0x55]
    command(bus, 0xAB)
    command(bus, 0xA9)
    assert drain(bus) == [0x00, 0x00]
    assert not bus.read(0x64, 1) & 0x01


def test_command_byte_and_port_enables() -> None:
    dev, bus, _, _, _ = make()
    command(bus, 0x20)
    ctr = drain(bus)[0]
    command(bus, 0x60, ctr | 0x30)
    command(bus, 0xA8)                        # Linux's bit-assignment test for a PS/2 AUX port
    command(bus, 0x20)
    assert drain(bus) == [(ctr | 0x30) & ~0x20]
    command(bus, 0xA7)
    command(bus, 0xAE)
    command(bus, 0x20)
    assert drain(bus) == [(ctr | 0x20) & ~0x10]
    command(bus, 0x65, 0x99)                  # other controller RAM bytes
    command(bus, 0x25)
    assert drain(bus) == [0x99]


def test_reset_pulse_calls_back() -> None:
    dev, bus, _, resets, _ = make()
    command(bus, 0xFF)                        # pulses nothing
    assert resets == []
    command(bus, 0xFE)
    assert resets == [1] and dev.resets_requested == 1


def test_output_port_a20_and_reset_bit() -> None:
    dev, bus, _, resets, a20 = make()
    command(bus, 0xD0)
    port = drain(bus)[0]
    assert port & 0x03 == 0x03                # not in reset, A20 on
    command(bus, 0xD1, 0xDD)                  # A20 off
    assert a20 == [False] and not dev.a20_enabled
    command(bus, 0xDF)
    assert a20 == [False, True]
    command(bus, 0xD1, 0xDE)                  # bit 0 low: CPU reset
    assert resets == [1]


def test_keyboard_reset_identify_and_leds() -> None:
    _, bus, sink, _, _ = make()
    bus.write(0x60, 1, 0xFF)
    assert sink.levels[1]
    assert drain(bus) == [0xFA, 0xAA]
    assert not sink.levels[1]
    bus.write(0x60, 1, 0xF2)
    assert drain(bus) == [0xFA, 0xAB, 0x83]
    bus.write(0x60, 1, 0xED)
    bus.write(0x60, 1, 0x07)
    bus.write(0x60, 1, 0xEE)
    bus.write(0x60, 1, 0xF3)
    bus.write(0x60, 1, 0x20)
    assert drain(bus) == [0xFA, 0xFA, 0xEE, 0xFA, 0xFA]
    bus.write(0x60, 1, 0x12)                  # not a command
    assert drain(bus) == [0xFE]


def test_scan_code_set_selection() -> None:
    dev, bus, _, _, _ = make()
    bus.write(0x60, 1, 0xF0)
    bus.write(0x60, 1, 0x00)
    assert drain(bus) == [0xFA, 0xFA, 0x02]
    bus.write(0x60, 1, 0xF0)
    bus.write(0x60, 1, 0x01)
    assert drain(bus) == [0xFA, 0xFA]
    dev.press_key(b"\x1c")
    dev.press_key(b"\xf0\x1c")
    assert drain(bus) == [0x1E, 0x9E]         # the keyboard itself now speaks set 1
    bus.write(0x60, 1, 0xF0)
    bus.write(0x60, 1, 0x03)
    assert drain(bus) == [0xFA, 0xFE]


def test_keys_with_and_without_translation() -> None:
    dev, bus, sink, _, _ = make()
    dev.press_key(b"\x1c")                    # A make
    dev.press_key(b"\xe0\x75")                # cursor up make
    assert drain(bus) == [0x1C, 0xE0, 0x75]
    command(bus, 0x60, 0x47)                  # translation on, as a BIOS leaves it
    rises = sink.rises.get(1, 0)
    dev.press_key(b"\x1c")
    dev.press_key(b"\xf0\x1c")
    dev.press_key(b"\xe0\xf0\x75")
    assert drain(bus) == [0x1E, 0x9E, 0xE0, 0xC8]
    assert sink.rises[1] - rises == 4         # one edge per byte
    bus.write(0x60, 1, 0xF2)
    assert drain(bus) == [0xFA, 0xAB, 0x41]   # what atkbd sees behind a translating controller
    assert set2_to_set1(b"\x76\xf0\x76\x05\x83") == b"\x01\x81\x3b\x41"


def test_disabled_keyboard_holds_bytes() -> None:
    dev, bus, sink, _, _ = make()
    command(bus, 0xAD)
    dev.press_key(b"\x1c")
    assert drain(bus) == []
    command(bus, 0xAE)
    assert drain(bus) == [0x1C]
    command(bus, 0x60, 0x00)                  # interrupts off
    dev.press_key(b"\x1c")
    assert not sink.levels[1]
    assert bus.read(0x64, 1) & 0x01


def test_aux_loopback_raises_irq12() -> None:
    """Linux's i8042_check_aux: 0xD3 0xA5 must come back as AUX data with IRQ12."""
    _, bus, sink, _, _ = make()
    command(bus, 0xD3, 0xA5)
    assert bus.read(0x64, 1) & 0x21 == 0x21
    assert sink.levels.get(12) and not sink.levels.get(1)
    assert bus.read(0x60, 1) == 0xA5
    assert not sink.levels[12]
    command(bus, 0xD2, 0x42)                  # as if from the keyboard
    assert bus.read(0x64, 1) & 0x21 == 0x01 and sink.levels[1]


def test_mouse_probe_and_packets() -> None:
    dev, bus, sink, _, _ = make()
    command(bus, 0xD4, 0xFF)
    assert drain(bus) == [0xFA, 0xAA, 0x00]
    command(bus, 0xD4, 0xF2)
    assert drain(bus) == [0xFA, 0x00]
    for rate in (200, 100, 80):               # IntelliMouse knock
        command(bus, 0xD4, 0xF3)
        command(bus, 0xD4, rate)
    command(bus, 0xD4, 0xF2)
    assert drain(bus) == [0xFA] * 6 + [0xFA, 0x03]
    command(bus, 0xD4, 0xE8)
    command(bus, 0xD4, 0x03)
    command(bus, 0xD4, 0xE9)
    assert drain(bus) == [0xFA, 0xFA, 0xFA, 0x00, 0x03, 80]
    dev.mouse_event(5, -3, 0)
    assert drain(bus) == []                   # reporting still disabled
    command(bus, 0xD4, 0xF4)
    assert drain(bus) == [0xFA]
    dev.mouse_event(10, -20, 0b001, dz=-1)
    status = bus.read(0x64, 1)
    assert status & 0x21 == 0x21 and sink.levels[12]
    # Accumulated (5, -3) plus (10, -20): dx 15, dy -23, left button, Y negative; wheel -1.
    assert drain(bus) == [0x08 | 0x01 | 0x20, 15, (-23) & 0xFF, 0xFF]


def test_mouse_large_motion_split_and_remote_mode() -> None:
    dev, bus, _, _, _ = make()
    command(bus, 0xD4, 0xF4)
    drain(bus)
    dev.mouse_event(300, 0, 0)
    assert drain(bus) == [0x08, 255, 0, 0x08, 45, 0]
    command(bus, 0xD4, 0xF0)                  # remote mode: report only on 0xEB
    drain(bus)
    dev.mouse_event(-4, 2, 0b100)
    assert drain(bus) == []
    command(bus, 0xD4, 0xEB)
    assert drain(bus) == [0xFA, 0x08 | 0x04 | 0x10, 0xFC, 2]


def test_mouse_wrap_mode() -> None:
    _, bus, _, _, _ = make()
    command(bus, 0xD4, 0xEE)
    command(bus, 0xD4, 0x12)
    command(bus, 0xD4, 0xEC)
    assert drain(bus) == [0xFA, 0x12, 0xFA]


def test_reset_restores_power_on_state() -> None:
    dev, bus, sink, _, _ = make()
    dev.press_key(b"\x1c")
    command(bus, 0x60, 0x74)
    dev.reset()
    assert not bus.read(0x64, 1) & 0x01
    assert not sink.levels[1]
    command(bus, 0x20)
    assert drain(bus) == [0x03]


def test_typing_ahead_never_fills_linux_probe_flush_and_loses_nothing() -> None:
    """Linux's i8042 probe flushes at most 16 bytes and calls a full 16 'no controller': a burst of host keys
    must leave fewer pending; the rest arrives, in order, at the PS/2 link's pace, as the guest drains."""
    import time

    from core.timers import TimerQueue
    timers = TimerQueue()
    sink = FakeSink()
    dev = I8042(lambda: None, IrqLine(sink, 1), IrqLine(sink, 12), timers=timers)
    bus = PortIoBus()
    dev.attach(bus)
    command(bus, 0x60, 0x45 & ~0x40)          # translation off: the raw set-2 bytes come through
    drain(bus)
    keys = [bytes((code,)) for code in (0x1C, 0x32, 0x21, 0x23, 0x24, 0x2B)] * 10   # 60 make codes
    for k in keys:
        dev.press_key(k)
        dev.press_key(b"\xf0" + k)
    flushed = []
    while bus.read(0x64, 1) & 0x01 and len(flushed) < 16:
        flushed.append(bus.read(0x60, 1))
    assert len(flushed) < 16
    rest: list[int] = []
    expected = b"".join(k + b"\xf0" + k for k in keys)
    deadline = time.monotonic() + 10
    while len(flushed) + len(rest) < len(expected) and time.monotonic() < deadline:
        rest += drain(bus)
        time.sleep(0.001)
    timers.stop()
    assert bytes(flushed + rest) == expected
    assert dev.dropped_keys == 0


def test_a_key_the_keyboard_refuses_is_counted_and_logged_with_the_reason(caplog):
    dev, bus, _, _, _ = make()
    bus.write(0x60, 1, 0xF5)                  # the guest disables scanning
    assert drain(bus) == [0xFA]
    with caplog.at_level("WARNING", logger="core.devices.i8042"):
        dev.press_key(b"\x1c")
        dev.press_key(b"\xf0\x1c")
    assert dev.dropped_keys == 2 and drain(bus) == []
    assert [r.getMessage() for r in caplog.records] == [
        "keyboard: a typed key was dropped (the guest disabled scanning; 1 so far)"]
