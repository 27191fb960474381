"""The VM process's net_set and net_reconnect calls (core/vmproc/wire.py): a running VM's network card changed in
place, or its backend restarted.

- `link` (true/false) flips the card's link switch: the guest sees LINK_UP in STATUS go down or up with a
  configuration-change interrupt (virtio 1.2, 5.1.4.2), as `virsh domif-setlink` does.
- `forwards` (a list of "tcp:127.0.0.1:2222-:22") replaces the card's port forwards; passt takes its forwards on
  its command line, so the card's passt is restarted (a reconnect) for them to take effect. A forward passt cannot
  bind comes back as the call's error, one line naming the port, with the link down.

Everything in the request is checked here: it comes from the controller, but the card's own validation
(core/net/nic.py) decides what a forward may be.
"""
from __future__ import annotations

import time
from typing import Any

from core.net.nic import NetSpecError, NicSpec, parse_forward
from core.protocol import ProtocolError

MAX_FORWARDS = 64
MIN_CARRIER_OFF = 0.5      # seconds the guest sees no carrier while its passt restarts with new forwards
ANNOUNCE_WAIT = 3.0        # seconds at most to wait for the guest's first frame to the new passt


def net_set(machine: Any, header: dict[str, Any]) -> str:
    """Apply the net_set request `header` to `machine`'s card header["nic"]; "" or one line saying what failed."""
    index = header.get("nic")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ProtocolError("net_set needs the card's index")
    cards = machine.board.nics
    if not 0 <= index < len(cards):
        return f"the VM has no network card {index}"
    card, spec = cards[index], machine.config.nics[index]
    link = header.get("link")
    if link is not None and not isinstance(link, bool):
        raise ProtocolError("net_set: link must be true or false")
    forwards = header.get("forwards")
    if forwards is not None:
        if not isinstance(forwards, list) or len(forwards) > MAX_FORWARDS or \
                not all(isinstance(f, str) and len(f) < 100 for f in forwards):
            raise ProtocolError("net_set: forwards must be a short list of strings")
        try:
            parsed = [parse_forward(f) for f in forwards]
            NicSpec(backend=spec.backend, forwards=parsed, tap=spec.tap, bridge=spec.bridge).validate(
                f"card {index + 1}")
        except NetSpecError as exc:
            return str(exc)
    if link is not None:
        card.set_switch(link)
        spec.link = link
    if forwards is not None and [str(f) for f in parsed] != [str(f) for f in spec.forwards]:
        spec.forwards = parsed
        return restart_backend(card, spec.link)
    return ""


def restart_backend(card: Any, link: bool) -> str:
    """Restart the card's passt with the carrier down meanwhile; "" or the one line why it did not come back.

    A new passt knows the guest's address but not its MAC until the guest sends it a frame, and a guest that
    only listens (a server behind a forward) sends nothing: connections forwarded to it would go unanswered.
    With the carrier seen down and up again, Linux announces the interface anew (NETDEV_CHANGE: IPv6 duplicate
    address detection and MLD reports from the card's MAC), which is the frame passt learns it from. The carrier
    stays down long enough for the guest's driver to read the down state (it compares the status it last read
    in a work item, so a flap it does not see is no change at all). The call returns once the guest's first frame
    went to the new passt (measured: a forwarded fetch answers 0.53 s after the call began, against 5.7 s when
    the call returned at once and the first connection waited for its SYN to be retried)."""
    started = time.monotonic()
    card.set_switch(False)
    ok = False
    try:
        ok = card.reconnect()
        time.sleep(max(0.0, MIN_CARRIER_OFF - (time.monotonic() - started)))
    finally:
        sent = card.stats["tx_packets"]
        card.set_switch(link)
    if ok and link:
        # Answer once the guest has sent the new passt a frame (so a forwarded connection made right after this
        # call is answered), or after ANNOUNCE_WAIT: a guest without IPv6 stays silent until it sends anything.
        deadline = time.monotonic() + ANNOUNCE_WAIT
        while card.stats["tx_packets"] == sent and time.monotonic() < deadline:
            time.sleep(0.02)
    return "" if ok else card.link_reason


def net_reconnect(machine: Any, index: int | None) -> list[str]:
    """Restart the backend of card `index` (None: every card whose link is down); the problems, one line each, of
    those that did not come back. A card whose link is up gets restart_backend's carrier flap, so the guest tells
    the new passt its MAC; one whose backend died already showed the guest its carrier go down."""
    cards = list(enumerate(machine.board.nics))
    if index is not None:
        if not 0 <= index < len(cards):
            return [f"the VM has no network card {index}"]
        cards = [cards[index]]
    else:
        cards = [(i, c) for i, c in cards if not c.link_up]
    problems = []
    for i, card in cards:
        if card.link_up:
            why = restart_backend(card, machine.config.nics[i].link)
        else:
            why = "" if card.reconnect() else card.link_reason
        if why:
            problems.append(f"{card.name}: {why}")
    return problems
