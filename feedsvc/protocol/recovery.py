"""Gap recovery's fields, limits and error codes (docs/recovery-protocol.md), shared by the
service's handler (feedsvc.server.recovery) and the client (feedsvc.client.recovery): defined
once, no sockets.

A request is one JSON object (after the ROUTER envelope: nothing for a DEALER, an empty frame
for a REQ); the reply is a header JSON object, then on success one frame per tick, each
byte-identical to the frame broadcast on the PUB socket, in seq order.
"""

from __future__ import annotations

import re
from typing import Final

OP_RECOVER: Final = "recover"
MAX_REQUEST_ID_LENGTH: Final = 64
REQUEST_ID_PATTERN: Final = re.compile(rf"[0-9A-Za-z_.:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
# A request is small; larger ones are refused (too_large) before they are decoded.
MAX_REQUEST_BYTES: Final = 1_024

# Where the ticks of a reply came from.
SOURCE_MEMORY: Final = "memory"
# The Kafka mirror (read_committed), for ranges older than the window and earlier epochs.
SOURCE_KAFKA: Final = "kafka"

ERROR_NOT_JSON: Final = "not_json"
ERROR_BAD_REQUEST: Final = "bad_request"
ERROR_BAD_SYMBOL: Final = "bad_symbol"
ERROR_TOO_LARGE: Final = "too_large"
# The epoch is not this publisher's current one (a restart happened, or a typo).
ERROR_UNKNOWN_EPOCH: Final = "unknown_epoch"
# Part of the range is no longer held (older than recovery.window_s or pushed out by
# recovery.max_bytes); the reply's "oldest" is the oldest seq still held (null: none).
ERROR_NOT_IN_WINDOW: Final = "not_in_window"
# The range ends after the symbol's last published seq (reply's "latest").
ERROR_NOT_PUBLISHED: Final = "not_published"
# More than recovery.max_ticks_per_request ticks asked at once (reply's "max_ticks").
ERROR_RANGE_TOO_LARGE: Final = "range_too_large"
# Over this client's or the service's request or byte rate; retry after "retry_after_ms".
ERROR_RATE_LIMITED: Final = "rate_limited"
# Replies to other clients not yet written out hold recovery.max_inflight_bytes: retry later.
ERROR_BUSY: Final = "busy"
# Handling the request raised (a bug, counted in feedsvc_internal_errors_total{where="recovery"}).
ERROR_INTERNAL: Final = "internal_error"
# Errors worth the same request again after a backoff; the others need a different request.
# From a relay (feedsvc relay): the upstream publisher that would answer is down or did not
# answer within relay.request_timeout_s. Worth a retry: an upstream restart ends it.
ERROR_UPSTREAM_UNAVAILABLE: Final = "upstream_unavailable"
RETRYABLE_ERRORS: Final = (
    ERROR_RATE_LIMITED,
    ERROR_BUSY,
    ERROR_INTERNAL,
    ERROR_UPSTREAM_UNAVAILABLE,
)
ERRORS: Final = (
    ERROR_NOT_JSON,
    ERROR_BAD_REQUEST,
    ERROR_BAD_SYMBOL,
    ERROR_TOO_LARGE,
    ERROR_UNKNOWN_EPOCH,
    ERROR_NOT_IN_WINDOW,
    ERROR_NOT_PUBLISHED,
    ERROR_RANGE_TOO_LARGE,
    ERROR_RATE_LIMITED,
    ERROR_BUSY,
    ERROR_INTERNAL,
    ERROR_UPSTREAM_UNAVAILABLE,
)
