"""One typed configuration object: defaults, config.yaml, --set overrides, validation.

Every key has its default here; config.yaml at the project root documents the same keys and a unit
test keeps the two equal. A wrong value raises ConfigError naming the key, which the CLI turns into
one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

import yaml

from feedsvc.protocol.ticks import SHARD_PATTERN, symbol_problem
from feedsvc.secret_refs import secret_problem

ENDPOINT_SCHEMES = ("ipc://", "tcp://")
# kafka.producer settings that say how to reach and log in to the cluster, as opposed to
# producer tuning: the mirror's topic admin client and `feedsvc replay --config` use these.
KAFKA_CONNECTION_PREFIXES: Final = ("security.", "sasl.", "ssl.", "enable.ssl.")


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading 2e4 as a number (YAML 1.2 does; PyYAML's 1.1 does not),
    with mapping keys kept as written: a key is a name, and an error must name it the way the
    user wrote it (``0E0``, not the number 0.0 it would resolve to)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # merge keys (<<) first, as the safe loader does
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = key_node.value
            else:
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "found an unhashable key",
                        key_node.start_mark,
                    ) from None
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class ConfigError(ValueError):
    """A configuration value is wrong. str() is one line that names the key."""

    def __init__(self, key: str, problem: str) -> None:
        # Keys and values come from the user: a line break in either must not split the line.
        key = _escape_line_breaks(key)
        super().__init__(f"{key}: {_escape_line_breaks(problem)}")
        self.key = key


def _escape_line_breaks(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


# Longest rendering of a wrong value in a message: a value can be megabytes (YAML aliases).
_SHOWN_CHARACTERS = 80


def _shown(value: object) -> str:
    """repr(value), cut to _SHOWN_CHARACTERS (and safe for integers of any size)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"  # type: ignore[attr-defined]
    return text if len(text) <= _SHOWN_CHARACTERS else text[: _SHOWN_CHARACTERS - 3] + "..."


def _check_endpoint(value: str) -> str | None:
    if not value.startswith(ENDPOINT_SCHEMES):
        return f"endpoint {_shown(value)} must start with ipc:// or tcp://"
    if value in ENDPOINT_SCHEMES:
        return f"endpoint {_shown(value)} has no address"
    return None


def _check_endpoints(values: list[str]) -> str | None:
    if not values:
        return "must list at least one endpoint"
    if len(set(values)) != len(values):
        return "lists an endpoint twice"
    return next((problem for value in values if (problem := _check_endpoint(value))), None)


def _check_networks(values: list[str]) -> str | None:
    for index, value in enumerate(values):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return (
                f"item {index}: {_shown(value)} is not a network (e.g. 10.1.0.0/16, 127.0.0.1 "
                "or ::1/128)"
            )
    return None


def _check_shard(value: str) -> str | None:
    if SHARD_PATTERN.fullmatch(value) is None:
        return f"{_shown(value)} must be 0 to 64 characters of [0-9A-Za-z_.-]"
    return None


def _check_symbol_prefix(value: str) -> str | None:
    problem = symbol_problem(value)
    if problem is not None or len(value) > 16:
        return f"{_shown(value)} must be 1 to 16 characters a symbol may start with"
    return None


def _check_log_level(value: str) -> str | None:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    return None if value.upper() in levels else f"must be one of {', '.join(levels)}"


def _setting(
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A config field with its default and constraints (kept in the field's metadata)."""
    metadata = {"minimum": minimum, "maximum": maximum, "check": check}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class PublisherConfig:
    # One PUB socket bound to all of these at once.
    endpoints: list[str] = _setting(
        ["ipc:///tmp/feedsvc/ticks", "tcp://127.0.0.1:5556"], check=_check_endpoints
    )
    # Messages queued per subscriber before the PUB socket drops that subscriber's ticks.
    sndhwm: int = _setting(10_000, minimum=0)
    # Kernel send buffer per tcp connection, bytes; 0 = OS default (autotuned, can hold seconds).
    sndbuf: int = _setting(262_144, minimum=0)
    io_threads: int = _setting(1, minimum=1, maximum=64)
    heartbeat_interval_s: float = _setting(1.0, minimum=0.01, maximum=3600)
    # How long close waits for queued messages to leave at shutdown.
    linger_ms: int = _setting(1_000, minimum=0, maximum=60_000)
    # Bounds the per-symbol state a stream of made-up symbols could otherwise grow.
    max_symbols: int = _setting(100_000, minimum=1)
    # Bytes the last-value cache may hold (each symbol reserves room for its largest frame); a
    # tick that needs more is refused (cache_full).
    max_cache_bytes: int = _setting(134_217_728, minimum=65_536)
    # Subscriber connections at once; more are closed as they arrive.
    max_connections: int = _setting(1_000, minimum=1, maximum=1_000_000)
    # Subscriptions one connection may hold, and all connections together; a connection that
    # goes beyond is closed. Each subscription is a prefix of at most the longest topic.
    max_subscriptions_per_connection: int = _setting(10_000, minimum=1)
    max_subscriptions: int = _setting(100_000, minimum=1)
    # Bytes of all distinct subscription prefixes together: bounds libzmq's subscription trie,
    # which every subscriber's disconnect walks in the publishing thread.
    max_subscription_bytes: int = _setting(1_048_576, minimum=1_024)
    # tcp peers accepted only from these networks (CIDR); [] = any address.
    allowed_networks: list[str] = _setting([], check=_check_networks)
    # This publisher's name among several behind one relay (its heartbeats and sync replies carry
    # it, so a client follows each shard's epoch); "" = the only publisher.
    shard: str = _setting("", check=_check_shard)


@dataclass(frozen=True)
class IngestConfig:
    # PULL socket for upstream feed handlers; empty string = no ingest socket.
    endpoint: str = _setting(
        "tcp://127.0.0.1:5557", check=lambda value: (value and _check_endpoint(value)) or None
    )
    max_message_bytes: int = _setting(1_048_576, minimum=64)
    # Frames queued per feed handler (ZMQ_RCVHWM), at most max_queued_bytes / max_message_bytes
    # (0 = only that bound).
    rcvhwm: int = _setting(100_000, minimum=0)
    # Bytes of frames queued per feed-handler connection before its sender blocks.
    max_queued_bytes: int = _setting(16_777_216, minimum=65_536)
    # A tick whose published frame would be longer is rejected (too_large).
    max_tick_bytes: int = _setting(16_384, minimum=256, maximum=1_048_576)
    # Feed-handler connections at once; more are closed as they arrive.
    max_connections: int = _setting(32, minimum=1, maximum=100_000)
    # tcp feed handlers accepted only from these networks (CIDR); [] = any address.
    allowed_networks: list[str] = _setting([], check=_check_networks)
    # A repeated rejection is logged at most once per interval, with the count since.
    reject_log_interval_s: float = _setting(5.0, minimum=0.0)


@dataclass(frozen=True)
class SyncConfig:
    # REP socket for the slow-joiner handshake (snapshot + marker); empty string = off.
    endpoint: str = _setting(
        "tcp://127.0.0.1:5558", check=lambda value: (value and _check_endpoint(value)) or None
    )
    # Bounds the work per request and the reply size.
    max_symbols_per_request: int = _setting(10_000, minimum=1, maximum=1_000_000)
    max_request_bytes: int = _setting(1_048_576, minimum=256)
    # A larger snapshot reply is refused (snapshot_too_large) instead of built: bounds its memory.
    max_snapshot_bytes: int = _setting(67_108_864, minimum=65_536)
    # Snapshot reply bytes on their way to clients at once (clients that do not read hold
    # them); a request beyond gets the retryable error busy.
    max_inflight_bytes: int = _setting(134_217_728, minimum=65_536)
    # Sync connections at once; more are closed as they arrive.
    max_connections: int = _setting(64, minimum=1, maximum=100_000)
    # tcp sync clients accepted only from these networks (CIDR); [] = any address.
    allowed_networks: list[str] = _setting([], check=_check_networks)


@dataclass(frozen=True)
class RecoveryConfig:
    # ROUTER socket answering gap recovery requests (docs/recovery-protocol.md); "" = off.
    endpoint: str = _setting(
        "tcp://127.0.0.1:5559", check=lambda value: (value and _check_endpoint(value)) or None
    )
    # Recent frames held per symbol for recovery: this long, at most this many bytes in all.
    window_s: float = _setting(60.0, minimum=0.1, maximum=86_400)
    max_bytes: int = _setting(268_435_456, minimum=65_536)
    # A request for more ticks gets range_too_large.
    max_ticks_per_request: int = _setting(10_000, minimum=1, maximum=1_000_000)
    # A reply holds at most this many bytes of ticks; the client asks for the rest. The window's
    # chunks go out as they are, so a reply costs the loop about 0.25 ms whatever its size.
    max_reply_bytes: int = _setting(1_048_576, minimum=4_096)
    # Per client (connection): requests and reply bytes per second; and bytes per second in all.
    client_requests_per_s: float = _setting(200.0, minimum=0.1)
    client_bytes_per_s: float = _setting(4_194_304.0, minimum=1_024.0)
    max_bytes_per_s: float = _setting(16_777_216.0, minimum=1_024.0)
    # Reply bytes on their way to clients at once (clients that do not read hold them); a
    # request beyond gets the retryable error busy.
    max_inflight_bytes: int = _setting(67_108_864, minimum=65_536)
    # Recovery connections at once; more are closed as they arrive.
    max_connections: int = _setting(64, minimum=1, maximum=100_000)
    # tcp recovery clients accepted only from these networks (CIDR); [] = any address.
    allowed_networks: list[str] = _setting([], check=_check_networks)


UPSTREAM_KEYS: Final = ("publisher", "sync", "recovery")


def _check_upstreams(values: list[dict[str, Any]]) -> str | None:
    if not values:
        return "must list at least one upstream ({publisher: EP, sync: EP, recovery: EP})"
    for index, upstream in enumerate(values):
        unknown = [key for key in upstream if key not in UPSTREAM_KEYS]
        if unknown:
            return f"item {index}: unknown key {unknown[0]!r} (known: {', '.join(UPSTREAM_KEYS)})"
        for key in UPSTREAM_KEYS:
            value = upstream.get(key, "")
            if not isinstance(value, str):
                return f"item {index}: {key} must be a string, got {_shown(value)}"
            if key == "publisher" and not value:
                return f"item {index}: publisher must name the upstream's PUB endpoint"
            if value and (problem := _check_endpoint(value)):
                return f"item {index}: {key}: {problem}"
    publishers = [upstream["publisher"] for upstream in values]
    if len(set(publishers)) != len(publishers):
        return "lists a publisher twice"
    return None


@dataclass(frozen=True)
class RelayConfig:
    """`feedsvc relay`: re-serves upstream publishers' streams, unchanged, on its own sockets."""

    # The publishers it forwards: {publisher: EP, sync: EP, recovery: EP} each; sync and
    # recovery may be "" (that upstream's requests are then answered with an error).
    upstreams: list[dict[str, Any]] = _setting(
        [
            {
                "publisher": "tcp://127.0.0.1:5556",
                "sync": "tcp://127.0.0.1:5558",
                "recovery": "tcp://127.0.0.1:5559",
            }
        ],
        check=_check_upstreams,
    )
    # The PUB side: one socket bound to all of these, like publisher.endpoints.
    endpoints: list[str] = _setting(
        ["ipc:///tmp/feedsvc/relay", "tcp://127.0.0.1:5656"], check=_check_endpoints
    )
    # Where its clients send sync and recovery requests; "" = off.
    sync_endpoint: str = _setting(
        "tcp://127.0.0.1:5658", check=lambda value: (value and _check_endpoint(value)) or None
    )
    recovery_endpoint: str = _setting(
        "tcp://127.0.0.1:5659", check=lambda value: (value and _check_endpoint(value)) or None
    )
    # The same stale-data policy as the publisher: a slow client loses ticks (visible as seq
    # gaps) at sndhwm, never grows the relay. rcvhwm bounds what waits from the upstreams.
    sndhwm: int = _setting(10_000, minimum=0)
    sndbuf: int = _setting(262_144, minimum=0)
    rcvhwm: int = _setting(100_000, minimum=0)
    io_threads: int = _setting(1, minimum=1, maximum=64)
    # An upstream without a heartbeat for this long counts as down (health, metrics).
    upstream_timeout_s: float = _setting(3.0, minimum=0.05, maximum=3600)
    # A forwarded sync or recovery request without an upstream answer in this time gets the
    # error upstream_timeout; at most this many are forwarded and unanswered at once.
    request_timeout_s: float = _setting(5.0, minimum=0.05, maximum=600)
    max_pending_requests: int = _setting(1_000, minimum=1, maximum=1_000_000)
    # Curve towards tcp upstreams (a publisher with curve.enabled): the upstream's public key
    # (NAME.key) and the relay's own key pair (NAME.key_secret, listed in the upstream's
    # curve.authorized_keys); both or neither. The relay's own endpoints use the curve section.
    upstream_server_key: str = _setting("")
    upstream_client_cert: str = _setting("")
    # Its own /metrics and /healthz on metrics_host:metrics_port; 0 = no metrics server.
    metrics_port: int = _setting(9110, minimum=0, maximum=65_535)
    metrics_host: str = _setting("127.0.0.1")

    def __post_init__(self) -> None:
        if bool(self.upstream_server_key) != bool(self.upstream_client_cert):
            missing = "upstream_client_cert" if self.upstream_server_key else "upstream_server_key"
            raise ConfigError(f"relay.{missing}", "Curve to the upstream needs both key files")


@dataclass(frozen=True)
class SyntheticConfig:
    enabled: bool = _setting(True)
    symbols: int = _setting(50, minimum=1, maximum=100_000)
    # Ticks per second in total over all symbols; 0 = as fast as possible.
    rate: float = _setting(1_000.0, minimum=0.0)
    # Random seed for reproducible walks; 0 = a new walk every start.
    seed: int = _setting(0, minimum=0)
    # Symbol names are this prefix and a number (SYN0000 ...); shards use distinct prefixes.
    prefix: str = _setting("SYN", check=_check_symbol_prefix)
    # Market-open style spikes: burst_rate ticks/s for burst_duration_s out of every
    # burst_every_s, windows starting at multiples of burst_every_s on the Unix clock;
    # 0 = no bursts.
    burst_rate: float = _setting(0.0, minimum=0.0)
    burst_every_s: float = _setting(60.0, minimum=0.01, maximum=86_400)
    burst_duration_s: float = _setting(5.0, minimum=0.001, maximum=86_400)

    def __post_init__(self) -> None:
        # Checks that span two keys; _build has checked each key on its own by now.
        if self.burst_rate and self.burst_duration_s >= self.burst_every_s:
            raise ConfigError(
                "synthetic.burst_duration_s",
                f"must be < synthetic.burst_every_s ({self.burst_every_s:g}), "
                f"got {self.burst_duration_s:g}",
            )
        if self.burst_rate and self.rate <= 0:
            raise ConfigError(
                "synthetic.burst_rate",
                "needs synthetic.rate > 0 (rate 0 is already as fast as possible)",
            )


@dataclass(frozen=True)
class MetricsConfig:
    # Prometheus /metrics and /healthz on host:port; 0 = no metrics server.
    port: int = _setting(9108, minimum=0, maximum=65_535)
    # 0.0.0.0 to be scraped from other hosts or containers.
    host: str = _setting("127.0.0.1", check=lambda value: None if value else "must not be empty")


def _check_producer_settings(settings: dict[str, Any]) -> str | None:
    wrong_type = next(
        (
            f"{_shown(key)} must be a string, number or boolean (finite)"
            for key, value in settings.items()
            if not isinstance(value, str | int | float | bool)
            or (isinstance(value, float) and not math.isfinite(value))
        ),
        None,
    )
    # Secret references are checked by load_config, not here: replay reads this section too,
    # and its -X may replace a reference it could not resolve.
    return wrong_type


@dataclass(frozen=True)
class KafkaConfig:
    # Mirror every published tick to Kafka (key = symbol, value = the payload as broadcast).
    enabled: bool = _setting(True)
    bootstrap: str = _setting("127.0.0.1:9092", check=lambda v: None if v else "must not be empty")
    topic: str = _setting("ticks", check=lambda v: None if v else "must not be empty")
    # Used when feedsvc creates the topic (an existing topic is left as it is).
    partitions: int = _setting(6, minimum=1, maximum=10_000)
    replication_factor: int = _setting(1, minimum=1, maximum=32)
    # A write is acknowledged once this many replicas have it (the topics' min.insync.replicas):
    # with replication 3, 2 keeps the audit writable with one broker down and durable past it.
    min_insync_replicas: int = _setting(1, minimum=1, maximum=32)
    retention_ms: int = _setting(604_800_000, minimum=-1)
    # The companion topic of checkpoint records (docs/audit-trail.md); "" = <topic>.checkpoints.
    checkpoint_topic: str = _setting("")
    # The mirror's Kafka transactional.id, stable per service instance so that a restarted
    # mirror fences its predecessor; "" = feedsvc-<host name>-<topic>. Two services writing the
    # same topic need different ids.
    transactional_id: str = _setting("")
    # A transaction (ticks plus a checkpoint) is committed this often, or after this many ticks:
    # a read_committed reader sees ticks this much later; a crash re-sends at most this much.
    transaction_interval_ms: float = _setting(200.0, minimum=10.0, maximum=60_000)
    transaction_max_ticks: int = _setting(50_000, minimum=1, maximum=10_000_000)
    # Batches handed to the mirror but not yet committed are kept for a restarted mirror; past
    # this many bytes new batches are dropped (counted), the hot path never waits.
    max_retained_bytes: int = _setting(256 * 1024 * 1024, minimum=1024 * 1024)
    # A dead mirror process is restarted after 0.5 s, doubling up to this.
    restart_backoff_max_s: float = _setting(30.0, minimum=0.5, maximum=3_600)
    # Ticks librdkafka holds while Kafka is slow or down (queue.buffering.max.messages).
    max_buffered_ticks: int = _setting(2_000_000, minimum=1_000, maximum=2_147_483_647)
    # A tick not acknowledged within this long is counted as failed (message.timeout.ms).
    delivery_timeout_ms: int = _setting(300_000, minimum=1_000)
    # At shutdown, how long to wait for Kafka to acknowledge everything published.
    flush_timeout_s: float = _setting(30.0, minimum=0.0, maximum=3_600)
    # Hand-off from the hot path to the mirror process: a batch per this many ticks or this delay.
    handoff_batch_ticks: int = _setting(1_000, minimum=1, maximum=100_000)
    handoff_max_delay_ms: float = _setting(20.0, minimum=0.0, maximum=10_000)
    # Batches in flight on the hand-off socket to the mirror process; the rest wait, retained
    # (kafka.max_retained_bytes bounds them; past it new batches are dropped, counted).
    handoff_queue_batches: int = _setting(250, minimum=1)
    # CPU priority of the mirror process (nice 0-19; higher yields the CPU to the hot path).
    # The hot path never waits for the mirror either way; a starved mirror falls behind, its
    # batches stay retained and, past kafka.max_retained_bytes, are dropped (counted). At 10k
    # ticks/s nice 10 cut the ingest p99 with the mirror on from 2.4 to 1.0 ms here
    # (docs/performance.md); 0 keeps the audit's lag lowest on a busy box.
    mirror_nice: int = _setting(0, minimum=0, maximum=19)
    # librdkafka producer settings passed through (security, tuning), e.g. {"linger.ms": 50};
    # a value "${env:NAME}" or "${file:PATH}" is read from there when the producer starts.
    producer: dict[str, Any] = _setting({}, check=_check_producer_settings)

    def __post_init__(self) -> None:
        if self.min_insync_replicas > self.replication_factor:
            raise ConfigError(
                "kafka.min_insync_replicas",
                f"must be at most kafka.replication_factor ({self.replication_factor}), "
                f"got {self.min_insync_replicas}",
            )

    def connection_settings(self) -> dict[str, Any]:
        """kafka.producer's security, SASL and SSL settings, secret references unresolved."""
        return {
            name: value
            for name, value in self.producer.items()
            if name.startswith(KAFKA_CONNECTION_PREFIXES)
        }


def _check_file_mode(mode: int) -> str | None:
    if not 0 <= mode <= 0o777:
        return f"must be a permission mode from 0 to 0777 (octal, e.g. 0600), got {_shown(mode)}"
    if not mode & 0o200:
        return f"must let the owner write (connect), got {mode:04o}"
    return None


@dataclass(frozen=True)
class IpcConfig:
    # Permissions of the ipc socket files feedsvc binds (connecting needs write permission), in
    # octal: 0600 = only the service's user, 0660 = also its group. A folder feedsvc creates for
    # them gets the same permissions plus the search bit.
    mode: int = _setting(0o600, check=_check_file_mode)


@dataclass(frozen=True)
class CurveConfig:
    # CurveZMQ on every tcp endpoint (publisher, ingest, sync); ipc endpoints stay plain.
    enabled: bool = _setting(False)
    # The server's secret certificate (NAME.key_secret from `feedsvc keygen DIR NAME`).
    server_secret: str = _setting("")
    # Directory of the public keys (NAME.key) of the clients and feed handlers allowed in.
    # Re-read on SIGHUP; connections already made stay.
    authorized_keys: str = _setting("")
    # Rejected handshakes are logged at most once per interval, with the counts since.
    reject_log_interval_s: float = _setting(10.0, minimum=0.0)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.server_secret:
            raise ConfigError("curve.server_secret", "must name a NAME.key_secret file")
        if not self.authorized_keys:
            raise ConfigError("curve.authorized_keys", "must name a directory of NAME.key files")
        # The files themselves are read where they are used (feedsvc.curve.key_files_problem,
        # before serve starts): the config stays a typed object that reads no keys.


@dataclass(frozen=True)
class LogConfig:
    level: str = _setting("INFO", check=_check_log_level)
    # text: one readable line per event; json: one JSON object per line (for log shippers).
    format: str = _setting(
        "text", check=lambda value: None if value in ("text", "json") else "must be text or json"
    )


@dataclass(frozen=True)
class Config:
    publisher: PublisherConfig = field(default_factory=PublisherConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    curve: CurveConfig = field(default_factory=CurveConfig)
    ipc: IpcConfig = field(default_factory=IpcConfig)
    log: LogConfig = field(default_factory=LogConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)


def _type_problem(expected: Any, value: Any) -> str | None:
    origin = get_origin(expected)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            return f"must be a mapping of names to values, got {_shown(value)}"
        return None
    if origin is list:
        (item_type,) = get_args(expected)
        if not isinstance(value, list):
            return f"must be a list, got {_shown(value)}"
        return next(
            (
                f"item {index}: {problem}"
                for index, item in enumerate(value)
                if (problem := _type_problem(item_type, item))
            ),
            None,
        )
    if origin in (Union, types.UnionType):
        problems = [_type_problem(option, value) for option in get_args(expected)]
        return None if None in problems else problems[0]
    if expected is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {_shown(value)}"
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {_shown(value)}"
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
        return None if ok else f"must be a number, got {_shown(value)}"
    if expected is str:
        return None if isinstance(value, str) else f"must be a string, got {_shown(value)}"
    raise TypeError(f"unsupported config type {expected!r}")


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float
        return False


def _build(section_type: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Build one dataclass from a mapping, validating every value; unknown keys are errors."""
    if not isinstance(values, Mapping):
        raise ConfigError(prefix.rstrip("."), f"must be a mapping, got {_shown(values)}")
    hints = get_type_hints(section_type)
    known = {item.name: item for item in dataclasses.fields(section_type)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")
    built: dict[str, Any] = {}
    for name, item in known.items():
        key = f"{prefix}{name}"
        if name not in values:
            continue
        value = values[name]
        if dataclasses.is_dataclass(hints[name]):
            built[name] = _build(hints[name], value or {}, f"{key}.")
            continue
        problem = _type_problem(hints[name], value)
        minimum, maximum = item.metadata.get("minimum"), item.metadata.get("maximum")
        if problem is None and minimum is not None and value < minimum:
            problem = f"must be >= {minimum}, got {_shown(value)}"
        if problem is None and maximum is not None and value > maximum:
            problem = f"must be <= {maximum}, got {_shown(value)}"
        check = item.metadata.get("check")
        if problem is None and check is not None:
            problem = check(value)
        if problem is not None:
            raise ConfigError(key, problem)
        built[name] = float(value) if hints[name] is float else value
    return section_type(**built)


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Parse one `--set section.key=value`; the value is YAML (lists, numbers, booleans)."""
    path, equals, raw_value = assignment.partition("=")
    if not equals or not path.strip():
        raise ConfigError(assignment.strip() or "--set", "--set needs the form section.key=value")
    try:
        value = yaml.load(raw_value, Loader=_YamlLoader) if raw_value.strip() else ""
    except _YAML_ERRORS as error:
        raise ConfigError(
            path.strip(), f"value is not valid YAML: {_yaml_problem(error)}"
        ) from None
    return path.strip().split("."), value


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


# What PyYAML raises for input it cannot take: its own errors, integers over Python's digit
# limit (ValueError), and nesting deeper than the interpreter's recursion limit.
_YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def _yaml_problem(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return _one_line(error)[:200]


def load_config(path: Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load config.yaml (or only defaults when path is None), apply overrides, validate.

    Raises
    ------
    ConfigError
        naming the first wrong key.
    """
    config: Config = _build(Config, _load_raw(path, overrides), "")
    problem = secret_problem(config.kafka.producer)
    if problem is not None:
        raise ConfigError("kafka.producer", problem)
    return config


def load_kafka_config(path: Path) -> KafkaConfig:
    """Only the kafka section of a service config, validated: for clients of the mirror's
    cluster (replay), which need not be able to read the service's other files (Curve keys).

    Raises
    ------
    ConfigError
        naming the first wrong key.
    """
    return _build(KafkaConfig, _load_raw(path, ()).get("kafka") or {}, "kafka.")


def _load_raw(path: Path | None, overrides: Iterable[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_YamlLoader)
        except OSError as error:
            raise ConfigError("--config", f"cannot read {path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("--config", f"{path} is not UTF-8 text") from None
        except _YAML_ERRORS as error:
            problem = _yaml_problem(error)
            raise ConfigError("--config", f"{path} is not valid YAML: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("--config", f"{path} must hold a mapping of sections")
        raw = loaded or {}
    for assignment in overrides:
        keys, value = parse_override(assignment)
        section = raw
        for depth, key in enumerate(keys[:-1]):
            nested = section.setdefault(key, {})
            if not isinstance(nested, dict):
                raise ConfigError(".".join(keys[: depth + 1]), "is not a section")
            section = nested
        section[keys[-1]] = value
    return raw
