"""bench_mirror's "transactions" report on stdout (CPU per tick, checkpoint bytes, visibility
lag, with their targets) and its plot: the visibility lag over each lag run's window."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.report import cores, fixed, fraction, pyplot_or_none, rate
from feedsvc.bench.scenarios.mirror_cost import HOT_PATH_TARGET, VISIBILITY_TARGET_S

# Microseconds and bytes per tick with 2 decimals; seconds and ratios with 3.
_us = _bytes = partial(fixed, places=2)
_s = _ratio = partial(fixed, places=3)


COST_COLUMNS: Final[tuple[tuple[str, str, Callable[[float | None], str], int], ...]] = (
    ("published/s", "published_per_s_median", rate, 11),
    ("dropped", "drop_fraction_median", fraction, 7),
    ("serve us/tick", "serve_us_per_tick_median", _us, 13),
    ("mirror us/tick", "mirror_us_per_tick_median", _us, 14),
    ("broker us/tick", "broker_us_per_tick_median", _us, 14),
    ("mirror+broker", "mirror_and_broker_us_per_tick_median", _us, 13),
    ("ckpt B/tick", "checkpoint_bytes_per_tick_median", _bytes, 11),
    ("ckpt disk B/t", "checkpoint_disk_bytes_per_tick_median", _bytes, 13),
    ("topic disk B/t", "topic_disk_bytes_per_tick_median", _bytes, 14),
)
COST_ROWS: Final = (
    ("off", "mirror OFF"),
    ("off-twin", "OFF + mirror's load"),
    ("on", "ON, transactions"),
    ("on-no-txn", "ON, no txn (baseline)"),
)
LAG_ROWS: Final = (("lag-on", "transactions"), ("lag-no-txn", "no txn (baseline)"))
LEGEND: Final = (
    "serve us/tick: the serve process's own CPU (utime+stime of its threads: hot path, libzmq, "
    "hand-off, supervision; its mirror child is not in it) over the window / ticks published in it",
    "mirror us/tick: the mirror process's CPU / the same ticks; broker: the broker JVM's, idle "
    "work included (mirror OFF row: the broker idling)",
    "OFF + mirror's load: mirror OFF, with the same mirror process and broker load beside serve "
    "(bench.scenarios.mirror_twin: a MirrorHandoff fed pre-encoded frames at the same rate)",
    "ckpt B/tick: key + value bytes of the checkpoint records read back (read_committed) / ticks "
    "the mirror delivered in the run; disk: log segment bytes of the checkpoint topic / the same",
    "topic disk B/t: log segment bytes of the tick topic (lz4 batches, transaction markers) per "
    "tick delivered",
)


def cost_table_lines(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    header = f"{'':24}" + "".join(f" {title:>{width}}" for title, _, _, width in COST_COLUMNS)
    rule = "-" * len(header)
    body = [
        f"{name:24}"
        + "".join(
            f" {render(summary[label].get(key)):>{width}}" for _, key, render, width in COST_COLUMNS
        )
        for label, name in COST_ROWS
        if label in summary
    ]
    return [header, rule, *body, rule]


def lag_lines(figures: Mapping[str, Any], lag_runs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for label, name in LAG_ROWS:
        summary = figures["lag_summary"].get(label)
        if summary is None:
            continue
        runs = [run for run in lag_runs if run["label"] == label]
        per_run = "; ".join(
            f"p50 {_s(run.get('p50_s'))} p99 {_s(run.get('p99_s'))} max {_s(run.get('max_s'))}"
            for run in runs
        )
        under = summary.get("share_under_target_median")
        lines.append(
            f"  {name:18} medians: p50 {_s(summary.get('p50_s_median'))} s, p99 "
            f"{_s(summary.get('p99_s_median'))} s, max {_s(summary.get('max_s_median'))} s, "
            f"under {VISIBILITY_TARGET_S:g} s {fraction(under)}; /metrics lag max "
            f"{_s(summary.get('metrics_lag_s_max_median'))} s"
        )
        lines.append(f"  {'':18} runs: {per_run}")
    return lines


def print_transactions(
    options: argparse.Namespace,
    figures: Mapping[str, Any],
    cost_runs: Sequence[Mapping[str, Any]],
    lag_runs: Sequence[Mapping[str, Any]],
) -> None:
    """The section's tables, ratios and verdicts (`figures` from transactions_figures)."""
    baseline = options.baseline_root
    print(
        f"Transactions: CPU and bytes per tick at a paced {options.cost_rate:,} ticks/s, medians "
        f"of {options.repeats} alternating runs"
        + (f"; no-txn rows run serve from {baseline}" if baseline else "")
    )
    print("\n".join(cost_table_lines(figures["summary"])))
    pairs = " ".join(_ratio(value) for value in figures["hot_path_ratio_per_pair"])
    print(
        f"hot path CPU per tick, OFF/ON: {_ratio(figures['hot_path_ratio'])}   target >= "
        f"{HOT_PATH_TARGET}   {figures['hot_path_verdict']}   (per pair: {pairs}"
        + (
            f"; without transactions OFF/ON {_ratio(figures['hot_path_ratio_no_txn'])})"
            if figures["hot_path_ratio_no_txn"] is not None
            else ")"
        )
    )
    if figures.get("hot_path_ratio_same_load") is not None:
        same = " ".join(_ratio(value) for value in figures["hot_path_ratio_same_load_per_pair"])
        print(
            "  with the mirror's load beside serve in both runs (OFF + mirror's load / ON): "
            f"{_ratio(figures['hot_path_ratio_same_load'])}   target >= {HOT_PATH_TARGET}   "
            f"{figures['hot_path_same_load_verdict']}   (per pair: {same}); sharing the cores "
            f"alone, OFF / OFF + mirror's load: {_ratio(figures['sharing_ratio'])}"
        )
    children = [run.get("serve_children_cpu_s") for run in cost_runs]
    print(
        "  serve's waited-for children's CPU over the windows (cutime+cstime: must be 0, the "
        f"mirror is not in serve's figure): {' '.join(cores(value) for value in children)} s"
    )
    restarted = [
        f"{run['label']} {run['restarts']}"
        for run in [*cost_runs, *lag_runs]
        if run.get("restarts")
    ]
    if restarted:
        print(
            "  mirror process restarts during runs (serve restarted a dead mirror; its CPU is "
            f"counted on): {', '.join(restarted)}"
        )
    summary = figures["summary"]
    if "on-no-txn" in summary:
        key = "mirror_and_broker_us_per_tick_median"
        print(
            f"mirror + broker CPU per tick: transactions {_us(summary['on'].get(key))} us, "
            f"without {_us(summary['on-no-txn'].get(key))} us (ratio "
            f"{_ratio(figures['mirror_cost_ratio_txn_over_no_txn'])}); broker idle "
            f"{cores(figures['broker_idle_cores'])} cores"
        )
    checkpoints = [run.get("checkpoint") or {} for run in cost_runs if run["label"] == "on"]
    records = " ".join(str(found.get("records")) for found in checkpoints)
    print(
        f"checkpoint bytes per tick: {_bytes(figures['checkpoint_bytes_per_tick'])} "
        f"(records per run: {records}; a tick is "
        f"{rate(summary.get('on', {}).get('mean_tick_bytes_median'))} bytes on the wire)"
        if checkpoints
        else "checkpoint bytes per tick: -"
    )
    print()
    print(
        f"Visibility lag at {options.lag_rate:,} ticks/s: a read_committed reader's receive time "
        f"minus each tick's ts, over the window, {options.repeats} runs"
    )
    print("\n".join(lag_lines(figures, lag_runs)))
    print(
        f"visibility lag, median of p99: {_s(figures['visibility_p99_s_median'])} s (max of all "
        f"runs {_s(figures['visibility_max_s'])} s)   target < {VISIBILITY_TARGET_S:g} s   "
        f"{figures['visibility_verdict']}"
    )
    print("\n".join(f"  {line}" for line in LEGEND))


def plot_visibility(
    lag_runs: Sequence[Mapping[str, Any]], path: Path, progress: Callable[[str], None]
) -> None:
    """p50/p99/max visibility lag per second of each lag run's window (matplotlib)."""
    plt = pyplot_or_none(progress)
    if plt is None:
        return
    figure, axes = plt.subplots(figsize=(10, 5))
    colors = {"lag-on": "tab:blue", "lag-no-txn": "tab:orange"}
    names = dict(LAG_ROWS)
    seen: set[str] = set()
    for run in lag_runs:
        series = run.get("visibility_series") or []
        if not series:
            continue
        label = run["label"]
        times = [point[0] for point in series]
        for column, style in ((1, ":"), (2, "-"), (3, "--")):
            legend = None
            if label not in seen:
                legend = f"{names.get(label, label)}: {('p50', 'p99', 'max')[column - 1]}"
            axes.plot(
                times,
                [point[column] for point in series],
                style,
                color=colors.get(label, "tab:grey"),
                label=legend,
                alpha=0.8,
            )
            if column == 3:
                seen.add(label)
    axes.axhline(VISIBILITY_TARGET_S, color="tab:red", alpha=0.5, label="target")
    axes.set_xlabel("seconds since the measurement window began")
    axes.set_ylabel("receive time - tick ts (s)")
    axes.set_title(
        f"feedsvc mirror: tick visibility for a read_committed reader at "
        f"{lag_runs[0]['rate']:,.0f} ticks/s, per second"
        if lag_runs
        else "no lag runs"
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"plot written to {path}")
