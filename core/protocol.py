"""Vireo's wire format: one framed, versioned message stream carries everything between a client and the service
(calls and replies, events, statistics, serial bytes, console updates, input: core/agent/), and between the service
and each VM process (core/vmproc/wire.py, with a lower size limit). Neither package owns it, so both import it.

A frame is a 4-byte big-endian body length L (at most MAX_FRAME) and a body of L bytes: a 4-byte big-endian
header length J, J bytes of UTF-8 JSON holding one object with a string "t" (the message type), and L-4-J bytes
of binary payload (serial bytes, compressed pixels; often empty). Binary data therefore never goes through
base64, and the JSON part stays small.

The first message each way is {"t": "hello", "proto": PROTOCOL_VERSION, ...}; a peer speaking another protocol
number is told so and disconnected. Anything malformed — a length over the limit, a header longer than its body,
bytes that are not UTF-8 JSON, a JSON value that is not an object with a string "t" — raises ProtocolError, and
the receiver closes that one connection after (where it can) sending {"t": "fatal", "e": reason}. Neither side
ever trusts a length before checking it against the limit, so a hostile peer cannot make it allocate more.
Standard library only (the bridge imports it).
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME = 8 * 1024 * 1024      # body bytes; console strips and serial chunks are far smaller (core/agent/console.py)
MAX_HEADER = 256 * 1024          # the JSON part; a VM list of hundreds of definitions fits easily
_LEN = struct.Struct(">I")

Message = tuple[dict[str, Any], bytes]


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection must be closed."""


class ConnectionClosed(Exception):
    """The peer closed the stream (between frames, or in the middle of one when `partial`)."""

    def __init__(self, message: str = "connection closed", partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame. Raises ValueError when it would exceed the limits (a bug on the sending side)."""
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > MAX_HEADER:
        raise ValueError(f"message header of {len(text)} bytes exceeds {MAX_HEADER}")
    length = 4 + len(text) + len(payload)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return b"".join((_LEN.pack(length), _LEN.pack(len(text)), text, payload))


def decode_body(body: bytes) -> Message:
    """Split and check one frame body (without its length prefix)."""
    if len(body) < 4:
        raise ProtocolError(f"frame body of {len(body)} bytes is shorter than its header length field")
    (hlen,) = _LEN.unpack_from(body, 0)
    if hlen > MAX_HEADER or hlen > len(body) - 4:
        raise ProtocolError(f"header length {hlen} does not fit the {len(body)}-byte frame")
    try:
        header = json.loads(body[4:4 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {str(exc)[:80]}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("header is not a JSON object with a string 't'")
    return header, bytes(body[4 + hlen:])


def check_length(length: int) -> None:
    if length < 4 or length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} is outside 4..{MAX_FRAME}")


class FrameDecoder:
    """Incremental decoding of a byte stream into messages (for readers that get arbitrary chunks)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= 4:
            (length,) = _LEN.unpack_from(self._buf, 0)
            check_length(length)
            if len(self._buf) < 4 + length:
                break
            body = bytes(self._buf[4:4 + length])
            del self._buf[:4 + length]
            out.append(decode_body(body))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


def read_message(recv_exact: Callable[[int], bytes]) -> Message:
    """Read one message with `recv_exact(n)`, which returns exactly n bytes or fewer at end of stream."""
    prefix = recv_exact(4)
    if not prefix:
        raise ConnectionClosed()
    if len(prefix) < 4:
        raise ConnectionClosed("connection closed inside a frame", partial=True)
    (length,) = _LEN.unpack(prefix)
    check_length(length)
    body = recv_exact(length)
    if len(body) < length:
        raise ConnectionClosed("connection closed inside a frame", partial=True)
    return decode_body(body)


def exact_reader(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """Wrap a read(n) that may return short counts into recv_exact(n) (short only at end of stream)."""
    def recv_exact(n: int) -> bytes:
        chunks = []
        got = 0
        while got < n:
            chunk = read(n - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    return recv_exact


def hello(role: str, **extra: Any) -> dict[str, Any]:
    return {"t": "hello", "proto": PROTOCOL_VERSION, "role": role, **extra}


def check_hello(header: dict[str, Any]) -> None:
    """Raise ProtocolError unless `header` is a hello with our protocol number."""
    if header.get("t") == "fatal":
        raise ProtocolError(str(header.get("e", "the agent refused the connection")))
    if header.get("t") != "hello":
        raise ProtocolError(f"expected a hello message, got {str(header.get('t'))[:40]!r}")
    proto = header.get("proto")
    if proto != PROTOCOL_VERSION:
        raise ProtocolError(f"the peer speaks agent protocol {proto!r}, this side {PROTOCOL_VERSION}")
