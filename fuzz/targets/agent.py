"""The service's side of the agent protocol (core/agent/connection.py Connection.serve and its dispatch, over a
real AgentHost with its own definition store): a hostile client's byte stream may only end its connection
(ConnectionClosed, ProtocolError, answered with "fatal") or earn "err" replies for bad requests (HostError,
WireError, TypeError, ValueError). A call that fails any other way is caught and logged with a traceback by the
service (so the service survives): that log is a finding here, as is anything raised out of serve().

Calls run inline instead of on the connection's pool, so each input replays exactly. Methods that act outside the
sandbox (exit, start, delete and image/disk operations, save/restore, clone, run_img, network changes) are fenced
off with a HostError: the fuzzer must not delete host files or start VMs; the rest run for real."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from core.agent.agenthost import AgentHost
from core.agent.connection import Connection
from core.agent.daemon import Agent
from core.config import ConfigStore
from core.host.api import HostError
from core.protocol import encode, hello
from fuzz.harness import scratch_dir, target
from fuzz.targets.agent_wire import encode_raw

FENCED = ("exit", "start", "delete", "delete_image", "delete_broken_definition", "resize_image", "create_disk",
          "clone", "save", "restore", "run_img", "serial_send", "net_reconnect", "net_set", "migrate")
UUID = "0d6f4ad2-5c3b-4a43-9a4e-1f2b3c4d5e6f"
_root = Path(scratch_dir("agent"))
_agent: Agent | None = None


class _Inline:
    """Runs each submitted call at once, on the reading thread (replaces the connection's thread pool)."""

    def submit(self, fn, *args):  # noqa: ANN001, ANN201
        fn(*args)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _service() -> Agent:
    global _agent
    if _agent is None:
        (_root / "run").mkdir(mode=0o700, exist_ok=True)
        host = AgentHost(ConfigStore(_root / "vms"), name="fuzz", runtime_dir=str(_root / "run"))
        _agent = Agent(host, str(_root / "run" / "agent.sock"))
    return _agent


def _call(i: int, method: str, **args: object) -> bytes:
    return encode({"t": "call", "id": i, "m": method, "a": args})


def _seeds() -> list[bytes]:
    greet = encode(hello("fuzz"))
    cfg = {"name": "vm", "uuid": UUID, "memory_mib": 256, "disks": [{"path": str(_root / "d.img")}],
           "nics": [{"forwards": ["tcp::2222-:22"]}], "display": {"vnc": "127.0.0.1:3"}}
    return [
        greet + _call(1, "ping") + _call(2, "status") + _call(3, "list") + _call(4, "load_errors"),
        greet + _call(1, "define", config=cfg) + _call(2, "get", uuid=UUID) + _call(3, "stats", uuid=UUID)
        + _call(4, "pause", uuid=UUID) + _call(5, "reload"),
        greet + _call(1, "probe_file", path="/etc/hostname", role="kernel") + _call(2, "accel_preview",
                                                                                   requested="auto")
        + _call(3, "capabilities") + _call(4, "host_counters") + _call(5, "list_images"),
        greet + _call(1, "serial_subscribe", uuid=UUID) + _call(2, "serial_unsubscribe", uuid=UUID)
        + _call(3, "console_open", uuid=UUID) + _call(4, "console_close", uuid=UUID)
        + _call(5, "net_status", uuid=UUID),
        greet + encode({"t": "input", "uuid": UUID, "kind": "key"}, b"\x1c") + encode({"t": "input", "uuid": UUID,
                                                                                    "kind": "mouse", "dx": 1})
        + encode({"t": "fb_ack", "uuid": UUID, "n": 2}) + _call(1, "nope"),
    ]


def _lines(seeds: list[bytes]) -> list[bytes]:
    """The same conversations as JSON headers one a line (framed by the target), so mutations reach dispatch."""
    out = []
    for s in seeds:
        parts, i = [], 0
        while i + 8 <= len(s):
            n, h = int.from_bytes(s[i:i + 4], "big"), int.from_bytes(s[i + 4:i + 8], "big")
            parts.append(s[i + 8:i + 8 + h])
            i += 4 + n
        out.append(b"\n".join(parts))
    return out


@target("agent", allowed=(), seeds=lambda: _seeds() + _lines(_seeds()), max_len=8192, hang_seconds=10.0,
        dictionary=tuple(f'"{m}"'.encode() for m in (
            "call", "input", "fb_ack", "hello", "proto", "id", "m", "a", "uuid", "kind", "key", "mouse", "ping",
            "define", "get", "list", "stats", "pause", "resume", "shutdown", "force_off", "probe_file", "role",
            "path", "config", "serial_subscribe", "console_open", "net_status", "accel_preview", "requested")))
def fuzz_agent(data: bytes) -> None:
    """One client connection fed a hostile byte stream: hello, calls, input and acknowledgements."""
    if data[:1] == b"{":
        data = b"".join(encode_raw(line) for line in data.split(b"\n"))
    agent = _service()
    store = _root / "vms"
    if store.is_dir():
        for p in store.iterdir():
            p.unlink()
    agent.host.reload()
    env = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    os.environ["XDG_DATA_HOME"] = str(_root / "data")      # list_images looks in the sandbox
    os.environ["XDG_CONFIG_HOME"] = str(_root / "config")
    ours, theirs = socket.socketpair()
    peer = threading.Thread(target=_peer, args=(theirs, data), daemon=True)
    peer.start()
    conn = Connection(agent, ours)
    conn.pool = _Inline()
    for name in FENCED:
        setattr(conn, f"m_{name}", _fenced)
    try:
        conn.serve()
    finally:
        peer.join(5)
        theirs.close()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fenced(**_: object) -> None:
    raise HostError("fenced off by the fuzz target")


def _peer(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
