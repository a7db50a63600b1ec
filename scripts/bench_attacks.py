#!/usr/bin/env python3
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
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from feedsvc.bench import hostile  # noqa: E402

READY_TIMEOUT_S = 30.0
MB = 1024 * 1024
# A run's figures count as an effect beyond these (the findings list; the raw figures are kept).
RATE_DEGRADED = 0.9
RSS_GROWTH_BYTES = 100 * MB
SLOW_EXIT_S = 5.0
# A latency p50 above this and 5x the baseline's counts as an effect (p99 is too noisy here).
LATENCY_FLOOR_MS = 1.0
_TRACEBACK = "Traceback (most recent call last):"


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    endpoints: hostile.Endpoints
    log_path: Path
    command: list[str]


def _default_python() -> str:
    venv_python = PROJECT_ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def serve_settings(args: argparse.Namespace, endpoints: hostile.Endpoints) -> list[str]:
    """The --set overrides of a run: loopback tcp only (no ipc file shared with other runs)."""
    return [
        f"publisher.endpoints=[{endpoints.publisher}]",
        f"ingest.endpoint={endpoints.ingest}",
        f"sync.endpoint={endpoints.sync}",
        f"metrics.port={endpoints.metrics_port}",
        f"metrics.host={endpoints.metrics_host}",
        f"synthetic.rate={args.rate:g}",
        f"synthetic.symbols={args.symbols}",
        "kafka.enabled=false",
        *args.set,
    ]


def start_serve(args: argparse.Namespace, log_dir: Path, label: str) -> Serve:
    ports = [hostile.free_tcp_port() for _ in range(4)]
    endpoints = hostile.Endpoints(
        publisher=f"tcp://127.0.0.1:{ports[0]}",
        ingest=f"tcp://127.0.0.1:{ports[1]}",
        sync=f"tcp://127.0.0.1:{ports[2]}",
        metrics_port=ports[3],
    )
    command = [args.python, "-m", "feedsvc.cli", "serve"]
    for setting in serve_settings(args, endpoints):
        command += ["--set", setting]
    log_path = log_dir / f"serve-{label}.log"
    # The serve root's package first: --serve-root runs another copy (e.g. the code before a fix).
    env = {**os.environ, "PYTHONPATH": str(args.serve_root)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=args.serve_root, env=env
        )
    return Serve(process, endpoints, log_path, command)


def log_figures(log_path: Path) -> dict[str, Any]:
    """Tracebacks in a serve log and the last exception line (why it exited, if it did)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {"tracebacks": None, "last_exception": None, "log_tail": []}
    tracebacks = sum(line.startswith(_TRACEBACK) for line in lines)
    last_exception = None
    exception_line = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
    for line in reversed(lines):
        if exception_line.match(line):
            last_exception = line[:300]
            break
    return {
        "tracebacks": tracebacks,
        "last_exception": last_exception,
        "log_tail": [line[:300] for line in lines[-8:]],
    }


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


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

    sampler = hostile.RssSampler(serve.process.pid, 0.2, limit_bytes, stop_at_limit)
    victim = hostile.Victim(serve.endpoints.publisher)
    attacker = None
    try:
        sampler.start()
        victim.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not victim.wait_receiving(0.2):
            if serve.process.poll() is not None or time.monotonic() > deadline:
                run["failed"] = "the victim received nothing from serve"
                run.update(log_figures(serve.log_path))
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
        run.update(sampler.stop())
        run["stopped_at_rss_limit"] = sampler.limit_hit.is_set()
        run["alive"] = alive
        last_rss = run.pop("last_rss_bytes")
        run["rss_after_bytes"] = last_rss if alive else None
        run["exit_code"] = None if alive else serve.process.returncode
        exit_s = (
            hostile.sigterm_exit_seconds(serve.process, args.sigterm_timeout) if alive else None
        )
        run["sigterm_exit_s"] = None if exit_s is None else round(exit_s, 3)
        run["sigterm_timed_out"] = alive and exit_s is None
    finally:
        victim.stop()
        sampler.stop()
        _kill(attacker)
        _kill(serve.process)
    run.update(log_figures(serve.log_path))
    run["rate_ratio"] = _ratio(run["victim"]["rate_per_s"], args.rate)
    return run


def _ratio(value: float | None, reference: float) -> float | None:
    return None if value is None or not reference else round(value / reference, 4)


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
    ratio = run["rate_ratio"]
    if ratio is not None and ratio < RATE_DEGRADED:
        found.append(f"feed {ratio:.2f}x")
    victim = run["victim"]
    if victim["missed"]:
        found.append(f"{victim['missed']} ticks missed in {victim['gaps']} gaps")
    heartbeat_gap = victim["max_heartbeat_gap_s"]
    if heartbeat_gap is not None and heartbeat_gap > 3.0:
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


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    """Bar chart per attack: the victim's rate ratio and the peak RSS, one bar per report (e.g.
    before and after a change), hatched where serve exited or was stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = [run["attack"] for run in [reports[-1]["baseline"], *reports[-1]["attacks"]]]
    figure, (rate_axes, rss_axes) = plt.subplots(
        1, 2, figsize=(12, 0.25 * len(names) * len(reports) + 2), sharey=True
    )
    height = 0.8 / len(reports)
    for index, report in enumerate(reports):
        by_name = {run["attack"]: run for run in [report["baseline"], *report["attacks"]]}
        runs = [by_name.get(name, {}) for name in names]
        positions = [row + index * height for row in range(len(names))]
        hatches = [
            "//" if run.get("stopped_at_rss_limit") or run.get("alive") is False else ""
            for run in runs
        ]
        ratios = [run.get("rate_ratio") or 0.0 for run in runs]
        peaks = [(run.get("peak_rss_bytes") or 0) / MB for run in runs]
        for axes, values in ((rate_axes, ratios), (rss_axes, peaks)):
            bars = axes.barh(positions, values, height=height, label=report["label"])
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
    rate_axes.set_yticks([row + 0.4 - height / 2 for row in range(len(names))], names)
    rate_axes.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    rate_axes.set_xlabel("victim rate / configured rate")
    rate_axes.invert_yaxis()
    rss_axes.set_xscale("log")
    rss_axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    rss_axes.set_xlabel("peak RSS of serve (MB, log)")
    rss_axes.legend(loc="lower right", fontsize="small")
    figure.suptitle("feedsvc under attack; hatched: serve exited or was stopped")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _summary_line(run: dict[str, Any]) -> str:
    if "failed" in run:
        return f"FAILED: {run['failed']}"
    peak = (run.get("peak_rss_bytes") or 0) / MB
    exit_s = run.get("sigterm_exit_s")
    return (
        f"feed {run['rate_ratio']:.2f}x, peak RSS {peak:.0f} MB, "
        f"alive={run['alive']}, SIGTERM exit "
        f"{'-' if exit_s is None else f'{exit_s:.1f} s'}; "
        + ("; ".join(run["findings"]) or "no effect measured")
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        plot([json.loads(path.read_text()) for path in args.compare], args.plot)
        return 0
    attacks = args.attack or list(hostile.ATTACKS)
    report: dict[str, Any] = {
        "benchmark": "bench_attacks",
        "label": args.label,
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
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
    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as log_dir:
        print(f"baseline: {args.baseline_duration:g} s, no attack", file=sys.stderr)
        baseline = measure(args, None, Path(log_dir))
        baseline["findings"] = findings(baseline, None, args.rss_limit_gb)
        report["baseline"] = baseline
        print(f"baseline: {_summary_line(baseline)}", file=sys.stderr)
        report["attacks"] = []
        for number, attack in enumerate(attacks, 1):
            parameters = hostile.scaled_parameters(attack, args.scale)
            print(f"[{number}/{len(attacks)}] {attack}: start {parameters}", file=sys.stderr)
            started = time.monotonic()
            try:
                run = measure(args, attack, Path(log_dir))
            except Exception as error:  # recorded: the other attacks still run
                run = {"attack": attack, "parameters": parameters, "failed": repr(error)}
            run["findings"] = findings(run, baseline, args.rss_limit_gb)
            run["outcome"] = "; ".join(run["findings"]) or "no effect measured"
            report["attacks"].append(run)
            print(
                f"[{number}/{len(attacks)}] {attack}: {time.monotonic() - started:.1f} s: "
                f"{_summary_line(run)}",
                file=sys.stderr,
            )
    document = json.dumps(report, indent=2)
    if args.json is None:
        print(document)
    else:
        args.json.write_text(document + "\n")
    if args.plot is not None:
        plot([*(json.loads(path.read_text()) for path in args.compare), report], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
