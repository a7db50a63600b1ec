"""Prometheus metrics of one subscriber (client side), e.g. for `feedsvc subscribe --metrics-port`.

Like the server's metrics: the counters are the subscriber's own plain integers
(`subscriber.stats`), read by a custom collector at scrape time, so receiving a tick costs no
metrics call. Only the tick-age histogram needs a call per tick: the caller passes every delivered
tick to `SubscriberMetrics.observe` (one clock read and one histogram observation).

Every series carries the label ``endpoint``: the subscriber's first endpoint. The names are
relied on by a Grafana dashboard; do not rename them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from feedsvc.client.core import SubscriberStats, _SubscriberCore
    from feedsvc.protocol.ticks import Tick

ENDPOINT_LABEL: Final = "endpoint"
TICK_AGE_NAME: Final = "feedsvc_client_tick_age_seconds"
# From 100 us (same host, idle) to 10 s (a stalled consumer or an old snapshot tick).
TICK_AGE_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# (name without the _total suffix the exposition adds, help text, SubscriberStats attribute)
COUNTERS: Final = (
    (
        "feedsvc_client_ticks_received",
        "Tick frames received from the publisher (before duplicate and conflation checks).",
        "received",
    ),
    (
        "feedsvc_client_gap_events",
        "Sequence gaps detected (each may cover several missed ticks).",
        "gaps",
    ),
    (
        "feedsvc_client_missed_ticks",
        "Ticks missed according to the per-symbol sequence gaps.",
        "missed",
    ),
    (
        "feedsvc_client_heartbeat_misses",
        "Times the feed went silent for longer than the heartbeat timeout (declared dead).",
        "heartbeat_misses",
    ),
    (
        "feedsvc_client_recovery_requests",
        "Gap recovery requests sent (re-sends included).",
        "recovery_requests",
    ),
    (
        "feedsvc_client_recovered_ticks",
        "Missed ticks recovered from the service and delivered in place.",
        "recovered",
    ),
    (
        "feedsvc_client_unrecoverable_gaps",
        "Gaps recovery could not fill (reported as gaps).",
        "unrecoverable_gaps",
    ),
)
RECOVERY_SECONDS_NAME: Final = "feedsvc_client_recovery_seconds"
_NS_PER_S: Final = 1_000_000_000


class _StatsCollector:
    """Reads the subscriber's counters at scrape time."""

    def __init__(self, stats: SubscriberStats, endpoint: str) -> None:
        self._stats = stats
        self._endpoint = endpoint

    def describe(self) -> list[Metric]:
        return []  # collected lazily; the registry must not call collect() at registration

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        for name, help_text, attribute in COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=[ENDPOINT_LABEL])
            family.add_metric([self._endpoint], getattr(stats, attribute))
            yield family
        recovery = SummaryMetricFamily(
            RECOVERY_SECONDS_NAME,
            "Recoveries (a symbol's first gap to the release of its held ticks) and their time.",
            labels=[ENDPOINT_LABEL],
        )
        recovery.add_metric(
            [self._endpoint], count_value=stats.recoveries, sum_value=stats.recovery_latency_total_s
        )
        yield recovery


class SubscriberMetrics:
    """The metrics of `subscriber`, registered with `registry` (a new one by default).

    Call `observe(tick)` for every tick the subscriber delivers, and `serve(port)` to expose
    the registry over HTTP.
    """

    def __init__(
        self, subscriber: _SubscriberCore, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.endpoint = subscriber.endpoints[0]
        self.registry.register(_StatsCollector(subscriber.stats, self.endpoint))
        self._tick_age = Histogram(
            TICK_AGE_NAME,
            "Receive time minus the tick's publish stamp (ts), per delivered tick.",
            labelnames=[ENDPOINT_LABEL],
            buckets=TICK_AGE_BUCKETS,
            registry=self.registry,
        )
        self._tick_age_child = self._tick_age.labels(self.endpoint)
        self._server: WSGIServer | None = None

    def observe(self, tick: Tick) -> None:
        """Record the age of one delivered tick; ticks without an integer ``ts`` are skipped."""
        ts = tick.get("ts")
        if type(ts) is int:
            self._tick_age_child.observe((time.time_ns() - ts) / _NS_PER_S)

    def serve(self, port: int, host: str = "127.0.0.1") -> WSGIServer:
        """Serve /metrics of this registry on `host`:`port` (0: any free port) in a daemon
        thread; returns the server (its port is ``server.server_port``). Raises OSError when the
        port cannot be bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return server

    def close(self) -> None:
        """Stop the server started by `serve`, if any."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
