"""A TAP interface for a card (Linux Documentation/networking/tuntap.rst): /dev/net/tun, TUNSETIFF with
IFF_TAP | IFF_NO_PI (frames without the packet-information prefix), the interface brought up (SIOCSIFFLAGS,
netdevice(7)) and, when asked, added to an existing bridge (SIOCBRADDIF, as brctl addif does). An existing
persistent TAP of that name (ip tuntap add) is attached to; otherwise the kernel creates one that goes away with
the VM. All of this needs CAP_NET_ADMIN; without it the error says so in one line.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from core.net.backend import TapBackend

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFINDEX, SIOCSIFMTU = 0x8913, 0x8914, 0x8933, 0x8922
SIOCBRADDIF = 0x89A2
IFF_UP = 0x1
IFNAMSIZ = 16


class TapError(OSError):
    """A TAP interface could not be opened or set up; one line naming the interface and the fix."""


def _ifreq(name: str, fmt: str = "", *values: int) -> bytes:
    return struct.pack(f"{IFNAMSIZ}s{fmt}", name.encode(), *values).ljust(40, b"\0")


def _no_permission(name: str, what: str) -> TapError:
    return TapError(f"tap {name}: {what} needs CAP_NET_ADMIN: run Vireo as root, create the TAP beforehand for "
                    f"this user (ip tuntap add {name} mode tap user $USER), or use --net user")


def open_tap(name: str, bridge: str = "", mtu: int = 1500) -> TapBackend:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise TapError(f"tap {name}: cannot open /dev/net/tun: {exc.strerror} (is the tun module loaded?)") from None
    try:
        try:
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, "H", IFF_TAP | IFF_NO_PI))
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise _no_permission(name, "creating or attaching a TAP interface") from None
            if exc.errno == errno.EBUSY:
                raise TapError(f"tap {name}: the interface is in use by another program") from None
            raise TapError(f"tap {name}: TUNSETIFF failed: {exc.strerror}") from None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
            try:
                fcntl.ioctl(ctl, SIOCSIFMTU, _ifreq(name, "i", mtu))
                flags = struct.unpack_from("H", fcntl.ioctl(ctl, SIOCGIFFLAGS, _ifreq(name)), IFNAMSIZ)[0]
                fcntl.ioctl(ctl, SIOCSIFFLAGS, _ifreq(name, "H", flags | IFF_UP))
            except OSError as exc:
                if exc.errno == errno.EPERM:
                    raise _no_permission(name, "bringing the interface up") from None
                raise TapError(f"tap {name}: cannot bring it up: {exc.strerror}") from None
            if bridge:
                index = struct.unpack_from("i", fcntl.ioctl(ctl, SIOCGIFINDEX, _ifreq(name)), IFNAMSIZ)[0]
                try:
                    fcntl.ioctl(ctl, SIOCBRADDIF, _ifreq(bridge, "i", index))
                except OSError as exc:
                    if exc.errno == errno.EPERM:
                        raise _no_permission(name, f"adding it to bridge {bridge}") from None
                    if exc.errno in (errno.ENODEV, errno.EOPNOTSUPP, errno.EINVAL):
                        raise TapError(f"tap {name}: bridge {bridge} does not exist or is not a bridge: create it "
                                       f"(ip link add {bridge} type bridge) or leave bridge= out") from None
                    if exc.errno == errno.EBUSY:
                        pass          # already a port of that bridge (a persistent TAP set up beforehand)
                    else:
                        raise TapError(f"tap {name}: cannot add it to bridge {bridge}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return TapBackend(fd, name)
