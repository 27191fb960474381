"""Where a VNC server listens, as `--vnc` and a VM definition's `display.vnc` spell it: QEMU's `-vnc` convention,
`HOST:DISPLAY` for TCP port 5900 + DISPLAY, or `unix:PATH` for a UNIX socket. Only loopback addresses are
accepted: the console is the VM's keyboard, and reaching it from elsewhere goes through SSH (docs/vnc.md)."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

BASE_PORT = 5900
MAX_DISPLAY = 65535 - BASE_PORT
LOOPBACK_NAMES = {"localhost": "127.0.0.1", "": "127.0.0.1"}


class VncAddressError(ValueError):
    """A `--vnc` / display.vnc value that cannot be used; one line naming it and what to give."""


@dataclass(frozen=True)
class VncAddress:
    host: str = ""             # TCP: a loopback IP address
    port: int = 0
    path: str = ""             # UNIX socket

    @property
    def unix(self) -> bool:
        return bool(self.path)

    def uri(self) -> str:
        """virsh domdisplay's form: vnc://HOST:PORT, or vnc+unix:///PATH for a UNIX socket."""
        if self.unix:
            return f"vnc+unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"vnc://{host}:{self.port}"

    def spec(self) -> str:
        """Back to the `--vnc` spelling."""
        return f"unix:{self.path}" if self.unix else f"{self.host}:{self.port - BASE_PORT}"


def parse_vnc(spec: str, what: str = "--vnc") -> VncAddress:
    """`HOST:DISPLAY` (HOST a loopback address or localhost; [::1]:DISPLAY for IPv6) or `unix:PATH` (absolute)."""
    if not isinstance(spec, str) or not spec:
        raise VncAddressError(f"{what}: give HOST:DISPLAY (e.g. 127.0.0.1:1 for port 5901) or unix:PATH")
    if spec.startswith("unix:"):
        path = spec[5:]
        if not os.path.isabs(path):
            raise VncAddressError(f"{what} {spec}: give an absolute path after unix:")
        if len(os.fsencode(path)) >= 108:
            raise VncAddressError(f"{what} {spec}: the path is too long for a UNIX socket (at most 107 bytes)")
        return VncAddress(path=path)
    host, sep, display = spec.rpartition(":")
    if not sep or not display.isdigit() or int(display) > MAX_DISPLAY:
        raise VncAddressError(f"{what} {spec!r}: give HOST:DISPLAY with DISPLAY 0..{MAX_DISPLAY} (port 5900 + "
                              "DISPLAY), e.g. 127.0.0.1:1, or unix:PATH")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    host = LOOPBACK_NAMES.get(host, host)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise VncAddressError(f"{what} {spec}: Vireo listens on loopback only (127.0.0.1 or ::1); reach it from "
                              "another machine through SSH (ssh -L)")
    return VncAddress(host=host, port=BASE_PORT + int(display))
