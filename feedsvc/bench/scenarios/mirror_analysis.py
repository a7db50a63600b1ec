"""bench_mirror's targets and its pure figures: rates and lags from sampled counts, the service's
shutdown accounting (from its --summary-file), the outage's backlog and drain, and the medians
and verdicts of Part A. No processes, no sockets: everything here is unit-tested."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Final

from feedsvc.bench.report import median, spread
from feedsvc.bench.scenarios.publish_report import NOISY_SPREAD, count_at

Samples = Sequence[tuple[float, float]]

TARGET_RATIO: Final = 0.75
# Part A's paced runs, where the mirror lag is measured (target: under LAG_TARGET_S).
PACED_RATE: Final = 50_000
LAG_TARGET_S: Final = 1.0
# Part B's rate: the issue asks for 60 s of ticks at 20k ticks/s held through an outage.
OUTAGE_RATE: Final = 20_000
PARTITIONS: Final = 6
# A paced run keeps up when everything is acknowledged and the final flush is about this short.
KEEPS_UP_FLUSH_S: Final = 5.0
# Steady mirroring before the broker is stopped in Part B.
OUTAGE_AFTER_START_S: Final = 5.0
# Part B: the publisher counts as not stalled while it published at least this share of its rate.
NOT_STALLED_FRACTION: Final = 0.95
WATERMARK_MAX_GAP_S: Final = 2.5
# Part B: the backlog counts as drained once it shrinks by less than this share of the rate per s.
DRAINED_SHRINK_FRACTION: Final = 0.25
RATE_LABELS: Final = ("max-off", "max-on", "paced-off", "paced-on")
SUMMARY_KEYS: Final = (
    "published_per_s",
    "received_per_s",
    "drop_fraction",
    "acked_per_s_window",
    "acked_per_s_peak",
    "acked_fraction",
    "flush_s",
    "published_per_serve_cpu_s",
    "publisher_cpu_cores",
    "mirror_cpu_cores",
    "broker_cpu_cores",
    "subscriber_cpu_cores",
    "foreign_cpu_cores",
    "steal_cpu_cores",
)


def mirror_lags_s(
    published: Samples, acknowledged: Samples, rate: float, start: float, end: float
) -> list[float]:
    """Per high-watermark sample in [start, end]: (published then - acknowledged) / rate, in s."""
    if len(published) < 2:
        return []
    return [
        max(0.0, count_at(published, at) - acked) / rate
        for at, acked in acknowledged
        if start <= at <= end and published[0][0] <= at <= published[-1][0]
    ]


def rate_between(samples: Samples, start: float, end: float) -> float | None:
    """Mean growth per second of a sampled count between two times (None if not covered)."""
    if end <= start or len(samples) < 2 or samples[0][0] > start + 1.5:
        return None
    if samples[-1][0] < end - 1.5:
        return None
    return (count_at(samples, end) - count_at(samples, start)) / (end - start)


def per_second_rates(
    samples: Samples, max_gap_s: float = float("inf")
) -> list[tuple[float, float]]:
    """(mid time, rate) between consecutive samples 0.5 s to max_gap_s apart (the watermarks
    have no samples while the broker is down: an average over that gap is no rate per second)."""
    return [
        ((t_before + t_after) / 2, (n_after - n_before) / (t_after - t_before))
        for (t_before, n_before), (t_after, n_after) in itertools.pairwise(samples)
        if 0.5 <= t_after - t_before <= max_gap_s
    ]


def marks_as_samples(result: Mapping[str, Any]) -> list[tuple[float, int]]:
    """The subscriber's per-second (time, received so far) marks of a run."""
    return [(float(at), int(count)) for at, count in result["marks"]]


def mirror_shutdown(summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """The service's shutdown accounting from its --summary-file: acked of published, what was
    not delivered and why, and the seconds from SIGTERM to the end of the final hand-off and
    Kafka flush. {"mirror_line": None} without a summary or with the mirror off."""
    if summary is None or not summary["mirror"].get("enabled"):
        return {"mirror_line": None}
    mirror, published = summary["mirror"], summary["published"]
    figures: dict[str, Any] = {
        "acked": mirror["delivered"],
        "published": published,
        "undelivered": mirror["undelivered"],
        "dropped_at_handoff": mirror["dropped"],
        "failed": mirror["failed"],
        "unacknowledged_at_flush_timeout": mirror["unacknowledged"],
        "flush_s": mirror["flush_s"],
    }
    figures["mirror_line"] = (
        f"{figures['acked']} of {published} published ticks acknowledged by Kafka"
        + (f", {figures['undelivered']} not delivered" if figures["undelivered"] else "")
    )
    return figures


def outage_no_loss(shutdown: Mapping[str, Any], replay: Mapping[str, Any]) -> bool:
    """Every published tick acknowledged (the service's count) and read back by
    `feedsvc replay --verify` exactly once, with no gap."""
    published = shutdown.get("published")
    replayed = replay.get("summary") or {}
    return (
        published is not None
        and shutdown.get("acked") == published
        and shutdown.get("undelivered") == 0
        and replay.get("exit_code") == 0
        and replayed.get("ticks") == published
        and replayed.get("gaps") == 0
        and replayed.get("duplicates") == 0
    )


def kept_publishing(published_per_s_during_outage: float) -> bool:
    return published_per_s_during_outage >= NOT_STALLED_FRACTION * OUTAGE_RATE


def broker_back_at(watermarks: Samples, times: Mapping[str, float]) -> float:
    """When the restarted broker first answered anyone: our offsets request (the first
    watermark sample after the restart), or scripts/kafka.sh's own probe (which adds a JVM
    start of its own before `start` returns)."""
    answered_poller = next(
        (at for at, _ in watermarks if at > times["start_issued"]), times["answering"]
    )
    return min(times["answering"], answered_poller)


def broker_down_times(
    times: Mapping[str, float], down_until: float, window_start: float
) -> dict[str, float]:
    """How long each step of the outage took, from the outage controller's step times (s;
    `*_at_s` relative to the window start)."""
    down_from = times["stop_issued"]
    return {
        "down_s": down_until - down_from,
        "stop_s": times["stopped"] - down_from,
        "kept_down_s": times["start_issued"] - times["stopped"],
        "restart_s": down_until - times["start_issued"],
        "kafka_sh_start_s": times["answering"] - times["start_issued"],
        "broker_stopped_at_s": down_from - window_start,
        "broker_back_at_s": down_until - window_start,
    }


def outage_backlog(
    received: Samples, watermarks: Samples, window: tuple[float, float], down: tuple[float, float]
) -> dict[str, Any]:
    """The backlog (published - acknowledged) over the window, its peak, when it drained after
    the broker was back (`down` = (stop issued, answering again)) and what was left then.

    The backlog is relative to the last high-watermark sample before the stop (then it was the
    few hundred ticks in flight), with published(t) = the subscriber's count (no drops at 20k/s:
    see its drop fraction).
    """
    window_start, window_end = window
    down_from, down_until = down
    inside = [(at, acked) for at, acked in watermarks if window_start <= at <= window_end]
    before = [sample for sample in inside if sample[0] <= down_from]
    if not before:
        return {"backlog": None}
    ref_at, ref_acked = before[-1]
    ref_received = count_at(received, ref_at)
    backlog = [
        (at, round(count_at(received, at) - ref_received - (acked - ref_acked)))
        for at, acked in inside
    ]
    # Drained: the backlog stopped shrinking (acked/s back at the publish rate). What is left
    # then is never acknowledged: ticks lost on the way (the shutdown line says where).
    shrink_per_s = DRAINED_SHRINK_FRACTION * OUTAGE_RATE
    after_restart = [(at, value) for at, value in backlog if at > down_until]
    drained = next(
        (
            (at, value)
            for (at, value), (next_at, next_value) in itertools.pairwise(after_restart)
            if value - next_value <= shrink_per_s * (next_at - at)
        ),
        None,
    )
    catch_up = [
        rate for at, rate in per_second_rates(inside, WATERMARK_MAX_GAP_S) if at > down_until
    ]
    return {
        "backlog": [(at - window_start, value) for at, value in backlog],
        "backlog_peak": max(value for _, value in backlog),
        "drained_at": None if drained is None else drained[0],
        "drain_s": None if drained is None else drained[0] - down_until,
        "backlog_left_when_drained": None if drained is None else drained[1],
        "observed_after_restart_s": window_end - down_until,
        "acked_per_s_peak_after_restart": max(catch_up, default=None),
    }


def outage_phases(
    window: tuple[float, float], down: tuple[float, float], drained_at: float | None
) -> dict[str, tuple[float, float]]:
    """The outage run's phases (monotonic start, end): before, outage, catch_up, after."""
    (window_start, window_end), (down_from, down_until) = window, down
    return {
        "before": (window_start, down_from),
        "outage": (down_from, down_until),
        "catch_up": (down_until, drained_at or window_end),
        "after": (drained_at or window_end, window_end),
    }


def outage_publishing(
    received: Samples, down_from: float, down_until: float
) -> dict[str, float | None]:
    """What the publisher did while the broker was down, as the subscriber saw it."""
    published = count_at(received, down_until) - count_at(received, down_from)
    rates = [rate for at, rate in per_second_rates(received) if down_from <= at <= down_until]
    return {
        "published_during_outage": published,
        "published_per_s_during_outage": published / (down_until - down_from),
        "received_per_s_during_outage_min": min(rates, default=None),
        "received_per_s_during_outage_median": median(rates),
    }


def backlog_left(ticks: int) -> str:
    # The backlog is counted from the subscriber and the watermarks, both sampled: a few
    # thousand ticks either way are noise, not ticks left behind.
    if abs(ticks) <= DRAINED_SHRINK_FRACTION * OUTAGE_RATE:
        return f"~0: {ticks:,} ticks"
    return f"{ticks:,} ticks never acknowledged"


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over runs of one kind (the columns of the table)."""
    summary: dict[str, Any] = {
        f"{key}_median": median(run.get(key) for run in runs) for key in SUMMARY_KEYS
    }
    summary["published_per_s_runs"] = [run["published_per_s"] for run in runs]
    return summary


def rate_figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Part A's figures and verdicts from its runs (each with a "label" of RATE_LABELS): the
    ON/OFF ratios of the medians, the paced run's keeping up and lag. These are the "rate" keys
    of the JSON, without "runs"."""
    by_label = {label: [run for run in runs if run["label"] == label] for label in RATE_LABELS}
    summary = {label: summarize_runs(mine) for label, mine in by_label.items()}
    off, on = summary["max-off"], summary["max-on"]
    ratio = on["published_per_s_median"] / off["published_per_s_median"]
    received_ratio = on["received_per_s_median"] / off["received_per_s_median"]
    efficiency_ratio = None
    if on["published_per_serve_cpu_s_median"] and off["published_per_serve_cpu_s_median"]:
        efficiency_ratio = (
            on["published_per_serve_cpu_s_median"] / off["published_per_serve_cpu_s_median"]
        )
    busy_by_label = {
        label: sum(
            summary[label][f"{name}_cpu_cores_median"] or 0.0
            for name in ("publisher", "mirror", "broker", "subscriber", "foreign")
        )
        for label in ("max-off", "max-on")
    }
    pair_ratios = [
        run_on["published_per_s"] / run_off["published_per_s"]
        for run_off, run_on in zip(by_label["max-off"], by_label["max-on"], strict=True)
    ]
    (paced_on,) = by_label["paced-on"]
    keeps_up = (
        paced_on.get("acked") is not None
        and paced_on["acked"] == paced_on["published"]
        and paced_on.get("flush_s") is not None
        and paced_on["flush_s"] <= KEEPS_UP_FLUSH_S
    )
    lag_max = paced_on.get("lag_s_max")
    return {
        "summary": summary,
        "ratio_published": ratio,
        "ratio_published_per_pair": pair_ratios,
        "ratio_received": received_ratio,
        "ratio_published_per_serve_cpu_s": efficiency_ratio,
        "cores_busy": busy_by_label,
        "target_ratio": TARGET_RATIO,
        "verdict": "PASS" if ratio >= TARGET_RATIO else "MISS",
        "paced_keeps_up": keeps_up,
        "paced_verdict": "PASS" if keeps_up else "MISS",
        "lag_s_max": lag_max,
        "lag_verdict": "PASS" if lag_max is not None and lag_max < LAG_TARGET_S else "MISS",
    }


def rate_notes(runs: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    """Warnings under Part A's table: noisy repeats, other processes taking CPU."""
    notes = []
    for label in RATE_LABELS:
        published = [run["published_per_s"] for run in runs if run["label"] == label]
        noise = spread(published) if len(published) > 1 else None
        if noise is not None and noise > NOISY_SPREAD:
            notes.append(f"{label} runs spread {100 * noise:.0f}% of the median: noisy")
        foreign = summary[label]["foreign_cpu_cores_median"]
        if foreign is not None and foreign > 0.2:
            notes.append(f"{label}: other processes used {foreign:.2f} cores: consider a rerun")
    return notes


def lag_summary(lags: Sequence[float]) -> dict[str, Any]:
    return {
        "lag_s_samples": list(lags),
        "lag_s_median": statistics.median(lags) if lags else None,
        "lag_s_max": max(lags) if lags else None,
    }
