"""What a VM process and its controller say to each other, where the VM's files live, and the socket plumbing both
sides share.

Framing is the agent's (core/protocol.py: length-prefixed JSON header plus binary payload), with a much lower
limit per message (MAX_MESSAGE): nothing on this channel is large, and a controller treats the VM process as
untrusted. The messages:

  controller -> VM process                         VM process -> controller
  hello {proto, role, adopt}                       hello {proto, role, pid, state, reason, accel, accel_reason,
                                                          console, vcpu_tids}   (then, to an adopter, the
                                                                                 serial history as one serial)
  start {config: VmConfig dict, restore?: path}    started {accel, accel_reason, console, vcpu_tids}
                                                   | error {e: one line}, after which the process exits
  call {id, op: pause|resume|shutdown|reset|       reply {id} | reply {id, e: one line}
        power_off|save, path (save)}
  call {id, op: net_status}                        reply {id, r: [{mac, backend, link_up, link_reason,
                                                                   rx_bytes, tx_bytes, ...} per card]}
  call {id, op: net_reconnect, nic?: index}        reply {id} | reply {id, e: the cards that stayed down}
  call {id, op: net_set, nic: index, link?: bool,  reply {id} | reply {id, e: one line (a port passt cannot
        forwards?: ["tcp:127.0.0.1:2222-:22"]}                                    bind)}  (core/vmproc/net_control.py)
  call {id, op: snapshot_create, name}           reply {id, r: {vm_state_size, thumbnail: base64 PNG, state}}
                                                   | reply {id, e: one line}  (core/vmproc/snapshot_call.py)
  call {id, op: snapshot_delete, name}             reply {id} | reply {id, e: one line}
  serial + bytes (to ttyS0)                        serial + bytes (from ttyS0, batched)
  key + set-2 bytes, mouse {dx, dy, buttons, dz}   state {state: running|paused|shutoff|crashed, reason}
                                                   replaced (another controller connected: this one is dropped)

Files, all under `<runtime_dir>/vms/` (a 0700 directory): `<uuid>.sock` the VM process's listening socket,
`<uuid>.log` its stdout and stderr, `<uuid>.console` its shared console (when it has a display).
"""
from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.protocol import Message, ProtocolError, exact_reader, read_message

MAX_MESSAGE = 1024 * 1024        # bytes per frame; serial batches are at most SERIAL_BATCH
SERIAL_BATCH = 64 * 1024
MAX_REASON = 2000                # characters of a state reason or error line kept from the VM process
STATES = ("running", "paused", "shutoff", "crashed")
FINAL_STATES = ("shutoff", "crashed")
CALLS = ("pause", "resume", "shutdown", "reset", "power_off", "save", "net_status", "net_reconnect", "net_set",
         "snapshot_create", "snapshot_delete", "sandbox_probe")
MAX_NICS = 16
MAX_PATH = 4096
ROLE_VM, ROLE_CONTROLLER = "vmproc", "vmproc-controller"
_SUN_PATH_MAX = 107              # sizeof(sockaddr_un.sun_path) - 1 on Linux (unix(7))


@dataclass(frozen=True)
class VmPaths:
    directory: str
    socket: str
    log: str
    console: str


def vm_paths(runtime_dir: str, vm_uuid: str) -> VmPaths:
    """The files of VM `vm_uuid` under `runtime_dir`; ValueError (one line) for a uuid that is not canonical."""
    try:
        if str(uuidlib.UUID(vm_uuid)) != vm_uuid:
            raise ValueError
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"VM uuid {vm_uuid!r} is not a lower-case RFC 4122 UUID") from None
    directory = os.path.join(os.path.abspath(runtime_dir), "vms")
    base = os.path.join(directory, vm_uuid)
    return VmPaths(directory, base + ".sock", base + ".log", base + ".console")


def ensure_private_dir(path: str) -> None:
    """Create `path` (and parents) if needed and make sure it is a directory of ours that only we can enter."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise OSError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


@contextlib.contextmanager
def unix_address(path: str) -> Iterator[str]:
    """An address for bind()/connect() naming `path`, also when it is longer than sun_path holds (a deep
    XDG_RUNTIME_DIR or test directory): then the directory is reached through /proc/self/fd."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        with unix_address(path) as address:
            sock.connect(address)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a connected UNIX socket (SO_PEERCRED, unix(7))."""
    import struct
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid


def receive(sock: socket.socket, limit: int = MAX_MESSAGE) -> Message:
    """One message; ProtocolError for anything malformed or longer than `limit` (checked before reading it),
    ConnectionClosed at the end of the stream."""
    exact = exact_reader(sock.recv)

    def bounded(n: int) -> bytes:
        if n > limit:
            raise ProtocolError(f"a message of {n} bytes is over the {limit}-byte limit")
        return exact(n)
    return read_message(bounded)


def send_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Send all of `data` or raise TimeoutError after `timeout` seconds of a peer that does not read. Works on a
    blocking socket that another thread is reading from (MSG_DONTWAIT plus poll, no socket timeout)."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    if sock.fileno() < 0:
        raise OSError(errno.EBADF, "the connection is closed")
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    while view:
        try:
            sent = sock.send(view, socket.MSG_DONTWAIT)
            view = view[sent:]
            continue
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the peer read nothing for {timeout:.0f} s")
        poller.poll(min(left, 1.0) * 1000)


def text(header: dict[str, Any], key: str, limit: int = MAX_REASON) -> str:
    """A string field of a message from the other side; ProtocolError when it is not a string."""
    value = header.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError(f"{header.get('t')!r} message: {key} is not a string")
    return value[:limit]


def integer(header: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"{header.get('t')!r} message: {key} is not a whole number in {lo}..{hi}")
    return value


def one_line(exc: BaseException) -> str:
    """An exception as the one line a user sees."""
    message = str(exc).strip().splitlines()
    return (message[0] if message else type(exc).__name__)[:MAX_REASON]


def log_tail(path: str, lines: int = 5, max_bytes: int = 8192) -> str:
    """The last non-empty lines of a log file, joined with " | " (empty when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    tail = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return " | ".join(tail[-lines:])[:MAX_REASON]
