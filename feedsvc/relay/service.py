"""The relay process's main thread: starts the tick path and the request forwarders, watches
the upstreams' heartbeats and its own clients, serves /metrics and /healthz, stops on request.

Nothing here runs per tick: the ticks are the proxy thread's (forwarder.py).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import zmq
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from feedsvc.config import Config, ConfigError, RelayConfig
from feedsvc.curve import CurveClientKeys, CurveServer, load_key_pair, load_public_key
from feedsvc.curve import connect as curve_connect
from feedsvc.protocol.ticks import HEARTBEAT_TOPIC, TOPIC_DELIMITER
from feedsvc.relay.forwarder import ProxyStatistics, TickForwarder, set_zmtp_heartbeats
from feedsvc.relay.requests import (
    EPOCH_NOT_KNOWN_YET,
    KIND_RECOVERY,
    KIND_SYNC,
    RequestForwarder,
)
from feedsvc.server.access import PeerAuthenticator, zap_domain
from feedsvc.server.observe.http import BoundedHttpServer, Response
from feedsvc.server.observe.metrics import HttpServerCollector
from feedsvc.server.sockets import bind_endpoint

log = logging.getLogger("feedsvc.relay")

POLL_MS: Final = 100
STATISTICS_INTERVAL_S: Final = 1.0
SERVING_LINE: Final = "relay serving"
# The relay's sockets share one ZAP domain: Curve's allow-list is the same for all of them.
ZAP_SOCKET_NAME: Final = "relay"
_HEARTBEAT_PREFIX: Final = HEARTBEAT_TOPIC.encode() + TOPIC_DELIMITER
# Ended epochs remembered per upstream (a recovery for one gets unknown_epoch at once).
ENDED_EPOCHS_KEPT: Final = 16


class StartupError(RuntimeError):
    """The relay cannot start (an endpoint cannot be bound ...): one line for the user."""


@dataclass
class UpstreamState:
    """What the relay knows of one upstream publisher, from its heartbeats."""

    publisher: str
    heartbeat_at: float | None = None
    epoch: int | None = None
    # The shard name its heartbeats carry (publisher.shard; "" unnamed), None before the first.
    shard: str | None = None
    heartbeats: int = 0
    # Its last few epochs before this one (restarts): requests for them cannot be answered.
    ended_epochs: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=ENDED_EPOCHS_KEPT)
    )


class Relay:
    """`feedsvc relay`: construct, `start()`, `run()` until `request_stop()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.relay = config.relay
        self._context = zmq.Context(io_threads=config.relay.io_threads)
        self._stop_requested = False
        self._started_at = time.monotonic()
        self.upstreams = [UpstreamState(upstream["publisher"]) for upstream in self.relay.upstreams]
        self._watchers: list[zmq.Socket] = []
        self.forwarder: TickForwarder | None = None
        self.requests: list[RequestForwarder] = []
        self.statistics = ProxyStatistics()
        self.subscribers_connected = 0
        self.http: BoundedHttpServer | None = None
        self._upstream_keys: CurveClientKeys | None = None
        self._authenticator: PeerAuthenticator | None = None
        self._curve: CurveServer | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._registry)
        self._registry.register(_RelayCollector(self))

    def start(self) -> None:
        """Bind and connect everything; raises StartupError with one line."""
        relay = self.relay
        self._upstream_keys = upstream_keys(relay)
        if self.config.curve.enabled:
            self._start_curve_server()
        try:
            self.forwarder = TickForwarder(
                self._context, relay, self._bind, self._connect, curve=self._curve is not None
            )
            for kind, endpoint, upstream_key in (
                (KIND_SYNC, relay.sync_endpoint, "sync"),
                (KIND_RECOVERY, relay.recovery_endpoint, "recovery"),
            ):
                if endpoint:
                    self.requests.append(
                        RequestForwarder(
                            self._context,
                            kind,
                            lambda socket, endpoint=endpoint: self._bind(socket, endpoint),
                            [upstream.get(upstream_key, "") for upstream in relay.upstreams],
                            self._connect,
                            relay.request_timeout_s,
                            relay.max_pending_requests,
                            upstream_for_epoch=self.upstream_for_epoch,
                        )
                    )
        except (zmq.ZMQError, OSError) as error:
            self._close_sockets()
            raise StartupError(f"cannot bind the relay's endpoints: {error}") from None
        for upstream in self.upstreams:
            watcher = self._context.socket(zmq.SUB)
            watcher.setsockopt(zmq.LINGER, 0)
            watcher.setsockopt(zmq.SUBSCRIBE, _HEARTBEAT_PREFIX)
            set_zmtp_heartbeats(watcher)
            self._connect(watcher, upstream.publisher)
            self._watchers.append(watcher)
        if relay.metrics_port:
            try:
                self.http = BoundedHttpServer(
                    relay.metrics_host, relay.metrics_port, self._respond, thread_name="relay-http"
                )
            except OSError as error:
                self._close_sockets()
                raise StartupError(
                    f"relay.metrics_port: cannot listen on {relay.metrics_port}: {error.strerror}"
                ) from None
            # The HTTP server's own refusals (slow, oversized, garbage requests), as serve's.
            self._registry.register(HttpServerCollector(self.http))
            self.http.start()
        self.forwarder.start()
        log.info(
            "%s on %s from %s (metrics port %s)",
            SERVING_LINE,
            ", ".join(relay.endpoints),
            ", ".join(upstream.publisher for upstream in self.upstreams),
            self.http.port if self.http is not None else "off",
        )

    def _start_curve_server(self) -> None:
        """Curve on the relay's own tcp endpoints (the curve section), as `serve` does."""
        domain = zap_domain(ZAP_SOCKET_NAME)
        self._authenticator = PeerAuthenticator(self._context, {domain: ()})
        self._authenticator.start()
        curve = self.config.curve
        try:
            self._curve = CurveServer(
                self._authenticator, curve.server_secret, curve.authorized_keys, (domain,)
            )
        except ValueError as error:
            raise StartupError(f"curve: {error}") from None

    def _bind(self, socket: zmq.Socket, endpoint: str) -> None:
        bind_endpoint(
            socket,
            ZAP_SOCKET_NAME,
            endpoint,
            ipc_mode=self.config.ipc.mode,
            curve=self._curve,
            uses_zap=self._authenticator is not None,
        )

    def _connect(self, socket: zmq.Socket, endpoint: str) -> None:
        curve_connect(socket, endpoint, self._upstream_keys)

    def request_stop(self) -> None:
        self._stop_requested = True

    def run(self) -> bool:
        """Forward until `request_stop()`; False if the proxy stopped by itself (a failure the
        process must report by its exit code)."""
        forwarder = self.forwarder
        assert forwarder is not None, "start() first"
        poller = zmq.Poller()
        poller.register(forwarder.backend_monitor, zmq.POLLIN)
        for watcher in self._watchers:
            poller.register(watcher, zmq.POLLIN)
        for requests in self.requests:
            for socket in requests.sockets():
                poller.register(socket, zmq.POLLIN)
        statistics_at = time.monotonic()
        try:
            while not self._stop_requested:
                ready = dict(poller.poll(POLL_MS))
                if forwarder.backend_monitor in ready:
                    self._read_monitor(forwarder.backend_monitor)
                for upstream, watcher in zip(self.upstreams, self._watchers, strict=True):
                    if watcher in ready:
                        _read_heartbeats(upstream, watcher)
                for requests in self.requests:
                    requests.serve(ready)
                    requests.expire()
                now = time.monotonic()
                if now >= statistics_at:
                    statistics_at = now + STATISTICS_INTERVAL_S
                    self.statistics = forwarder.statistics() or self.statistics
                    if not forwarder.alive():
                        log.error("the relay's proxy stopped (%s); exiting", forwarder.error)
                        return False
            return True
        finally:
            self.close()

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        self._close_sockets()
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        self._context.term()
        log.info("relay stopped")

    def _close_sockets(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        for requests in self.requests:
            requests.close()
        self.requests = []
        for watcher in self._watchers:
            watcher.close(linger=0)
        self._watchers = []

    def _read_monitor(self, monitor: zmq.Socket) -> None:
        for _ in range(1_000):
            try:
                event = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = int.from_bytes(event[0][:2], "little")
            if kind == zmq.EVENT_ACCEPTED:
                self.subscribers_connected += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                self.subscribers_connected = max(0, self.subscribers_connected - 1)

    def upstream_for_epoch(self, epoch: int) -> int | None:
        """The upstream (index) whose heartbeats carry `epoch`; None if it is one an upstream
        has ended (restarted since), else EPOCH_NOT_KNOWN_YET: a restarted upstream's new epoch
        can reach a client before its next heartbeat reaches the relay."""
        for index, upstream in enumerate(self.upstreams):
            if upstream.epoch == epoch:
                return index
        if any(epoch in upstream.ended_epochs for upstream in self.upstreams):
            return None
        return EPOCH_NOT_KNOWN_YET

    def heartbeat_age_s(self, upstream: UpstreamState, now: float) -> float | None:
        return None if upstream.heartbeat_at is None else now - upstream.heartbeat_at

    def upstream_up(self, upstream: UpstreamState, now: float) -> bool:
        age = self.heartbeat_age_s(upstream, now)
        return age is not None and age <= self.relay.upstream_timeout_s

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, /healthz document). No upstream heartbeat is "degraded" with 200: the
        relay itself is fine and restarting it would not help."""
        now = time.monotonic()
        forwarder = self.forwarder
        down = [
            upstream.publisher for upstream in self.upstreams if not self.upstream_up(upstream, now)
        ]
        shared = _shared_shard_names(self.upstreams)
        if forwarder is None or not forwarder.alive():
            status, reason, code = "unavailable", "the relay's proxy is not running", 503
        elif shared:
            # Clients would take one shard's epoch for the other's restart, back and forth.
            status, code = "degraded", 200
            reason = "upstreams share a shard name (publisher.shard must differ): " + ", ".join(
                repr(name) for name in shared
            )
        elif down:
            status, code = "degraded", 200
            reason = f"no heartbeat for over {self.relay.upstream_timeout_s:g} s from " + ", ".join(
                down
            )
        else:
            status, reason, code = "ok", None, 200
        upstreams = [
            {
                "publisher": upstream.publisher,
                "up": self.upstream_up(upstream, now),
                "heartbeat_age_s": _rounded(self.heartbeat_age_s(upstream, now)),
                "epoch": upstream.epoch,
                "shard": upstream.shard,
            }
            for upstream in self.upstreams
        ]
        document = {
            "status": status,
            "reason": reason,
            "endpoints": self.relay.endpoints,
            "upstreams": upstreams,
            "subscribers_connected": self.subscribers_connected,
        }
        return code, document

    def _respond(self, path: str) -> Response:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            code, document = self.health()
            return code, "application/json", orjson.dumps(document)
        return 404, "text/plain", b"try /metrics or /healthz\n"


def upstream_keys(relay: RelayConfig) -> CurveClientKeys | None:
    """The Curve keys for tcp upstreams, or None without them.

    Raises
    ------
    ConfigError
        naming the key whose file is unusable.
    """
    if not relay.upstream_server_key:
        return None
    try:
        server_public = load_public_key(relay.upstream_server_key)
    except ValueError as error:
        raise ConfigError("relay.upstream_server_key", str(error)) from None
    try:
        client_public, client_secret = load_key_pair(relay.upstream_client_cert)
    except ValueError as error:
        raise ConfigError("relay.upstream_client_cert", str(error)) from None
    return CurveClientKeys(server_public, client_public, client_secret)


def _shared_shard_names(upstreams: list[UpstreamState]) -> list[str]:
    """Shard names more than one upstream's heartbeats carry."""
    names = [upstream.shard for upstream in upstreams if upstream.shard is not None]
    return sorted({name for name in names if names.count(name) > 1})


def _read_heartbeats(upstream: UpstreamState, watcher: zmq.Socket) -> None:
    for _ in range(100):
        try:
            frame = watcher.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        upstream.heartbeat_at = time.monotonic()
        upstream.heartbeats += 1
        try:
            fields = orjson.loads(frame[len(_HEARTBEAT_PREFIX) :])
        except orjson.JSONDecodeError:
            continue
        if not isinstance(fields, dict):
            continue
        epoch, shard = fields.get("epoch"), fields.get("shard", "")
        if type(epoch) is int and epoch != upstream.epoch:
            if upstream.epoch is not None:
                upstream.ended_epochs.append(upstream.epoch)
            upstream.epoch = epoch
        if isinstance(shard, str):
            upstream.shard = shard[:64]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class _RelayCollector:
    """The relay's metrics, read at scrape time."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        relay, now = self._relay, time.monotonic()
        statistics = relay.statistics
        messages = CounterMetricFamily(
            "feedsvc_relay_messages",
            "Messages through the relay's proxy: in from the upstreams, out to its PUB socket "
            "(once per message, before the PUB's fan-out to clients).",
            labels=["direction"],
        )
        messages.add_metric(["in"], statistics.messages_in)
        messages.add_metric(["out"], statistics.messages_out)
        yield messages
        sizes = CounterMetricFamily(
            "feedsvc_relay_bytes", "Bytes through the relay's proxy.", labels=["direction"]
        )
        sizes.add_metric(["in"], statistics.bytes_in)
        sizes.add_metric(["out"], statistics.bytes_out)
        yield sizes
        yield GaugeMetricFamily(
            "feedsvc_relay_subscribers_connected",
            "Client connections to the relay's PUB endpoints now.",
            value=relay.subscribers_connected,
        )
        up = GaugeMetricFamily(
            "feedsvc_relay_upstream_up",
            "1 while the upstream's heartbeats arrive (within relay.upstream_timeout_s).",
            labels=["upstream"],
        )
        age = GaugeMetricFamily(
            "feedsvc_relay_upstream_heartbeat_age_seconds",
            "Seconds since the upstream's last heartbeat (absent before the first).",
            labels=["upstream"],
        )
        for upstream in relay.upstreams:
            up.add_metric([upstream.publisher], 1.0 if relay.upstream_up(upstream, now) else 0.0)
            heartbeat_age = relay.heartbeat_age_s(upstream, now)
            if heartbeat_age is not None:
                age.add_metric([upstream.publisher], heartbeat_age)
        yield up
        yield age
        requests = CounterMetricFamily(
            "feedsvc_relay_requests",
            "Sync and recovery requests through the relay, by outcome.",
            labels=["kind", "outcome"],
        )
        pending = GaugeMetricFamily(
            "feedsvc_relay_requests_pending",
            "Requests forwarded upstream and not answered yet.",
            labels=["kind"],
        )
        for forwarder in relay.requests:
            for outcome, count in forwarder.outcomes.items():
                requests.add_metric([forwarder.kind, outcome], count)
            pending.add_metric([forwarder.kind], forwarder.pending)
        yield requests
        yield pending
