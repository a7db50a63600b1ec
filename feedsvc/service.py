"""Wires the parts together: sockets, the ingest sources, the hot-path loop, start and stop.

All sending happens on the thread that calls `Service.run()`: a ZeroMQ socket is not thread-safe,
and keeping the synthetic feed, the ingest socket and heartbeats on one loop avoids any hand-off
on the hot path.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.backend
from zmq.utils.monitor import recv_monitor_message

from feedsvc.config import Config, SyntheticConfig
from feedsvc.curve import CurveServer, is_tcp
from feedsvc.ingest import BurstSchedule, IngestDecoder, RatePacer, SyntheticFeed
from feedsvc.logs import RateLimiter
from feedsvc.metrics import LOOP_STALL_S, MetricsServer, health_body
from feedsvc.mirror import MirrorHandoff
from feedsvc.publisher import Publisher
from feedsvc.sync import SyncHandler

log = logging.getLogger("feedsvc.service")

# Ingest frames handled per loop pass, so the synthetic feed and heartbeats keep their pace.
INGEST_FRAMES_PER_PASS = 1_000
# Frames drained from the ingest socket at shutdown, at most (already-queued ticks are published).
INGEST_FRAMES_AT_SHUTDOWN = 100_000
# Longest sleep of the loop, so a stop request is noticed promptly.
MAX_WAIT_S = 0.1
STATS_INTERVAL_S = 10.0
MIRROR_STATS_INTERVAL_S = 0.5
# Sync requests answered per loop pass at most, so a flood of them cannot starve the feed.
SYNC_REQUESTS_PER_PASS = 100
# Requests above this many times sync.max_request_bytes disconnect the peer (ZMQ_MAXMSGSIZE).
SYNC_HARD_LIMIT_FACTOR = 4
_MONITORED_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# Label values of rejected handshakes: a key not on curve.authorized_keys (ZAP said no); no
# Curve, the wrong server key or not ZMTP at all; anything libzmq does not detail (a peer that
# sees the mismatch too and hangs up first lands here: which side notices first is a race).
HANDSHAKE_REJECT_REASONS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "other",
}
# The sockets whose handshakes are watched, as named in logs and metric labels.
SOCKET_NAMES = ("publisher", "ingest", "sync")
# Above this size a peer is disconnected by libzmq instead of being read and counted.
INGEST_HARD_LIMIT_FACTOR = 4


class StartupError(RuntimeError):
    """The service cannot start (an endpoint cannot be bound). str() names the key."""


def _folder_mode(file_mode: int) -> int:
    # A folder needs the search bit wherever its files may be read.
    return file_mode | (file_mode & 0o444) >> 2


def _bind_ipc(socket: zmq.Socket, endpoint: str, mode: int, bind: Callable[[], None]) -> None:
    """Bind an ipc endpoint so that its socket file has `mode` from the start.

    The umask is set around the bind (libzmq creates the file during the call, in this thread)
    rather than a chmod after it, which would leave a moment open to anyone. An abstract
    socket (ipc://@name) has no file: it is open to every process on the host.
    """
    path = endpoint.removeprefix("ipc://")
    previous_umask = os.umask(0o777 & ~_folder_mode(mode))
    try:
        if not path.startswith("@"):
            # libzmq does not create the folder of an ipc path.
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.umask(0o777 & ~mode)
        bind()
    finally:
        os.umask(previous_umask)


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
        # From the PUB socket's monitor: connections (subscribers) now, handshake failures so far.
        self.subscribers_connected = 0
        self.subscriber_handshake_failures = 0
        # Failed handshakes on every socket, by (socket name, reason): Curve rejections show here.
        self.rejected_handshakes = {
            (name, reason): 0
            for name in SOCKET_NAMES
            for reason in HANDSHAKE_REJECT_REASONS.values()
        }
        self.sync_seconds_total = 0.0
        self.last_publish_unix_s = 0.0
        self.metrics: MetricsServer | None = None
        # Updated every loop pass; /healthz reports 503 when it stops moving.
        self._loop_alive_at: float | None = None
        self._recent_publish_rate = 0.0
        self._stop_requested = False
        self._reload_keys_requested = False
        self._context = zmq.Context(io_threads=config.publisher.io_threads)
        self._curve: CurveServer | None = None
        self._pub: zmq.Socket | None = None
        self._pull: zmq.Socket | None = None
        self._rep: zmq.Socket | None = None
        # Monitor socket -> the name of the socket it watches.
        self._monitors: dict[zmq.Socket, str] = {}
        self.sync: SyncHandler | None = None
        self.decoder = IngestDecoder(config.ingest.max_message_bytes)
        self.publisher: Publisher | None = None
        self.mirror: MirrorHandoff | None = None

    def start(self) -> None:
        """Create and bind every socket; raises StartupError naming the endpoint that failed."""
        publisher_config, ingest_config = self.config.publisher, self.config.ingest
        curve_config = self.config.curve
        try:
            if curve_config.enabled:
                try:
                    self._curve = CurveServer(
                        self._context, curve_config.server_secret, curve_config.authorized_keys
                    )
                except ValueError as error:
                    # config validated both files; this is one changed since (the path says which)
                    raise StartupError(f"curve: {error}") from None
            pub = self._pub = self._context.socket(zmq.PUB)
            pub.setsockopt(zmq.SNDHWM, publisher_config.sndhwm)
            if publisher_config.sndbuf:
                pub.setsockopt(zmq.SNDBUF, publisher_config.sndbuf)
            pub.setsockopt(zmq.LINGER, publisher_config.linger_ms)
            self._monitors[pub.get_monitor_socket(_MONITORED_EVENTS)] = "publisher"
            # Plain (ipc) endpoints first: Curve options set for a tcp bind would stay set.
            for index, endpoint in sorted(
                enumerate(publisher_config.endpoints), key=lambda item: is_tcp(item[1])
            ):
                self._bind(pub, f"publisher.endpoints[{index}]", endpoint)
            if ingest_config.endpoint:
                pull = self._pull = self._context.socket(zmq.PULL)
                pull.setsockopt(zmq.RCVHWM, ingest_config.rcvhwm)
                pull.setsockopt(
                    zmq.MAXMSGSIZE, ingest_config.max_message_bytes * INGEST_HARD_LIMIT_FACTOR
                )
                pull.setsockopt(zmq.LINGER, 0)
                self._monitors[pull.get_monitor_socket(_HANDSHAKE_FAILURES)] = "ingest"
                self._bind(pull, "ingest.endpoint", ingest_config.endpoint)
            sync_config = self.config.sync
            if sync_config.endpoint:
                rep = self._rep = self._context.socket(zmq.REP)
                rep.setsockopt(
                    zmq.MAXMSGSIZE, sync_config.max_request_bytes * SYNC_HARD_LIMIT_FACTOR
                )
                rep.setsockopt(zmq.LINGER, 0)
                self._monitors[rep.get_monitor_socket(_HANDSHAKE_FAILURES)] = "sync"
                self._bind(rep, "sync.endpoint", sync_config.endpoint)
        except StartupError:
            self.close()
            raise
        if self.config.kafka.enabled:
            self.mirror = MirrorHandoff(self._context, self.config.kafka, self.config.log)
            self.mirror.start()
        self.publisher = Publisher(
            # The backend's send skips the Python-level checks of zmq.Socket.send (for Frames,
            # routing ids, groups): measured ~0.5 us less per tick for plain bytes.
            zmq.backend.Socket.send.__get__(pub),
            self.epoch,
            publisher_config.max_symbols,
            mirror_append=self.mirror.append if self.mirror is not None else None,
        )
        self.sync = SyncHandler(
            self.publisher.last_values,
            self.epoch,
            self.config.sync.max_symbols_per_request,
            self.config.sync.max_request_bytes,
            self.config.sync.max_snapshot_bytes,
        )
        if self.config.metrics.port:
            try:
                self.metrics = MetricsServer(
                    self, self.config.metrics.port, self.config.metrics.host
                )
            except OSError as error:
                self.close()
                raise StartupError(
                    f"metrics.port: cannot listen on {self.config.metrics.host}:"
                    f"{self.config.metrics.port}: {error.strerror or error}"
                ) from None
            self.metrics.start()
        log.info(
            "serving epoch=%d publisher=%s ingest=%s sync=%s kafka=%s synthetic=%s",
            self.epoch,
            ",".join(publisher_config.endpoints),
            ingest_config.endpoint or "off",
            self.config.sync.endpoint or "off",
            f"{self.config.kafka.bootstrap}/{self.config.kafka.topic}"
            if self.config.kafka.enabled
            else "off",
            f"{self.config.synthetic.symbols} symbols at "
            f"{self.config.synthetic.rate or 'max'} ticks/s"
            if self.config.synthetic.enabled
            else "off",
        )

    def _bind(self, socket: zmq.Socket, key: str, endpoint: str) -> None:
        """Bind with Curve on tcp when curve.enabled, ipc files with ipc.mode; StartupError
        names the key."""
        curve = self._curve

        def bind() -> None:
            if curve is not None:
                curve.bind(socket, endpoint)
            else:
                socket.bind(endpoint)

        try:
            if endpoint.startswith("ipc://"):
                _bind_ipc(socket, endpoint, self.config.ipc.mode, bind)
            else:
                bind()
        except (zmq.ZMQError, OSError) as error:
            raise StartupError(f"{key}: cannot bind {endpoint}: {error}") from None

    def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, body) for /healthz: healthy while the loop runs and the PUB socket is open."""
        reason = None
        alive_at = self._loop_alive_at
        if self._pub is None:
            reason = "the PUB socket is closed"
        elif self._stop_requested:
            reason = "stopping"
        elif alive_at is None:
            reason = "not publishing yet"
        elif time.monotonic() - alive_at > LOOP_STALL_S:
            reason = f"the publishing loop has not run for over {LOOP_STALL_S:.0f} s"
        mirror_stats = self.mirror.stats if self.mirror is not None else None
        body = health_body(
            healthy=reason is None,
            reason=reason,
            epoch=self.epoch,
            endpoints=list(self.config.publisher.endpoints) if self._pub is not None else [],
            mirror_enabled=self.mirror is not None,
            mirror_connected=bool(mirror_stats and mirror_stats.broker_up),
            last_publish_unix_s=self.last_publish_unix_s,
        )
        return reason is None, body

    def mirror_lag_seconds(self) -> float:
        """Seconds of ticks the Kafka mirror is behind, at the recent publish rate."""
        if self.mirror is None:
            return 0.0
        return self.mirror.backlog / max(self._recent_publish_rate, 1.0)

    def request_stop(self) -> None:
        """Ask `run()` to finish; safe from a signal handler or another thread."""
        self._stop_requested = True

    def request_key_reload(self) -> None:
        """Ask `run()` to re-read curve.authorized_keys (SIGHUP); safe from a signal handler."""
        self._reload_keys_requested = True

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        refused = self.publisher.refused_new_symbols if self.publisher else 0
        return {**self.decoder.rejected_by_reason, "too_many_symbols": refused}

    def run(self) -> None:
        """The hot-path loop: synthetic ticks, ingest frames, sync requests and heartbeats."""
        if self.publisher is None:
            raise RuntimeError("Service.start() must be called before run()")
        publisher, config = self.publisher, self.config
        monotonic = time.monotonic
        synthetic = config.synthetic
        feed = SyntheticFeed(synthetic.symbols, synthetic.seed) if synthetic.enabled else None
        pacer: RatePacer | None = None
        poller = zmq.Poller()
        for socket in (self._rep, *self._monitors):
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
        handshakes_logged = dict(self.rejected_handshakes)
        stats_limiter = RateLimiter(STATS_INTERVAL_S, monotonic)
        stats_limiter.allow()
        published_at_last_stats, last_stats_at = 0, monotonic()
        mirror = self.mirror
        mirror_stats_limiter = RateLimiter(MIRROR_STATS_INTERVAL_S, monotonic)

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
                mirror.flush_if_due(now)
                wait_s = min(wait_s, mirror.seconds_until_flush(now))
                if mirror_stats_limiter.allow():
                    mirror.receive_stats()
                    self._recent_publish_rate = (publisher.published - published_at_last_rate) / (
                        max(now - last_rate_at, 1e-3)
                    )
                    published_at_last_rate, last_rate_at = publisher.published, now
            ready = dict(poller.poll(math.ceil(wait_s * 1000) if wait_s > 0 else 0))
            if self._pull is not None and self._pull in ready:
                self._drain_ingest(INGEST_FRAMES_PER_PASS)
            if self._rep is not None and self._rep in ready:
                self._serve_sync_requests()
            for monitor, socket_name in self._monitors.items():
                if monitor in ready:
                    self._read_monitor(monitor, socket_name)
            if self.rejected_handshakes != handshakes_logged and handshake_limiter.allow():
                self._log_rejected_handshakes(handshakes_logged)
                handshakes_logged = dict(self.rejected_handshakes)
            if self._reload_keys_requested:
                self._reload_keys_requested = False
                self._reload_authorized_keys()
            rejected_total = self.decoder.rejected_total
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
        """Answer queued sync requests; each marker goes out on PUB right after its snapshot,
        before any later tick, which is what makes the handshake exact."""
        rep, handle, send_frame = self._rep, self.sync.handle, self.publisher.send_control
        for _ in range(SYNC_REQUESTS_PER_PASS):
            try:
                request = rep.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            started = time.perf_counter()
            # Reading ZMQ_EVENTS makes the PUB socket apply subscriptions that have arrived
            # (otherwise it does so lazily, about once per ms of sends), so the marker is not
            # filtered out by a subscription the client made just before asking.
            self._pub.getsockopt(zmq.EVENTS)
            reply, marker_frame = handle(request)
            rep.send(reply)
            if marker_frame is not None:
                send_frame(marker_frame)
            elapsed = time.perf_counter() - started
            self.sync_seconds_total += elapsed
            if self.metrics is not None:
                self.metrics.handshake_seconds.observe(elapsed)

    def _read_monitor(self, monitor: zmq.Socket, socket_name: str) -> None:
        is_publisher = socket_name == "publisher"
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event & _HANDSHAKE_FAILURES:
                self.rejected_handshakes[socket_name, HANDSHAKE_REJECT_REASONS[event]] += 1
                if is_publisher:
                    self.subscriber_handshake_failures += 1
            elif not is_publisher:
                continue
            elif event == zmq.EVENT_ACCEPTED:
                self.subscribers_connected += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.subscribers_connected = max(0, self.subscribers_connected - 1)

    def _log_rejected_handshakes(self, logged_before: dict[tuple[str, str], int]) -> None:
        since = {
            f"{name}/{reason}": count - logged_before[name, reason]
            for (name, reason), count in self.rejected_handshakes.items()
            if count != logged_before[name, reason]
        }
        hint = (
            " (auth: key not in curve.authorized_keys; protocol: no Curve, wrong server key or "
            "not ZeroMQ; other: the peer hung up mid-handshake, often for those same reasons)"
            if self._curve is not None
            else ""
        )
        log.warning(
            "rejected %d connection handshakes since last report, by socket/reason: %s%s",
            sum(since.values()),
            since,
            hint,
        )

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

    def _drain_ingest(self, max_frames: int) -> None:
        pull, publisher, decode = self._pull, self.publisher, self.decoder.decode
        mirror, monotonic = self.mirror, time.monotonic
        metrics, perf_counter = self.metrics, time.perf_counter
        recv = pull.recv
        sent = 0
        for _ in range(max_frames):
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            batch_started = perf_counter()
            ticks = decode(frame)
            if ticks:
                sent += publisher.publish(ticks)
                if metrics is not None:
                    metrics.publish_latency_seconds.observe(perf_counter() - batch_started)
                if mirror is not None:
                    mirror.flush_if_due(monotonic())
        self.ingested_by_source["ingest"] += sent
        if sent:
            self.last_publish_unix_s = time.time()

    def _shutdown(self) -> None:
        # Stop ingest but publish what had already arrived, then let the PUB socket linger.
        if self._pull is not None:
            self._drain_ingest(INGEST_FRAMES_AT_SHUTDOWN)
        if self.mirror is not None:
            self._close_mirror()
        self.close()
        log.info(
            "stopped: published %d ticks, ingested %s, rejected %s",
            self.publisher.published if self.publisher else 0,
            self.ingested_by_source,
            {reason: n for reason, n in self.rejected_by_reason.items() if n},
        )

    def _close_mirror(self) -> None:
        stats = self.mirror.close(self.config.kafka.flush_timeout_s)
        published = self.publisher.published if self.publisher else 0
        summary = f"mirror: {stats.delivered} of {published} published ticks acknowledged by Kafka"
        if stats.undelivered:
            log.error(
                "%s; %d NOT delivered (%d dropped at the hand-off, %d failed, %d unacknowledged "
                "at the flush timeout)",
                summary,
                stats.undelivered,
                stats.dropped,
                stats.failed,
                stats.queued,
            )
        else:
            log.info("%s; all delivered", summary)

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
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        if self._curve is not None:
            self._curve.close()
            self._curve = None
        if not self._context.closed:
            self._context.term()
