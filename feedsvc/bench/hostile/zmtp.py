"""Raw ZMTP 3.0 over a plain TCP socket, for peers that must not read.

A libzmq socket would keep reading into its own queue and hold the data in the attacker instead
of leaving it queued in the service; these frames and the raw handshake leave it there. The
framing functions are pure (unit-tested); the rest does socket I/O within a peer's budget.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
from collections.abc import Iterable
from typing import Final

from feedsvc.bench.hostile.peer import Budget

# A raw peer's kernel receive buffer: small, so what it does not read stays in the service.
RAW_RCVBUF: Final = 4_096
CONNECT_TIMEOUT_S: Final = 3.0


def tcp_address(endpoint: str) -> tuple[str, int]:
    """("127.0.0.1", 5556) from "tcp://127.0.0.1:5556"."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"not a tcp endpoint: {endpoint!r}")
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def zmtp_greeting() -> bytes:
    """The 64-byte ZMTP 3.0 greeting of a client with the NULL mechanism."""
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)


def zmtp_frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    """One ZMTP 3.0 frame: flags, a 1-byte size (short) or an 8-byte one (long), the body."""
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) <= 255:
        return bytes((flags, len(body))) + body
    return bytes((flags | 0x02,)) + struct.pack(">Q", len(body)) + body


def zmtp_ready(socket_type: str) -> bytes:
    """The READY command announcing `socket_type` (e.g. "REQ", "SUB")."""
    name, value = b"Socket-Type", socket_type.encode()
    body = b"\x05READY" + bytes((len(name),)) + name + struct.pack(">I", len(value)) + value
    return zmtp_frame(body, command=True)


def zmtp_request(body: bytes) -> bytes:
    """A REQ socket's message on the wire: the empty delimiter frame, then the body."""
    return zmtp_frame(b"", more=True) + zmtp_frame(body)


def zmtp_subscription(prefix: bytes) -> bytes:
    """A ZMTP 3.0 subscription message (0x01 + prefix), as a SUB sends it to a PUB."""
    return zmtp_frame(b"\x01" + prefix)


def open_raw_zmtp(
    endpoint: str, socket_type: str, rcvbuf: int = RAW_RCVBUF, timeout_s: float = CONNECT_TIMEOUT_S
) -> socket.socket:
    """A TCP connection through the ZMTP handshake as `socket_type` that reads nothing after it:
    what the service sends it stays queued on the service's side."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Before connect, so the advertised window is small from the first segment.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout_s)
        raw.connect(tcp_address(endpoint))
        raw.sendall(zmtp_greeting() + zmtp_ready(socket_type))
        # libzmq takes every frame as a handshake command until it has sent its own READY:
        # a message sent before that ends the connection.
        _receive_exactly(raw, len(zmtp_greeting()))
        flags, size = _receive_exactly(raw, 2)
        if not flags & 0x04:
            raise ConnectionError(f"expected the peer's READY command, got flags {flags:#x}")
        if flags & 0x02:
            size = struct.unpack(">Q", bytes((size,)) + _receive_exactly(raw, 7))[0]
        _receive_exactly(raw, size)
    except OSError:
        raw.close()
        raise
    return raw


def _receive_exactly(raw: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = raw.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection during the ZMTP handshake")
        data += chunk
    return data


def send_within(raw: socket.socket, data: bytes, budget: Budget) -> int:
    """Send as much of `data` as the budget allows (the peer may be slow to read); returns bytes
    sent. A blocking sendall with a timeout would leave an unknown part sent."""
    view, sent = memoryview(data), 0
    raw.setblocking(False)
    try:
        while sent < len(view) and not budget.over():
            try:
                sent += raw.send(view[sent:])
            except BlockingIOError:
                _wait_writable(raw, min(0.1, budget.remaining()))
    finally:
        raw.setblocking(True)
    return sent


def _wait_writable(raw: socket.socket, timeout_s: float) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(raw, selectors.EVENT_WRITE)
        selector.select(timeout_s)


def close_all(sockets: Iterable[socket.socket]) -> None:
    for raw in sockets:
        with contextlib.suppress(OSError):
            raw.close()
