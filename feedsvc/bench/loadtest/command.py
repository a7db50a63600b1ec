"""The `feedsvc loadtest` command: its options, their checks, and the runs it makes (the service,
then with --baseline the raw pyzmq baseline) into one report: the table on stdout, JSON with
--report, PNGs with --plot.

Profiles
--------
- steady: one run at ``--rate``.
- burst: one run at ``--rate`` with spikes to ``--burst-factor`` x the rate for
  ``--burst-duration`` s every ``--burst-every`` s (`feedsvc.server.pacing.BurstSchedule`,
  windows on the Unix clock, so the service and the baseline publisher burst at the same moments).
- step: short steady runs of ``--step-duration`` s at rising rates (``--rate``, or 10k with rate
  0, times ``--step-factor`` each step) until a step is not sustained (achieved publish rate
  under 0.95 x the target, or gaps at a fast subscriber) or ``--max-steps``.

K of the N subscribers are slow: they sleep between reads to read at ``--slow-fraction`` of the
rate. How each figure is made: `feedsvc.bench.loadtest.analysis`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.latency import hdr_available
from feedsvc.bench.loadtest import plots
from feedsvc.bench.loadtest.analysis import (
    STEP_START_RATE,
    STEP_SUSTAINED_FRACTION,
    ratios,
    repeated_section,
    step_targets,
)
from feedsvc.bench.loadtest.render import print_table
from feedsvc.bench.loadtest.roles import make_curve_keys
from feedsvc.bench.loadtest.run import LoadtestError, measure, measure_steps
from feedsvc.bench.report import write_json

PROFILES: Final = ("steady", "step", "burst")
EXIT_USAGE: Final = 2
EXIT_FAILED: Final = 1


def check_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, or None."""
    if args.rate < 0 or args.duration <= 0 or args.symbols < 1 or args.subscribers < 1:
        return "--rate must be >= 0, --duration > 0, --symbols and --subscribers >= 1"
    if not 0 <= args.slow <= args.subscribers:
        return f"--slow must be between 0 and --subscribers ({args.subscribers})"
    if not 0 < args.slow_fraction <= 1:
        return "--slow-fraction must be > 0 and <= 1"
    if args.repeats < 1:
        return "--repeats must be >= 1"
    if args.ingest_batch < 1:
        return "--ingest-batch must be >= 1"
    if args.source == "ingest":
        if args.rate <= 0:
            return "--source ingest needs --rate > 0 (the feed handler is paced)"
        if args.profile != "steady" or args.curve or args.slow:
            return "--source ingest runs the steady profile, without --curve and --slow"
    if args.repeats > 1 and args.profile == "step":
        return "--repeats is for the steady and burst profiles (a step run repeats itself)"
    if args.mirror and not args.kafka_bootstrap:
        return "--mirror needs --kafka-bootstrap HOST:PORT"
    if args.curve and args.transport != "tcp":
        return "--curve needs --transport tcp (ipc endpoints are never encrypted)"
    if args.profile == "burst":
        if args.rate <= 0:
            return "--profile burst needs --rate > 0 (rate 0 is already as fast as possible)"
        if args.burst_factor <= 1:
            return "--burst-factor must be > 1"
        if not 1 <= args.burst_duration < args.burst_every:
            return "--burst-duration must be >= 1 and < --burst-every"
        if args.duration < args.burst_every:
            return f"--duration must be >= --burst-every ({args.burst_every}) to hold a burst"
    if args.profile == "step":
        if args.step_factor <= 1 or args.max_steps < 1:
            return "--step-factor must be > 1 and --max-steps >= 1"
        if args.step_duration is not None and args.step_duration <= 0:
            return "--step-duration must be > 0"
    if args.plot is not None:
        return plots.matplotlib_problem()
    return None


def run_from_args(args: argparse.Namespace) -> int:
    """The `feedsvc loadtest` command."""
    problem = check_usage(args)
    if problem is not None:
        print(f"feedsvc loadtest: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # ipc paths are limited to ~107 bytes: a short temporary folder.
    workdir = Path(tempfile.mkdtemp(prefix="lt-"))
    args.curve_dir = workdir / "keys" if args.curve else None
    if args.curve_dir is not None:
        make_curve_keys(args.curve_dir)
    report: dict[str, Any] = {
        "settings": {
            "profile": args.profile,
            "rate": args.rate,
            "duration_s": args.duration,
            "symbols": args.symbols,
            "subscribers": args.subscribers,
            "slow": args.slow,
            "slow_fraction": args.slow_fraction,
            "transport": args.transport,
            "source": args.source,
            "ingest_batch": args.ingest_batch if args.source == "ingest" else None,
            "repeats": args.repeats,
            "serve_settings": args.set,
            "mirror": args.mirror,
            "curve": args.curve,
            "latency_histogram": "hdr" if hdr_available() else "sorted raw values",
        }
    }
    settings = report["settings"]
    if args.profile == "burst":
        settings.update(
            burst_factor=args.burst_factor,
            burst_every_s=args.burst_every,
            burst_duration_s=args.burst_duration,
        )
    if args.profile == "step":
        settings.update(
            step_first_rate=step_targets(args.rate, args.step_factor, 1)[0],
            step_factor=args.step_factor,
            max_steps=args.max_steps,
            step_duration_s=args.step_duration or args.duration,
            step_sustained_fraction=STEP_SUSTAINED_FRACTION,
        )
    run = measure_steps if args.profile == "step" else measure
    kinds = ["feedsvc", *(["baseline"] if args.baseline else [])]
    try:
        # Alternating, so that a slow minute of the machine falls on both kinds alike.
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for number in range(1, args.repeats + 1):
            for kind in kinds:
                label = kind if args.repeats == 1 else f"{kind} run {number}/{args.repeats}"
                runs[kind].append(run(kind, args, workdir, label))
        for kind in kinds:
            report[kind] = runs[kind][0] if args.repeats == 1 else repeated_section(runs[kind])
        if args.baseline:
            report["ratios"] = ratios(report["feedsvc"], report["baseline"])
    except LoadtestError as error:
        print(f"feedsvc loadtest: {error}\n(logs kept in {workdir})", file=sys.stderr)
        return EXIT_FAILED
    shutil.rmtree(workdir)
    print_table(report)
    if args.report is not None:
        write_json(args.report, report)
        print(f"report written to {args.report}", file=sys.stderr)
    if args.plot is not None:
        for path in plots.write_plots(report, args.plot):
            print(f"plot written to {path}", file=sys.stderr)
    return 0


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `feedsvc loadtest`."""
    parser.add_argument(
        "--rate", type=float, default=10_000, help="ticks/s in total (0 = as fast as possible)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of measurement (with --profile step: per step, unless --step-duration)",
    )
    parser.add_argument("--symbols", type=int, default=50, help="synthetic symbols")
    parser.add_argument("--subscribers", type=int, default=4, help="subscriber processes")
    parser.add_argument("--slow", type=int, default=0, metavar="K", help="K of them are slow")
    parser.add_argument(
        "--slow-fraction",
        type=float,
        default=0.01,
        help="slow subscribers read at this fraction of --rate (default 0.01)",
    )
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    parser.add_argument(
        "--source",
        choices=("synthetic", "ingest"),
        default="synthetic",
        help="synthetic: the service's own synthetic feed; ingest: a feed-handler process PUSHes "
        "ticks (stamped ts_src) to the service's ingest endpoint, the path a desk runs, and the "
        "baseline is a minimal hand-written relay (PULL, decode, seq, encode, PUB); latency is "
        "reported from ts_src as well as from ts",
    )
    parser.add_argument(
        "--ingest-batch",
        type=int,
        default=1,
        metavar="N",
        help="--source ingest: ticks per ingest frame (1: one JSON object per frame; more: a "
        "JSON array)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra `feedsvc serve --set` for the service's runs, after the loadtest's own (to "
        "try a tuning, e.g. kafka.mirror_nice=10)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="N runs of each kind, alternating; the report gives the median of each figure and "
        "its spread over the runs (single runs on a 2-core machine are noisy)",
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="CurveZMQ on the tcp endpoint (needs --transport tcp): feedsvc with curve.enabled "
        "and a throwaway listed client key per run; with --baseline the raw PUB/SUB use Curve "
        "too, so the ratios compare like with like",
    )
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mirror to Kafka (needs --kafka-bootstrap)",
    )
    parser.add_argument("--kafka-bootstrap", default=None, metavar="HOST:PORT")
    parser.add_argument(
        "--kafka-topic", default=None, help="mirror topic (default: a new loadtest-... topic)"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="steady",
        help="steady: one run at --rate; burst: --rate with spikes (--burst-*); step: runs at "
        "rising rates until one is not sustained, reporting the highest sustained rate "
        "(--step-*, --max-steps)",
    )
    parser.add_argument(
        "--burst-factor",
        type=float,
        default=4.0,
        metavar="M",
        help="burst profile: the rate in a burst is M x --rate (default 4)",
    )
    parser.add_argument(
        "--burst-every",
        type=int,
        default=5,
        metavar="S",
        help="burst profile: a burst starts every S whole seconds of the clock (default 5)",
    )
    parser.add_argument(
        "--burst-duration",
        type=int,
        default=1,
        metavar="S",
        help="burst profile: each burst lasts S whole seconds (default 1)",
    )
    parser.add_argument(
        "--step-factor",
        type=float,
        default=1.5,
        help="step profile: each step's rate is the previous one's times this (default 1.5); "
        f"the first is --rate, or {STEP_START_RATE:,} with --rate 0",
    )
    parser.add_argument(
        "--step-duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="step profile: seconds of measurement per step (default: --duration)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=8,
        metavar="N",
        help="step profile: at most this many steps (default 8)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also run the same load (profile included) through raw pyzmq, and give ratios",
    )
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="write PNG plots here: latency and throughput over time (mirror lag with --mirror), "
        "or the steps (needs matplotlib: pip install feedsvc[bench])",
    )
