"""Containment for the handlers that act on outside input.

Each ingest frame, sync request, subscription message and monitor event is handled inside a
guard: whatever the input triggers, it is refused, the failure is counted by where it happened
(``feedsvc_internal_errors_total{where}``) and logged rate-limited with enough to reproduce it,
and the loop that serves every other peer goes on. The handlers' own validation is the first
line; this is the last one, for the bugs validation did not foresee.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from feedsvc.logs import RateLimiter
from feedsvc.protocol import recovery as recovery_protocol
from feedsvc.protocol.sync import ERROR_INTERNAL
from feedsvc.protocol.ticks import REJECT_INTERNAL_ERROR
from feedsvc.server.ingest import IngestDecoder
from feedsvc.server.publisher import Publisher
from feedsvc.server.recovery.handler import RecoveryHandler, RecoveryReply
from feedsvc.server.sync import SyncHandler, SyncReply

log = logging.getLogger("feedsvc.guard")

WHERE_INGEST: Final = "ingest"
WHERE_SYNC: Final = "sync"
WHERE_RECOVERY: Final = "recovery"
WHERE_SUBSCRIPTION: Final = "subscription"
WHERE_MONITOR: Final = "monitor"
# Label values of feedsvc_internal_errors_total.
WHERES: Final = (WHERE_INGEST, WHERE_SYNC, WHERE_RECOVERY, WHERE_SUBSCRIPTION, WHERE_MONITOR)
# Bytes of the offending input quoted in the log line: enough to reproduce most cases.
_QUOTED_INPUT_BYTES: Final = 512
DEFAULT_LOG_INTERVAL_S: Final = 10.0


class InputGuard:
    """Counts and logs (at most once per interval, with a traceback) what a handler could not
    handle.

    Parameters
    ----------
    log_interval_s:
        At most one log line per this many seconds; the counts say what happened meanwhile.
    clock:
        Monotonic seconds.
    """

    def __init__(
        self,
        log_interval_s: float = DEFAULT_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.errors_by_where: dict[str, int] = dict.fromkeys(WHERES, 0)
        self._limiter = RateLimiter(log_interval_s, clock)
        self._logged_total = 0

    @property
    def errors_total(self) -> int:
        return sum(self.errors_by_where.values())

    def contained(self, where: str, error: Exception, offending_input: bytes) -> None:
        """Record that handling `offending_input` at `where` raised `error` (now contained)."""
        self.errors_by_where[where] += 1
        if not self._limiter.allow():
            return
        total = self.errors_total
        log.error(
            "contained an internal error handling %s input (%d since the last report, totals "
            "%s); the input was refused and the service goes on. Input of %d bytes, starting "
            "%r",
            where,
            total - self._logged_total,
            {name: count for name, count in self.errors_by_where.items() if count},
            len(offending_input),
            bytes(offending_input[:_QUOTED_INPUT_BYTES]),
            exc_info=error,
        )
        self._logged_total = total


def handle_ingest_frame(
    frame: bytes, decoder: IngestDecoder, publisher: Publisher, guard: InputGuard
) -> int:
    """Decode, validate and publish one ingest frame; returns how many ticks were sent.

    Whatever the frame triggers, it does not escape: a failure refuses the rest of the frame
    (counted as ``internal_error``) and is recorded by `guard`.
    """
    # A try block costs nothing until it raises (Python 3.11+).
    try:
        ticks = decoder.decode(frame)
        return publisher.publish(ticks) if ticks else 0
    except Exception as error:
        guard.contained(WHERE_INGEST, error, frame)
        decoder.rejected_by_reason[REJECT_INTERNAL_ERROR] += 1
        return 0


def answer_sync_request(request: bytes, sync: SyncHandler, guard: InputGuard) -> SyncReply:
    """The reply (and marker frame) to one sync request; a failure is answered with the error
    ``internal_error`` and recorded by `guard`."""
    try:
        return sync.handle(request)
    except Exception as error:
        guard.contained(WHERE_SYNC, error, request)
        return sync.error_reply(
            ERROR_INTERNAL, "the service could not handle this request; it was logged"
        )


def answer_recovery_request(
    client: bytes, request: bytes, recovery: RecoveryHandler, guard: InputGuard
) -> RecoveryReply:
    """The reply to one recovery request; a failure is answered with the error
    ``internal_error`` and recorded by `guard`."""
    try:
        return recovery.handle(client, request)
    except Exception as error:
        guard.contained(WHERE_RECOVERY, error, request)
        return recovery.error_reply(
            recovery_protocol.ERROR_INTERNAL,
            "the service could not handle this request; it was logged",
        )
