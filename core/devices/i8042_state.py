"""The i8042 keyboard controller with its PS/2 keyboard and mouse (core/devices/i8042.py) as a state record.

Kept out of the device module (which is near its size limit); the device's get_state/set_state call these.
Queues are bounded as the model bounds them, so a state file cannot make them grow past what the guest could.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from core.state import fields as f

if TYPE_CHECKING:
    from core.devices.i8042 import I8042

QUEUE = f.Ints(max_count=1024, hi=0xFF)
CONTROLLER = {"ram": f.Bytes(32), "sys_flag": f.BOOL, "last_was_command": f.BOOL, "out_byte": f.Optional(f.U8),
              "out_aux": f.BOOL, "last_read": f.U8, "pending_command": f.Optional(f.U8), "output_port": f.U8,
              "_xlate_break": f.BOOL}
KEYBOARD = {"queue": QUEUE, "scanning": f.BOOL, "scan_set": f.Int(1, 3), "leds": f.u(3), "typematic": f.u(7),
            "awaiting": f.Optional(f.U8), "last_sent": f.U8}
MOUSE = {"queue": QUEUE, "device_id": f.U8, "wrap": f.BOOL, "awaiting": f.Optional(f.U8), "last_sent": f.U8,
         "buttons": f.u(3), "acc_dx": f.Int(-(1 << 31), 1 << 31), "acc_dy": f.Int(-(1 << 31), 1 << 31),
         "acc_dz": f.Int(-(1 << 31), 1 << 31), "sample_rate": f.U8, "resolution": f.u(2), "scaling_2to1": f.BOOL,
         "remote": f.BOOL, "reporting": f.BOOL}
TYPEAHEAD_LIMIT = 4096


def get_state(dev: I8042) -> dict[str, Any]:
    with dev._lock:
        state = f.capture(dev, CONTROLLER, 0)
        state["controller_queue"] = [[b, aux] for b, aux in dev.controller_queue]
        state["keyboard"] = f.capture(dev.keyboard, KEYBOARD, 0)
        state["keyboard"]["typeahead"] = [bytes(k) for k in dev.keyboard.typeahead]
        state["mouse"] = f.capture(dev.mouse, MOUSE, 0)
        state["mouse"]["rate_history"] = list(dev.mouse.rate_history)
        return state


def set_state(dev: I8042, state: Any) -> None:
    where = "i8042"
    f.expect_record(state, where, (*CONTROLLER, "controller_queue", "keyboard", "mouse"))
    top = f.validate({k: state[k] for k in CONTROLLER}, CONTROLLER, where, 0)
    cq = state["controller_queue"]
    if not isinstance(cq, list) or len(cq) > 64:
        raise f.StateError(f"{where}.controller_queue: expected a list of at most 64 entries")
    pairs = []
    for i, item in enumerate(cq):
        if not isinstance(item, list) or len(item) != 2:
            raise f.StateError(f"{where}.controller_queue[{i}]: expected [byte, aux]")
        pairs.append((f.check(item[0], f.U8, f"{where}.controller_queue[{i}]"),
                      f.check(item[1], f.BOOL, f"{where}.controller_queue[{i}]")))
    kbd_in, mouse_in = state["keyboard"], state["mouse"]
    f.expect_record(kbd_in, f"{where}.keyboard", (*KEYBOARD, "typeahead"))
    f.expect_record(mouse_in, f"{where}.mouse", (*MOUSE, "rate_history"))
    kbd = f.validate({k: kbd_in[k] for k in KEYBOARD}, KEYBOARD, f"{where}.keyboard", 0)
    mouse = f.validate({k: mouse_in[k] for k in MOUSE}, MOUSE, f"{where}.mouse", 0)
    typeahead = kbd_in["typeahead"]
    if not isinstance(typeahead, list) or len(typeahead) > TYPEAHEAD_LIMIT:
        raise f.StateError(f"{where}.keyboard.typeahead: expected a list of at most {TYPEAHEAD_LIMIT} keys")
    keys = [f.check(k, f.Bytes(max_length=8), f"{where}.keyboard.typeahead[{i}]") for i, k in enumerate(typeahead)]
    rates = f.check(mouse_in["rate_history"], f.Ints(max_count=3, hi=0xFF), f"{where}.mouse.rate_history")
    with dev._lock:
        f.apply(dev, top, CONTROLLER, 0)
        dev.controller_queue = deque(pairs)
        f.apply(dev.keyboard, kbd, KEYBOARD, 0)
        dev.keyboard.queue = deque(kbd["queue"])
        dev.keyboard.typeahead = deque(keys)
        f.apply(dev.mouse, mouse, MOUSE, 0)
        dev.mouse.queue = deque(mouse["queue"])
        dev.mouse.rate_history = deque(rates, maxlen=3)
        dev._feed_typeahead()
        dev._update_irqs()
