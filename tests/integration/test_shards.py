"""Two publishers (shards) behind one relay, across simulated hosts: both shards in one network
namespace, the relay in a second, a client in a third (tests/integration/netns.py).

What a desk relies on: a client subscribed to the symbols of both shards syncs through the
relay (one snapshot of both, a marker from each), recovers the gaps of either shard through it,
and sees each symbol contiguous under its own shard's epoch; a restart of one shard is a
restart for that shard's symbols only, never a gap or a restart on the other's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from feedsvc.client import Restart, Subscriber
from tests.conftest import ServeProcess, serve_settings, wait_for
from tests.integration.netns import Hosts
from tests.integration.test_relay import (
    RELAY_METRICS_PORT,
    RELAY_RECOVERY_PORT,
    RELAY_SYNC_PORT,
    Processes,
    _sets,
    feedsvc,
    hosts,
    latest,
    processes,
    receiving_since,
    relay_client_command,
    relay_endpoint,
    relay_http,
    settled_since,
)

__all__ = ["hosts", "processes"]  # the fixtures, shared with test_relay

# Shard name -> (symbol prefix, first of its three ports: publisher, sync, recovery).
SHARDS = {"east": ("EAST", 5556), "west": ("WEST", 5566)}
RATE_PER_SHARD = 1_000
SYMBOLS_PER_SHARD = 10


def shard_command(hosts: Hosts, shard: str) -> list[str]:
    prefix, port = SHARDS[shard]
    address = hosts.address("pub", "relay")
    settings = [
        f"publisher.endpoints=[tcp://{address}:{port}]",
        f"sync.endpoint=tcp://{address}:{port + 2}",
        f"recovery.endpoint=tcp://{address}:{port + 3}",
        f"publisher.shard={shard}",
        f"synthetic.prefix={prefix}",
        f"synthetic.symbols={SYMBOLS_PER_SHARD}",
        f"synthetic.rate={RATE_PER_SHARD}",
        "publisher.heartbeat_interval_s=0.1",
        "ingest.endpoint=",
        "metrics.port=0",
        "kafka.enabled=false",
    ]
    return hosts.command("pub", feedsvc("serve", *_sets(settings)))


def relay_of_shards_command(hosts: Hosts) -> list[str]:
    upstream = hosts.address("pub", "relay")
    upstreams = ", ".join(
        f"{{publisher: 'tcp://{upstream}:{port}', sync: 'tcp://{upstream}:{port + 2}', "
        f"recovery: 'tcp://{upstream}:{port + 3}'}}"
        for _prefix, port in SHARDS.values()
    )
    address = hosts.address("relay", "sub")
    settings = [
        f"relay.upstreams=[{upstreams}]",
        f"relay.endpoints=[{relay_endpoint(hosts)}]",
        f"relay.sync_endpoint=tcp://{address}:{RELAY_SYNC_PORT}",
        f"relay.recovery_endpoint=tcp://{address}:{RELAY_RECOVERY_PORT}",
        f"relay.metrics_port={RELAY_METRICS_PORT}",
        "relay.upstream_timeout_s=1",
    ]
    return hosts.command("relay", feedsvc("relay", *_sets(settings)))


def test_a_shards_restart_behind_the_relay_restarts_its_symbols_only(
    hosts: Hosts, processes: Processes, tmp_path: Path
) -> None:
    shards = {shard: processes.start(shard, shard_command(hosts, shard)) for shard in SHARDS}
    relay = processes.start("relay", relay_of_shards_command(hosts))
    out = tmp_path / "client.jsonl"
    symbols = [
        f"{prefix}{number}" for prefix, _port in SHARDS.values() for number in ("0001", "0007")
    ]
    # Both shards heard by the relay, and long enough (50 ticks per symbol) that every symbol
    # asked for has a last value.
    wait_for(
        lambda: orjson.loads(relay_http(hosts, "/healthz")[1] or b"{}").get("status") == "ok",
        20,
        "the relay hearing both shards",
        lambda: processes.log("relay"),
    )
    time.sleep(0.5)
    client = processes.start("client", relay_client_command(hosts, out, symbols))

    def details() -> str:
        return (
            f"client: {latest(out)}\nrelay log:\n{processes.log('relay')}\n"
            f"client log:\n{processes.log('client')}\n"
            + "".join(f"{shard} log:\n{processes.log(shard)}\n" for shard in SHARDS)
        )

    # 1. One handshake through the relay covers both shards: a snapshot of each one's symbols,
    # each under its own epoch, and a marker from each.
    wait_for(lambda: latest(out).get("stats", {}).get("syncs") == 1, 20, "synced", details)
    first = latest(out)
    assert first["stats"]["snapshot_ticks"] == 4, details()
    assert set(first["epoch_by_shard"]) == set(SHARDS), details()
    epochs = first["epoch_by_shard"]
    assert len(set(epochs.values())) == 2
    wait_for(receiving_since(out, time.monotonic()), 10, "ticks of both shards", details)
    status, body = relay_http(hosts, "/healthz")
    health = orjson.loads(body)
    assert status == 200 and health["status"] == "ok", body
    assert sorted(upstream["shard"] for upstream in health["upstreams"]) == sorted(SHARDS)

    # 2. The relay restarts: both shards' gaps are recovered through the new relay, each from
    # the shard that publishes its epoch.
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0, processes.log("relay")
    time.sleep(0.5)
    restarted_at = time.monotonic()
    processes.start("relay", relay_of_shards_command(hosts))
    wait_for(settled_since(out, restarted_at), 20, "recovered after the relay restart", details)
    recovered = latest(out)["stats"]["recovered"]

    # 3. Shard east restarts (a new epoch for its symbols); west goes on untouched.
    shards["east"].send_signal(signal.SIGTERM)
    assert shards["east"].wait(timeout=20) == 0
    # While east is down the client names it silent; west's frames keep the feed alive.
    wait_for(lambda: latest(out)["silent_shards"] == ["east"], 10, "east silent", details)
    assert latest(out)["dead_events"] == 0, details()
    east_back_at = time.monotonic()
    processes.start("east", shard_command(hosts, "east"))
    wait_for(
        lambda: latest(out)["epoch_by_shard"].get("east") not in (None, epochs["east"]),
        20,
        "east's new epoch",
        details,
    )
    wait_for(lambda: latest(out)["stats"]["syncs"] >= 2, 20, "a resync", details)
    wait_for(settled_since(out, east_back_at), 20, "settled after east's restart", details)
    # A tick of east's new epoch can reach the client before its first new heartbeat does.
    wait_for(lambda: latest(out)["silent_shards"] == [], 10, "east's heartbeats again", details)

    client.send_signal(signal.SIGTERM)
    client.wait(timeout=10)
    final = latest(out)
    stats = final["stats"]
    assert final["out_of_order"] == 0, details()
    assert stats["unrecoverable_gaps"] == 0 and stats["duplicates"] == 0, details()
    assert recovered > 0, details()
    # One restart (east's), and what it missed of east's new epoch was recovered too; west's
    # symbols never missed a tick, before or after it.
    assert stats["restarts"] == 1, details()
    assert stats["missed"] == 0, details()
    assert final["epoch_by_shard"]["west"] == epochs["west"]
    delivered = final["delivered_by_epoch"]
    assert len(delivered) == 3 and all(count > 0 for count in delivered.values()), details()


def test_a_client_listing_both_shards_directly_follows_each_in_its_own_epoch(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    """No relay: one SUB connected to both shards' endpoints (over ipc, on one host). Each
    symbol is followed under its own shard's epoch, so the interleaved epochs are no restart and
    no gap, and one shard's restart is a restart for its symbols only."""
    endpoints = {shard: f"ipc://{tmp_path}/{shard}" for shard in SHARDS}

    def start(shard: str) -> ServeProcess:
        prefix, _port = SHARDS[shard]
        process = serve(
            *serve_settings([endpoints[shard]]),
            f"publisher.shard={shard}",
            f"synthetic.prefix={prefix}",
            f"synthetic.symbols={SYMBOLS_PER_SHARD}",
            f"synthetic.rate={RATE_PER_SHARD}",
        )
        process.wait_until_serving()
        return process

    processes = {shard: start(shard) for shard in SHARDS}
    delivered: dict[str, int] = {}
    restarts: list[Restart] = []
    with Subscriber(list(endpoints.values()), on_restart=restarts.append) as subscriber:

        def receive_for(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                tick = subscriber.recv(timeout=0.05)
                if tick is not None:
                    shard = "east" if tick["sym"].startswith("EAST") else "west"
                    delivered[shard] = delivered.get(shard, 0) + 1

        receive_for(1.5)
        assert min(delivered.values(), default=0) > 200, delivered
        assert subscriber.stats.restarts == 0 and subscriber.stats.gaps == 0, subscriber.stats
        before = subscriber.tracker.epoch_by_shard
        assert set(before) == set(SHARDS)
        assert processes["west"].terminate() == 0
        processes["west"] = start("west")
        receive_for(1.5)
        after = subscriber.tracker.epoch_by_shard
        stats = subscriber.stats
    assert after["east"] == before["east"] and after["west"] != before["west"]
    assert [restart.old_epoch for restart in restarts] == [before["west"]], restarts
    # Only west's symbols may have missed ticks (between its stop and the restart's first).
    assert all(symbol.startswith("WEST") for symbol in stats.missed_by_symbol), stats
