"""The health rule of `feedsvc serve` in one place: when the service counts as able to publish,
and the /healthz document that says so."""

from __future__ import annotations

import time
from typing import Any, Final

# The service loop passes at least every 0.1 s; this much silence means it cannot publish.
LOOP_STALL_S: Final = 5.0


def unhealthy_reason(
    *, pub_open: bool, stopping: bool, loop_alive_at: float | None, now: float
) -> str | None:
    """Why the service cannot publish now, or None while it can (`now` and `loop_alive_at` on
    the monotonic clock)."""
    if not pub_open:
        return "the PUB socket is closed"
    if stopping:
        return "stopping"
    if loop_alive_at is None:
        return "not publishing yet"
    if now - loop_alive_at > LOOP_STALL_S:
        return f"the publishing loop has not run for over {LOOP_STALL_S:.0f} s"
    return None


def health_document(
    *,
    reason: str | None,
    epoch: int,
    endpoints: list[str],
    mirror_enabled: bool,
    mirror_connected: bool,
    last_publish_unix_s: float,
    mirror_problem: str | None = None,
    mirror_restarts: int = 0,
    fds_open: int,
    fd_limit: int,
    connections: dict[str, int],
) -> dict[str, Any]:
    """The /healthz JSON document (HTTP 200 with it when `reason` is None, else 503).

    A `mirror_problem` (the audit trail is not being written) makes the status "degraded" with
    HTTP 200: the hot path is fine and an orchestrator must not restart the service for it.
    """
    if reason is not None:
        status = "unavailable"
    elif mirror_problem is not None:
        status, reason = "degraded", mirror_problem
    else:
        status = "ok"
    return {
        "status": status,
        "reason": reason,
        "epoch": epoch,
        "sockets_bound": endpoints,
        "mirror": {
            "enabled": mirror_enabled,
            "connected": mirror_connected,
            "restarts": mirror_restarts,
        },
        "last_tick_unix_s": last_publish_unix_s or None,
        "checked_unix_s": time.time(),
        "fds": {"open": fds_open, "limit": fd_limit},
        "connections": connections,
    }
