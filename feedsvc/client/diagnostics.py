"""Why a connection fails when nothing arrives: libzmq reports failed ZMTP handshakes (a refused
Curve key, Curve on one side only, the wrong server key) only to a socket monitor; this module
opens that monitor, reads its events and describes each one in a line that says what to check."""

from __future__ import annotations

from collections.abc import Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from feedsvc.protocol.events import HANDSHAKE_FAILURES


def describe_handshake_failure(event: int, value: int, endpoint: str) -> str:
    """One line for a failed handshake as a client sees it (event and value from the socket
    monitor), saying what to check."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"{endpoint} refused this client's Curve key (ZAP status {value}): it is not in the "
            "service's curve.authorized_keys"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return (
                f"{endpoint} and this client disagree on Curve: one side uses it and the other "
                "does not (check curve.enabled and the client's Curve keys)"
            )
        return f"{endpoint}: the handshake broke the ZMTP protocol (error {value:#x})"
    return (
        f"{endpoint} closed the connection during the handshake; with Curve, check that the "
        "client's server key is the service's public key"
    )


def open_handshake_monitor(socket: zmq.Socket, context: zmq.Context, address: str) -> zmq.Socket:
    """Monitor `socket`'s failed handshakes on inproc `address`; returns the reading end, a
    plain PAIR socket of `context` (also for an asyncio context: it is only read without
    blocking) that the caller closes."""
    # libzmq tells only a socket monitor about handshake failures: without one a refused
    # Curve key (or Curve on one side only) looks exactly like a silent publisher.
    socket.monitor(address, HANDSHAKE_FAILURES)
    monitor = zmq.Context.shadow(context.underlying).socket(zmq.PAIR)
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(address)
    return monitor


def queued_handshake_failures(monitor: zmq.Socket) -> Iterator[str]:
    """The description of every failed handshake queued on `monitor`, oldest first; never
    blocks."""
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        yield describe_handshake_failure(
            event["event"], event["value"], event["endpoint"].decode(errors="replace")
        )
