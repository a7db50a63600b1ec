"""Rate limits of gap recovery: token buckets per client and for the whole service."""

from __future__ import annotations

from typing import Final

# Clients whose buckets are kept at most; the longest-idle one is forgotten first (a client
# that comes back starts with a full bucket, the service-wide bucket still holds).
MAX_TRACKED_CLIENTS: Final = 10_000


class TokenBucket:
    """`rate` per second, up to `burst` saved. A cost is allowed while the bucket holds what
    the caller needs (for bytes: while not in debt, so a reply larger than the burst still goes,
    once)."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait_s(self, now: float, need: float = 0.0) -> float:
        """0 if the bucket holds `need` now (0: is not in debt), else the seconds until it does."""
        self._refill(now)
        return 0.0 if self._tokens >= need else (need - self._tokens) / self.rate

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self._tokens -= cost


class ClientLimits:
    """Per client (ROUTER routing id): requests and bytes per second; plus the service's total
    bytes per second."""

    def __init__(
        self,
        requests_per_s: float,
        bytes_per_s: float,
        total_bytes_per_s: float,
        max_reply_bytes: int,
        now: float,
    ) -> None:
        self.requests_per_s = requests_per_s
        self.bytes_per_s = bytes_per_s
        # A whole reply fits the byte buckets' burst, so every reply can go eventually.
        self._byte_burst = max(bytes_per_s, max_reply_bytes)
        self.total = TokenBucket(total_bytes_per_s, max(total_bytes_per_s, max_reply_bytes), now)
        self._clients: dict[bytes, tuple[TokenBucket, TokenBucket]] = {}

    def _buckets(self, client: bytes, now: float) -> tuple[TokenBucket, TokenBucket]:
        buckets = self._clients.pop(client, None)
        if buckets is None:
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                del self._clients[next(iter(self._clients))]
            buckets = (
                TokenBucket(self.requests_per_s, max(1.0, self.requests_per_s), now),
                TokenBucket(self.bytes_per_s, self._byte_burst, now),
            )
        self._clients[client] = buckets  # most recently used last
        return buckets

    def wait_s(self, client: bytes, now: float) -> float:
        """0 if `client` may be answered now (one request taken), else seconds to wait."""
        requests, sent_bytes = self._buckets(client, now)
        # A request needs a whole token (a burst is at most requests_per_s); bytes may go
        # into debt once.
        wait = max(requests.wait_s(now, 1.0), sent_bytes.wait_s(now), self.total.wait_s(now))
        if wait == 0.0:
            requests.take(1, now)
        return wait

    def spend_bytes(self, client: bytes, size: int, now: float) -> None:
        self._buckets(client, now)[1].take(size, now)
        self.total.take(size, now)

    @property
    def clients_tracked(self) -> int:
        return len(self._clients)
