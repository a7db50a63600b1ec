"""The slow-subscriber benchmark's figures: one phase's subscriber results and RSS samples turned
into latency, tick-age and memory figures, the issue's targets evaluated over all phases, and the
report printed as tables."""

from __future__ import annotations

import math
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from feedsvc.bench.latency import latency_percentiles, percentile
from feedsvc.bench.report import cores, machine_lines
from feedsvc.bench.scenarios.slow_roles import CAUGHT_UP_AGE_MS

TARGET_P99_RATIO: Final = 1.5
TARGET_AGE_P99_MS: Final = 100.0
# RSS counts as flat when the mean of the window's last RSS_EDGE_S is within this of its first's:
# a leak of 2 bytes per tick at 10k ticks/s over 60 s would exceed it.
RSS_GROWTH_LIMIT_KB: Final = 1_024
RSS_EDGE_S: Final = 10.0
# Memory libzmq needs per queued message besides the frame: its 64-byte zmq_msg_t slot in the pipe,
# the ~40-byte header of the message content and the allocator's rounding.
QUEUED_MESSAGE_OVERHEAD_BYTES: Final = 128
LOAD_WARNING: Final = 1.0
OTHER_CPU_WARNING_CORES: Final = 0.2
# The conflating subscriber's age series written to --json is thinned to at most this many points.
MAX_AGE_SERIES_POINTS: Final = 10_000


@dataclass(frozen=True)
class Phase:
    key: str
    label: str
    slow_mode: str | None  # "conflate", "normal" or None (no slow subscriber)


PHASES: Final = (
    Phase("A", "no slow subscriber", None),
    Phase("B", "+ slow conflating", "conflate"),
    Phase("C", "+ slow normal", "normal"),
)


def latency_figures(dumps: Sequence[dict[str, Any]]) -> dict[str, float]:
    """p50/p99/p99.9/max in ms over the merged latencies of all fast subscribers."""
    figures = latency_percentiles(dumps)
    count = figures.pop("count") or 0
    return {
        **{f"{name}_ms": math.nan if us is None else us / 1_000 for name, us in figures.items()},
        "count": count,
    }


def age_figures(ages: Sequence[tuple[float, float]]) -> dict[str, float]:
    ordered = sorted(age for _, age in ages)
    return {
        "p50_ms": percentile(ordered, 50.0),
        "p99_ms": percentile(ordered, 99.0),
        "max_ms": percentile(ordered, 100.0),
    }


def rss_figures(
    samples: Sequence[tuple[float, int]],
    duration_s: float,
    baseline_kb: int | None,
    bound_kb: float,
) -> dict[str, Any]:
    """First/last/max RSS in the window, growth between its first and last part, and a slope."""
    window = [(t, kb) for t, kb in samples if -0.5 <= t <= duration_s + 0.5]
    if not window:
        return {"error": "no RSS sample in the window"}
    edge_s = min(RSS_EDGE_S, duration_s / 4)
    head = [kb for t, kb in window if t <= edge_s]
    tail = [kb for t, kb in window if t >= duration_s - edge_s]
    slope_kb_per_s = 0.0
    if len(window) >= 2:
        times = [t for t, _ in window]
        values = [kb for _, kb in window]
        slope_kb_per_s = statistics.linear_regression(times, values).slope
    growth_kb = statistics.fmean(tail or [window[-1][1]]) - statistics.fmean(head or [window[0][1]])
    max_kb = max(kb for _, kb in samples)
    return {
        "baseline_kb": baseline_kb,
        "first_kb": window[0][1],
        "last_kb": window[-1][1],
        # Over every sample, the filling of the queues before the window included.
        "max_kb": max_kb,
        "growth_kb": growth_kb,
        "slope_kb_per_min": slope_kb_per_s * 60,
        "bound_kb": bound_kb,
        "flat": growth_kb < RSS_GROWTH_LIMIT_KB,
        "under_bound": max_kb <= bound_kb,
    }


def summarize_phase(
    transport: str,
    phase: Phase,
    settings: dict[str, Any],
    baseline_rss: int | None,
    samples: list[tuple[float, int]],
    cpu: dict[str, float | None],
    results: list[dict[str, Any]],
    load_before: float,
) -> dict[str, Any]:
    """One phase's figures from its subscribers' results, its RSS samples (s since the window
    started, KiB) and its CPU figures; `settings` as in the JSON document."""
    duration_s, hwm = settings["duration_s"], settings["sndhwm"]
    fast = [result for result in results if result["mode"] == "fast"]
    slow = next((result for result in results if result["mode"] != "fast"), None)
    frame_bytes = max(result["frame_bytes_max"] or 0 for result in fast)
    # Every subscriber's queue full at once: the most the publisher's queues can hold.
    queued_kb = len(results) * hwm * (frame_bytes + QUEUED_MESSAGE_OVERHEAD_BYTES) / 1_024
    bound_kb = (baseline_rss or 0) + queued_kb
    subscriber_cores = [result["cpu_cores"] for result in results]
    other_cores = None
    if None not in (cpu["busy_cores"], cpu["publisher_cores"]) and None not in subscriber_cores:
        other_cores = max(0.0, cpu["busy_cores"] - cpu["publisher_cores"] - sum(subscriber_cores))
    summary: dict[str, Any] = {
        "transport": transport,
        "phase": phase.key,
        "label": phase.label,
        "load_average_1m_before": load_before,
        "fast": {
            **latency_figures([result["latency"] for result in fast]),
            "received_in_window": sum(result["received_in_window"] for result in fast),
            "missed_in_window": sum(result["missed_in_window"] for result in fast),
            "published_per_s": statistics.fmean(result["published_in_window"] for result in fast)
            / duration_s,
            "gaps": sum(result["stats"]["gaps"] for result in fast),
            "frame_bytes_mean": statistics.fmean(result["frame_bytes_mean"] for result in fast),
            "frame_bytes_max": frame_bytes,
        },
        "rss": rss_figures(samples, duration_s, baseline_rss, bound_kb),
        "rss_samples": samples,
        "rss_queued_allowance_kb": queued_kb,
        "cpu": {
            **cpu,
            "subscribers_cores": None if None in subscriber_cores else sum(subscriber_cores),
            "other_cores": other_cores,
        },
    }
    if slow is not None:
        ages = slow.pop("ages_ms")
        slow_summary = {
            **{key: value for key, value in slow.items() if key != "first_tick_at"},
            "age": age_figures(ages),
            "reads_per_s": len(ages) / duration_s,
        }
        if slow["mode"] == "conflate":
            step = max(1, math.ceil(len(ages) / MAX_AGE_SERIES_POINTS))
            slow_summary["age_series"] = [(round(t, 3), round(age, 3)) for t, age in ages[::step]]
        summary["slow"] = slow_summary
    return summary


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 1_000 else f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1_024:.1f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def evaluate(phases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target of the issue, per transport: what was measured and PASS or MISS."""
    targets: list[dict[str, Any]] = []
    for transport in dict.fromkeys(phase["transport"] for phase in phases):
        by_key = {phase["phase"]: phase for phase in phases if phase["transport"] == transport}
        p99_a = by_key["A"]["fast"]["p99_ms"]
        for key in ("B", "C"):
            ratio = by_key[key]["fast"]["p99_ms"] / p99_a
            targets.append(
                {
                    "transport": transport,
                    "target": f"fast p99 {key}/A <= {TARGET_P99_RATIO}",
                    "value": f"{ratio:.2f}",
                    "ratio": ratio,
                    "ok": ratio <= TARGET_P99_RATIO,
                }
            )
        age_p99 = by_key["B"]["slow"]["age"]["p99_ms"]
        targets.append(
            {
                "transport": transport,
                "target": f"slow conflating tick age p99 < {TARGET_AGE_P99_MS:g} ms",
                "value": f"{age_p99:.1f} ms",
                "ok": age_p99 < TARGET_AGE_P99_MS,
            }
        )
        normal = by_key["C"]["slow"]
        check = normal["gap_check"]
        every_gap = (
            normal["caught_up"]
            and normal["stats"]["missed"] == check["missed_from_seqs"]
            and check["jumps_not_reported"] == 0
            and check["reported_not_jumps"] == 0
        )
        targets.append(
            {
                "transport": transport,
                "target": "slow normal: every missed tick reported as a gap",
                "value": f"missed {normal['stats']['missed']:,} = {check['missed_from_seqs']:,} "
                f"from seqs, {check['jumps']:,} jumps",
                "ok": every_gap,
            }
        )
        for key, phase in by_key.items():
            rss = phase["rss"]
            targets.append(
                {
                    "transport": transport,
                    "target": f"publisher RSS {key}: max <= bound, growth < "
                    f"{RSS_GROWTH_LIMIT_KB / 1_024:g} MiB",
                    "value": f"max {_mb(rss.get('max_kb'))} <= {_mb(rss.get('bound_kb'))} MiB, "
                    f"growth {rss.get('growth_kb', math.nan) / 1_024:+.2f} MiB",
                    "ok": bool(rss.get("flat") and rss.get("under_bound")),
                }
            )
    return targets


def report_notes(facts: dict[str, Any], phases: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    if facts["load_average_1m_at_start"] > LOAD_WARNING:
        notes.append(
            f"the load average was {facts['load_average_1m_at_start']:.2f} at start: the machine "
            "was busy, latency percentiles are sensitive to that; consider a rerun"
        )
    for phase in phases:
        name = f"{phase['transport']} {phase['phase']}"
        other = phase["cpu"]["other_cores"]
        if other is not None and other > OTHER_CPU_WARNING_CORES:
            notes.append(
                f"{name}: other processes used {other:.2f} cores during the window: "
                "the latency figures are disturbed, consider a rerun"
            )
        if phase["fast"]["missed_in_window"]:
            notes.append(
                f"{name}: the fast subscribers missed {phase['fast']['missed_in_window']:,} "
                "ticks (they did not keep up)"
            )
    return notes


def phase_progress(transport: str, result: dict[str, Any]) -> str:
    """One phase's headline figures, for the progress line after it."""
    fast, rss, slow = result["fast"], result["rss"], result.get("slow")
    slow_text = (
        ""
        if slow is None
        else f", slow age p99 {_ms(slow['age']['p99_ms'])} ms, {slow['stats']['gaps']:,} gaps"
    )
    return (
        f"[{transport} {result['phase']}] fast p99 {_ms(fast['p99_ms'])} ms, "
        f"missed {fast['missed_in_window']:,}; RSS max {_mb(rss.get('max_kb'))} MiB, "
        f"growth {rss.get('growth_kb', math.nan) / 1_024:+.2f} MiB{slow_text}; "
        f"other CPU {cores(result['cpu']['other_cores'])}"
    )


LEGEND: Final = (
    "latency: receive time_ns() - ts (stamped at publish), fast subscribers merged; "
    "ticks/missed: in the window, missed from per-symbol seq spans",
    "CPU: cores used in the window by the publisher, the subscribers, all other processes, "
    "hypervisor steal; load: 1-min load average before the phase",
    "RSS: before = with the feed running and no subscriber; first/last in the window; "
    "max over the whole phase; growth = mean of the window's last "
    f"{RSS_EDGE_S:g} s - mean of its first {RSS_EDGE_S:g} s (at most a quarter each)",
    f"bound = before + subscribers x SNDHWM x (largest frame + "
    f"{QUEUED_MESSAGE_OVERHEAD_BYTES} B libzmq per-message overhead)",
    "slow normal: drops show up as gaps only once it reads a later tick, hence the catch-up "
    f"after the window (until every symbol delivered a tick < {CAUGHT_UP_AGE_MS:g} ms old)",
)


def _print_transport(transport: str, mine: Sequence[dict[str, Any]]) -> None:
    p99_a = mine[0]["fast"]["p99_ms"]
    print()
    print(f"== {transport} ==")
    header = (
        f"{'fast subscribers, latency ms':30} {'p50':>7} {'p99':>7} {'p99.9':>7} "
        f"{'max':>7} {'ticks':>10} {'missed':>7} {'p99/A':>6} {'pub CPU':>7} "
        f"{'subs':>5} {'other':>5} {'steal':>5} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for phase in mine:
        fast, cpu = phase["fast"], phase["cpu"]
        ratio = fast["p99_ms"] / p99_a
        print(
            f"{phase['phase'] + ' ' + phase['label']:30} {_ms(fast['p50_ms']):>7} "
            f"{_ms(fast['p99_ms']):>7} {_ms(fast['p999_ms']):>7} {_ms(fast['max_ms']):>7} "
            f"{fast['received_in_window']:>10,} {fast['missed_in_window']:>7,} "
            f"{ratio:>6.2f} {cores(cpu['publisher_cores']):>7} "
            f"{cores(cpu['subscribers_cores']):>5} {cores(cpu['other_cores']):>5} "
            f"{cores(cpu['steal_cores']):>5} {phase['load_average_1m_before']:>5.2f}"
        )
    header = (
        f"{'publisher RSS, MiB':30} {'before':>7} {'first':>7} {'last':>7} {'max':>7} "
        f"{'growth':>7} {'slope/min':>9} {'bound':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for phase in mine:
        rss = phase["rss"]
        print(
            f"{phase['phase'] + ' ' + phase['label']:30} {_mb(rss['baseline_kb']):>7} "
            f"{_mb(rss['first_kb']):>7} {_mb(rss['last_kb']):>7} {_mb(rss['max_kb']):>7} "
            f"{rss['growth_kb'] / 1_024:>+7.2f} {rss['slope_kb_per_min'] / 1_024:>+9.3f} "
            f"{_mb(rss['bound_kb']):>7}"
        )
    conflating = mine[1]["slow"]
    normal = mine[2]["slow"]
    check = normal["gap_check"]
    print()
    print(
        f"slow conflating (B): {conflating['reads_in_window']:,} ticks delivered "
        f"({conflating['reads_per_s']:.0f}/s), {conflating['stats']['conflated']:,} "
        f"replaced by newer ones; tick age ms p50 {_ms(conflating['age']['p50_ms'])}, "
        f"p99 {_ms(conflating['age']['p99_ms'])}, max {_ms(conflating['age']['max_ms'])}"
    )
    print(
        f"slow normal (C):     {normal['reads_in_window']:,} ticks read in the window "
        f"({normal['reads_per_s']:.0f}/s), tick age ms p50 {_ms(normal['age']['p50_ms'])}, "
        f"p99 {_ms(normal['age']['p99_ms'])}, max {_ms(normal['age']['max_ms'])}; then "
        f"{normal['received_in_catch_up']:,} more in {normal['catch_up_s']:.2f} s catching "
        f"up ({'caught up' if normal['caught_up'] else 'NOT caught up'})"
    )
    print(
        f"                     {normal['stats']['gaps']:,} gaps reported, missed "
        f"{normal['stats']['missed']:,}; from its seqs: published "
        f"{check['published_in_spans']:,} - received {check['received']:,} = "
        f"{check['missed_from_seqs']:,}; {check['jumps']:,} seq jumps, "
        f"{check['jumps_not_reported']} not reported, {check['reported_not_jumps']} "
        "reported gaps that are no jump"
    )


def print_report(
    facts: dict[str, Any],
    settings: dict[str, Any],
    phases: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
) -> None:
    """The tables on stdout; `settings` as in the JSON document."""
    print("\n".join(machine_lines(facts)))
    print(f"command: {shlex.join(facts['command'])}")
    histogram = "HdrHistogram" if settings["histogram"] == "hdr" else "sorted raw values"
    print(
        f"settings: feed {settings['rate']:,.0f} ticks/s over {settings['symbols']} symbols; "
        f"{settings['fast_subscribers']} fast subscribers; slow subscriber reads "
        f"{settings['slow_reads_per_s']:,.0f} ticks/s; "
        f"{settings['duration_s']:g} s per phase after {settings['warmup_s']:g} s warm-up; "
        f"SNDHWM {settings['sndhwm']}, SNDBUF {settings['sndbuf_bytes']}, client RCVHWM/RCVBUF "
        f"defaults; latencies: {histogram}"
    )
    print("phases: A = fast subscribers only, B = + slow conflating, C = + slow normal mode")
    for transport in dict.fromkeys(phase["transport"] for phase in phases):
        _print_transport(transport, [phase for phase in phases if phase["transport"] == transport])
    print()
    header = f"{'targets':66} {'measured':44} verdict"
    print(header)
    print("-" * len(header))
    for target in targets:
        print(
            f"{target['transport'] + ': ' + target['target']:66} {target['value']:44} "
            f"{_verdict(target['ok'])}"
        )
    print("\n".join(f"  {line}" for line in LEGEND))
    for note in report_notes(facts, phases):
        print(f"note: {note}")
