"""DNS and UDP seen from inside the guest through passt (issue 13: "DHCP, DNS and outbound TCP/UDP work"; host
ports forwarded with -u). Debian's kernel with the tests' busybox initramfs on the software CPU, one boot for the
module, its serial shell driven from here.

- DNS: passt hands the guest the host's resolvers from /etc/resolv.conf; a resolver on the host's loopback (as
  systemd-resolved's 127.0.0.53 is) cannot be reached from the guest, so passt gives the guest its gateway address
  as the name server and forwards the queries sent there to the loopback resolver (passt(1), --dns-forward; its
  conf.c add_dns4()). The test runs its own small DNS server on a loopback address of its own, port 53, and runs
  Vireo in a mount namespace whose /etc/resolv.conf names it (CI has no internet; the host's real resolver is never
  asked). The guest's busybox nslookup must get the address the server made up for this run.
- UDP out: tests/net/vireo_udp.c (busybox nc has no -u) sends a datagram to a UDP echo server on the host's loopback
  through the gateway address, and must print the server's answer.
- UDP in: a forward udp:127.0.0.1:H-:7007 (`--net user,hostfwd=udp:...`); the guest serves port 7007, the host sends
  to 127.0.0.1:H and must get the guest's answer.

The DNS test needs root (port 53, a mount namespace), as the TAP test does; CI runs as root.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures import newc
from tests.helpers.initrd import initrd_with_current_init
from tests.helpers.runner import SHELL_PROMPT, VireoSession

pytestmark = pytest.mark.skipif(shutil.which("passt") is None and os.environ.get("CI") != "true",
                                reason="passt is not installed (apt-get install passt)")
HERE = Path(__file__).resolve().parent
GUEST_UDP_PORT = 7007
AS_ROOT = os.geteuid() == 0 and shutil.which("unshare") is not None


class UdpServer:
    """A UDP server on the host's loopback, on its own thread: `answer(data) -> bytes | None` for each datagram;
    every datagram received is kept in `seen`."""

    def __init__(self, addr: str, port: int, answer) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, port))
        self.sock.settimeout(0.2)
        self.answer = answer
        self.seen: list[tuple[bytes, tuple[str, int]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _loop(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.seen.append((data, peer))
            reply = self.answer(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def dns_answer(names: dict[str, str]):
    """A DNS responder (RFC 1035, 4.1) that knows `names` (name -> IPv4 address): an A query for one gets that
    address, another type for it an empty NOERROR answer, any other name NXDOMAIN."""
    def answer(query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        qid, _flags, qdcount = struct.unpack_from(">HHH", query)
        if qdcount != 1:
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos]:
            n = query[pos]
            labels.append(query[pos + 1:pos + 1 + n].decode("ascii", "replace").lower())
            pos += 1 + n
        pos += 1
        if pos + 4 > len(query):
            return None
        qtype, _qclass = struct.unpack_from(">HH", query, pos)
        question = query[12:pos + 4]
        name = ".".join(labels)
        known = name in names
        records = b""
        if known and qtype == 1:
            records = struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(names[name])
        flags = 0x8180 | (0 if known else 3)               # response, recursion desired+available; NXDOMAIN
        return struct.pack(">HHHHHH", qid, flags, 1, 1 if records else 0, 0, 0) + question + records
    return answer


@pytest.fixture(scope="module")
def udp_initrd(busybox_initramfs, tmp_path_factory) -> Path:
    """The test initramfs (today's /init) plus /bin/vireo-udp, built here."""
    work = tmp_path_factory.mktemp("udp-initrd")
    exe = work / "vireo-udp"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(exe), str(HERE / "vireo_udp.c")], check=True)
    base = initrd_with_current_init(busybox_initramfs, work)
    extra = newc.write([newc.Entry("bin", stat.S_IFDIR | 0o755),
                        newc.Entry("bin/vireo-udp", stat.S_IFREG | 0o755, exe.read_bytes())])
    out = work / "initramfs-udp.cpio.gz"
    out.write_bytes(base.read_bytes() + gzip.compress(extra, mtime=0))
    return out


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guest:
    def __init__(self, session: VireoSession, gateway: str, host_port: int, echo: UdpServer,
                 dns: UdpServer | None, names: dict[str, str]) -> None:
        self.session, self.gateway, self.host_port = session, gateway, host_port
        self.echo, self.dns, self.names = echo, dns, names

    def run(self, line: str, until: str | re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        self.session.expect(SHELL_PROMPT, timeout)
        self.session.send(line)
        return self.session.expect(until if isinstance(until, re.Pattern) else re.compile(until), timeout)


@pytest.fixture(scope="module")
def guest(debian_kernel, udp_initrd, tmp_path_factory):
    tag = os.urandom(3)
    names = {f"vireo-{tag.hex()}.test": f"10.{tag[0]}.{tag[1]}.{tag[2] or 1}"}
    echo = UdpServer("127.0.0.1", 0, lambda data: b"host-echo:" + data)
    dns = None
    prefix: list[str] = []
    if AS_ROOT:
        # A loopback address of this run's own (all of 127/8 is the host's loopback), so tests running at the same
        # time on this host do not compete for port 53.
        resolver = f"127.{tag[0]}.{tag[1]}.{tag[2] | 2}"
        dns = UdpServer(resolver, 53, dns_answer(names))
        resolv = tmp_path_factory.mktemp("resolv") / "resolv.conf"
        resolv.write_text(f"nameserver {resolver}\n")
        # passt reads /etc/resolv.conf as it starts: in this mount namespace that file is the test's.
        prefix = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                  'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    host_port = _free_udp_port()
    args = ["--accel", "software", "--memory", "256", "--kernel", str(debian_kernel), "--initrd", str(udp_initrd),
            "--timeout", "600", "--net", f"user,hostfwd=udp:127.0.0.1:{host_port}-:{GUEST_UDP_PORT}",
            "--append", "console=ttyS0 quiet vireo.action=net"]
    session = VireoSession(args, prefix=prefix)
    try:
        gateway = session.expect(re.compile(r"VIREO-NET-GW=([\d.]+)\r?\n"), 120).group(1)
        yield Guest(session, gateway, host_port, echo, dns, names)
    finally:
        session.close()
        echo.close()
        if dns is not None:
            dns.close()


@pytest.mark.skipif(not AS_ROOT, reason="a DNS server on port 53 and a mount namespace need root and unshare")
def test_the_guest_resolves_a_name_through_passts_dns_forwarder(guest):
    name, address = next(iter(guest.names.items()))
    # passt maps a loopback resolver to the gateway address: that is the name server the guest's lease names.
    nameserver = guest.run("cat /etc/resolv.conf", re.compile(r"nameserver ([\d.]+)\r?\n")).group(1)
    assert nameserver == guest.gateway
    status = guest.run(f"nslookup {name}; echo NSLOOKUP-STATUS-$?", re.compile(r"NSLOOKUP-STATUS-(\d+)"), 60)
    assert status.group(1) == "0", guest.session.stdout[-2000:]
    output = guest.session.stdout
    assert re.search(rf"Name:\s+{re.escape(name)}\s+Address:\s+{re.escape(address)}\b", output), output[-2000:]
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))    # the name as asked
    assert any(wire in data for data, _ in guest.dns.seen)


def test_the_guest_sends_and_receives_udp_to_host_loopback_through_the_gateway(guest):
    message = f"ping-{os.urandom(4).hex()}"
    reply = guest.run(f"vireo-udp ask {guest.gateway} {guest.echo.port} {message}",
                      re.compile(r"VIREO-UDP-(REPLY=\S+|NOREPLY)\r?\n")).group(1)
    assert reply == f"REPLY=host-echo:{message}"
    assert message.encode() in [data for data, _ in guest.echo.seen]


def test_a_forwarded_host_udp_port_reaches_the_guest_and_its_answer_comes_back(guest):
    guest.run(f"vireo-udp echo {GUEST_UDP_PORT} 1 &", f"VIREO-UDP-LISTENING={GUEST_UDP_PORT}")
    message = f"hello-{os.urandom(4).hex()}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        reply = None
        for _ in range(20):             # a datagram lost before passt saw the guest is resent, as a client would
            s.sendto(message, ("127.0.0.1", guest.host_port))
            try:
                reply = s.recvfrom(4096)[0]
                break
            except TimeoutError:
                time.sleep(0.2)
    assert reply == b"guest-echo:" + message
    guest.session.expect(f"VIREO-UDP-GOT={message.decode()}", 10)
