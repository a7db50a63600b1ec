"""Benchmark of the Kafka audit mirror's two targets, against a real Apache Kafka broker.

The mirror (feedsvc/server/mirror.py) promises two things, and this scenario measures both on
this machine with a real single-node broker that it starts itself (scripts/kafka.sh, free
loopback ports, a temporary data dir) and stops at the end:

Part A, rate: the mirror must not slow the hot path much.
    ``feedsvc serve`` with the synthetic feed as fast as possible (``synthetic.rate=0``) and one ipc
    subscriber process, with the mirror OFF (``kafka.enabled=false``) and ON (a new topic per
    run), alternating, repeated; the medians of the publish rate are compared:
    target ON/OFF >= 0.75. The publish rate is the ticks published in the window (per-symbol seq
    spans seen by the subscriber); what the subscriber received is shown beside it. For the ON runs
    the scenario also reports how far the mirror kept up: the ticks Kafka acknowledged during the
    window (sum of the topic's high watermarks, asked every second; with acks=all on one broker a
    high watermark counts acknowledged records), and at the end the service's own count from its
    --summary-file (mirror.delivered of published) with the time the final flush took. The same
    is then measured at a paced 50,000 ticks/s, where the mirror must keep up
    (acknowledged == published, a short final flush) with a lag under 1 s: every half second the
    service's own published count (its /metrics) is set against Kafka's high watermarks, and
    lag = (published - acknowledged) / rate.
Part B, outage: Kafka may go away without losing ticks or stalling the publisher.
    At 20,000 ticks/s with the mirror on, the broker is stopped a few seconds in, kept down for
    ``--outage`` seconds (default 60) and started again (its data is kept). The subscriber's
    received rate shows whether the publisher went on; the high watermarks show the backlog
    (published - acknowledged) and how long it took to drain. Then the service gets SIGTERM
    with a generous flush timeout, and the audit is checked twice: the service's summary must say
    every published tick was acknowledged, and ``feedsvc replay --verify`` must read back exactly
    that many ticks with no gap and no duplicate.

CPU is what decides Part A on a 2-core machine, so every run records the cores used by the serve
process (the hot path and its libzmq thread), the mirror process (its child), the broker JVM, the
subscriber, all other processes and hypervisor steal, over the same window. The runs reuse the
publish scenario (feedsvc.bench.scenarios.publish: its subscriber, run orchestration and /proc
accounting); only the mirror settings, the broker and the Kafka-side counts are added here
(mirror_runs, mirror_pollers, mirror_analysis, mirror_report).

Transactions (the "transactions" section; mirror_cost, mirror_cost_runs, mirror_cost_report):
    What the transactional mirror costs, at paced rates where mirror on and off publish the same
    ticks, alternating and repeated (medians over --repeats): the hot path's CPU per published
    tick (the serve process's own utime + stime over the window, which excludes its mirror child,
    / the ticks published in it; target OFF/ON >= 0.95 at --cost-rate, default 20,000/s); the
    mirror's own CPU per tick (mirror process + broker JVM) with transactions and, with
    --baseline-root DIR, without them (serve run from that source tree, e.g. the commit before
    transactions); checkpoint bytes per tick (the checkpoint topic read back, and its log
    segments); and at --lag-rate (default 50,000/s) the lag until a read_committed reader sees
    each tick (receive time - the tick's ts: p50/p99/max, share under 1 s; target: median of the
    runs' p99 under 1 s), beside the /metrics-based lag of Part A. Part A's flat-out ON/OFF
    publish-rate ratio is reported but no target any more: on 2 cores it measures how the cores
    are shared between the hot path, the mirror and the broker, not the design.

Usage: python scripts/bench_mirror.py [--duration 10] [--repeats 3] [--outage 60]
                                     [--skip-rate] [--skip-outage] [--skip-transactions]
                                     [--baseline-root DIR] [--json FILE] [--plot FILE.png]
                                     [--lag-plot FILE.png]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import confluent_kafka

from feedsvc.bench.kafka import KAFKA_SCRIPT, PROJECT_ROOT, BrokerError, KafkaBroker
from feedsvc.bench.procs import ProcessError
from feedsvc.bench.report import Progress, machine_facts, write_json
from feedsvc.bench.scenarios.mirror_analysis import PACED_RATE, rate_figures
from feedsvc.bench.scenarios.mirror_cost import COST_RATE, transactions_figures
from feedsvc.bench.scenarios.mirror_cost_report import plot_visibility, print_transactions
from feedsvc.bench.scenarios.mirror_cost_runs import run_transactions_part
from feedsvc.bench.scenarios.mirror_pollers import broker_step
from feedsvc.bench.scenarios.mirror_report import (
    plot_outage,
    print_header,
    print_outage,
    print_rate,
)
from feedsvc.bench.scenarios.mirror_runs import run_outage_part, run_rate_part
from feedsvc.bench.scenarios.publish_roles import DEFAULT_HWM

progress = Progress("bench_mirror")


def broker_facts() -> dict[str, Any]:
    version = re.search(r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([^}]+)\}"', KAFKA_SCRIPT.read_text())
    try:
        java = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        java = None
    return {
        "kafka_version": os.environ.get("KAFKA_VERSION") or (version and version.group(1)),
        "java": java,
        "confluent_kafka": importlib.metadata.version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
    }


def source_facts() -> dict[str, Any]:
    """The commit measured and whether feedsvc/ differs from it (others may edit the tree)."""

    def git(*args: str) -> str | None:
        try:
            completed = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=30, cwd=PROJECT_ROOT
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return completed.stdout.rstrip() if completed.returncode == 0 else None

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "feedsvc_changed": git("status", "--porcelain", "--", "feedsvc") or "",
    }


class Interrupted(Exception):
    """SIGTERM to the benchmark: unwinds through every finally (processes, broker)."""


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise Interrupted


@contextlib.contextmanager
def running_broker(root: Path) -> Iterator[tuple[KafkaBroker, float]]:
    """A broker for the whole benchmark, with the seconds its start took; stopped at the end."""
    broker = KafkaBroker(root / "kafka")
    try:
        progress(f"starting a Kafka broker at {broker.bootstrap} (data in {broker.data_dir})")
        start_s = broker_step(broker.start, progress)
        progress(f"broker answers after {start_s:.1f} s (pid {broker.pid()})")
        yield broker, start_s
    finally:
        progress("stopping the broker (scripts/kafka.sh stop)")
        try:
            broker_step(broker.stop, progress)
        except BrokerError as error:
            progress(f"{error}; broker pid {broker.pid()} may still run")


def json_settings(options: argparse.Namespace) -> dict[str, Any]:
    """The options as the JSON's "settings" (paths as text, --json itself left out)."""
    return {
        name: str(value) if isinstance(value, Path) else value
        for name, value in (vars(options) | {"json": None}).items()
    }


def run_benchmark(options: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    facts = {**machine_facts(), **broker_facts(), **source_facts()}
    root = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    workdir = root / "runs"
    workdir.mkdir()
    figures: dict[str, Any] = {"machine": facts, "settings": json_settings(options)}
    rate_runs: list[dict[str, Any]] = []
    cost_runs: list[dict[str, Any]] = []
    lag_runs: list[dict[str, Any]] = []
    outage: dict[str, Any] | None = None
    try:
        with running_broker(root) as (broker, start_s):
            figures["broker_start_s"] = start_s
            if not options.skip_rate:
                rate_runs = run_rate_part(options, broker, workdir, progress)
            if not options.skip_transactions:
                cost_runs, lag_runs = run_transactions_part(options, broker, workdir, progress)
            if not options.skip_outage:
                outage = run_outage_part(
                    options, broker, workdir, max(10.0, start_s + 5.0), progress
                )
    except (ProcessError, BrokerError, KeyboardInterrupt, Interrupted) as error:
        reason = str(error) if isinstance(error, ProcessError | BrokerError) else "interrupted"
        progress(f"{reason}\n(logs kept in {workdir})")
        return 1
    shutil.rmtree(root, ignore_errors=True)

    print_header(facts, options, figures["broker_start_s"])
    print()
    if rate_runs:
        figures["rate"] = {**rate_figures(rate_runs), "runs": rate_runs}
        print_rate(options, figures["rate"], rate_runs)
        print()
    if cost_runs or lag_runs:
        figures["transactions"] = {
            **transactions_figures(cost_runs, lag_runs),
            "runs": cost_runs,
            "lag_runs": lag_runs,
        }
        print_transactions(options, figures["transactions"], cost_runs, lag_runs)
        print()
        if options.lag_plot:
            plot_visibility(lag_runs, options.lag_plot, progress)
    if outage is not None:
        print_outage(options, outage)
        figures["outage"] = outage
        if options.plot:
            plot_outage(outage, options.plot, progress)
    figures["load_average_1m_at_end"] = os.getloadavg()[0]
    if options.json:
        write_json(options.json, figures)
        print(f"figures written to {options.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="The Kafka mirror's cost to the publish rate and its survival of a broker "
        "outage, against a real broker started by scripts/kafka.sh."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per Part A window")
    parser.add_argument("--repeats", type=int, default=3, help="Part A runs of OFF and of ON")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before a window")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the broker is down")
    parser.add_argument(
        "--after",
        type=float,
        default=60.0,
        help="Part B: seconds observed after the broker is back (the drain)",
    )
    parser.add_argument(
        "--flush-timeout",
        type=float,
        default=120.0,
        help="kafka.flush_timeout_s of the mirror-ON runs (the shutdown's Kafka flush)",
    )
    parser.add_argument("--symbols", type=int, default=50, help="synthetic symbols")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra `feedsvc serve --set` for the mirror-ON runs, to try a tuning "
        "(e.g. 'kafka.producer={compression.type: none}')",
    )
    parser.add_argument("--hwm", type=int, default=DEFAULT_HWM, help="SNDHWM and RCVHWM")
    parser.add_argument("--skip-rate", action="store_true", help="skip Part A (rate)")
    parser.add_argument("--skip-outage", action="store_true", help="skip Part B (outage)")
    parser.add_argument(
        "--skip-transactions",
        action="store_true",
        help="skip the transactions section (CPU and bytes per tick, visibility lag)",
    )
    parser.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="a feedsvc source tree to run the no-transactions rows from (PYTHONPATH=DIR, cwd "
        "DIR), e.g. `git archive bd05b99 | tar -x -C DIR`; --set applies to this tree only",
    )
    parser.add_argument(
        "--cost-rate",
        type=int,
        default=COST_RATE,
        help="synthetic.rate of the CPU-per-tick runs (mirror on and off publish the same ticks)",
    )
    parser.add_argument(
        "--lag-rate", type=int, default=PACED_RATE, help="synthetic.rate of the visibility runs"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--plot", type=Path, default=None, help="PNG of the outage run's throughput (matplotlib)"
    )
    parser.add_argument(
        "--lag-plot",
        type=Path,
        default=None,
        help="PNG of the visibility lag over the lag runs' windows (matplotlib)",
    )
    return parser


def options_problem(options: argparse.Namespace) -> str | None:
    """Why these options cannot run, or None."""
    if (
        options.duration <= 0
        or options.repeats < 1
        or options.warmup < 0
        or options.outage <= 0
        or options.after <= 0
        or options.symbols < 1
        or options.flush_timeout <= 0
    ):
        return (
            "--duration, --repeats, --outage, --after, --symbols, "
            "--flush-timeout must be positive, --warmup >= 0"
        )
    if options.cost_rate <= 0 or options.lag_rate <= 0:
        return "--cost-rate and --lag-rate must be positive (ticks per second)"
    root = options.baseline_root
    if root is not None and not (root / "feedsvc" / "cli").is_dir():
        return f"--baseline-root {root}: no feedsvc source tree there (feedsvc/cli/ missing)"
    if options.skip_rate and options.skip_outage and options.skip_transactions:
        return "nothing to do (--skip-rate, --skip-outage and --skip-transactions)"
    return None


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    problem = options_problem(options)
    if problem is not None:
        progress(problem)
        return 2
    return run_benchmark(options)
