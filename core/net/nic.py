"""What one network card is: its model, MAC address, backend and port forwards (NicSpec), and the command-line
spelling of it (`--net user[,hostfwd=tcp:127.0.0.1:2222-:22][,mac=...]`, `--net tap=NAME[,bridge=BR]`,
`--net none`), modelled on QEMU's `-nic user,hostfwd=...` (qemu(1), "hostfwd=[tcp|udp]:[hostaddr]:hostport-
[guestaddr]:guestport").

A MAC address nobody chose is derived from the VM's uuid and the card's index (locally administered, in QEMU's
52:54:00 prefix), so it is the same at every start; the definition store writes it into the definition.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

NIC_MODELS = ("virtio",)
NIC_BACKENDS = ("user", "tap")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_FWD_RE = re.compile(r"^(tcp|udp):([0-9.]*):(\d+)-([0-9.]*):(\d+)$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")     # IFNAMSIZ - 1 (linux/if.h)


class NetSpecError(ValueError):
    """A network card description that cannot be used; the message is one line naming what to fix."""


@dataclass(frozen=True)
class Forward:
    """One host port forwarded to the guest: `proto` tcp/udp, the host address and port it listens on, the guest
    port it reaches."""

    proto: str
    host_addr: str
    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{self.proto}:{self.host_addr}:{self.host_port}-:{self.guest_port}"

    def describe(self) -> str:
        """As the GUI shows it: "host 127.0.0.1:2222 → guest :22" (tcp), with "udp " in front for UDP."""
        text = f"host {self.host_addr}:{self.host_port} \u2192 guest :{self.guest_port}"
        return text if self.proto == "tcp" else f"udp {text}"

    def passt_spec(self) -> str:
        """passt's -t/-u spelling (passt(1)): ADDR/HOSTPORT:GUESTPORT."""
        return f"{self.host_addr}/{self.host_port}:{self.guest_port}"


def parse_forward(text: str) -> Forward:
    """`tcp:127.0.0.1:2222-:22` (QEMU's hostfwd): protocol, host address (empty: 127.0.0.1, so nothing outside
    this host reaches the guest unless asked), host port, guest port. The guest address is the guest's own
    (passt gives the guest the one address), so it must be left empty."""
    m = _FWD_RE.match(text.strip())
    if not m:
        raise NetSpecError(f"port forward {text!r}: write it as tcp:127.0.0.1:2222-:22 (or udp:...)")
    proto, host_addr, host_port, guest_addr, guest_port = m.groups()
    if guest_addr:
        raise NetSpecError(f"port forward {text!r}: leave the guest address empty (tcp:HOST:PORT-:GUESTPORT); "
                           "the guest has one address")
    host_addr = host_addr or "127.0.0.1"
    try:
        ipaddress.IPv4Address(host_addr)
    except ValueError:
        raise NetSpecError(f"port forward {text!r}: host address {host_addr!r} is not an IPv4 address") from None
    hp, gp = int(host_port), int(guest_port)
    for what, port in (("host", hp), ("guest", gp)):
        if not 1 <= port <= 65535:
            raise NetSpecError(f"port forward {text!r}: {what} port {port} is out of range 1..65535")
    return Forward(proto, host_addr, hp, gp)


@dataclass
class NicSpec:
    """One network card as the engine builds it."""

    backend: str = "user"                  # user: NAT through passt; tap: a host TAP device
    model: str = "virtio"
    mac: str = ""
    forwards: list[Forward] = field(default_factory=list)
    tap: str = ""                          # backend tap: the interface name
    bridge: str = ""                       # backend tap: an existing bridge to add it to
    link: bool = True                      # the link switch: False starts the card with its cable unplugged

    def validate(self, where: str = "nic") -> None:
        if self.model not in NIC_MODELS:
            raise NetSpecError(f"{where} model {self.model!r}: use one of {', '.join(NIC_MODELS)}")
        if self.backend not in NIC_BACKENDS:
            raise NetSpecError(f"{where} backend {self.backend!r}: use one of {', '.join(NIC_BACKENDS)}")
        check_mac(self.mac, where)
        if self.backend == "tap":
            if not _IFNAME_RE.match(self.tap):
                raise NetSpecError(f"{where} tap {self.tap!r}: give an interface name of 1-15 letters, digits, "
                                   "_ . : -")
            if self.bridge and not _IFNAME_RE.match(self.bridge):
                raise NetSpecError(f"{where} bridge {self.bridge!r}: give an interface name of 1-15 characters")
            if self.forwards:
                raise NetSpecError(f"{where}: port forwards need the user backend; a TAP card is reached on its "
                                   "own address")
        elif self.tap or self.bridge:
            raise NetSpecError(f"{where}: tap/bridge belong to the tap backend")
        seen: set[tuple[str, str, int]] = set()
        for fwd in self.forwards:
            key = (fwd.proto, fwd.host_addr, fwd.host_port)
            if key in seen:
                raise NetSpecError(f"{where}: host port {fwd.proto} {fwd.host_addr}:{fwd.host_port} is forwarded "
                                   "twice")
            seen.add(key)


def check_mac(mac: str, where: str = "nic") -> None:
    if not mac:
        return
    if not MAC_RE.match(mac):
        raise NetSpecError(f"{where} mac {mac!r}: use six lower-case hex pairs like 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise NetSpecError(f"{where} mac {mac}: a multicast address cannot name a NIC")


def derived_mac(seed: str, index: int) -> str:
    """A stable MAC for card `index` of the VM named by `seed` (its uuid): 52:54:00 and three bytes of a hash."""
    import hashlib  # loads OpenSSL: only for a MAC derived here, not at every start-up
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def random_mac() -> str:
    import os
    return "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))


def parse_net_option(text: str) -> NicSpec | None:
    """One `--net` value; None for `none`. NetSpecError (one line) for anything else that is wrong."""
    parts = [p for p in text.split(",")]
    head = parts[0].strip()
    if head == "none":
        if len(parts) > 1:
            raise NetSpecError(f"--net {text}: none takes no options")
        return None
    if head == "user":
        nic = NicSpec(backend="user")
    elif head.startswith("tap="):
        nic = NicSpec(backend="tap", tap=head[4:])
    else:
        raise NetSpecError(f"--net {text}: start with user, tap=NAME or none")
    for opt in parts[1:]:
        key, _, value = opt.partition("=")
        if key == "hostfwd" and nic.backend == "user":
            nic.forwards.append(parse_forward(value))
        elif key == "mac":
            nic.mac = value.lower()
        elif key == "bridge" and nic.backend == "tap":
            nic.bridge = value
        elif key == "model":
            nic.model = value
        else:
            allowed = "hostfwd=tcp:127.0.0.1:2222-:22, mac=..., model=virtio" if nic.backend == "user" else \
                "bridge=BR, mac=..., model=virtio"
            raise NetSpecError(f"--net {text}: bad option {opt!r}; use {allowed}")
    nic.validate("--net")
    return nic
