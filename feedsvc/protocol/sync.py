"""The sync handshake's fields, ids and error codes (docs/sync-protocol.md), shared by the
service's handler (feedsvc.server.sync) and the client (feedsvc.client): defined once, no
sockets."""

from __future__ import annotations

import re
from typing import Final

MARKER_TOPIC_PREFIX: Final = "_sync."
MAX_MARKER_LENGTH: Final = 64
MARKER_PATTERN: Final = re.compile(rf"[0-9A-Za-z_-]{{1,{MAX_MARKER_LENGTH}}}")
CLIENT_PATTERN: Final = MARKER_PATTERN

ERROR_NOT_JSON: Final = "not_json"
ERROR_BAD_REQUEST: Final = "bad_request"
ERROR_BAD_SYMBOL: Final = "bad_symbol"
ERROR_TOO_MANY_SYMBOLS: Final = "too_many_symbols"
ERROR_TOO_LARGE: Final = "too_large"
ERROR_SNAPSHOT_TOO_LARGE: Final = "snapshot_too_large"
# Snapshot replies to other clients that have not left yet hold sync.max_inflight_bytes: try again
# after a backoff (the client library does).
ERROR_BUSY: Final = "busy"
# A ready for a (client, marker) this service served no snapshot to: not a completed handshake.
ERROR_UNKNOWN_MARKER: Final = "unknown_marker"
# Handling the request raised (a bug, counted in feedsvc_internal_errors_total{where="sync"}).
ERROR_INTERNAL: Final = "internal_error"
# Errors a client should retry after a backoff; the others need a different request.
# From a relay (feedsvc relay): the upstream publisher that would answer is down or did not
# answer within relay.request_timeout_s. Worth a retry: an upstream restart ends it.
ERROR_UPSTREAM_UNAVAILABLE: Final = "upstream_unavailable"
RETRYABLE_ERRORS: Final = (ERROR_BUSY, ERROR_INTERNAL, ERROR_UPSTREAM_UNAVAILABLE)
ERRORS: Final = (
    ERROR_NOT_JSON,
    ERROR_BAD_REQUEST,
    ERROR_BAD_SYMBOL,
    ERROR_TOO_MANY_SYMBOLS,
    ERROR_TOO_LARGE,
    ERROR_SNAPSHOT_TOO_LARGE,
    ERROR_BUSY,
    ERROR_UNKNOWN_MARKER,
    ERROR_INTERNAL,
    ERROR_UPSTREAM_UNAVAILABLE,
)


def marker_topic(marker: str) -> str:
    """The topic a marker frame is published on (and the reply's "marker" field)."""
    return MARKER_TOPIC_PREFIX + marker
