"""The outside check's attacks, scaled to CI's time, against a real `feedsvc serve`: each leaves a
well-behaved SUB its rate without a gap, the service's memory under the documented bound, and
SIGTERM working. The attackers run in their own processes (feedsvc.bench.hostile), as a peer would.

The full-size figures are `scripts/bench_attacks.py`'s (docs/security.md); these assert the
properties at a size CI can afford on 2 cores, with margins for a busy machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from feedsvc.bench import hostile
from feedsvc.bench.procs import RssSampler, free_tcp_ports
from tests.conftest import ServeProcess, http_get, metric_samples, serve_settings

Serve = Callable[..., ServeProcess]
RATE = 5_000  # synthetic ticks/s the victim should keep receiving
ATTACK_S = 4.0
# The documented bound is 1 GB whatever the attack; these runs are smaller than full size.
RSS_BOUND_BYTES = 1024**3
# The victim's share of RATE that must arrive during an attack (the benchmark's target is 0.95 on
# a quiet machine; CI shares its 2 cores with the attacker and the test's own threads).
MIN_RATE_SHARE = 0.85
SIGTERM_S = 10.0


class Attacked:
    """A serve process with all four endpoints on loopback tcp, its victim and its RSS sampler."""

    def __init__(self, serve: Serve, *extra: str) -> None:
        ports = free_tcp_ports(4)
        self.endpoints = hostile.Endpoints(
            publisher=f"tcp://127.0.0.1:{ports[0]}",
            ingest=f"tcp://127.0.0.1:{ports[1]}",
            sync=f"tcp://127.0.0.1:{ports[2]}",
            metrics_port=ports[3],
        )
        self.process = serve(
            *serve_settings([self.endpoints.publisher]),
            f"ingest.endpoint={self.endpoints.ingest}",
            f"sync.endpoint={self.endpoints.sync}",
            "recovery.endpoint=",
            f"metrics.port={self.endpoints.metrics_port}",
            f"synthetic.rate={RATE}",
            # Heartbeats once a second, as in production: the victim measures their silences.
            "publisher.heartbeat_interval_s=1.0",
            *extra,
        )
        self.victim = hostile.Victim(self.endpoints.publisher)
        self.rss = RssSampler(self.process.popen.pid, 0.2)

    def start(self) -> None:
        self.rss.start()
        self.victim.start()
        deadline = time.monotonic() + 20
        while not self.victim.wait_receiving(0.2):
            assert self.process.popen.poll() is None, self.process.log
            assert time.monotonic() < deadline, f"the victim received nothing\n{self.process.log}"

    def run(self, attacks: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the attacks at once for ATTACK_S; (victim report, RSS figures)."""
        attackers = [
            hostile.start_attack(name, self.endpoints, ATTACK_S, parameters)
            for name, parameters in attacks.items()
        ]
        try:
            self.victim.mark()
            time.sleep(ATTACK_S)
            report = self.victim.stop()
            for attacker in attackers:
                hostile.collect_attack(attacker, timeout_s=20)
        finally:
            for attacker in attackers:
                if attacker.poll() is None:
                    attacker.kill()
                    attacker.wait()
        return report, self.rss.stop()

    def samples(self) -> dict[str, float]:
        return metric_samples(http_get(self.endpoints.metrics_port, "/metrics")[1])


@pytest.fixture
def attacked(serve: Serve) -> Iterator[Callable[..., Attacked]]:
    started: list[Attacked] = []

    def start(*extra: str) -> Attacked:
        service = Attacked(serve, *extra)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        service.victim.stop()
        service.rss.stop()


def _assert_unharmed(service: Attacked, report: dict[str, Any], rss: dict[str, Any]) -> None:
    log = service.process.log
    assert service.process.popen.poll() is None, f"serve exited:\n{log[-3000:]}"
    assert report["rate_per_s"] >= MIN_RATE_SHARE * RATE, (report["per_second"], log[-2000:])
    assert report["gaps"] == 0 and report["missed"] == 0, report
    # Heartbeats every second: a silence of over 3 would make clients declare the feed dead.
    assert report["max_heartbeat_gap_s"] is not None and report["max_heartbeat_gap_s"] < 3.0
    assert rss["peak_rss_bytes"] < RSS_BOUND_BYTES, rss
    assert "Traceback" not in log, log[-3000:]
    started = time.monotonic()
    assert service.process.terminate(timeout_s=SIGTERM_S) == 0
    assert time.monotonic() - started < SIGTERM_S


# (attack, its parameters at CI's size): the shape of each hostile message is the real one,
# the volume is smaller.
SCALED = {
    "subscriptions": {"prefixes": 4_000, "prefix_bytes": 1_000},
    "sync_flood": {},
    "ingest_flood": {"max_batches": 600},
    "big_symbols": {"symbols": 300},
    "snapshot_hoard": {"peers": 10},
    "connect_flood": {"connections": 3_000, "rate_per_s": 800.0},
    "idle_subs": {"subscribers": 200},
    "sync_inflight": {},
    "slowloris": {"connections": 1_000},
    "http_reset": {"requests": 150},
    "nested_tick": {},
    "nested_sync": {},
}


@pytest.mark.parametrize("attack", list(SCALED))
def test_one_attack_leaves_the_victim_its_rate_and_memory_bounded(
    attacked: Callable[..., Attacked], attack: str
) -> None:
    service = attacked()
    parameters = {**hostile.attack_defaults(attack), **SCALED[attack]}
    report, rss = service.run({attack: parameters})
    _assert_unharmed(service, report, rss)


def test_hostile_ingest_sync_subscriptions_and_http_at_once(
    attacked: Callable[..., Attacked],
) -> None:
    service = attacked()
    attacks = {
        name: {**hostile.attack_defaults(name), **SCALED[name]}
        for name in ("ingest_flood", "sync_flood", "subscriptions", "slowloris", "nested_tick")
    }
    report, rss = service.run(attacks)
    samples = service.samples()
    # Each was refused and counted, not only survived.
    assert samples['feedsvc_ticks_rejected_total{reason="bad_optional_field"}'] >= 1
    assert samples['feedsvc_sync_requests_rejected_total{reason="bad_symbol"}'] >= 1
    # 1,000-byte prefixes: libzmq drops their sender (ZMQ_MAXMSGSIZE) before storing one.
    assert samples["feedsvc_subscription_bytes"] < 4_096
    assert (
        sum(
            value
            for name, value in samples.items()
            if name.startswith("feedsvc_http_requests_rejected_total")
        )
        >= 1
    )
    _assert_unharmed(service, report, rss)
