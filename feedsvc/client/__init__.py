"""The client library: what trading clients import.

A subscriber connects a SUB socket to one or more publisher endpoints, subscribes to exact symbols
(``b"SYM "``) or raw byte prefixes, and hands out decoded ticks. On every tick it checks the
per-symbol sequence (gaps, duplicates, publisher restarts); heartbeats on the ``_hb`` topic tell a
quiet market from a dead feed. In conflate mode a slow consumer gets only the newest tick per
symbol instead of a growing backlog.

With a sync endpoint the subscriber first runs the sync handshake of docs/sync-protocol.md: it gets
the last value and seq of every symbol over REQ/REP and waits for a marker on its SUB socket, so it
starts with a price for every symbol, quiet ones included, and then misses nothing.

The modules, from the bottom up: sequence.py (gap, restart and duplicate detection), conflate.py
(newest tick per symbol), handshake.py (the sync protocol without sockets), diagnostics.py (why a
connection fails), syncing.py (the handshake on the sockets), core.py (what both subscribers
share), blocking.py (`Subscriber`), aio.py (`AsyncSubscriber`), metrics.py (Prometheus).

Imports no server code: what both sides share comes from feedsvc.protocol and feedsvc.curve.
"""

from feedsvc.client.aio import AsyncSubscriber
from feedsvc.client.blocking import Subscriber
from feedsvc.client.conflate import Conflator
from feedsvc.client.core import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    DEFAULT_RCVBUF,
    DEFAULT_RCVHWM,
    SubscriberStats,
)
from feedsvc.client.diagnostics import describe_handshake_failure
from feedsvc.client.handshake import (
    DEFAULT_SYNC_ATTEMPTS,
    DEFAULT_SYNC_TIMEOUT_S,
    SYNC_BAD_REPLY,
    SYNC_NO_MARKER,
    SYNC_NO_REPLY,
    SYNC_SERVICE_BUSY,
    SyncError,
    SyncHandshake,
    SyncSnapshot,
    new_sync_id,
)
from feedsvc.client.sequence import Duplicate, Gap, Restart, SequenceTracker

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "DEFAULT_RCVBUF",
    "DEFAULT_RCVHWM",
    "DEFAULT_SYNC_ATTEMPTS",
    "DEFAULT_SYNC_TIMEOUT_S",
    "SYNC_BAD_REPLY",
    "SYNC_NO_MARKER",
    "SYNC_NO_REPLY",
    "SYNC_SERVICE_BUSY",
    "AsyncSubscriber",
    "Conflator",
    "Duplicate",
    "Gap",
    "Restart",
    "SequenceTracker",
    "Subscriber",
    "SubscriberStats",
    "SyncError",
    "SyncHandshake",
    "SyncSnapshot",
    "describe_handshake_failure",
    "new_sync_id",
]
