"""bench_mirror's "transactions" figures, pure: CPU per tick of the hot path (mirror on vs off)
and of the mirror itself (with transactions vs the tree without them), checkpoint bytes per tick,
and the lag until a read_committed reader sees a tick. No processes, no sockets: unit-tested.

Why CPU per tick and not the publish rate: at a paced rate both runs publish the same ticks, so
what the mirror costs the hot path is the serve process's own CPU (utime + stime of all its
threads; /proc/PID/stat counts a child's CPU only in cutime/cstime, and only once the child is
waited for) divided by the ticks it published in the same window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from feedsvc.bench.report import median, ratio

NS_PER_S: Final = 1_000_000_000
# Paced so that mirror on and off publish the same ticks (well below what 2 cores sustain).
COST_RATE: Final = 20_000
# The hot path "never pays for Kafka": its CPU per tick with the mirror on is at least this
# share of the same figure with the mirror off (off / on >= 0.95).
HOT_PATH_TARGET: Final = 0.95
VISIBILITY_TARGET_S: Final = 1.0
COST_LABELS: Final = ("off", "off-twin", "on", "on-no-txn")
LAG_LABELS: Final = ("lag-on", "lag-no-txn")
_TS_FIELD: Final = b'"ts":'
# (stat field 14 utime, 15 stime, 16 cutime, 17 cstime) counted after the ")" of the name.
_UTIME, _STIME, _CUTIME, _CSTIME = 11, 12, 13, 14


def parse_stat_times(stat_text: str, clock_ticks_per_s: int) -> tuple[float, float]:
    """(own CPU s, waited-for children's CPU s) from the text of /proc/PID/stat.

    Own = utime + stime of every thread of the process; children = cutime + cstime, which grow
    only when a child has exited and been waited for: a live mirror child is in neither.
    """
    fields = stat_text.rsplit(")", 1)[1].split()
    own = int(fields[_UTIME]) + int(fields[_STIME])
    children = int(fields[_CUTIME]) + int(fields[_CSTIME])
    return own / clock_ticks_per_s, children / clock_ticks_per_s


def tick_ts_ns(payload: bytes) -> int | None:
    """The publish time (`ts`, Unix ns) of a tick's JSON payload without decoding all of it;
    None if it has none."""
    at = payload.find(_TS_FIELD)
    if at < 0:
        return None
    start = at + len(_TS_FIELD)
    end = start
    while end < len(payload) and 48 <= payload[end] <= 57:
        end += 1
    return int(payload[start:end]) if end > start else None


def per_tick_us(cpu_s: float | None, ticks: int | None) -> float | None:
    """CPU microseconds per tick; None when either is unknown or no tick was counted."""
    if cpu_s is None or not ticks:
        return None
    return 1e6 * cpu_s / ticks


def percentile(sorted_values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (share in [0, 1]) of already sorted values."""
    if not sorted_values:
        return None
    # The value at rank ceil(share * n); the epsilon keeps 0.99 * 100 from rounding up to 100.
    rank = math.ceil(share * len(sorted_values) - 1e-9)
    index = min(len(sorted_values) - 1, max(0, rank - 1))
    return sorted_values[index]


def window_lags(
    batches: Sequence[tuple[float, int]], lags_ns: Sequence[int], start: float, end: float
) -> list[int]:
    """The lags of the ticks received in [start, end] (monotonic s). `batches` are the reader's
    (receive time, ticks) per consume() call, in order; `lags_ns` all lags, batch after batch."""
    selected: list[int] = []
    offset = 0
    for at, count in batches:
        if start <= at <= end:
            selected.extend(lags_ns[offset : offset + count])
        offset += count
    return selected


def visibility_figures(lags_ns: Sequence[int]) -> dict[str, Any]:
    """p50/p99/max (s) of receive time minus `ts` and the share under VISIBILITY_TARGET_S."""
    values = sorted(lags_ns)
    if not values:
        return {"count": 0, "p50_s": None, "p99_s": None, "max_s": None, "share_under_target": None}
    under = sum(1 for value in values if value < VISIBILITY_TARGET_S * NS_PER_S)

    def seconds(share: float) -> float:
        return float(percentile(values, share) or 0) / NS_PER_S

    return {
        "count": len(values),
        "p50_s": seconds(0.50),
        "p99_s": seconds(0.99),
        "max_s": values[-1] / NS_PER_S,
        "share_under_target": under / len(values),
    }


def visibility_series(
    batches: Sequence[tuple[float, int]], lags_ns: Sequence[int], start: float, end: float
) -> list[tuple[float, float, float, float]]:
    """Per second of the window: (seconds since `start`, p50, p99, max lag in s): the plot."""
    by_second: dict[int, list[int]] = {}
    offset = 0
    for at, count in batches:
        if start <= at <= end:
            by_second.setdefault(int(at - start), []).extend(lags_ns[offset : offset + count])
        offset += count
    series = []
    for second, values in sorted(by_second.items()):
        values.sort()
        series.append(
            (
                second + 0.5,
                float(percentile(values, 0.50) or 0) / NS_PER_S,
                float(percentile(values, 0.99) or 0) / NS_PER_S,
                values[-1] / NS_PER_S,
            )
        )
    return series


def cost_per_tick(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run's CPU and bytes per tick from its raw counts: the serve process's own CPU over the
    window per tick published in it; the mirror process's and the broker's likewise; checkpoint
    and log bytes over the whole run per tick the mirror delivered."""
    ticks = run.get("published_in_window")
    mirror_cpu_s, broker_cpu_s = run.get("mirror_cpu_s"), run.get("broker_cpu_s")
    both = None if mirror_cpu_s is None or broker_cpu_s is None else mirror_cpu_s + broker_cpu_s
    delivered = run.get("delivered")
    checkpoint = run.get("checkpoint") or {}
    record_bytes = checkpoint.get("key_bytes", 0) + checkpoint.get("value_bytes", 0)
    return {
        "serve_us_per_tick": per_tick_us(run.get("serve_cpu_s"), ticks),
        "mirror_us_per_tick": per_tick_us(mirror_cpu_s, ticks),
        "broker_us_per_tick": per_tick_us(broker_cpu_s, ticks),
        "mirror_and_broker_us_per_tick": per_tick_us(both, ticks),
        "checkpoint_bytes_per_tick": record_bytes / delivered
        if checkpoint.get("records") is not None and delivered
        else None,
        "checkpoint_disk_bytes_per_tick": run["checkpoint_disk_bytes"] / delivered
        if run.get("checkpoint_disk_bytes") is not None and delivered
        else None,
        "topic_disk_bytes_per_tick": run["topic_disk_bytes"] / delivered
        if run.get("topic_disk_bytes") is not None and delivered
        else None,
        "checkpoints_per_s": checkpoint["records"] / run["run_s"]
        if checkpoint.get("records") and run.get("run_s")
        else None,
    }


COST_KEYS: Final = (
    "serve_us_per_tick",
    "mirror_us_per_tick",
    "broker_us_per_tick",
    "mirror_and_broker_us_per_tick",
    "checkpoint_bytes_per_tick",
    "checkpoint_disk_bytes_per_tick",
    "topic_disk_bytes_per_tick",
    "checkpoints_per_s",
    "published_per_s",
    "drop_fraction",
    "mean_tick_bytes",
    "serve_children_cpu_s",
    "broker_cpu_cores",
)
LAG_KEYS: Final = ("p50_s", "p99_s", "max_s", "share_under_target", "metrics_lag_s_max")


def _medians(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        f"{key}_median": median(run.get(key) for run in runs) for key in keys
    }
    summary["runs"] = len(runs)
    return summary


def transactions_figures(
    cost_runs: Sequence[Mapping[str, Any]], lag_runs: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The "transactions" section's figures and verdicts (without its "runs"): medians per
    label (COST_LABELS, LAG_LABELS), the hot path's CPU ratio off/on, the mirror's CPU with and
    without transactions, checkpoint bytes per tick, the visibility lag."""
    by_label = {label: [run for run in cost_runs if run["label"] == label] for label in COST_LABELS}
    summary = {label: _medians(runs, COST_KEYS) for label, runs in by_label.items() if runs}
    lag_by_label = {
        label: [run for run in lag_runs if run["label"] == label] for label in LAG_LABELS
    }
    lag_summary = {label: _medians(runs, LAG_KEYS) for label, runs in lag_by_label.items() if runs}
    figures: dict[str, Any] = {"summary": summary, "lag_summary": lag_summary}

    off, on = summary.get("off", {}), summary.get("on", {})
    hot = ratio(off.get("serve_us_per_tick_median"), on.get("serve_us_per_tick_median"))
    figures["hot_path_ratio"] = hot
    figures["hot_path_ratio_per_pair"] = [
        ratio(run_off.get("serve_us_per_tick"), run_on.get("serve_us_per_tick"))
        for run_off, run_on in zip(by_label["off"], by_label["on"], strict=False)
    ]
    figures["hot_path_target"] = HOT_PATH_TARGET
    figures["hot_path_verdict"] = "PASS" if hot is not None and hot >= HOT_PATH_TARGET else "MISS"
    # The same ratio with the mirror's load on the machine in both runs (see mirror_twin): what
    # the side path costs the hot path itself, without what sharing 2 cores with it costs.
    twin = summary.get("off-twin", {})
    own = ratio(twin.get("serve_us_per_tick_median"), on.get("serve_us_per_tick_median"))
    figures["hot_path_ratio_same_load"] = own
    figures["hot_path_ratio_same_load_per_pair"] = [
        ratio(run_twin.get("serve_us_per_tick"), run_on.get("serve_us_per_tick"))
        for run_twin, run_on in zip(by_label["off-twin"], by_label["on"], strict=False)
    ]
    figures["hot_path_same_load_verdict"] = (
        None if own is None else "PASS" if own >= HOT_PATH_TARGET else "MISS"
    )
    figures["sharing_ratio"] = ratio(
        off.get("serve_us_per_tick_median"), twin.get("serve_us_per_tick_median")
    )
    no_txn = summary.get("on-no-txn", {})
    figures["hot_path_ratio_no_txn"] = ratio(
        off.get("serve_us_per_tick_median"), no_txn.get("serve_us_per_tick_median")
    )
    figures["broker_idle_cores"] = off.get("broker_cpu_cores_median")
    figures["mirror_cost_ratio_txn_over_no_txn"] = ratio(
        on.get("mirror_and_broker_us_per_tick_median"),
        no_txn.get("mirror_and_broker_us_per_tick_median"),
    )
    figures["checkpoint_bytes_per_tick"] = on.get("checkpoint_bytes_per_tick_median")

    lag_on = lag_by_label["lag-on"]
    p99_median = median(run.get("p99_s") for run in lag_on)
    figures["visibility_p99_s_median"] = p99_median
    figures["visibility_max_s"] = max(
        (run["max_s"] for run in lag_on if run.get("max_s") is not None), default=None
    )
    figures["visibility_target_s"] = VISIBILITY_TARGET_S
    figures["visibility_verdict"] = (
        "PASS" if p99_median is not None and p99_median < VISIBILITY_TARGET_S else "MISS"
    )
    return figures


def cost_plan_labels(repeats: int, with_baseline: bool) -> list[str]:
    """The order of the cost runs: off, on, off-twin (and on-no-txn) alternating, `repeats`
    times; then
    the lag runs, on (and no-txn) alternating."""
    cost = ["off", "on", "off-twin", *(["on-no-txn"] if with_baseline else [])]
    lag = ["lag-on", *(["lag-no-txn"] if with_baseline else [])]
    return [label for _ in range(repeats) for label in cost] + [
        label for _ in range(repeats) for label in lag
    ]
