"""The service's sockets: options that bound what a peer can make them hold, binding (ipc file
modes, Curve, ZAP domains) and the monitor events the service reads."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import zmq

from feedsvc.curve import CurveServer, is_tcp
from feedsvc.protocol.events import HANDSHAKE_FAILURES
from feedsvc.protocol.sync import MAX_MARKER_LENGTH, marker_topic
from feedsvc.protocol.ticks import MAX_SYMBOL_LENGTH, topic_prefix
from feedsvc.server.access import zap_domain

# The sockets whose connections are watched, as named in logs, metric labels and ZAP domains.
SOCKET_NAMES: Final = ("publisher", "ingest", "sync", "recovery")
MONITORED_EVENTS: Final = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILURES
# A connection that has not completed its ZMTP handshake by then is dropped (ZMQ_HANDSHAKE_IVL;
# libzmq's default is 30 s): raw TCP connects that never speak cannot hold descriptors for long.
HANDSHAKE_TIMEOUT_MS: Final = 5_000
# The longest topic prefix a useful subscription holds: a sync marker's. A longer one matches no
# topic; its connection is closed (SubscriptionLimiter).
MAX_SUBSCRIPTION_PREFIX_BYTES: Final = max(
    len(topic_prefix(marker_topic("m" * MAX_MARKER_LENGTH))), MAX_SYMBOL_LENGTH + 1
)
# Larger messages to the PUB socket disconnect their sender in libzmq (ZMQ_MAXMSGSIZE), before
# they are stored: a subscription with the longest useful prefix, with room for ZMTP 3.1's
# SUBSCRIBE command name and a little metadata. libzmq applies it on the wire to the Curve
# handshake's commands too, which need about 300 bytes; with Curve only listed keys get that far.
PUBLISHER_MAX_MESSAGE_BYTES: Final = 128
PUBLISHER_MAX_MESSAGE_BYTES_CURVE: Final = 512
# Requests queued per sync peer: a REQ has one in flight; a DEALER may pipeline.
SYNC_QUEUED_PER_PEER: Final = 2
# Requests queued per recovery peer, and replies queued for it (a client has one request per
# symbol in flight; it retries what is dropped beyond).
RECOVERY_QUEUED_PER_PEER: Final = 16
# Above this many times the size limit a peer is disconnected by libzmq instead of being read.
HARD_LIMIT_FACTOR: Final = 4


def folder_mode(file_mode: int) -> int:
    # A folder needs the search bit wherever its files may be read.
    return file_mode | (file_mode & 0o444) >> 2


def bind_ipc(socket: zmq.Socket, endpoint: str, mode: int, bind: Callable[[], None]) -> None:
    """Bind an ipc endpoint so that its socket file has `mode` from the start.

    The umask is set around the bind (libzmq creates the file during the call, in this thread)
    rather than a chmod after it, which would leave a moment open to anyone. An abstract
    socket (ipc://@name) has no file: it is open to every process on the host.
    """
    path = endpoint.removeprefix("ipc://")
    previous_umask = os.umask(0o777 & ~folder_mode(mode))
    try:
        if not path.startswith("@"):
            # libzmq does not create the folder of an ipc path.
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.umask(0o777 & ~mode)
        bind()
    finally:
        os.umask(previous_umask)


def bind_endpoint(
    socket: zmq.Socket,
    socket_name: str,
    endpoint: str,
    *,
    ipc_mode: int,
    curve: CurveServer | None,
    uses_zap: bool,
) -> None:
    """Bind one endpoint: Curve on tcp when `curve` is given, the socket's ZAP domain on tcp when
    `uses_zap` (so libzmq asks the ZAP handler even without Curve), ipc files with `ipc_mode`.

    Raises zmq.ZMQError or OSError as the bind does.
    """

    def bind() -> None:
        if curve is not None:
            curve.secure(socket, endpoint)
        # Only tcp peers are filtered: ipc binds come first (plain_endpoints_first), before a
        # domain is set (libzmq refuses to set an empty one back).
        if uses_zap and is_tcp(endpoint):
            socket.zap_domain = zap_domain(socket_name).encode()
        socket.bind(endpoint)

    if endpoint.startswith("ipc://"):
        bind_ipc(socket, endpoint, ipc_mode, bind)
    else:
        bind()


def plain_endpoints_first(endpoints: list[str]) -> list[tuple[int, str]]:
    """(index, endpoint) with ipc before tcp: security options set for a tcp bind would stay set
    for a later ipc one."""
    return sorted(enumerate(endpoints), key=lambda item: is_tcp(item[1]))
