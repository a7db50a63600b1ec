"""bench_mirror's report on stdout: the machine and settings, Part A's tables and verdicts, Part
B's outage figures, one line per run for the progress, and the outage plot (matplotlib)."""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.report import cores, fraction, pyplot_or_none, rate
from feedsvc.bench.scenarios.mirror_analysis import (
    KEEPS_UP_FLUSH_S,
    LAG_TARGET_S,
    NOT_STALLED_FRACTION,
    OUTAGE_RATE,
    PACED_RATE,
    PARTITIONS,
    TARGET_RATIO,
    WATERMARK_MAX_GAP_S,
    backlog_left,
    rate_notes,
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


TABLE_COLUMNS: Final[tuple[tuple[str, str, Callable[[float | None], str], int], ...]] = (
    ("published/s", "published_per_s_median", rate, 11),
    ("received/s", "received_per_s_median", rate, 10),
    ("dropped", "drop_fraction_median", fraction, 7),
    ("acked/s", "acked_per_s_window_median", rate, 9),
    ("peak ack/s", "acked_per_s_peak_median", rate, 10),
    ("acked/pub", "acked_fraction_median", fraction, 9),
    ("flush s", "flush_s_median", _seconds, 7),
    ("serve", "publisher_cpu_cores_median", cores, 5),
    ("mirror", "mirror_cpu_cores_median", cores, 6),
    ("broker", "broker_cpu_cores_median", cores, 6),
    ("sub", "subscriber_cpu_cores_median", cores, 5),
    ("foreign", "foreign_cpu_cores_median", cores, 7),
    ("steal", "steal_cpu_cores_median", cores, 5),
)
RATE_LEGEND: Final = (
    "published/s: ticks published in the window (per-symbol seq spans seen by the subscriber)",
    "received/s: ticks the subscriber got; dropped: (published - received) / published",
    "acked/s: growth of the topic's high watermarks over the window (Kafka acknowledged); "
    "peak ack/s: the highest 1 s growth in the run, the final flush included",
    "acked/pub: at the end, the service's own count (--summary-file: mirror.delivered of "
    "published)",
    "flush s: SIGTERM to the end of the final hand-off and Kafka flush (mirror.flush_s)",
    "CPU (cores, over the window): serve process (hot path + libzmq thread), its mirror "
    "child, the broker JVM, the subscriber, all other processes, hypervisor steal",
)


def describe_run(result: Mapping[str, Any]) -> str:
    """One run in one line, for the progress on stderr."""
    text = (
        f"published {rate(result['published_per_s'])}/s, "
        f"received {rate(result['received_per_s'])}/s, "
        f"dropped {fraction(result['drop_fraction'])}"
    )
    if result["mirror"]:
        text += (
            f", acked in window {rate(result.get('acked_per_s_window'))}/s "
            f"(peak {rate(result.get('acked_per_s_peak'))}/s), "
            f"end: {result.get('acked')} of {result.get('published')} acked "
            f"({fraction(result.get('acked_fraction'))}), "
            f"flush {_seconds(result.get('flush_s'))} s"
        )
    return text + (
        f"; CPU serve {cores(result['publisher_cpu_cores'])} "
        f"mirror {cores(result['mirror_cpu_cores'])} "
        f"broker {cores(result['broker_cpu_cores'])} "
        f"sub {cores(result['subscriber_cpu_cores'])} "
        f"foreign {cores(result['foreign_cpu_cores'])} "
        f"steal {cores(result['steal_cpu_cores'])}, load {result['load_average_1m_before']:.2f}"
    )


def table_lines(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    header = f"{'':22}" + "".join(f" {title:>{width}}" for title, _, _, width in TABLE_COLUMNS)
    rule = "-" * len(header)
    body = [
        f"{label:22}"
        + "".join(f" {render(summary[key]):>{width}}" for _, key, render, width in TABLE_COLUMNS)
        for label, summary in rows
    ]
    return [header, rule, *body, rule]


def print_header(
    facts: Mapping[str, Any], options: argparse.Namespace, broker_start_s: float
) -> None:
    print(
        f"machine: {facts['cpu_count']} CPUs ({facts['cpus_usable']} usable), {facts['cpu_model']}"
    )
    print(f"         {facts['platform']}")
    print(
        f"         {facts['python']}, pyzmq {facts['pyzmq']}, libzmq {facts['libzmq']}, "
        f"orjson {facts['orjson']}, confluent-kafka {facts['confluent_kafka']} "
        f"(librdkafka {facts['librdkafka']})"
    )
    print(
        f"         load average (1 min) at start {facts['load_average_1m_at_start']:.2f}, "
        f"at end {os.getloadavg()[0]:.2f}"
    )
    changed = ", ".join(line.strip() for line in facts["feedsvc_changed"].splitlines())
    print(
        f"source:  commit {facts['commit']}"
        + (f", feedsvc/ changed since: {changed}" if changed else ", feedsvc/ as committed")
    )
    print(
        f"broker:  Apache Kafka {facts['kafka_version']} (scripts/kafka.sh, single KRaft node, "
        f"temporary data dir), {facts['java']}; start {broker_start_s:.1f} s"
    )
    print(
        f"settings: {options.duration:g} s windows after {options.warmup:g} s warm-up, "
        f"{options.symbols} symbols, one ipc subscriber, SNDHWM=RCVHWM={options.hwm}; mirror: "
        f"{PARTITIONS} partitions, new topic per run, feedsvc's producer defaults, "
        f"kafka.flush_timeout_s={options.flush_timeout:g}"
        + "".join(f", --set {setting}" for setting in options.set)
    )


def print_rate(
    options: argparse.Namespace, figures: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]
) -> None:
    """Part A's tables, ratios and verdicts (`figures` from mirror_analysis.rate_figures)."""
    summary = figures["summary"]
    off, on = summary["max-off"], summary["max-on"]
    ratio, pair_ratios = figures["ratio_published"], figures["ratio_published_per_pair"]
    efficiency_ratio, busy = figures["ratio_published_per_serve_cpu_s"], figures["cores_busy"]
    print(
        f"Part A: publish rate, synthetic.rate=0 (as fast as possible), "
        f"medians of {options.repeats} alternating runs"
    )
    print("\n".join(table_lines([("mirror OFF", off), ("mirror ON", on)])))
    print(
        f"ratio mirror ON/OFF (published/s): {ratio:.3f}   reported, no target any more "
        f"(the former {TARGET_RATIO} would say {figures['verdict']}): flat out on "
        f"{os.cpu_count()} cores it measures how the cores are shared between the hot path, the "
        "mirror and the broker; the hot path's own cost is the transactions section's CPU per tick"
    )
    print(
        f"  per adjacent pair: {' '.join(f'{value:.3f}' for value in pair_ratios)} "
        f"(median {statistics.median(pair_ratios):.3f}); "
        f"received/s ratio {figures['ratio_received']:.3f}"
    )
    if efficiency_ratio is not None:
        print(
            f"  published per serve CPU-second: OFF "
            f"{rate(off['published_per_serve_cpu_s_median'])}, ON "
            f"{rate(on['published_per_serve_cpu_s_median'])} (ratio {efficiency_ratio:.3f}: "
            f"the hand-off's own cost on the hot path); cores busy in all: OFF "
            f"{busy['max-off']:.2f}, ON {busy['max-on']:.2f} of {os.cpu_count()}"
        )
    for run in runs:
        if run["label"] == "max-on":
            print(
                f"  ON run {run['run'] // 2 + 1}: {run.get('mirror_line')}; "
                f"flush {run.get('flush_s') or 0:.1f} s"
            )
    print()
    (paced_on,) = [run for run in runs if run["label"] == "paced-on"]
    print(f"Paced {PACED_RATE:,} ticks/s, one run each")
    print(
        "\n".join(
            table_lines([("mirror OFF", summary["paced-off"]), ("mirror ON", summary["paced-on"])])
        )
    )
    print(f"  ON run: {paced_on.get('mirror_line')}; flush {paced_on.get('flush_s') or 0:.1f} s")
    print(
        f"mirror keeps up at {PACED_RATE:,} ticks/s (acked == published, final flush <= "
        f"{KEEPS_UP_FLUSH_S:g} s): {figures['paced_verdict']}"
    )
    lag_median, lag_max = paced_on.get("lag_s_median"), figures["lag_s_max"]
    print(
        f"mirror lag at {PACED_RATE:,} ticks/s ((published - acked) / rate, "
        f"{len(paced_on.get('lag_s_samples', []))} samples over the window): median "
        f"{'-' if lag_median is None else f'{lag_median:.2f}'} s, max "
        f"{'-' if lag_max is None else f'{lag_max:.2f}'} s   target < {LAG_TARGET_S:g} s   "
        f"{figures['lag_verdict']}"
    )
    print("\n".join(f"  {line}" for line in RATE_LEGEND))
    for note in rate_notes(runs, summary):
        print(f"note: {note}")


def outage_lines(options: argparse.Namespace, outage: Mapping[str, Any]) -> list[str]:
    """Part B's figures, one labelled line each."""
    shutdown, replay = outage["shutdown"], outage["replay"]
    replayed = replay["summary"] or {}
    drain = outage.get("drain_s")
    backlog_peak = outage.get("backlog_peak", 0)
    lines = [
        (
            "broker down",
            f"{outage['down_s']:.1f} s (stop issued at +{outage['broker_stopped_at_s']:.1f} s, "
            f"stop {outage['stop_s']:.1f} s, kept down {outage['kept_down_s']:.1f} s, restart "
            f"until it answers {outage['restart_s']:.1f} s; scripts/kafka.sh start returned "
            f"after {outage['kafka_sh_start_s']:.1f} s)",
        ),
        (
            "published during it",
            f"{outage['published_during_outage']:,.0f} ticks "
            f"({outage['published_per_s_during_outage']:,.0f}/s; subscriber per second: "
            f"min {rate(outage['received_per_s_during_outage_min'])}, median "
            f"{rate(outage['received_per_s_during_outage_median'])}; whole window dropped "
            f"{fraction(outage['run']['drop_fraction'])})",
        ),
        (
            "peak mirror backlog",
            f"{backlog_peak:,} ticks "
            f"(= {backlog_peak / OUTAGE_RATE:.1f} s of ticks; published - acked)",
        ),
        (
            "drain after restart",
            "not within the window"
            if drain is None
            else f"{drain:.1f} s after the broker answered (then the backlog stopped shrinking, "
            f"at {backlog_left(outage['backlog_left_when_drained'])}); peak acked/s "
            f"{rate(outage.get('acked_per_s_peak_after_restart'))}",
        ),
        (
            "shutdown",
            f"{shutdown.get('mirror_line')}; flush {shutdown.get('flush_s') or 0:.1f} s",
        ),
        (
            "replay --verify",
            f"exit {replay['exit_code']}, ticks {replayed.get('ticks')}, gaps "
            f"{replayed.get('gaps')}, missing {replayed.get('missing')}, duplicates "
            f"{replayed.get('duplicates')} ({replay['seconds']:.1f} s)",
        ),
    ]
    return [f"  {label:21} {text}" for label, text in lines]


def print_outage(options: argparse.Namespace, outage: Mapping[str, Any]) -> None:
    print(
        f"Part B: broker outage at {OUTAGE_RATE:,} ticks/s, mirror ON "
        f"(kafka.flush_timeout_s={options.flush_timeout:g})"
    )
    print("\n".join(outage_lines(options, outage)))
    phases = outage.get("cpu_cores_by_phase") or {}
    if phases:
        print(
            "  CPU cores by phase:   "
            + "; ".join(
                f"{phase} " + " ".join(f"{name} {cores(value)}" for name, value in by_name.items())
                for phase, by_name in phases.items()
            )
        )
    print(
        f"holds {options.outage:g} s at {OUTAGE_RATE:,} ticks/s without loss "
        f"(every published tick acked and replayed, no gap, no duplicate; publisher kept "
        f">= {NOT_STALLED_FRACTION:.0%} of its rate): {outage['verdict']}"
    )
    flush_s = outage["shutdown"].get("flush_s")
    if flush_s is not None and flush_s > 0.8 * options.flush_timeout and outage["no_loss"]:
        print(
            f"note: the shutdown took {flush_s:.0f} s of the {options.flush_timeout:g} s flush "
            "timeout although Kafka had acknowledged everything (see the report)"
        )


def plot_series(
    samples: Sequence[tuple[float, float]], until_s: float
) -> tuple[list[float], list[float]]:
    """(times, values) up to `until_s`, with a NaN between samples further apart than
    WATERMARK_MAX_GAP_S so that no line is drawn across the seconds without samples."""
    times: list[float] = []
    values: list[float] = []
    for at, value in samples:
        if at > until_s:
            break
        if times and at - times[-1] > WATERMARK_MAX_GAP_S:
            times.append((at + times[-1]) / 2)
            values.append(float("nan"))
        times.append(at)
        values.append(value)
    return times, values


def plot_outage(outage: Mapping[str, Any], path: Path, progress: Callable[[str], None]) -> None:
    """Throughput over time in the outage run: published/s (subscriber) and acked/s."""
    plt = pyplot_or_none(progress)
    if plt is None:
        return
    figure, (rates_axes, backlog_axes) = plt.subplots(
        2, 1, figsize=(10, 7), sharex=True, height_ratios=(3, 2)
    )
    window_s = outage["run"]["window_s"]
    for samples, label in (
        (outage["received_rates"], "published/s (received by the subscriber)"),
        (outage["acked_rates"], "acked/s (growth of the topic's high watermarks)"),
    ):
        rates_axes.plot(*plot_series(samples, window_s), label=label)
    backlog = [(at, value) for at, value in outage.get("backlog") or [] if at <= window_s]
    backlog_axes.plot(
        [at for at, _ in backlog],
        [value for _, value in backlog],
        color="tab:red",
        label="mirror backlog: published - acked (ticks)",
    )
    for axes in (rates_axes, backlog_axes):
        axes.axvspan(
            outage["timeline_s"]["stop_issued"],
            outage["broker_back_at_s"],
            color="grey",
            alpha=0.25,
            label="broker down (stop issued until it answers again)",
        )
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left")
    rates_axes.set_ylabel("ticks per second")
    backlog_axes.set_ylabel("ticks")
    backlog_axes.set_xlabel("seconds since the measurement window began")
    rates_axes.set_title(
        f"feedsvc Kafka mirror at {OUTAGE_RATE:,} ticks/s: broker stopped, kept down "
        f"{outage['kept_down_s']:.0f} s, unreachable {outage['down_s']:.0f} s in all"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"plot written to {path}")
