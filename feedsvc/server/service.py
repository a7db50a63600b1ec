"""Wires the parts together: sockets, the ingest sources, the hot-path loop, start and stop.

All sending happens on the thread that calls `Service.run()`: a ZeroMQ socket is not thread-safe,
and keeping the synthetic feed, the ingest socket and heartbeats on one loop avoids any hand-off
on the hot path.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Final

import zmq
import zmq.backend

from feedsvc.config import Config, IngestConfig, SyntheticConfig
from feedsvc.curve import CurveServer
from feedsvc.logs import RateLimiter
from feedsvc.protocol.recovery import MAX_REQUEST_BYTES
from feedsvc.server.access import (
    PeerAuthenticator,
    parse_networks,
    zap_domain,
)
from feedsvc.server.connections import PeerAccounting, log_refused_connections
from feedsvc.server.guard import (
    InputGuard,
    answer_recovery_request,
    answer_sync_request,
    handle_ingest_frame,
)
from feedsvc.server.inflight import RepliesInFlight
from feedsvc.server.ingest import IngestDecoder
from feedsvc.server.mirror import MirrorHandoff
from feedsvc.server.mirror.wire import for_shard
from feedsvc.server.observe.health import health_document, unhealthy_reason
from feedsvc.server.observe.metrics import MetricsServer
from feedsvc.server.pacing import BurstSchedule, RatePacer
from feedsvc.server.publisher import Publisher
from feedsvc.server.recovery.handler import RecoveryHandler, RecoveryReply
from feedsvc.server.recovery.reader import ArchiveReader
from feedsvc.server.recovery.window import RecoveryWindow
from feedsvc.server.sockets import (
    HANDSHAKE_TIMEOUT_MS,
    HARD_LIMIT_FACTOR,
    MONITORED_EVENTS,
    PUBLISHER_MAX_MESSAGE_BYTES,
    PUBLISHER_MAX_MESSAGE_BYTES_CURVE,
    RECOVERY_QUEUED_PER_PEER,
    SYNC_QUEUED_PER_PEER,
    bind_endpoint,
    plain_endpoints_first,
)
from feedsvc.server.sync import SyncHandler
from feedsvc.server.synthetic import SyntheticFeed

log = logging.getLogger("feedsvc.service")

# What ingest and sync may take of one loop pass, so that heartbeats and the synthetic feed keep
# their pace whatever arrives: a budget of time and of bytes (whichever runs out first), checked
# after each frame or request, and a sync request's cost is bounded by its size before any work.
INGEST_SECONDS_PER_PASS: Final = 0.005
INGEST_BYTES_PER_PASS: Final = 4 * 1024 * 1024
SYNC_SECONDS_PER_PASS: Final = 0.002
SYNC_BYTES_PER_PASS: Final = 8 * 1024 * 1024
SYNC_REQUESTS_PER_PASS: Final = 100
# Frames drained from the ingest socket at shutdown, at most (already-queued ticks are published).
INGEST_BYTES_AT_SHUTDOWN: Final = 256 * 1024 * 1024
INGEST_SECONDS_AT_SHUTDOWN: Final = 2.0
INGEST_QUIET_AT_SHUTDOWN_MS: Final = 50
# Longest sleep of the loop, so a stop request is noticed promptly.
MAX_WAIT_S: Final = 0.1
STATS_INTERVAL_S: Final = 10.0
MIRROR_STATS_INTERVAL_S: Final = 0.5
# Descriptors are counted this often; a warning goes out past this share of the limit.
HOUSEKEEPING_INTERVAL_S: Final = 1.0
FD_WARNING_SHARE: Final = 0.8
FD_WARNING_INTERVAL_S: Final = 10.0
# A reply takes about 0.25 ms of the loop whatever its size (the window's chunks are sent as
# they are): a pass serves one or two, so no tick waits behind recovery longer than that.
RECOVERY_SECONDS_PER_PASS: Final = 0.0002
RECOVERY_BYTES_PER_PASS: Final = 1024 * 1024
RECOVERY_REQUESTS_PER_PASS: Final = 100


class StartupError(RuntimeError):
    """The service cannot start (an endpoint cannot be bound). str() names the key."""


def ingest_rcvhwm(ingest: IngestConfig) -> int:
    """ZMQ_RCVHWM of the ingest socket: frames queued per feed handler, so that at most
    ingest.max_queued_bytes of frames of up to ingest.max_message_bytes wait (ingest.rcvhwm 0:
    only that bound)."""
    by_bytes = max(1, ingest.max_queued_bytes // ingest.max_message_bytes)
    return min(ingest.rcvhwm, by_bytes) if ingest.rcvhwm else by_bytes


def _synthetic_pacer(synthetic: SyntheticConfig, now: float) -> RatePacer:
    """The synthetic feed's pacer, following the burst schedule when synthetic.burst_rate is set."""
    bursts = None
    if synthetic.burst_rate:
        bursts = BurstSchedule(
            synthetic.burst_rate, synthetic.burst_every_s, synthetic.burst_duration_s
        )
        log.info(
            "synthetic bursts: %g ticks/s for %g s every %g s",
            synthetic.burst_rate,
            synthetic.burst_duration_s,
            synthetic.burst_every_s,
        )
    return RatePacer(synthetic.rate, now, bursts=bursts, unix_offset_s=time.time() - now)


class Service:
    """The publisher service: owns its ZeroMQ context, sockets and counters.

    Parameters
    ----------
    config:
        The validated configuration.
    epoch:
        This run's epoch; defaults to the start time in ns since the Unix epoch, which is new
        on every start and grows from one start to the next.
    """

    def __init__(self, config: Config, epoch: int | None = None, wait_subscribers: int = 0) -> None:
        self.config = config
        self.epoch = epoch if epoch is not None else time.time_ns()
        self.wait_subscribers = wait_subscribers
        self.ingested_by_source = {"synthetic": 0, "ingest": 0}
        self.heartbeats_sent = 0
        self.guard = InputGuard()
        self.peers = PeerAccounting(config, self.guard)
        self.last_publish_unix_s = 0.0
        self.metrics: MetricsServer | None = None
        # Updated every loop pass; /healthz reports 503 when it stops moving.
        self._loop_alive_at: float | None = None
        self._recent_publish_rate = 0.0
        self._stop_requested = False
        # When the stop was asked for, and when the mirror had finished flushing (the summary's
        # mirror.flush_s).
        self._stop_requested_at: float | None = None
        self._mirror_closed_at: float | None = None
        self._reload_keys_requested = False
        self._context = zmq.Context(io_threads=config.publisher.io_threads)
        self.authenticator: PeerAuthenticator | None = None
        self._curve: CurveServer | None = None
        self._pub: zmq.Socket | None = None
        self._pull: zmq.Socket | None = None
        self._rep: zmq.Socket | None = None
        # Monitor socket -> the name of the socket it watches.
        self._monitors: dict[zmq.Socket, str] = {}
        self._router: zmq.Socket | None = None
        # Replies libzmq still holds for clients that have not read them; their sums are bounded.
        self._sync_in_flight = RepliesInFlight(config.sync.max_inflight_bytes)
        self._recovery_in_flight = RepliesInFlight(config.recovery.max_inflight_bytes)
        self.sync: SyncHandler | None = None
        self.recovery: RecoveryHandler | None = None
        self.archive: ArchiveReader | None = None
        self.decoder = IngestDecoder(config.ingest.max_message_bytes)
        self.publisher: Publisher | None = None
        self.mirror: MirrorHandoff | None = None

    def start(self) -> None:
        """Create and bind every socket; raises StartupError naming the endpoint that failed."""
        config = self.config
        publisher_config, ingest_config, sync_config = config.publisher, config.ingest, config.sync
        self.peers.raise_fd_limit()
        try:
            self._start_authenticator()
            pub = self._pub = self._context.socket(zmq.XPUB)
            pub.setsockopt(zmq.SNDHWM, publisher_config.sndhwm)
            if publisher_config.sndbuf:
                pub.setsockopt(zmq.SNDBUF, publisher_config.sndbuf)
            pub.setsockopt(zmq.LINGER, publisher_config.linger_ms)
            # Every subscription and unsubscription comes up, so each connection's count is
            # kept (libzmq still applies them itself).
            pub.setsockopt(zmq.XPUB_VERBOSER, 1)
            pub.setsockopt(
                zmq.MAXMSGSIZE,
                PUBLISHER_MAX_MESSAGE_BYTES_CURVE
                if config.curve.enabled
                else PUBLISHER_MAX_MESSAGE_BYTES,
            )
            self._prepare(pub, "publisher")
            for index, endpoint in plain_endpoints_first(publisher_config.endpoints):
                self._bind(pub, "publisher", f"publisher.endpoints[{index}]", endpoint)
            if ingest_config.endpoint:
                pull = self._pull = self._context.socket(zmq.PULL)
                # ZMQ_RCVHWM counts frames: derived from the byte bound, so that frames of up to
                # max_message_bytes queue at most max_queued_bytes per feed handler.
                pull.setsockopt(zmq.RCVHWM, ingest_rcvhwm(ingest_config))
                pull.setsockopt(zmq.MAXMSGSIZE, ingest_config.max_message_bytes * HARD_LIMIT_FACTOR)
                pull.setsockopt(zmq.LINGER, 0)
                self._prepare(pull, "ingest")
                self._bind(pull, "ingest", "ingest.endpoint", ingest_config.endpoint)
            if sync_config.endpoint:
                rep = self._rep = self._context.socket(zmq.REP)
                rep.setsockopt(zmq.MAXMSGSIZE, sync_config.max_request_bytes * HARD_LIMIT_FACTOR)
                # Requests wait in the peer's connection beyond this (no loss: TCP pushes back).
                # Not SNDHWM: a reply over it is dropped without a word, and libzmq sees a
                # reader's progress late, so a small one drops replies to a client that reads.
                rep.setsockopt(zmq.RCVHWM, SYNC_QUEUED_PER_PEER)
                rep.setsockopt(zmq.LINGER, 0)
                self._prepare(rep, "sync")
                self._bind(rep, "sync", "sync.endpoint", sync_config.endpoint)
            recovery_config = config.recovery
            if recovery_config.endpoint:
                router = self._router = self._context.socket(zmq.ROUTER)
                router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES * HARD_LIMIT_FACTOR)
                router.setsockopt(zmq.RCVHWM, RECOVERY_QUEUED_PER_PEER)
                # Replies queued per peer; beyond, libzmq drops them (the client retries on its
                # timeout). Their bytes in all are bounded by recovery.max_inflight_bytes.
                router.setsockopt(zmq.SNDHWM, RECOVERY_QUEUED_PER_PEER)
                router.setsockopt(zmq.LINGER, 0)
                self._prepare(router, "recovery")
                self._bind(router, "recovery", "recovery.endpoint", recovery_config.endpoint)
        except StartupError:
            self.close()
            raise
        window = None
        if config.recovery.endpoint:
            window = RecoveryWindow(
                config.recovery.window_s,
                config.recovery.max_bytes,
                lambda: self.publisher.published_bytes if self.publisher is not None else 0,
            )
        if config.kafka.enabled:
            self.mirror = MirrorHandoff(
                self._context,
                for_shard(config.kafka, config.publisher.shard),
                config.log,
                self.epoch,
            )
            self.mirror.start()
        self.publisher = Publisher(
            # The backend's send skips the Python-level checks of zmq.Socket.send (for Frames,
            # routing ids, groups): measured ~0.5 us less per tick for plain bytes.
            zmq.backend.Socket.send.__get__(pub),
            self.epoch,
            publisher_config.max_symbols,
            mirror_append=self.mirror.append if self.mirror is not None else None,
            max_tick_bytes=ingest_config.max_tick_bytes,
            max_cache_bytes=publisher_config.max_cache_bytes,
            window=window,
            shard=publisher_config.shard,
        )
        publisher = self.publisher
        if window is not None:
            if config.kafka.enabled:
                self.archive = ArchiveReader(self._context, config.kafka, config.log)
                self.archive.start()
            archive = self.archive
            self.recovery = RecoveryHandler(
                window,
                self.epoch,
                config.recovery,
                self._recovery_in_flight.room,
                archive_available=(lambda: archive.available) if archive is not None else None,
            )
        self.sync = SyncHandler(
            publisher.last_values,
            self.epoch,
            sync_config.max_symbols_per_request,
            sync_config.max_request_bytes,
            sync_config.max_snapshot_bytes,
            snapshot_room=self._sync_in_flight.room,
            all_symbols_bytes=lambda: (publisher.symbol_count, publisher.cache_bytes),
            shard=publisher_config.shard,
        )
        if config.metrics.port:
            try:
                self.metrics = MetricsServer(self, config.metrics.port, config.metrics.host)
            except OSError as error:
                self.close()
                raise StartupError(
                    f"metrics.port: cannot listen on {config.metrics.host}:"
                    f"{config.metrics.port}: {error.strerror or error}"
                ) from None
            self.metrics.start()
        self.peers.count_fds()
        log.info(
            "serving epoch=%d publisher=%s ingest=%s sync=%s recovery=%s kafka=%s synthetic=%s",
            self.epoch,
            ",".join(publisher_config.endpoints),
            ingest_config.endpoint or "off",
            sync_config.endpoint or "off",
            config.recovery.endpoint or "off",
            f"{config.kafka.bootstrap}/{config.kafka.topic}" if config.kafka.enabled else "off",
            f"{config.synthetic.symbols} symbols at {config.synthetic.rate or 'max'} ticks/s"
            if config.synthetic.enabled
            else "off",
        )

    def _start_authenticator(self) -> None:
        """Start the ZAP handler when Curve or an allowed_networks list needs it."""
        config = self.config
        networks_by_domain = {
            zap_domain(name): parse_networks(networks)
            for name, networks in (
                ("publisher", config.publisher.allowed_networks),
                ("ingest", config.ingest.allowed_networks),
                ("sync", config.sync.allowed_networks),
                ("recovery", config.recovery.allowed_networks),
            )
        }
        if not config.curve.enabled and not any(networks_by_domain.values()):
            return
        self.authenticator = PeerAuthenticator(self._context, networks_by_domain)
        self.authenticator.start()
        if config.curve.enabled:
            try:
                self._curve = CurveServer(
                    self.authenticator,
                    config.curve.server_secret,
                    config.curve.authorized_keys,
                    tuple(networks_by_domain),
                )
            except ValueError as error:
                # config validated both files; this is one changed since (the path says which)
                raise StartupError(f"curve: {error}") from None

    def _prepare(self, socket: zmq.Socket, socket_name: str) -> None:
        """Options every bound socket gets, and its monitor."""
        socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS)
        self._monitors[socket.get_monitor_socket(MONITORED_EVENTS)] = socket_name

    def _bind(self, socket: zmq.Socket, socket_name: str, key: str, endpoint: str) -> None:
        """Bind with Curve on tcp when curve.enabled, ipc files with ipc.mode; StartupError
        names the key."""
        try:
            bind_endpoint(
                socket,
                socket_name,
                endpoint,
                ipc_mode=self.config.ipc.mode,
                curve=self._curve,
                uses_zap=self.authenticator is not None,
            )
        except (zmq.ZMQError, OSError) as error:
            raise StartupError(f"{key}: cannot bind {endpoint}: {error}") from None

    @property
    def subscribers_connected(self) -> int:
        return self.peers.connections["publisher"].connected

    def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, body) for /healthz: healthy while the loop runs and the PUB socket is open
        (the rule is feedsvc.server.observe.health's)."""
        reason = unhealthy_reason(
            pub_open=self._pub is not None,
            stopping=self._stop_requested,
            loop_alive_at=self._loop_alive_at,
            now=time.monotonic(),
        )
        mirror = self.mirror
        mirror_problem = mirror.problem() if mirror is not None else None
        body = health_document(
            reason=reason,
            epoch=self.epoch,
            endpoints=list(self.config.publisher.endpoints) if self._pub is not None else [],
            mirror_enabled=mirror is not None,
            mirror_connected=mirror is not None and mirror_problem is None,
            mirror_problem=mirror_problem,
            mirror_restarts=mirror.stats.restarts if mirror is not None else 0,
            last_publish_unix_s=self.last_publish_unix_s,
            fds_open=self.peers.open_fds,
            fd_limit=self.peers.fd_limit,
            connections=self.peers.connected_by_socket,
        )
        return reason is None, body

    def mirror_lag_seconds(self) -> float:
        """Seconds of ticks the Kafka mirror is behind, at the recent publish rate."""
        if self.mirror is None:
            return 0.0
        return self.mirror.backlog / max(self._recent_publish_rate, 1.0)

    def request_stop(self) -> None:
        """Ask `run()` to finish; safe from a signal handler or another thread."""
        if not self._stop_requested:
            self._stop_requested_at = time.monotonic()
        self._stop_requested = True

    def request_key_reload(self) -> None:
        """Ask `run()` to re-read curve.authorized_keys (SIGHUP); safe from a signal handler."""
        self._reload_keys_requested = True

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        """Ingest ticks refused, by reason: by the decoder, and by the publisher's bounds."""
        rejected = dict(self.decoder.rejected_by_reason)
        if self.publisher is not None:
            for reason, count in self.publisher.refused_by_reason.items():
                rejected[reason] += count
        return rejected

    def run(self) -> None:
        """The hot-path loop: synthetic ticks, ingest frames, sync requests and heartbeats."""
        if self.publisher is None:
            raise RuntimeError("Service.start() must be called before run()")
        publisher, config = self.publisher, self.config
        monotonic = time.monotonic
        synthetic = config.synthetic
        feed = (
            SyntheticFeed(synthetic.symbols, synthetic.seed, synthetic.prefix)
            if synthetic.enabled
            else None
        )
        pacer: RatePacer | None = None
        poller = zmq.Poller()
        archive_replies = self.archive.replies if self.archive is not None else None
        for socket in (self._pub, self._rep, self._router, archive_replies, *self._monitors):
            if socket is not None:
                poller.register(socket, zmq.POLLIN)
        # With --wait-subscribers, ticks (synthetic and ingest) wait until that many clients
        # completed the sync handshake; heartbeats and sync requests are served meanwhile.
        released = self.wait_subscribers <= 0
        if not released:
            log.info("waiting for %d subscribers to sync before publishing", self.wait_subscribers)
        heartbeat_interval = config.publisher.heartbeat_interval_s
        next_heartbeat = monotonic()
        reject_limiter = RateLimiter(config.ingest.reject_log_interval_s, monotonic)
        rejected_logged = 0
        handshake_limiter = RateLimiter(config.curve.reject_log_interval_s, monotonic)
        peers = self.peers
        handshakes_logged = peers.refusal_counts(self.authenticator)
        stats_limiter = RateLimiter(STATS_INTERVAL_S, monotonic)
        stats_limiter.allow()
        housekeeping_limiter = RateLimiter(HOUSEKEEPING_INTERVAL_S, monotonic)
        fd_warning_limiter = RateLimiter(FD_WARNING_INTERVAL_S, monotonic)
        published_at_last_stats, last_stats_at = 0, monotonic()
        mirror = self.mirror
        # The side path's work is due by age, by count or for its stats: a pass that finds
        # none of them due costs two comparisons (the loop runs thousands of passes a second).
        mirror_pending = mirror.pending_frames if mirror is not None else []
        mirror_batch_ticks = mirror.batch_ticks if mirror is not None else 0
        mirror_due_at = mirror_stats_at = monotonic()
        window = self.recovery.window if self.recovery is not None else None

        metrics = self.metrics
        perf_counter = time.perf_counter
        published_at_last_rate, last_rate_at = 0, monotonic()

        while not self._stop_requested:
            now = monotonic()
            self._loop_alive_at = now
            if not released and self.sync.completed_handshakes >= self.wait_subscribers:
                released = True
                log.info("%d subscribers synced; publishing", self.sync.completed_handshakes)
            if released and pacer is None and feed is not None:
                pacer = _synthetic_pacer(synthetic, now)
            if released and self._pull is not None and self._pull not in poller:
                poller.register(self._pull, zmq.POLLIN)
            if pacer is not None:
                due = pacer.due(now)
                if due:
                    batch_started = perf_counter()
                    self.ingested_by_source["synthetic"] += publisher.publish(feed.generate(due))
                    if metrics is not None:
                        metrics.publish_latency_seconds.observe(perf_counter() - batch_started)
                    self.last_publish_unix_s = time.time()
            if now >= next_heartbeat:
                publisher.send_heartbeat(heartbeat_interval)
                self.heartbeats_sent += 1
                next_heartbeat = now + heartbeat_interval
            wait_s = min(next_heartbeat - now, MAX_WAIT_S)
            if pacer is not None:
                wait_s = min(wait_s, pacer.seconds_until_next(now))
            if mirror is not None:
                if now >= mirror_due_at or len(mirror_pending) >= mirror_batch_ticks:
                    mirror.flush_if_due(now)
                    if now >= mirror_stats_at:
                        mirror.receive_stats()
                        self._recent_publish_rate = (
                            publisher.published - published_at_last_rate
                        ) / max(now - last_rate_at, 1e-3)
                        published_at_last_rate, last_rate_at = publisher.published, now
                        mirror_stats_at = now + MIRROR_STATS_INTERVAL_S
                    mirror_due_at = min(mirror.flush_due_at, mirror_stats_at)
                wait_s = min(wait_s, mirror_due_at - now)
            ready = dict(poller.poll(math.ceil(wait_s * 1000) if wait_s > 0 else 0))
            # Connections first: a connection over a cap is closed before it is served.
            peers_changed = False
            for monitor, socket_name in self._monitors.items():
                if monitor in ready:
                    peers.read_monitor(monitor, socket_name)
                    peers_changed = True
            if self._pub in ready:
                peers.read_subscriptions(self._pub)
                peers_changed = True
            ingest_read = self._pull is not None and self._pull in ready
            if ingest_read:
                self._drain_ingest(INGEST_SECONDS_PER_PASS, INGEST_BYTES_PER_PASS)
            if self._rep is not None and self._rep in ready:
                self._serve_sync_requests()
            if self._router is not None and self._router in ready:
                self._serve_recovery_requests()
            if self.archive is not None and self.archive.replies in ready:
                self._answer_from_archive()
            if window is not None and now >= window.trim_due_at:
                window.trim(now)
            if self._reload_keys_requested:
                self._reload_keys_requested = False
                self._reload_authorized_keys()
            housekeeping = housekeeping_limiter.allow()
            if housekeeping:
                self._sync_in_flight.forget_sent()
                self._recovery_in_flight.forget_sent()
                if self.archive is not None:
                    self._answer_from_archive(expired_only=True)
                peers.trim_heap_after_disconnects(now)
                peers.count_fds()
                if (
                    peers.open_fds > FD_WARNING_SHARE * peers.fd_limit
                    and fd_warning_limiter.allow()
                ):
                    log.warning(
                        "%d of %d file descriptors in use; new connections will fail at the "
                        "limit (connections: %s)",
                        peers.open_fds,
                        peers.fd_limit,
                        peers.connected_by_socket,
                    )
            # The counters are compared only in passes that may have changed them (and once a
            # second for what other threads count): a quiet pass costs nothing here.
            if peers_changed or housekeeping:
                refusals = peers.refusal_counts(self.authenticator)
                if refusals != handshakes_logged and handshake_limiter.allow():
                    log_refused_connections(handshakes_logged, refusals, self._curve is not None)
                    handshakes_logged = refusals
            if ingest_read or housekeeping:
                rejected_total = sum(self.decoder.rejected_by_reason.values()) + sum(
                    publisher.refused_by_reason.values()
                )
                if rejected_total != rejected_logged and reject_limiter.allow():
                    log.warning(
                        "rejected %d ingest ticks since last report; totals by reason: %s",
                        rejected_total - rejected_logged,
                        {reason: n for reason, n in self.rejected_by_reason.items() if n},
                    )
                    rejected_logged = rejected_total
            if stats_limiter.allow():
                now = monotonic()
                rate = (publisher.published - published_at_last_stats) / (now - last_stats_at)
                log.info(
                    "published %d ticks (%.0f/s), %d symbols, %d subscribers, "
                    "%d sync snapshots, ingested %s",
                    publisher.published,
                    rate,
                    publisher.symbol_count,
                    self.subscribers_connected,
                    self.sync.snapshots_served,
                    self.ingested_by_source,
                )
                published_at_last_stats, last_stats_at = publisher.published, now
        self._shutdown()

    def _serve_sync_requests(self) -> None:
        """Answer queued sync requests, within this pass's budget; each marker goes out on PUB
        right after its snapshot, before any later tick, which is what makes the handshake exact.
        """
        rep, sync, guard, send_frame = self._rep, self.sync, self.guard, self.publisher.send_control
        perf_counter = time.perf_counter
        deadline = perf_counter() + SYNC_SECONDS_PER_PASS
        budget_bytes = SYNC_BYTES_PER_PASS
        for _ in range(SYNC_REQUESTS_PER_PASS):
            try:
                request = rep.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            started = perf_counter()
            # Reading ZMQ_EVENTS makes the PUB socket apply subscriptions that have arrived
            # (otherwise it does so lazily, about once per ms of sends), so the marker is not
            # filtered out by a subscription the client made just before asking.
            self._pub.getsockopt(zmq.EVENTS)
            reply, marker_frame = answer_sync_request(request, sync, guard)
            # A REP socket must answer before it can read the next request.
            self._send_sync_reply(reply)
            if marker_frame is not None:
                send_frame(marker_frame)
            finished = perf_counter()
            elapsed = finished - started
            if self.metrics is not None:
                self.metrics.handshake_seconds.observe(elapsed)
            budget_bytes -= len(request) + len(reply)
            if finished > deadline or budget_bytes <= 0:
                return

    def _serve_recovery_requests(self) -> None:
        """Answer queued recovery requests within this pass's budget (time, bytes, count)."""
        router, recovery, guard = self._router, self.recovery, self.guard
        perf_counter = time.perf_counter
        deadline = perf_counter() + RECOVERY_SECONDS_PER_PASS
        budget_bytes = RECOVERY_BYTES_PER_PASS
        for _ in range(RECOVERY_REQUESTS_PER_PASS):
            try:
                message = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # [peer, request] from a DEALER, [peer, b"", request] from a REQ; anything else is
            # answered as a bad request when it has a peer, never taken apart further.
            route, request = message[:-1], message[-1]
            if len(route) > 2 or (len(route) == 2 and route[1]):
                route, request = message[:1], b""
            reply = answer_recovery_request(route[0], request, recovery, guard)
            if reply.forward is not None:
                # Not in memory: the recovery reader asks Kafka, the loop sends its answer.
                note = (route[0], reply.forward, reply.fallback)
                if self.archive is not None and self.archive.submit(
                    route, reply.forward, note, time.monotonic()
                ):
                    continue
                reply = recovery.archive_answer(route[0], reply.forward, [], reply.fallback)
            self._send_recovery_reply(route, reply)
            budget_bytes -= len(request) + reply.size
            if perf_counter() > deadline or budget_bytes <= 0:
                return

    def _send_recovery_reply(self, route: list[bytes], reply: RecoveryReply) -> None:
        router = self._router
        pieces = reply.pieces
        if pieces is None:
            router.send_multipart([*route, reply.header])
            return
        router.send_multipart([*route, reply.header], zmq.SNDMORE)
        # Chunks of the window go out as they are (zero-copy above pyzmq's copy threshold);
        # the last frame's tracker says when the whole reply has left.
        for piece in pieces[:-1]:
            router.send(piece, zmq.SNDMORE, copy=False)
        tracker = router.send(pieces[-1], copy=False, track=True)
        self._recovery_in_flight.add(tracker, reply.size)

    def _answer_from_archive(self, expired_only: bool = False) -> None:
        """Send the recovery reader's answers (and, for requests it did not answer in time,
        their errors from memory) to the clients."""
        archive, recovery = self.archive, self.recovery
        answers = [] if expired_only else list(archive.take_replies())
        answers += [(route, note, []) for route, note in archive.expire(time.monotonic())]
        for route, (client, request, fallback), parts in answers:
            self._send_recovery_reply(
                route, recovery.archive_answer(client, request, parts, fallback)
            )

    def _send_sync_reply(self, reply: bytes) -> None:
        # libzmq holds a reply until it is written to the peer's connection (or the peer is
        # gone): the tracker says when, so replies to clients that do not read are bounded in
        # total (sync.max_inflight_bytes) rather than per peer by a queue length.
        self._sync_in_flight.add(self._rep.send(reply, copy=False, track=True), len(reply))

    @property
    def sync_inflight_bytes(self) -> int:
        return self._sync_in_flight.bytes

    @property
    def recovery_inflight_bytes(self) -> int:
        return self._recovery_in_flight.bytes

    def _reload_authorized_keys(self) -> None:
        if self._curve is None:
            log.info("SIGHUP: curve is off, no keys to reload")
            return
        try:
            count = self._curve.reload()
        except ValueError as error:
            log.error("SIGHUP: curve.authorized_keys not reloaded, the old list stays: %s", error)
            return
        log.info("reloaded curve.authorized_keys: %d public keys", count)

    def _drain_ingest(self, budget_s: float, budget_bytes: int) -> None:
        """Publish queued ingest frames until the socket is empty or the budget is spent."""
        pull, publisher, decoder, guard = self._pull, self.publisher, self.decoder, self.guard
        mirror, monotonic = self.mirror, time.monotonic
        # Per frame only the count is checked; the age is the loop's (this pass is bounded).
        mirror_pending = mirror.pending_frames if mirror is not None else []
        mirror_batch_ticks = mirror.batch_ticks if mirror is not None else 0
        metrics, perf_counter = self.metrics, time.perf_counter
        recv = pull.recv
        sent = 0
        deadline = perf_counter() + budget_s
        while budget_bytes > 0:
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            budget_bytes -= len(frame)
            batch_started = perf_counter()
            sent_now = handle_ingest_frame(frame, decoder, publisher, guard)
            finished = perf_counter()
            if sent_now:
                sent += sent_now
                if metrics is not None:
                    metrics.publish_latency_seconds.observe(finished - batch_started)
                if mirror is not None and len(mirror_pending) >= mirror_batch_ticks:
                    mirror.flush(monotonic())
            if finished > deadline:
                break
        self.ingested_by_source["ingest"] += sent
        if sent:
            self.last_publish_unix_s = time.time()

    def _shutdown(self) -> None:
        # Stop ingest but publish what had already arrived, then let the PUB socket linger.
        if self._pull is not None:
            self._drain_ingest_at_shutdown()
        if self.mirror is not None:
            self._close_mirror()
        self.close()
        log.info(
            "stopped: published %d ticks, ingested %s, rejected %s",
            self.publisher.published if self.publisher else 0,
            self.ingested_by_source,
            {reason: n for reason, n in self.rejected_by_reason.items() if n},
        )

    def _drain_ingest_at_shutdown(self) -> None:
        """Publish the frames feed handlers had sent: those queued in the socket and those still
        on their way from the kernel's buffers (ingest.max_queued_bytes keeps the queue short),
        until none arrives for INGEST_QUIET_AT_SHUTDOWN_S or the time is up."""
        deadline = time.monotonic() + INGEST_SECONDS_AT_SHUTDOWN
        while time.monotonic() < deadline and self._pull.poll(INGEST_QUIET_AT_SHUTDOWN_MS):
            self._drain_ingest(deadline - time.monotonic(), INGEST_BYTES_AT_SHUTDOWN)

    def summary(self) -> dict[str, object]:
        """What this run did, as data (`feedsvc serve --summary-file`): read it instead of the
        log, whose wording is for people."""
        publisher, sync, recovery = self.publisher, self.sync, self.recovery
        stats = self.mirror.stats if self.mirror is not None else None
        mirror: dict[str, object] = {"enabled": stats is not None}
        if stats is not None:
            mirror.update(
                handed_off=stats.handed_off,
                produced=stats.produced,
                delivered=stats.delivered,
                failed=stats.failed,
                dropped=stats.dropped,
                unacknowledged=stats.queued,
                undelivered=stats.undelivered,
                restarts=stats.restarts,
                retained=stats.retained_ticks,
                # Stop request to the end of the final hand-off and Kafka flush.
                flush_s=None
                if self._mirror_closed_at is None or self._stop_requested_at is None
                else round(self._mirror_closed_at - self._stop_requested_at, 3),
            )
        return {
            "epoch": self.epoch,
            "published": publisher.published if publisher else 0,
            "published_bytes": publisher.published_bytes if publisher else 0,
            "heartbeats_sent": self.heartbeats_sent,
            "ingested_by_source": dict(self.ingested_by_source),
            "rejected_by_reason": self.rejected_by_reason,
            "sync": {
                "snapshots_served": sync.snapshots_served if sync else 0,
                "handshakes_completed": sync.completed_handshakes if sync else 0,
                "rejected_by_reason": dict(sync.rejected_by_reason) if sync else {},
            },
            "recovery": {
                "requests": recovery.requests if recovery else 0,
                "ticks_served": recovery.served_ticks if recovery else 0,
                "rejected_by_reason": dict(recovery.rejected_by_reason) if recovery else {},
            },
            "connections_refused": self.peers.refusal_counts(self.authenticator),
            "internal_errors": dict(self.guard.errors_by_where),
            "mirror": mirror,
        }

    def _close_mirror(self) -> None:
        publisher = self.publisher
        # Every symbol's last seq of the epoch goes into its close record: a reader then finds
        # any tick that never reached Kafka, the tail included.
        last_values = publisher.last_values(None) if publisher else {}
        last_seq = {symbol: seq for symbol, (seq, _payload) in last_values.items() if seq > 0}
        stats = self.mirror.close(self.config.kafka.flush_timeout_s, last_seq)
        self._mirror_closed_at = time.monotonic()
        published = publisher.published if publisher else 0
        summary = (
            f"mirror: {stats.delivered} of {published} published ticks acknowledged by Kafka "
            "(committed)"
        )
        if stats.undelivered:
            log.error(
                "%s; %d NOT delivered (%d dropped at the retained bound, %d not committed at "
                "the flush timeout; %d mirror restarts)",
                summary,
                stats.undelivered,
                stats.dropped,
                stats.undelivered - stats.dropped,
                stats.restarts,
            )
        else:
            log.info("%s; all delivered (%d mirror restarts)", summary, stats.restarts)

    def close(self) -> None:
        """Close the sockets (the PUB socket waits up to publisher.linger_ms) and the context."""
        if self.mirror is not None:
            self.mirror.close(timeout_s=0.0)  # no-op after the shutdown's own close
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        if self._rep is not None:
            self._rep.close(linger=0)
            self._rep = None
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        if self.archive is not None:
            self.archive.close()
            self.archive = None
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        self._curve = None
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
        if not self._context.closed:
            self._context.term()
