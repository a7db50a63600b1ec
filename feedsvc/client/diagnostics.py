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


def queued_handshake_failures(monitor: zmq.Socket) -> Iterator[tuple[int, int, str]]:
    """(event, value, endpoint) of every failed handshake queued on `monitor`, oldest first;
    never blocks."""
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        yield event["event"], event["value"], event["endpoint"].decode(errors="replace")


class SilenceReason:
    """The most telling failed handshake since messages last arrived, described.

    A reason once seen (a refused key, Curve on one side only) is not replaced by a bare close
    of a later attempt: whether a reconnect ends in the peer's reason or in a reset that beat
    it is a race on the wire, and the reason is what the user needs."""

    def __init__(self) -> None:
        self.text: str | None = None
        self._detailed = False

    def note(self, event: int, value: int, endpoint: str) -> None:
        detailed = event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        if detailed or not self._detailed:
            self.text = describe_handshake_failure(event, value, endpoint)
            self._detailed = detailed

    def clear(self) -> None:
        self.text = None
        self._detailed = False
