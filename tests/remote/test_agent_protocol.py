"""The agent's wire format, console encoding, known_hosts handling and the client's reaction to a misbehaving
agent — without SSH (tests/remote/test_remote.py covers the same over a real sshd)."""
from __future__ import annotations

import socket
import subprocess
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.agent.console import STRIP_BYTES, FrameAssembler, encode_frame
from core.host import HostError
from core.protocol import (
    MAX_FRAME,
    FrameDecoder,
    ProtocolError,
    check_hello,
    decode_body,
    encode,
    exact_reader,
    hello,
    read_message,
)
from core.remote.client import AgentClient, AgentGone
from core.remote.known_hosts import KnownHosts, Verdict, fingerprint, hosts_match

# -- framing -------------------------------------------------------------------------------------------------


def test_messages_round_trip_through_arbitrary_chunking():
    messages = [({"t": "call", "id": 1, "m": "ping", "a": {}}, b""),
                ({"t": "serial", "uuid": "u"}, bytes(range(256)) * 10),
                ({"t": "event", "text": "ünïcode ✓"}, b"\x00")]
    stream = b"".join(encode(h, p) for h, p in messages)
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(stream), 7):           # 7-byte pieces split every header and length field
        got += decoder.feed(stream[i:i + 7])
    assert got == messages and decoder.pending == 0
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = stream[pos:pos + min(n, 3)]
        pos += len(chunk)
        return chunk
    recv = exact_reader(read)
    assert [read_message(recv) for _ in messages] == messages


@pytest.mark.parametrize("body, why", [
    (b"\x00\x00", "shorter"),
    ((50).to_bytes(4, "big") + b"{}", "does not fit"),
    ((4).to_bytes(4, "big") + b"\xff\xfe{}", "not UTF-8 JSON"),
    ((2).to_bytes(4, "big") + b"[]", "object"),
    ((8).to_bytes(4, "big") + b'{"t": 5}', "string 't'"),
    ((1).to_bytes(4, "big") + b"[" * 0 + b"{", "JSON"),
])
def test_malformed_bodies_are_protocol_errors(body, why):
    with pytest.raises(ProtocolError, match=why):
        decode_body(body)


def test_oversized_length_is_refused_before_reading_the_body():
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="outside"):
        decoder.feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ValueError):
        encode({"t": "x"}, b"\0" * MAX_FRAME)


def test_deeply_nested_json_is_a_protocol_error_not_a_crash():
    text = b"[" * 100000 + b"]" * 100000
    with pytest.raises(ProtocolError):
        decode_body(len(text).to_bytes(4, "big") + text)


def test_hello_checks_the_protocol_number():
    check_hello(hello("agent"))
    with pytest.raises(ProtocolError, match="protocol 99"):
        check_hello({"t": "hello", "proto": 99})
    with pytest.raises(ProtocolError, match="refused"):
        check_hello({"t": "fatal", "e": "refused: another user"})


# -- console -------------------------------------------------------------------------------------------------

def test_dirty_rectangles_rebuild_the_screen_exactly():
    rng = np.random.default_rng(7)
    first = rng.integers(0, 2**32, size=(768, 1024), dtype=np.uint32)
    second = first.copy()
    second[100:300, 200:900] = rng.integers(0, 2**32, size=(200, 700), dtype=np.uint32)
    second[700:768, 0:10] = 0xFF00FF00
    assembler = FrameAssembler(session=3)
    for header, payload in encode_frame("u", 1, first, [(0, 0, 1024, 768)], "graphics 1024x768"):
        assert len(payload) <= STRIP_BYTES + 1024
        assembler.apply(header, payload)
    frame = assembler.render()
    assert frame is not None and np.array_equal(frame.pixels, first) and frame.mode == "graphics 1024x768"
    assert assembler.render() is None                       # nothing new
    for header, payload in encode_frame("u", 2, second, [(200, 100, 700, 200), (0, 700, 10, 68)], "g"):
        assembler.apply(header, payload)
    frame = assembler.render()
    assert np.array_equal(frame.pixels, second)
    assert (200, 100, 700, 200) in frame.dirty


def test_console_strips_outside_the_screen_or_inflating_too_far_are_refused():
    assembler = FrameAssembler()
    base = {"t": "fb", "uuid": "u", "seq": 1, "w": 64, "h": 32}
    with pytest.raises(ProtocolError, match="rw"):
        assembler.apply({**base, "x": 60, "y": 0, "rw": 8, "rh": 1}, zlib.compress(b"\0" * 32))
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024))          # 64 MiB of zeros claimed as 4x4 pixels
    with pytest.raises(ProtocolError, match="decompresses"):
        assembler.apply({**base, "x": 0, "y": 0, "rw": 4, "rh": 4}, bomb)
    with pytest.raises(ProtocolError, match="w must be"):
        assembler.apply({**base, "w": 100000, "x": 0, "y": 0, "rw": 1, "rh": 1}, b"")
    with pytest.raises(ProtocolError, match="does not decompress"):
        assembler.apply({**base, "x": 0, "y": 0, "rw": 1, "rh": 1}, b"not zlib")


def test_render_acknowledges_what_it_consumed():
    acks = []
    assembler = FrameAssembler(ack=acks.append)
    pixels = np.zeros((8, 8), dtype=np.uint32)
    for seq in (1, 2, 3):
        for header, payload in encode_frame("u", seq, pixels, [(0, 0, 8, 8)], ""):
            assembler.apply(header, payload)
    assert acks == []                  # nobody looked yet: the agent stops after MAX_IN_FLIGHT frames
    assert assembler.render() is not None
    assert acks == [3]


# -- known_hosts ---------------------------------------------------------------------------------------------

@pytest.fixture
def keys(tmp_path):
    out = []
    for name in ("a", "b"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
        out.append(Path(f"{tmp_path / name}.pub").read_text().split()[:2])
    return out


def test_known_hosts_verdicts_and_line_numbers(tmp_path, keys):
    (kind_a, key_a), (kind_b, key_b) = keys
    path = tmp_path / "known_hosts"
    path.write_text(f"# header\n\n*.example.org,!evil.example.org {kind_a} {key_a}\n"
                    f"[10.0.0.5]:2222 {kind_a} {key_a}\n"
                    f"@revoked * {kind_b} {key_b}\n")
    import base64
    blob_a, blob_b = base64.b64decode(key_a), base64.b64decode(key_b)
    kh = KnownHosts(path)
    assert kh.check("www.example.org", 22, kind_a, blob_a).verdict == Verdict.KNOWN
    assert kh.check("evil.example.org", 22, kind_a, blob_a).verdict == Verdict.UNKNOWN
    assert kh.check("10.0.0.5", 2222, kind_a, blob_a).verdict == Verdict.KNOWN
    assert kh.check("10.0.0.5", 22, kind_a, blob_a).verdict == Verdict.UNKNOWN     # brackets are literal
    changed = kh.check("10.0.0.5", 2222, kind_a, base64.b64decode(key_a)[:-1] + b"x")
    assert changed.verdict == Verdict.CHANGED and changed.entry.line == 4
    assert "line 4" in changed.describe("10.0.0.5", 2222, kind_a, "SHA256:x")
    assert kh.check("anything", 22, kind_b, blob_b).verdict == Verdict.REVOKED
    assert hosts_match("h?st", "host") and not hosts_match("h?st", "hoost")


def test_added_keys_are_what_openssh_reads_even_once_hashed(tmp_path, keys):
    import base64
    (kind_a, key_a), _ = keys
    path = tmp_path / "ssh" / "known_hosts"
    kh = KnownHosts(path)
    assert kh.add("192.0.2.1", 2200, kind_a, base64.b64decode(key_a)) == 1
    assert (path.parent.stat().st_mode & 0o777) == 0o700 and (path.stat().st_mode & 0o777) == 0o600
    found = subprocess.run(["ssh-keygen", "-F", "[192.0.2.1]:2200", "-f", str(path)], capture_output=True, text=True)
    assert found.returncode == 0 and key_a in found.stdout
    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)   # HashKnownHosts
    assert "192.0.2.1" not in path.read_text()
    assert kh.check("192.0.2.1", 2200, kind_a, base64.b64decode(key_a)).verdict == Verdict.KNOWN
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True).stdout
    assert fingerprint(base64.b64decode(key_a)) in out


# -- the client facing a misbehaving agent ---------------------------------------------------------------------

def _client_against(agent_script) -> tuple[AgentClient, list[str]]:
    ours, theirs = socket.socketpair()
    threading.Thread(target=agent_script, args=(theirs,), daemon=True).start()
    closed: list[str] = []
    client = AgentClient(ours.recv, ours.sendall, ours.close, lambda h: None, lambda u, d: None, closed.append)
    return client, closed


def test_client_drops_a_connection_whose_agent_sends_garbage():
    def agent(sock):
        sock.sendall(encode(hello("agent", version="test")))
        read_message(exact_reader(sock.recv))             # the client's hello
        read_message(exact_reader(sock.recv))             # the call
        sock.sendall((MAX_FRAME * 2).to_bytes(4, "big"))   # an answer far too long

    client, closed = _client_against(agent)
    client.start()
    with pytest.raises(AgentGone, match="malformed"):
        client.call("ping", timeout=10)
    assert closed and "malformed" in closed[0]
    with pytest.raises(AgentGone):
        client.call("ping", timeout=1)


def test_client_reports_the_agents_fatal_reason_and_errors():
    def agent(sock):
        sock.sendall(encode(hello("agent")))
        recv = exact_reader(sock.recv)
        read_message(recv)
        header, _ = read_message(recv)
        sock.sendall(encode({"t": "err", "id": header["id"], "e": "no VM named x"}))
        read_message(recv)
        sock.sendall(encode({"t": "fatal", "e": "the agent is shutting down"}))

    client, closed = _client_against(agent)
    client.start()
    with pytest.raises(HostError, match="no VM named x"):
        client.call("get", uuid="x", timeout=10)
    with pytest.raises(AgentGone, match="shutting down"):
        client.call("ping", timeout=10)
    assert "shutting down" in closed[0]


def test_client_refuses_an_agent_of_another_protocol():
    def agent(sock):
        sock.sendall(encode({"t": "hello", "proto": 2}))

    client, _ = _client_against(agent)
    with pytest.raises(AgentGone, match="protocol 2"):
        client.start()
