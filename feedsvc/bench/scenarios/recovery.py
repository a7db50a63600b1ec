"""Benchmark for gap recovery (docs/recovery-protocol.md): what it costs everyone else.

1. Hot path: ns per tick the recovery window adds to `Publisher.publish` (in this process,
   batches of synthetic ticks into a send that drops them, with and without the window, its
   trimming included), alternating, median of `--micro-repeats`.
2. Fast subscribers: one `feedsvc serve` per run (synthetic feed at `--rate` ticks/s, tcp),
   one fast subscriber process (feedsvc.client.Subscriber, every tick's latency from `ts`),
   and in every other run one recovering client process that asks flat out for the largest
   valid ranges (recovery.max_ticks_per_request ticks, cycling over the symbols), on a DEALER
   with several requests in flight, waiting retry_after_ms when the service says so (as the
   protocol asks). Runs alternate without / with, `--repeats` pairs; the figures are the
   median p99 with over the median p99 without (single p99s spread several-fold on two cores;
   the per-pair ratios are shown too), the rate ratio (target within 1.2x), and the recovering
   client's request-to-reply latency p50 / p99.
3. With --kafka: reply latency of ranges older than the window, answered from the Kafka mirror
   (a broker of its own via scripts/kafka.sh).

Roles run as separate processes (``--role fast`` / ``--role recoverer``), so none shares a GIL
with another or with the orchestrator.

Usage: python scripts/bench_recovery.py [--rate 10000] [--duration 8] [--repeats 3] [--kafka]
           [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import orjson
import zmq

from feedsvc.bench.latency import LatencyRecorder, latency_percentiles, percentile
from feedsvc.bench.procs import ServeProcess, free_tcp_port, stop_process
from feedsvc.bench.report import Progress, machine_facts, median, ratio, write_json
from feedsvc.bench.scenarios.slow_roles import follow_fast
from feedsvc.client import Subscriber
from feedsvc.protocol.ticks import HEARTBEAT_TOPIC, topic_prefix
from feedsvc.server.publisher import Publisher
from feedsvc.server.recovery.window import RecoveryWindow
from feedsvc.server.synthetic import SyntheticFeed

ROLE_MODULE: Final = "feedsvc.bench.scenarios.recovery"
# Few symbols, so the window holds MAX_TICKS of each soon (10 s at 10,000 ticks/s).
SYMBOLS: Final = 10
MAX_TICKS: Final = 10_000
# Requests the recovering client keeps in flight.
IN_FLIGHT: Final = 4
REPLY_TIMEOUT_MS: Final = 2_000
TARGET_RATIO: Final = 1.2
MICRO_TICKS: Final = 200_000
MICRO_BATCH: Final = 100
FINISH_MARGIN_S: Final = 30.0
# A seq no symbol reaches in a benchmark: the not_published reply to it names the latest.
PROBE_FIRST_SEQ: Final = 2**40
KAFKA_REQUESTS: Final = 50
KAFKA_RANGE: Final = 1_000
KAFKA_HISTORY_S: Final = 20.0

HEARTBEAT_PREFIX: Final = topic_prefix(HEARTBEAT_TOPIC)

progress = Progress("bench_recovery")


def hot_path_ns_per_tick(with_window: bool) -> float:
    """ns per tick of Publisher.publish over MICRO_TICKS synthetic ticks (trimming included)."""
    feed = SyntheticFeed(SYMBOLS, seed=1)
    batches = [feed.generate(MICRO_BATCH) for _ in range(MICRO_TICKS // MICRO_BATCH)]
    publisher: Publisher
    window = None
    if with_window:
        window = RecoveryWindow(60.0, 256 * 1024 * 1024, lambda: publisher.published_bytes)
    publisher = Publisher(lambda frame: None, 1, 100_000, window=window)
    monotonic = time.monotonic
    started = time.perf_counter_ns()
    for batch in batches:
        publisher.publish(batch)
        if window is not None:
            now = monotonic()
            if now >= window.trim_due_at:
                window.trim(now)
    return (time.perf_counter_ns() - started) / MICRO_TICKS


def _heartbeat_epoch(context: zmq.Context, endpoint: str) -> int | None:
    """The publisher's epoch from its next heartbeat (a SUB to the heartbeat topic only)."""
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_PREFIX)
    sub.connect(endpoint)
    try:
        if not sub.poll(int(FINISH_MARGIN_S * 1000)):
            return None
        return orjson.loads(sub.recv()[len(HEARTBEAT_PREFIX) :])["epoch"]
    finally:
        sub.close()


def follow_recovering(options: argparse.Namespace) -> dict[str, Any]:
    """Ask for the largest valid ranges, IN_FLIGHT at a time, until the window ends.

    The client does not subscribe to the feed (that would be a second fast subscriber, not
    recovery's cost): it learns each symbol's latest seq from a not_published reply to a range
    past it, then asks for the MAX_TICKS before that."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(options.recovery)
    try:
        epoch = _heartbeat_epoch(context, options.endpoint)
        if epoch is None:
            return {"error": "the recovering client got no heartbeat"}
        # request id -> (symbol, sent at ns)
        sent: dict[str, tuple[str, int]] = {}
        latest_by_symbol: dict[str, int] = {}
        latencies = LatencyRecorder()
        codes: dict[str, int] = {}
        ticks = request_number = slept_until_ns = 0
        start_at, end_at = options.start_at, options.end_at
        while time.monotonic() < end_at:
            while len(sent) < IN_FLIGHT:
                request_number += 1
                symbol = f"SYN{request_number % SYMBOLS:04d}"
                latest = None if options.probe_only else latest_by_symbol.pop(symbol, None)
                # Without a latest seq, a range far past it: the not_published reply names it.
                first = PROBE_FIRST_SEQ if latest is None else max(1, latest - MAX_TICKS + 1)
                last = first + MAX_TICKS - 1 if latest is None else latest
                request_id = str(request_number)
                request = {"op": "recover", "id": request_id, "symbol": symbol, "epoch": epoch}
                dealer.send(orjson.dumps({**request, "first": first, "last": last}))
                sent[request_id] = (symbol, time.time_ns())
            if not dealer.poll(REPLY_TIMEOUT_MS):
                sent.clear()  # lost replies: ask again
                continue
            parts = dealer.recv_multipart()
            header = orjson.loads(parts[0])
            symbol, started_ns = sent.pop(header.get("id"), (None, 0))
            if symbol is None:
                continue
            code = "ok" if header["ok"] else header["error"]
            codes[code] = codes.get(code, 0) + 1
            if type(header.get("latest")) is int:
                latest_by_symbol[symbol] = header["latest"]
            retry_after_ms = header.get("retry_after_ms")
            if type(retry_after_ms) is int:
                # As the protocol asks (and feedsvc.client does): flat out within the limits.
                time.sleep(min(retry_after_ms / 1000, max(0.0, end_at - time.monotonic())))
                slept_until_ns = time.time_ns()
            if header["ok"] and time.monotonic() >= start_at:
                # A reply that waited while this client slept is not the service's latency.
                if started_ns >= slept_until_ns:
                    latencies.record(time.time_ns(), started_ns)
                ticks += header["count"]
        window_s = end_at - start_at
        return {
            "codes": codes,
            "ticks_recovered_per_s": ticks / window_s,
            "latency": latencies.dump(per_second=False, hdr=False)["all"],
        }
    finally:
        context.destroy(linger=0)


def run_role(options: argparse.Namespace) -> int:
    if options.role == "fast":
        subscriber = Subscriber(options.endpoint)
        try:
            result = follow_fast(subscriber, options)
        finally:
            subscriber.close()
    else:
        result = follow_recovering(options)
    options.out.write_text(json.dumps(result))
    return 0


def _role_command(role: str, **values: Any) -> list[str]:
    command = [sys.executable, "-m", ROLE_MODULE, f"--role={role}"]
    return command + [f"--{name.replace('_', '-')}={value}" for name, value in values.items()]


def _serve(
    options: argparse.Namespace, log_path: Path, *extra: str
) -> tuple[str, str, ServeProcess]:
    """(publisher endpoint, recovery endpoint, process) of a `feedsvc serve` on tcp with the
    synthetic feed at --rate, `extra` settings, then --set ones."""
    pub, recovery = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    settings = [
        f"publisher.endpoints=[{pub}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        f"recovery.endpoint={recovery}",
        "metrics.port=0",
        f"synthetic.rate={options.rate}",
        f"synthetic.symbols={SYMBOLS}",
        *extra,
        *options.settings,
    ]
    arguments = [part for setting in settings for part in ("--set", setting)]
    return pub, recovery, ServeProcess(arguments, log_path)


def run_once(
    options: argparse.Namespace, folder: Path, index: int, recovering: bool
) -> dict[str, Any]:
    """One serve, one fast subscriber and, if `recovering`, one recovering client."""
    pub, recovery, serve = _serve(options, folder / f"serve-{index}.log", "kafka.enabled=false")
    roles: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        serve.wait_until_serving()
        # The window needs MAX_TICKS ticks of a symbol before the largest ranges are valid; both
        # kinds of run wait as long, so they measure the same service.
        fill_s = MAX_TICKS * SYMBOLS / options.rate
        start_at = time.monotonic() + max(options.warmup, fill_s)
        end_at = start_at + options.duration
        timing = {"start_at": start_at, "end_at": end_at, "endpoint": pub}
        kinds = ["fast", "recoverer"] if recovering else ["fast"]
        for kind in kinds:
            out = folder / f"{kind}-{index}.json"
            command = _role_command(kind, out=out, recovery=recovery, **timing)
            if options.probe_only:
                command.append("--probe-only")
            roles.append((kind, subprocess.Popen(command), out))
        for _kind, process, _out in roles:
            process.wait(timeout=end_at - time.monotonic() + FINISH_MARGIN_S)
        results = {kind: json.loads(out.read_text()) for kind, _process, out in roles}
    finally:
        for _kind, process, _out in roles:
            stop_process(process)
        stop_process(serve.popen)
        serve.close()
    fast = results["fast"]
    figures = {
        "recovering": recovering,
        "fast_rate": fast["received_in_window"] / options.duration,
        "fast_missed": fast["missed_in_window"],
        "fast_latency_us": latency_percentiles([fast["latency"]]),
    }
    if recovering:
        recoverer = results["recoverer"]
        figures["recoverer"] = {
            "codes": recoverer.get("codes"),
            "ticks_recovered_per_s": recoverer.get("ticks_recovered_per_s"),
            "latency_us": latency_percentiles([recoverer["latency"]]),
            "error": recoverer.get("error"),
        }
    return figures


def kafka_latency(options: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Reply latency of ranges older than the window, answered from the Kafka mirror: one serve
    with the mirror on and a 1 s window, KAFKA_REQUESTS sequential requests of KAFKA_RANGE
    ticks at random places 2 to KAFKA_HISTORY_S s back."""
    from feedsvc.bench.kafka import KafkaBroker

    broker = KafkaBroker(folder / "kafka")
    progress(f"Kafka: starting a broker at {broker.bootstrap}")
    broker.start()
    pub, recovery, serve = _serve(
        options,
        folder / "serve-kafka.log",
        "recovery.window_s=1",
        "kafka.enabled=true",
        f"kafka.bootstrap={broker.bootstrap}",
        "kafka.topic=bench-recovery",
    )
    context = zmq.Context()
    try:
        serve.wait_until_serving()
        subscriber = Subscriber(pub, symbols=["SYN0001"], context=context)
        tick = subscriber.recv(timeout=FINISH_MARGIN_S)
        assert tick is not None, "no tick from the Kafka run's serve"
        progress(f"Kafka: {KAFKA_HISTORY_S} s of history at {options.rate:,.0f} ticks/s")
        deadline = time.monotonic() + KAFKA_HISTORY_S
        while time.monotonic() < deadline:
            subscriber.recv(timeout=0.1)
        latest = subscriber.tracker.last_seq("SYN0001") or 0
        subscriber.close()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(recovery)
        per_symbol_rate = options.rate / SYMBOLS
        oldest = max(1, tick["seq"])
        newest = max(oldest, latest - int(2 * per_symbol_rate) - KAFKA_RANGE)
        generator = random.Random(1)
        latencies_us: list[float] = []
        sources: dict[str, int] = {}
        for number in range(KAFKA_REQUESTS):
            first = generator.randint(oldest, newest)
            request = {"op": "recover", "id": str(number), "symbol": "SYN0001"}
            request |= {"epoch": tick["epoch"], "first": first, "last": first + KAFKA_RANGE - 1}
            started = time.perf_counter()
            dealer.send(orjson.dumps(request))
            if not dealer.poll(REPLY_TIMEOUT_MS * 5):
                sources["no reply"] = sources.get("no reply", 0) + 1
                continue
            header = orjson.loads(dealer.recv_multipart()[0])
            latencies_us.append((time.perf_counter() - started) * 1e6)
            source = header.get("source", "?") if header["ok"] else header["error"]
            sources[source] = sources.get(source, 0) + 1
        latencies_us.sort()
        return {
            "requests": KAFKA_REQUESTS,
            "range_ticks": KAFKA_RANGE,
            "answers": sources,
            "p50_us": percentile(latencies_us, 50) if latencies_us else None,
            "p99_us": percentile(latencies_us, 99) if latencies_us else None,
        }
    finally:
        context.destroy(linger=0)
        stop_process(serve.popen)
        serve.close()
        broker.stop()


def run_benchmark(options: argparse.Namespace) -> int:
    progress(f"hot path: {options.micro_repeats} alternating pairs of {MICRO_TICKS:,} ticks")
    off, on = [], []
    for _ in range(options.micro_repeats):
        off.append(hot_path_ns_per_tick(False))
        on.append(hot_path_ns_per_tick(True))
    hot = {
        "ns_per_tick_off": median(off),
        "ns_per_tick_on": median(on),
        "window_ns_per_tick": median([b - a for a, b in zip(off, on, strict=True)]),
    }
    progress(
        f"hot path: {hot['ns_per_tick_off']:.0f} ns/tick without the window, "
        f"{hot['ns_per_tick_on']:.0f} with (+{hot['window_ns_per_tick']:.0f})"
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as folder_name:
        folder = Path(folder_name)
        for pair in range(options.repeats):
            for recovering in (False, True):
                label = "with a recovering client" if recovering else "without"
                progress(f"[{pair + 1}/{options.repeats}] {label}: {options.duration:g} s window")
                run = run_once(options, folder, len(runs), recovering)
                runs.append(run)
                line = (
                    f"fast subscriber {run['fast_rate']:,.0f} ticks/s, "
                    f"p99 {run['fast_latency_us']['p99']} us, missed {run['fast_missed']}"
                )
                if recovering:
                    recoverer = run["recoverer"]
                    line += (
                        f"; recovered {recoverer['ticks_recovered_per_s'] or 0:,.0f} ticks/s, "
                        f"reply p50/p99 {recoverer['latency_us']['p50']}/"
                        f"{recoverer['latency_us']['p99']} us, {recoverer['codes']}"
                    )
                progress(line)
    pairs = list(zip(runs[::2], runs[1::2], strict=True))
    p99_ratios = [
        ratio(with_["fast_latency_us"]["p99"], without["fast_latency_us"]["p99"])
        for without, with_ in pairs
    ]
    rate_ratios = [ratio(without["fast_rate"], with_["fast_rate"]) for without, with_ in pairs]
    # Single p99s of these runs spread several-fold on two cores: the verdict compares the
    # medians of each kind's p99s, the per-pair ratios are shown beside.
    p99_by_kind = {
        kind: median(run["fast_latency_us"]["p99"] for run in runs if run["recovering"] is kind)
        for kind in (False, True)
    }
    replies = [run["recoverer"]["latency_us"] for run in runs if run["recovering"]]
    recovery_p = {
        "p50": median(r["p50"] for r in replies),
        "p99": median(r["p99"] for r in replies),
    }
    document = {
        "machine": machine_facts(),
        "rate": options.rate,
        "duration_s": options.duration,
        "hot_path": hot,
        "runs": runs,
        "fast_p99_us_without": p99_by_kind[False],
        "fast_p99_us_with": p99_by_kind[True],
        "fast_p99_ratio": ratio(p99_by_kind[True], p99_by_kind[False]),
        "fast_p99_pair_ratios": p99_ratios,
        "fast_rate_ratio": median(rate_ratios),
        "fast_rate_ratios": rate_ratios,
        "recovery_latency_us": recovery_p,
        "recovered_ticks_per_s": median(
            run["recoverer"]["ticks_recovered_per_s"] for run in runs if run["recovering"]
        ),
    }
    verdict = (
        "PASS"
        if document["fast_p99_ratio"] is not None
        and document["fast_p99_ratio"] <= TARGET_RATIO
        and document["fast_rate_ratio"] <= TARGET_RATIO
        else "MISS"
    )
    print(
        f"hot path: +{hot['window_ns_per_tick']:.0f} ns per tick for the recovery window "
        f"({hot['ns_per_tick_off']:.0f} -> {hot['ns_per_tick_on']:.0f} ns in Publisher.publish)"
    )
    print(
        f"fast subscriber with / without a client recovering flat out: median p99 "
        f"{p99_by_kind[True]:.0f} / {p99_by_kind[False]:.0f} us = "
        f"{document['fast_p99_ratio']:.2f}x (pairs {' '.join(f'{r:.2f}' for r in p99_ratios)}), "
        f"rate without / with {document['fast_rate_ratio']:.3f}   target <= {TARGET_RATIO}   "
        f"{verdict}"
    )
    print(
        f"recovery from the window: reply p50 {recovery_p['p50']} us, p99 {recovery_p['p99']} us "
        f"(requests of {MAX_TICKS:,} ticks, replies cut to recovery.max_reply_bytes, "
        f"{IN_FLIGHT} in flight), "
        f"{document['recovered_ticks_per_s']:,.0f} ticks/s recovered"
    )
    if options.kafka:
        with tempfile.TemporaryDirectory(prefix="bench-recovery-kafka-") as folder_name:
            document["kafka"] = kafka_latency(options, Path(folder_name))
        kafka = document["kafka"]
        print(
            f"recovery from Kafka (older than the window): reply p50 {kafka['p50_us']:.0f} us, "
            f"p99 {kafka['p99_us']:.0f} us ({kafka['requests']} requests of "
            f"{kafka['range_ticks']:,} ticks, answers {kafka['answers']})"
        )
    if options.json:
        write_json(options.json, document)
    if options.plot:
        from feedsvc.bench.scenarios.recovery_plot import plot

        plot(document, options.plot, progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs")
    parser.add_argument("--micro-repeats", type=int, default=5)
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a `feedsvc serve` setting for every run (e.g. recovery.client_bytes_per_s=8388608)",
    )
    parser.add_argument(
        "--kafka", action="store_true", help="also measure recovery from the Kafka mirror"
    )
    parser.add_argument(
        "--probe-only",
        action="store_true",
        help="the recovering client only asks past the latest seq (not_published replies, no "
        "ticks): the cost of requests without the cost of replies",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    # Role processes.
    parser.add_argument("--role", choices=("fast", "recoverer"))
    parser.add_argument("--endpoint")
    parser.add_argument("--recovery")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--start-at", type=float)
    parser.add_argument("--end-at", type=float)
    parser.add_argument("--histogram", default="raw")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.role:
        return run_role(options)
    return run_benchmark(options)


if __name__ == "__main__":
    sys.exit(main())
