"""What one unauthenticated peer can do to `feedsvc serve`: each attack of `feedsvc.bench.hostile`
against a fresh service on loopback, measured by a plain SUB (the victim).

A baseline run first (no attack, `--baseline-duration` s), then per attack a fresh serve
process, the victim receiving, the attack in its own process for `--duration` s, a settle time,
then SIGTERM timed to exit. Per run: the victim's rate as a ratio of synthetic.rate, gaps, the
longest heartbeat silence, latency p50/p99, peak RSS and RSS after, whether serve survived, the
SIGTERM-to-exit time and the tracebacks in its log. A serve passing `--rss-limit-gb` is killed
(by its pid) and the run recorded as stopped there. Progress goes to stderr, the results as one
JSON document to `--json` (default stdout), a bar chart to `--plot`.

    nice .venv/bin/python scripts/bench_attacks.py --scale 0.2 --duration 5 --json /tmp/a.json
    nice .venv/bin/python scripts/bench_attacks.py --attack slowloris --attack http_reset

`--serve-root DIR` runs serve from another copy of the project, e.g. the last commit without
the working tree's changes: `git archive HEAD | tar -x -C /tmp/before`, then
`--serve-root /tmp/before --label before`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from feedsvc.bench import hostile
from feedsvc.bench.kafka import PROJECT_ROOT
from feedsvc.bench.procs import (
    RssSampler,
    free_tcp_ports,
    kill_process,
    serve_command,
    sigterm_exit_seconds,
)
from feedsvc.bench.report import Progress, ratio, write_json
from feedsvc.bench.scenarios.attacks_plot import MB, plot

READY_TIMEOUT_S: Final = 30.0
# A run's figures count as an effect beyond these (the findings list; the raw figures are kept).
RATE_DEGRADED: Final = 0.9
RSS_GROWTH_BYTES: Final = 100 * MB
SLOW_EXIT_S: Final = 5.0
HEARTBEAT_SILENCE_S: Final = 3.0
# A latency p50 above this and 5x the baseline's counts as an effect (p99 is too noisy here).
LATENCY_FLOOR_MS: Final = 1.0
# The log is read for one check only, that serve logged no traceback (and why it exited): no
# figure comes from it.
_TRACEBACK: Final = "Traceback (most recent call last):"
_EXCEPTION_LINE: Final = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
_LOG_LINE_CHARS: Final = 300

progress = Progress("bench_attacks")


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    endpoints: hostile.Endpoints
    log_path: Path
    command: list[str]


def _default_python() -> str:
    venv_python = PROJECT_ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def loopback_endpoints() -> hostile.Endpoints:
    """The four endpoints of one serve process, each on its own free loopback port."""
    publisher, ingest, sync, metrics = free_tcp_ports(4)
    return hostile.Endpoints(
        publisher=f"tcp://127.0.0.1:{publisher}",
        ingest=f"tcp://127.0.0.1:{ingest}",
        sync=f"tcp://127.0.0.1:{sync}",
        metrics_port=metrics,
    )


def serve_settings(args: argparse.Namespace, endpoints: hostile.Endpoints) -> list[str]:
    """The --set overrides of a run: loopback tcp only (no ipc file shared with other runs)."""
    return [
        f"publisher.endpoints=[{endpoints.publisher}]",
        f"ingest.endpoint={endpoints.ingest}",
        f"sync.endpoint={endpoints.sync}",
        "recovery.endpoint=",
        f"metrics.port={endpoints.metrics_port}",
        f"metrics.host={endpoints.metrics_host}",
        f"synthetic.rate={args.rate:g}",
        f"synthetic.symbols={args.symbols}",
        "kafka.enabled=false",
        *args.set,
    ]


def start_serve(args: argparse.Namespace, log_dir: Path, label: str) -> Serve:
    endpoints = loopback_endpoints()
    # No --summary-file: --serve-root may be a copy of the project from before it existed.
    command = serve_command(serve_settings(args, endpoints), python=args.python)
    log_path = log_dir / f"serve-{label}.log"
    # The serve root's package first: --serve-root runs another copy (e.g. the code before a fix).
    env = {**os.environ, "PYTHONPATH": str(args.serve_root)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=args.serve_root, env=env
        )
    return Serve(process, endpoints, log_path, command)


def log_figures(lines: Sequence[str] | None) -> dict[str, Any]:
    """Tracebacks in a serve log and the last exception line (why it exited, if it did); None
    lines = no log to read."""
    if lines is None:
        return {"tracebacks": None, "last_exception": None, "log_tail": []}
    last_exception = next(
        (line[:_LOG_LINE_CHARS] for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None
    )
    return {
        "tracebacks": sum(line.startswith(_TRACEBACK) for line in lines),
        "last_exception": last_exception,
        "log_tail": [line[:_LOG_LINE_CHARS] for line in lines[-8:]],
    }


def read_log_figures(log_path: Path) -> dict[str, Any]:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return log_figures(None)
    return log_figures(lines)


def measure(args: argparse.Namespace, attack: str | None, log_dir: Path) -> dict[str, Any]:
    """One run against a fresh serve: the baseline (attack None) or one attack."""
    label = attack or "baseline"
    duration_s = args.duration if attack else args.baseline_duration
    parameters = hostile.scaled_parameters(attack, args.scale) if attack else {}
    run: dict[str, Any] = {"attack": label, "parameters": parameters, "duration_s": duration_s}
    serve = start_serve(args, log_dir, label)
    run["serve_pid"] = serve.process.pid
    limit_bytes = int(args.rss_limit_gb * 1024**3)

    def stop_at_limit(_rss: int) -> None:
        serve.process.kill()  # by its own pid: the bound on what this run may take

    sampler = RssSampler(serve.process.pid, 0.2, limit_bytes, stop_at_limit)
    victim = hostile.Victim(serve.endpoints.publisher)
    attacker = None
    try:
        sampler.start()
        victim.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not victim.wait_receiving(0.2):
            if serve.process.poll() is not None or time.monotonic() > deadline:
                run["failed"] = "the victim received nothing from serve"
                run.update(read_log_figures(serve.log_path))
                return run
        if attack:
            attacker = hostile.start_attack(attack, serve.endpoints, duration_s, parameters)
        victim.mark()
        sampler.limit_hit.wait(duration_s)
        run["victim"] = victim.stop()
        if attacker is not None:
            wait_s = 0.0 if sampler.limit_hit.is_set() else 15.0
            run["attacker"] = hostile.collect_attack(attacker, timeout_s=wait_s)
        alive = serve.process.poll() is None
        if alive:
            # What stays once the attacker has gone (caches, queues, fragmentation).
            time.sleep(args.settle)
            alive = serve.process.poll() is None
        run.update(_memory_figures(sampler.stop(), alive))
        run["stopped_at_rss_limit"] = sampler.limit_hit.is_set()
        run["alive"] = alive
        run["exit_code"] = None if alive else serve.process.returncode
        exit_s = sigterm_exit_seconds(serve.process, args.sigterm_timeout) if alive else None
        run["sigterm_exit_s"] = None if exit_s is None else round(exit_s, 3)
        run["sigterm_timed_out"] = alive and exit_s is None
    finally:
        victim.stop()
        sampler.stop()
        if attacker is not None:
            kill_process(attacker)
        kill_process(serve.process)
    run.update(read_log_figures(serve.log_path))
    run["rate_ratio"] = rate_ratio(run["victim"]["rate_per_s"], args.rate)
    return run


def _memory_figures(sampled: dict[str, Any], alive: bool) -> dict[str, Any]:
    """The sampler's figures, with the last sample as "rss_after_bytes" (only if serve lived on:
    a dead process's last sample is not what it kept)."""
    figures = dict(sampled)
    last_rss = figures.pop("last_rss_bytes")
    figures["rss_after_bytes"] = last_rss if alive else None
    return figures


def rate_ratio(rate_per_s: float | None, configured: float) -> float | None:
    """The victim's rate over the configured synthetic.rate, 4 decimals."""
    value = ratio(rate_per_s, configured)
    return None if value is None else round(value, 4)


def findings(run: dict[str, Any], baseline: dict[str, Any] | None, limit_gb: float) -> list[str]:
    """What the run shows beyond the baseline, in words (the figures stay in the run)."""
    if "failed" in run:
        return [run["failed"]]
    found = []
    if run["stopped_at_rss_limit"]:
        found.append(f"stopped at {limit_gb:g} GB")
    elif not run["alive"]:
        reason = run["last_exception"] or f"exit code {run['exit_code']}"
        found.append(f"service exited ({reason})")
    rate_share = run["rate_ratio"]
    if rate_share is not None and rate_share < RATE_DEGRADED:
        found.append(f"feed {rate_share:.2f}x")
    victim = run["victim"]
    if victim["missed"]:
        found.append(f"{victim['missed']} ticks missed in {victim['gaps']} gaps")
    heartbeat_gap = victim["max_heartbeat_gap_s"]
    if heartbeat_gap is not None and heartbeat_gap > HEARTBEAT_SILENCE_S:
        found.append(f"no heartbeat for {heartbeat_gap:.1f} s")
    base_p50 = ((baseline or {}).get("victim") or {}).get("latency_ms", {}).get("p50")
    p50 = victim["latency_ms"]["p50"]
    if p50 is not None and base_p50 and p50 >= LATENCY_FLOOR_MS and p50 > 5 * base_p50:
        found.append(f"latency p50 {p50:.2f} ms (baseline {base_p50:.2f})")
    base_rss = (baseline or {}).get("peak_rss_bytes") or 0
    if run["peak_rss_bytes"] and run["peak_rss_bytes"] - base_rss > RSS_GROWTH_BYTES:
        found.append(f"RSS peak +{(run['peak_rss_bytes'] - base_rss) / MB:.0f} MB")
    if run["rss_after_bytes"] and run["rss_after_bytes"] - base_rss > RSS_GROWTH_BYTES:
        found.append(f"+{(run['rss_after_bytes'] - base_rss) / MB:.0f} MB kept after")
    if run["sigterm_timed_out"]:
        found.append("SIGTERM: no exit in time, killed")
    elif run["sigterm_exit_s"] is not None and run["sigterm_exit_s"] > SLOW_EXIT_S:
        found.append(f"SIGTERM took {run['sigterm_exit_s']:.1f} s")
    if run["tracebacks"]:
        found.append(f"{run['tracebacks']} tracebacks in the log")
    if run.get("attacker", {}).get("probe_received") == 0:
        found.append("a new SUB got nothing")
    return found


def outcome(found: Sequence[str]) -> str:
    return "; ".join(found) or "no effect measured"


def summary_line(run: dict[str, Any]) -> str:
    """One progress line for a finished run."""
    if "failed" in run:
        return f"FAILED: {run['failed']}"
    peak = (run.get("peak_rss_bytes") or 0) / MB
    exit_s = run.get("sigterm_exit_s")
    return (
        f"feed {run['rate_ratio']:.2f}x, peak RSS {peak:.0f} MB, "
        f"alive={run['alive']}, SIGTERM exit "
        f"{'-' if exit_s is None else f'{exit_s:.1f} s'}; " + outcome(run["findings"])
    )


def report_header(args: argparse.Namespace, command: Sequence[str]) -> dict[str, Any]:
    """The report before any run: what was measured, with which settings, on what."""
    return {
        "benchmark": "bench_attacks",
        "label": args.label,
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": list(command),
        "settings": {
            "rate": args.rate,
            "symbols": args.symbols,
            "duration_s": args.duration,
            "baseline_duration_s": args.baseline_duration,
            "scale": args.scale,
            "set": args.set,
            "rss_limit_gb": args.rss_limit_gb,
            "settle_s": args.settle,
            "sigterm_timeout_s": args.sigterm_timeout,
            "serve_root": str(args.serve_root),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
    }


def read_report(path: Path) -> dict[str, Any]:
    """An earlier run's --json (for --compare and --replot)."""
    return orjson.loads(path.read_bytes())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_attacks.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--attack",
        action="append",
        choices=sorted(hostile.ATTACKS),
        metavar="NAME",
        help=f"repeatable; default all: {', '.join(hostile.ATTACKS)}",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="attack window, s")
    parser.add_argument("--baseline-duration", type=float, default=5.0)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies each attack's volume (0.2 = quick)"
    )
    parser.add_argument("--rate", type=float, default=10_000.0, help="synthetic.rate")
    parser.add_argument("--symbols", type=int, default=50, help="synthetic.symbols")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="passed to serve"
    )
    parser.add_argument("--json", type=Path, default=None, help="results (default stdout)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG bar chart")
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="JSON",
        help="an earlier run's --json (e.g. before a change), drawn beside this one",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="run nothing: draw the --compare runs into --plot",
    )
    parser.add_argument("--rss-limit-gb", type=float, default=3.0, help="kill serve beyond")
    parser.add_argument("--settle", type=float, default=2.0, help="s after the attack, for RSS")
    parser.add_argument("--sigterm-timeout", type=float, default=60.0)
    parser.add_argument(
        "--serve-root",
        type=Path,
        default=PROJECT_ROOT,
        help="project folder whose feedsvc package serve runs (default: this one)",
    )
    parser.add_argument("--python", default=_default_python(), help="interpreter for serve")
    parser.add_argument("--label", default="current code", help="names the code measured")
    args = parser.parse_args(argv)
    args.serve_root = args.serve_root.resolve()
    if not 0 < args.scale <= 1_000:
        parser.error("--scale must be > 0")
    if args.replot and (args.plot is None or not args.compare):
        parser.error("--replot draws the --compare runs into --plot: give both")
    return args


def run_all(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The baseline, then each attack, into `report` ("baseline", "attacks")."""
    attacks = args.attack or list(hostile.ATTACKS)
    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as log_dir:
        progress(f"baseline: {args.baseline_duration:g} s, no attack")
        baseline = measure(args, None, Path(log_dir))
        baseline["findings"] = findings(baseline, None, args.rss_limit_gb)
        report["baseline"] = baseline
        progress(f"baseline: {summary_line(baseline)}")
        report["attacks"] = []
        for number, attack in enumerate(attacks, 1):
            parameters = hostile.scaled_parameters(attack, args.scale)
            progress(f"[{number}/{len(attacks)}] {attack}: start {parameters}")
            started = time.monotonic()
            try:
                run = measure(args, attack, Path(log_dir))
            except Exception as error:  # recorded: the other attacks still run
                run = {"attack": attack, "parameters": parameters, "failed": repr(error)}
            run["findings"] = findings(run, baseline, args.rss_limit_gb)
            run["outcome"] = outcome(run["findings"])
            report["attacks"].append(run)
            progress(
                f"[{number}/{len(attacks)}] {attack}: {time.monotonic() - started:.1f} s: "
                f"{summary_line(run)}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        plot([read_report(path) for path in args.compare], args.plot)
        return 0
    report = report_header(args, sys.argv)
    run_all(args, report)
    if args.json is None:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        write_json(args.json, report)
    if args.plot is not None:
        plot([*(read_report(path) for path in args.compare), report], args.plot)
    return 0
