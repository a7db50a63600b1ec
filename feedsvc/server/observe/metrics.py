"""Prometheus metrics and /healthz for `feedsvc serve`, on `metrics.port`.

The hot path keeps plain integer counters on its own objects (publisher, decoder, mirror hand-off,
sync handler); a custom collector reads them when Prometheus scrapes. So publishing a tick costs
no metrics call at all, and the names and help texts live in this one module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final, Protocol

import orjson
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from feedsvc.server.access import (
    REFUSED_NETWORK,
    REFUSED_TOO_MANY_CONNECTIONS,
    PeerAuthenticator,
    zap_domain,
)
from feedsvc.server.connections import PeerAccounting
from feedsvc.server.guard import InputGuard
from feedsvc.server.mirror import MirrorHandoff
from feedsvc.server.observe.http import REJECT_REASONS, BoundedHttpServer, Response
from feedsvc.server.publisher import Publisher
from feedsvc.server.recovery.handler import RecoveryHandler
from feedsvc.server.sync import SyncHandler


class ServiceCounters(Protocol):
    """What the collector and /healthz read: the counters the service's parts keep, never the
    service itself (feedsvc.server.service provides them; this module does not import it)."""

    epoch: int
    heartbeats_sent: int
    ingested_by_source: dict[str, int]
    last_publish_unix_s: float
    sync_inflight_bytes: int
    publisher: Publisher | None
    sync: SyncHandler | None
    recovery: RecoveryHandler | None
    recovery_inflight_bytes: int
    mirror: MirrorHandoff | None
    guard: InputGuard
    authenticator: PeerAuthenticator | None
    peers: PeerAccounting

    @property
    def rejected_by_reason(self) -> dict[str, int]: ...

    @property
    def subscribers_connected(self) -> int: ...

    def mirror_lag_seconds(self) -> float: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...


HANDSHAKE_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
PUBLISH_LATENCY_BUCKETS: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.1,
)


class ServiceCollector:
    """Reads the service's own counters at scrape time."""

    def __init__(self, service: ServiceCounters) -> None:
        self._service = service

    def describe(self) -> list[Metric]:
        return []  # collected lazily; the registry must not call collect() at registration

    def collect(self) -> Iterator[Metric]:
        service = self._service
        publisher = service.publisher

        ingested = CounterMetricFamily(
            "feedsvc_ticks_ingested", "Valid ticks taken in, by source.", labels=["source"]
        )
        for source, count in service.ingested_by_source.items():
            ingested.add_metric([source], count)
        yield ingested

        rejected = CounterMetricFamily(
            "feedsvc_ticks_rejected", "Ingest ticks rejected, by reason.", labels=["reason"]
        )
        for reason, count in service.rejected_by_reason.items():
            rejected.add_metric([reason], count)
        yield rejected

        yield CounterMetricFamily(
            "feedsvc_ticks_published",
            "Ticks sent on the PUB socket.",
            value=publisher.published if publisher else 0,
        )
        yield CounterMetricFamily(
            "feedsvc_published_bytes",
            "Bytes of tick frames sent on the PUB socket.",
            value=publisher.published_bytes if publisher else 0,
        )
        yield CounterMetricFamily(
            "feedsvc_heartbeats_sent", "Heartbeats sent on _hb.", value=service.heartbeats_sent
        )
        yield GaugeMetricFamily(
            "feedsvc_symbols",
            "Distinct symbols published this epoch.",
            value=publisher.symbol_count if publisher else 0,
        )
        yield GaugeMetricFamily(
            "feedsvc_subscribers_connected",
            "Connections to the PUB socket (from its monitor events).",
            value=service.subscribers_connected,
        )
        yield CounterMetricFamily(
            "feedsvc_subscriber_handshake_failures",
            "ZMTP handshakes with would-be subscribers that failed.",
            value=service.peers.subscriber_handshake_failures,
        )
        rejected_handshakes = CounterMetricFamily(
            "feedsvc_handshakes_rejected",
            "Connection handshakes refused, by socket (publisher, ingest, sync) and reason (auth: "
            "key not authorized; protocol: no Curve, wrong server key or not ZMTP; other).",
            labels=["socket", "reason"],
        )
        for (socket_name, reason), count in service.peers.rejected_handshakes.items():
            rejected_handshakes.add_metric([socket_name, reason], count)
        yield rejected_handshakes
        # An info label, not a value: a float64 sample cannot hold a 19-digit epoch exactly.
        yield InfoMetricFamily(
            "feedsvc",
            "This run's epoch (ns since the Unix epoch at start).",
            value={"epoch": str(service.epoch)},
        )
        yield GaugeMetricFamily(
            "feedsvc_last_publish_timestamp_seconds",
            "Unix time of the last tick published (0 before the first).",
            value=service.last_publish_unix_s,
        )
        yield from self._collect_limits()
        yield from self._collect_sync()
        yield from self._collect_recovery()
        yield from self._collect_mirror()

    def _collect_limits(self) -> Iterator[Metric]:
        """What peers hold and what was refused to them (docs/security.md's resource table)."""
        service = self._service
        internal = CounterMetricFamily(
            "feedsvc_internal_errors",
            "Inputs whose handling raised, contained (the input was refused), by where: ingest, "
            "sync, subscription, monitor, zap.",
            labels=["where"],
        )
        for where, count in service.guard.errors_by_where.items():
            internal.add_metric([where], count)
        authenticator = service.authenticator
        internal.add_metric(["zap"], authenticator.internal_errors if authenticator else 0)
        yield internal
        refused = CounterMetricFamily(
            "feedsvc_connections_refused",
            "Connections closed or refused by a bound, by socket and reason (too_many_connections, "
            "network_not_allowed, too_many_subscriptions, subscription_too_long).",
            labels=["socket", "reason"],
        )
        connections = GaugeMetricFamily(
            "feedsvc_connections", "Connections open now, by socket.", labels=["socket"]
        )
        refused_by_network = authenticator.refused_by_domain if authenticator else {}
        for name, limiter in service.peers.connections.items():
            refused.add_metric([name, REFUSED_TOO_MANY_CONNECTIONS], limiter.refused)
            refused.add_metric([name, REFUSED_NETWORK], refused_by_network.get(zap_domain(name), 0))
            connections.add_metric([name], limiter.connected)
        for reason, count in service.peers.subscriptions.refused_by_reason.items():
            refused.add_metric(["publisher", reason], count)
        yield refused
        yield connections
        yield GaugeMetricFamily(
            "feedsvc_subscriptions",
            "Subscriptions subscribers hold now (each connection's, duplicates included).",
            value=service.peers.subscriptions.total,
        )
        yield GaugeMetricFamily(
            "feedsvc_subscription_bytes",
            "Bytes of the distinct subscription prefixes held now.",
            value=service.peers.subscriptions.distinct_bytes,
        )
        publisher = service.publisher
        yield GaugeMetricFamily(
            "feedsvc_cache_bytes",
            "Bytes the last-value cache has reserved (bounded by publisher.max_cache_bytes).",
            value=publisher.cache_bytes if publisher else 0,
        )
        yield GaugeMetricFamily(
            "feedsvc_sync_inflight_bytes",
            "Snapshot reply bytes libzmq still holds for clients (bounded by "
            "sync.max_inflight_bytes).",
            value=service.sync_inflight_bytes,
        )

    def _collect_sync(self) -> Iterator[Metric]:
        sync = self._service.sync
        yield CounterMetricFamily(
            "feedsvc_sync_snapshots_served",
            "Sync snapshot requests answered.",
            value=sync.snapshots_served if sync else 0,
        )
        yield CounterMetricFamily(
            "feedsvc_sync_handshakes_completed",
            "Distinct clients that completed the sync handshake (sent ready).",
            value=sync.completed_handshakes if sync else 0,
        )
        rejected = CounterMetricFamily(
            "feedsvc_sync_requests_rejected",
            "Sync requests answered with an error, by reason.",
            labels=["reason"],
        )
        if sync is not None:
            for reason, count in sync.rejected_by_reason.items():
                rejected.add_metric([reason], count)
        yield rejected

    def _collect_recovery(self) -> Iterator[Metric]:
        service = self._service
        recovery = service.recovery
        yield CounterMetricFamily(
            "feedsvc_recovery_requests",
            "Gap recovery requests received (answered with ticks or an error).",
            value=recovery.requests if recovery else 0,
        )
        served = CounterMetricFamily(
            "feedsvc_recovery_ticks_served",
            "Ticks sent in recovery replies, by source (memory: the recovery window).",
            labels=["source"],
        )
        if recovery is not None:
            for source, count in recovery.served_by_source.items():
                served.add_metric([source], count)
        yield served
        yield CounterMetricFamily(
            "feedsvc_recovery_bytes_served",
            "Bytes of ticks sent in recovery replies.",
            value=recovery.served_bytes if recovery else 0,
        )
        rejected = CounterMetricFamily(
            "feedsvc_recovery_requests_rejected",
            "Recovery requests answered with an error, by reason (docs/recovery-protocol.md).",
            labels=["reason"],
        )
        if recovery is not None:
            for reason, count in recovery.rejected_by_reason.items():
                rejected.add_metric([reason], count)
        yield rejected
        window = recovery.window if recovery is not None else None
        yield GaugeMetricFamily(
            "feedsvc_recovery_window_bytes",
            "Bytes of frames the recovery window holds (bounded by recovery.max_bytes).",
            value=window.held_bytes if window else 0,
        )
        yield GaugeMetricFamily(
            "feedsvc_recovery_window_age_seconds",
            "About how old the oldest frame held is (recovery.window_s at most, unless "
            "recovery.max_bytes trims sooner).",
            value=window.oldest_mark_age_s(time.monotonic()) if window else 0,
        )
        yield GaugeMetricFamily(
            "feedsvc_recovery_inflight_bytes",
            "Recovery reply bytes libzmq still holds for clients (bounded by "
            "recovery.max_inflight_bytes).",
            value=service.recovery_inflight_bytes,
        )

    def _collect_mirror(self) -> Iterator[Metric]:
        mirror = self._service.mirror
        stats = mirror.stats if mirror is not None else None
        for name, help_text, attribute in (
            ("feedsvc_mirror_produced", "Ticks accepted by the Kafka producer.", "produced"),
            (
                "feedsvc_mirror_delivered",
                "Ticks committed to Kafka in transactions (visible to read_committed readers).",
                "delivered",
            ),
            ("feedsvc_mirror_failed", "Ticks Kafka reported as failed.", "failed"),
            (
                "feedsvc_mirror_dropped",
                "Ticks dropped before Kafka: kafka.max_retained_bytes was reached.",
                "dropped",
            ),
            (
                "feedsvc_mirror_restarts",
                "Times the mirror process died and was restarted.",
                "restarts",
            ),
        ):
            yield CounterMetricFamily(
                name, help_text, value=getattr(stats, attribute) if stats else 0
            )
        backlog = mirror.backlog if mirror is not None else 0
        yield GaugeMetricFamily(
            "feedsvc_mirror_queue_ticks",
            "Ticks published but not yet committed to Kafka (hand-off + producer queue).",
            value=backlog,
        )
        yield GaugeMetricFamily(
            "feedsvc_mirror_retained_bytes",
            "Bytes of hand-off batches kept until the mirror commits them (for a restart).",
            value=stats.retained_bytes if stats else 0,
        )
        yield GaugeMetricFamily(
            "feedsvc_mirror_lag_seconds",
            "Estimated seconds the Kafka mirror is behind: queue / recent publish rate.",
            value=self._service.mirror_lag_seconds(),
        )
        yield GaugeMetricFamily(
            "feedsvc_mirror_connected",
            "1 while the mirror process runs and Kafka answers it, else 0.",
            value=1 if mirror is not None and mirror.problem() is None else 0,
        )


class HttpServerCollector:
    """Reads the HTTP server's own counters at scrape time (in its loop thread)."""

    def __init__(self, server: BoundedHttpServer) -> None:
        self._server = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        rejected = CounterMetricFamily(
            "feedsvc_http_requests_rejected",
            "Connections to /metrics and /healthz closed without a normal response, by reason.",
            labels=["reason"],
        )
        for reason in REJECT_REASONS:
            rejected.add_metric([reason], self._server.rejected_by_reason[reason])
        yield rejected
        yield GaugeMetricFamily(
            "feedsvc_http_connections",
            "Connections open to /metrics and /healthz now.",
            value=self._server.connections_open,
        )


class MetricsServer:
    """/metrics (Prometheus text format) and /healthz (JSON) on one port, in a daemon thread.

    The keyword arguments bound what HTTP clients can hold (see BoundedHttpServer).
    """

    def __init__(
        self,
        service: ServiceCounters,
        port: int,
        host: str = "127.0.0.1",
        *,
        max_connections: int = 32,
        request_timeout_s: float = 5.0,
        write_timeout_s: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(ServiceCollector(service))
        self.handshake_seconds = Histogram(
            "feedsvc_sync_handshake_seconds",
            "Time to answer one sync request (snapshot and marker).",
            buckets=HANDSHAKE_BUCKETS,
            registry=self.registry,
        )
        self.publish_latency_seconds = Histogram(
            "feedsvc_publish_latency_seconds",
            "Ingest to send, per batch: from taking a batch in to sending its last tick.",
            buckets=PUBLISH_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._health = service.health
        self._http = BoundedHttpServer(
            host,
            port,
            self._respond,
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            write_timeout_s=write_timeout_s,
            thread_name="feedsvc-metrics",
        )
        self.registry.register(HttpServerCollector(self._http))

    @property
    def port(self) -> int:
        return self._http.port

    def start(self) -> None:
        self._http.start()

    def close(self) -> None:
        self._http.close()

    def _respond(self, path: str) -> Response:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            healthy, body = self._health()
            return 200 if healthy else 503, "application/json", orjson.dumps(body)
        return 404, "text/plain", b"try /metrics or /healthz\n"
