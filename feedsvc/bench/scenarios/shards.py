"""Benchmark: two shards behind one relay against one publisher behind one relay.

Mode "one": one `feedsvc serve` flat out (synthetic.rate=0, --symbols symbols, prefix SYN), one
`feedsvc relay` in front of it, one subscriber (relay_roles' subscriber role, subscribed to
everything) on the relay. Mode "two": shards east and west (prefixes EAST, WEST, half the
symbols each), both upstreams of one relay, the same subscriber on it. Runs alternate one / two
for --repeats pairs. Each run measures a --duration s window after --warmup s: every serve's
published ticks/s (its own /metrics counter, read at both ends of the window, each read timed),
CPU seconds of each serve, the relay and the subscriber over the window (/proc) as a share of
the machine's cores, the subscriber's received rate and the relay's proxy counters.

Reported: median (min-max) per mode, two / one of the aggregate publish rate (median of the
per-pair ratios), and the capacity arithmetic for a --host-cores host (shards_analysis).

Usage: python scripts/bench_shards.py [--repeats 3] [--duration 6] [--warmup 1.5]
           [--symbols 50] [--host-cores 16] [--reserved-cores 2] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.procs import (
    ServeProcess,
    free_tcp_ports,
    machine_cpu_seconds,
    process_cpu_seconds,
    stop_process,
)
from feedsvc.bench.report import Progress, machine_facts, machine_lines, write_json
from feedsvc.bench.scenarios.relay import (
    add_setting_arguments,
    read_results,
    send_go,
    sleep_until,
    start_relays,
    started_roles,
    subscriber_commands,
    wait_ready,
)
from feedsvc.bench.scenarios.relay_analysis import combine_subscribers
from feedsvc.bench.scenarios.shards_analysis import (
    MODES,
    RELAY_PROCESS,
    SUBSCRIBER_PROCESS,
    Shard,
    alternating_modes,
    capacity_section,
    options_error,
    report_lines,
    run_figures,
    shard_layout,
    summarize_mode,
    two_to_one,
)
from feedsvc.bench.scrape import PUBLISHED_TOTAL, scrape

RELAY_IN_TOTAL: Final = 'feedsvc_relay_messages_total{direction="in"}'
# The relay's main loop refreshes its proxy counters every 1 s (plus up to its 100 ms poll).
RELAY_REFRESH_S: Final = 1.3
RELAY_POLL_S: Final = 0.05
MAX_RELAY_POLLS: Final = 100
DEFAULT_JSON: Final = Path("docs/shards_bench.json")
DEFAULT_PLOT: Final = Path("docs/shards_bench.png")

progress = Progress("bench_shards")


def _serve_settings(shard: Shard, pub_port: int, metrics_port: int) -> list[str]:
    """One shard flat out on tcp, with /metrics (its published counter) and nothing else."""
    settings = [
        f"publisher.endpoints=[tcp://127.0.0.1:{pub_port}]",
        f"metrics.port={metrics_port}",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "kafka.enabled=false",
        "synthetic.rate=0",
        f"synthetic.symbols={shard.symbols}",
        f"synthetic.prefix={shard.prefix}",
    ]
    return settings + ([f"publisher.shard={shard.name}"] if shard.name else [])


def _relay_settings(upstreams: Sequence[str], metrics_port: int) -> list[str]:
    """Later --set values win: these replace RelayProcess's single upstream and its metrics
    port 0, so one relay carries every shard and reports its proxy counters."""
    listed = ", ".join(f'{{publisher: "{upstream}"}}' for upstream in upstreams)
    return [f"relay.upstreams=[{listed}]", f"relay.metrics_port={metrics_port}"]


def _timed_scrape(port: int) -> dict[str, float]:
    """Every sample of one /metrics read, "at" = the middle of the request (the counter was
    read somewhere in it) and "scrape_s" = how long it took (the timing's uncertainty)."""
    started = time.monotonic()
    samples = scrape(port)
    finished = time.monotonic()
    return {**samples, "at": (started + finished) / 2, "scrape_s": finished - started}


def _snapshot(pids: Mapping[str, int], serve_metrics: Mapping[str, int]) -> dict[str, Any]:
    """CPU of every process and of the machine (all read within microseconds), then each
    serve's published counter, each with its own read time."""
    cpu_at = time.monotonic()
    cpu_s = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    machine = machine_cpu_seconds()
    counters = {}
    for name, port in serve_metrics.items():
        samples = _timed_scrape(port)
        counters[name] = {
            "count": samples[PUBLISHED_TOTAL],
            "at": samples["at"],
            "scrape_s": samples["scrape_s"],
        }
    return {"cpu_at": cpu_at, "cpu_s": cpu_s, "machine": machine, "counters": counters}


def _relay_counter_change(port: int, pid: int, deadline: float) -> dict[str, Any] | None:
    """The relay refreshes its proxy counters about once a second, so a single read may be up
    to a second old: poll until the "in" counter changes, and time the change as the middle
    between the last unchanged read and the changed one ("scrape_s" = that gap, the
    uncertainty); the relay's CPU is read at once. None when it did not change by `deadline`."""
    first = _timed_scrape(port)
    unchanged_at = first["at"]
    for _ in range(MAX_RELAY_POLLS):
        if time.monotonic() >= deadline:
            return None
        time.sleep(RELAY_POLL_S)
        samples = _timed_scrape(port)
        cpu_s = process_cpu_seconds(pid)
        if samples[RELAY_IN_TOTAL] != first[RELAY_IN_TOTAL]:
            return {
                "count": samples[RELAY_IN_TOTAL],
                "at": (unchanged_at + samples["at"]) / 2,
                "scrape_s": samples["at"] - unchanged_at,
                "cpu_s": cpu_s,
            }
        unchanged_at = samples["at"]
    return None


def measure_run(
    options: argparse.Namespace, folder: Path, index: int, mode: str, cpus: int
) -> dict[str, Any]:
    """One run of `mode`: its shards, one relay over all of them, one subscriber on the relay;
    every process is stopped by its pid on the way out (ExitStack)."""
    name = f"run-{index}-{mode}"
    shards = shard_layout(mode, options.symbols)
    with ExitStack() as stack:
        serves: dict[str, ServeProcess] = {}
        serve_metrics: dict[str, int] = {}
        upstreams = []
        for shard in shards:
            pub_port, metrics_port = free_tcp_ports(2)
            settings = _serve_settings(shard, pub_port, metrics_port) + options.settings
            serve = ServeProcess(
                [part for setting in settings for part in ("--set", setting)],
                folder / f"{name}-{shard.process}.log",
            )
            stack.callback(serve.close)
            stack.callback(stop_process, serve.popen)
            serves[shard.process] = serve
            serve_metrics[shard.process] = metrics_port
            upstreams.append(f"tcp://127.0.0.1:{pub_port}")
        for serve in serves.values():
            serve.wait_until_serving()
        relay_metrics = free_tcp_ports(1)[0]
        relay_settings = _relay_settings(upstreams, relay_metrics) + options.relay_settings
        (relay,) = stack.enter_context(
            start_relays(1, upstreams[0], folder, f"{name}-relay", relay_settings)
        )
        commands, outs = subscriber_commands([relay.endpoint], [1], folder, name)
        (subscriber,) = stack.enter_context(started_roles(commands))
        wait_ready([subscriber])
        start_at = time.monotonic() + options.warmup
        end_at = start_at + options.duration
        send_go([subscriber], {"start_at": start_at, "end_at": end_at})
        pids = {process: serve.pid for process, serve in serves.items()}
        pids |= {RELAY_PROCESS: relay.pid, SUBSCRIBER_PROCESS: subscriber.pid}
        sleep_until(start_at)
        before = _snapshot(pids, serve_metrics)
        relay_first = _relay_counter_change(relay_metrics, relay.pid, start_at + RELAY_REFRESH_S)
        # The relay's span ends at its last refresh before end_at, while the subscriber still
        # reads (after it, the relay's PUB has no subscriber and forwarding gets cheaper).
        sleep_until(max(end_at - RELAY_REFRESH_S, relay_first["at"] if relay_first else 0.0))
        relay_last = _relay_counter_change(relay_metrics, relay.pid, end_at)
        sleep_until(end_at)
        after = _snapshot(pids, serve_metrics)
        before["counters"]["relay_in"], after["counters"]["relay_in"] = relay_first, relay_last
        (result,) = read_results([subscriber], outs, end_at)
    subscriber_figures = combine_subscribers([result], options.duration, start_at)
    run = {"mode": mode, "shards": [asdict(shard) for shard in shards]}
    run |= run_figures(before, after, list(serves), subscriber_figures, cpus)
    run["snapshots"] = {"before": before, "after": after}
    return run


def _run_line(run: Mapping[str, Any]) -> str:
    shares = ", ".join(
        f"{process} {100 * share:.0f}%"
        for process, share in run["share_of_machine"].items()
        if share is not None
    )
    received, delivered = run["received_per_s"], run["delivered_share"]
    return (
        f"  published {run['aggregate_published_per_s'] or 0:,.0f}/s, received "
        f"{received or 0:,.0f}/s ({100 * (delivered or 0):.1f}%), CPU {shares}"
        + (
            f"; {run['late_sockets']} socket(s) had no tick before the window"
            if run["late_sockets"]
            else ""
        )
    )


def run_benchmark(options: argparse.Namespace) -> int:
    error = options_error(options)
    if error:
        print(f"bench_shards: {error}", file=sys.stderr)
        return 2
    facts = machine_facts()
    cpus = facts["cpus_usable"]
    document: dict[str, Any] = {
        "machine": facts,
        "settings": {
            "repeats": options.repeats,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "symbols": options.symbols,
            "serve_settings": options.settings,
            "relay_settings": options.relay_settings,
            "host_cores": options.host_cores,
            "reserved_cores": options.reserved_cores,
        },
        "notes": [
            "published/s: each serve's feedsvc_ticks_published_total read at both ends of the "
            "window, rate over the reads' own midpoints",
            "relay in/s and CPU per tick: the relay refreshes its proxy counters about once a "
            "second, so they are taken between the first refresh after the window's start and "
            "the last before its end, each refresh timed by polling (scrape_s = its uncertainty)",
            "role gaps: the subscriber role's count per symbol within its shard's epoch (a "
            "subscriber of everything falls behind flat-out publishers: the PUB drops for it)",
        ],
    }
    for line in machine_lines(facts):
        print(line, flush=True)
    runs: list[dict[str, Any]] = []
    order = alternating_modes(options.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as folder_name:
        for index, mode in enumerate(order):
            progress(
                f"[{index + 1}/{len(order)}] {mode}: "
                f"{len(shard_layout(mode, options.symbols))} serve(s) flat out -> 1 relay -> "
                f"1 subscriber, {options.duration:g} s"
            )
            run = measure_run(options, Path(folder_name), index, mode, cpus)
            runs.append(run)
            progress(_run_line(run))
    document["runs"] = runs
    document["modes"] = {
        mode: summarize_mode([run for run in runs if run["mode"] == mode], cpus) for mode in MODES
    }
    document["two_to_one"] = two_to_one(runs)
    document["capacity"] = capacity_section(runs, options.host_cores, options.reserved_cores)
    for line in report_lines(document):
        print(line, flush=True)
    if options.json:
        write_json(options.json, document)
        progress(f"results written to {options.json}")
    if options.plot:
        from feedsvc.bench.scenarios.shards_plot import plot

        plot(document, options.plot, progress)
    return 0


def _optional_path(text: str) -> Path | None:
    """A file to write, or None for "" (write none)."""
    return Path(text) if text else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (one, two)")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument(
        "--warmup", type=float, default=1.5, help="seconds from the subscriber being ready"
    )
    parser.add_argument("--symbols", type=int, default=50, help="symbols in all, per mode")
    parser.add_argument("--host-cores", type=int, default=16, help="the host of the arithmetic")
    parser.add_argument(
        "--reserved-cores",
        type=float,
        default=2.0,
        help="cores the arithmetic leaves for subscribers and the OS",
    )
    add_setting_arguments(parser, "every shard")
    parser.add_argument("--json", type=_optional_path, default=DEFAULT_JSON, help="'' = none")
    parser.add_argument("--plot", type=_optional_path, default=DEFAULT_PLOT, help="'' = none")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
