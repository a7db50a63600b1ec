"""The figures of a `feedsvc loadtest` report, made from what its processes reported.

- published for a subscriber's symbols = per symbol it saw, ``last seq - first seq + 1`` (both
  seen by that subscriber), summed. Every tick in that span was either received or missed, so
  ``received + missed == published_in_span`` holds per subscriber (the report checks it).
- publish_rate = the largest over the fast subscribers (all, if every one is slow) of
  ``published_in_span / (last ts - first ts)``, the ts being the publisher's own stamps of the
  ticks that subscriber saw.
- latency = receive ``time.time_ns()`` - ``ts``, per tick, at the fast subscribers (HdrHistogram
  in microseconds if ``hdrh`` is installed, else sorted raw values); the slow subscribers report
  the same figure as their tick age. Subscribers keep one histogram per second of receive time;
  the figures of a run merge them over the measured seconds (the connect and the stop left
  out), ``over_time`` lists them one by one.
- behind_at_stop = per symbol, the newest seq any subscriber of the run saw minus this
  subscriber's last seq, summed: ticks it had not read (queued, or dropped by the PUB socket at
  its high-water mark) when it was stopped. A slow subscriber's drops lie past its queue, so they
  appear here and in its tick age, not as gaps within its observed span.
- publisher CPU and RSS come from /proc once a second; with ``--mirror`` the mirror's lag, queue
  and acknowledged count from the service's /metrics at each sample.
"""

from __future__ import annotations

from typing import Any, Final

from feedsvc.bench.latency import latency_percentiles
from feedsvc.bench.loadtest.window import MeasuredWindow
from feedsvc.bench.report import median, ratio
from feedsvc.bench.scrape import metric_samples

# With --profile step and --rate 0, the first step's rate.
STEP_START_RATE: Final = 10_000
# A step is sustained when it achieves this fraction of its target rate (and has no gaps).
STEP_SUSTAINED_FRACTION: Final = 0.95
# The service's mirror figures scraped at each sample: report field -> Prometheus sample name.
MIRROR_METRICS: Final = {
    "mirror_lag_s": "feedsvc_mirror_lag_seconds",
    "mirror_queue_ticks": "feedsvc_mirror_queue_ticks",
    "mirror_delivered_total": "feedsvc_mirror_delivered_total",
}
PERCENTILE_NAMES: Final = ("p50", "p99", "p999", "max")
# The latency figures a section may have: from ts (the publisher's stamp) and, with
# --source ingest, from ts_src (the feed handler's).
LATENCY_FIGURES: Final = ("latency_us", "latency_src_us")

# A subscriber's per-second latency dumps: Unix second (as text) -> `LatencyRecorder.dump` value.
DumpsBySecond = dict[str, dict[str, Any]]


def mirror_figures(exposition: str) -> dict[str, float | None]:
    """The `MIRROR_METRICS` values in a Prometheus text exposition (None where absent, and all
    None when the exposition does not parse)."""
    try:
        samples = metric_samples(exposition)
    except ValueError:
        return dict.fromkeys(MIRROR_METRICS)
    return {field: samples.get(metric) for field, metric in MIRROR_METRICS.items()}


def _merged_seconds(dumps_by_second: list[DumpsBySecond], seconds: list[int]) -> dict[str, Any]:
    """Received ticks/s per subscriber and latency over some seconds of some subscribers."""
    dumps = [
        by_second[str(second)]
        for by_second in dumps_by_second
        for second in seconds
        if str(second) in by_second
    ]
    received = sum(dump["count"] for dump in dumps)
    per_subscriber_second = len(dumps_by_second) * len(seconds)
    return {
        "received": received,
        "received_per_s": received / per_subscriber_second if per_subscriber_second else None,
        "latency_us": latency_percentiles(dumps),
    }


def _in_window(by_second: DumpsBySecond, window: MeasuredWindow) -> list[dict[str, Any]]:
    """The dumps of the measured seconds: the connect and the stop are not the steady state
    (with --source ingest the ticks queued before the service's ingest socket was up arrive
    late in the first moments)."""
    return [by_second[str(second)] for second in window.seconds if str(second) in by_second]


def _overlaps(offset: int, burst_windows: list[tuple[float, float]]) -> bool:
    """Whether the second starting `offset` s into the window overlaps a burst window."""
    return any(begin < offset + 1 and end > offset for begin, end in burst_windows)


def over_time(
    dumps_by_second: list[DumpsBySecond],
    window: MeasuredWindow,
    source_dumps_by_second: list[DumpsBySecond] | None = None,
) -> list[dict[str, Any]]:
    """Per measured second: received ticks (summed and per subscriber) and latency percentiles
    over the given subscribers' per-second dumps; `in_burst` when it overlaps a burst window.
    With source dumps (--source ingest) also ``src_p50`` ... ``src_max``: from ts_src."""
    burst_windows = window.burst_windows()
    rows = []
    for offset, second in enumerate(window.seconds):
        merged = _merged_seconds(dumps_by_second, [second])
        latency = merged["latency_us"]
        row = {
            "t_s": offset,
            "received": merged["received"],
            "received_per_subscriber": merged["received_per_s"],
            **{name: latency[name] for name in PERCENTILE_NAMES},
            "in_burst": _overlaps(offset, burst_windows),
        }
        if source_dumps_by_second is not None:
            source = _merged_seconds(source_dumps_by_second, [second])["latency_us"]
            row.update({f"src_{name}": source[name] for name in PERCENTILE_NAMES})
        rows.append(row)
    return rows


def burst_figures(dumps_by_second: list[DumpsBySecond], window: MeasuredWindow) -> dict[str, Any]:
    """Received ticks/s per subscriber and latency percentiles: per burst window, over the
    seconds in any window, and over the seconds outside every window."""
    bursts = window.bursts
    if bursts is None:
        raise ValueError("burst_figures needs a window with bursts")
    windows = []
    seconds_in_a_burst: set[int] = set()
    for begin, end in window.burst_windows():
        seconds = [
            second
            for offset, second in enumerate(window.seconds)
            if _overlaps(offset, [(begin, end)])
        ]
        seconds_in_a_burst.update(seconds)
        windows.append(
            {"start_s": begin, "end_s": end, **_merged_seconds(dumps_by_second, seconds)}
        )
    outside = [second for second in window.seconds if second not in seconds_in_a_burst]
    return {
        "rate": bursts.rate,
        "every_s": bursts.every_s,
        "duration_s": bursts.duration_s,
        "windows": windows,
        "in_bursts": _merged_seconds(dumps_by_second, sorted(seconds_in_a_burst)),
        "outside": _merged_seconds(dumps_by_second, outside),
    }


def summarize(
    kind: str,
    results: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    publisher_summary: dict[str, Any] | None,
    publisher_exit: int | None,
    cpu_before: float | None,
    cpu_after: float | None,
    window_s: float,
    window: MeasuredWindow,
) -> dict[str, Any]:
    """One report section from the subscribers' results and the publisher's samples and summary
    (its --summary-file; None if it wrote none)."""
    # Per symbol the newest seq any subscriber of this run saw: how far behind each one stopped.
    newest_seq: dict[str, int] = {}
    for result in results:
        for symbol, seq in result["last_seq_by_symbol"].items():
            newest_seq[symbol] = max(seq, newest_seq.get(symbol, 0))
    subscribers = []
    for index, result in enumerate(results):
        last_seq = result.pop("last_seq_by_symbol")
        result["behind_at_stop"] = sum(
            newest - last_seq.get(symbol, 0) for symbol, newest in newest_seq.items()
        )
        by_second = result.pop("latency_by_second")
        source_by_second = result.pop("source_latency_by_second", None)
        latency = latency_percentiles(_in_window(by_second, window))
        entry = {"index": index, **result, "latency_us": latency}
        if source_by_second is not None:
            entry["latency_src_us"] = latency_percentiles(_in_window(source_by_second, window))
        entry["received_by_second"] = [
            by_second.get(str(second), {}).get("count", 0) for second in window.seconds
        ]
        entry["consistent"] = result["received"] + result["missed"] == result["published_in_span"]
        if result["slow"]:
            entry["tick_age_us"] = latency
        subscribers.append((entry, by_second, source_by_second))
    # The fast subscribers' spans are long; a slow one's few ticks give a noisy rate.
    readers = [entry for entry, _, _ in subscribers if not entry["slow"]] or [
        entry for entry, _, _ in subscribers
    ]
    rates = [entry["publish_rate"] for entry in readers if entry["publish_rate"]]
    mirror = (publisher_summary or {}).get("mirror") or {}
    cpu_values = [s["cpu_cores"] for s in samples if s["cpu_cores"] is not None]
    rss_values = [s["rss_bytes"] for s in samples if s["rss_bytes"] is not None]
    # The section's latency is the fast subscribers' (all of them if every one is slow).
    fast_rows = [row for row in subscribers if not row[0]["slow"]] or subscribers
    fast = [by_second for _, by_second, _ in fast_rows]
    fast_source = [source for _, _, source in fast_rows if source is not None] or None
    section: dict[str, Any] = {
        "publish_rate": max(rates) if rates else None,
        "latency_us": latency_percentiles(
            dump for by_second in fast for dump in _in_window(by_second, window)
        ),
        "subscribers": [entry for entry, _, _ in subscribers],
        "published_total": publisher_summary["published"] if publisher_summary else None,
        "publisher_exit_code": publisher_exit,
        "publisher": {
            "cpu_cores_mean": (cpu_after - cpu_before) / window_s
            if cpu_before is not None and cpu_after is not None
            else None,
            "cpu_cores_max": max(cpu_values) if cpu_values else None,
            "rss_bytes_max": max(rss_values) if rss_values else None,
            "samples": samples,
        },
        "window": {"start_unix_s": window.start_unix_s, "duration_s": window.duration_s},
        "over_time": over_time(fast, window, fast_source),
    }
    if fast_source is not None:
        section["latency_src_us"] = latency_percentiles(
            dump for by_second in fast_source for dump in _in_window(by_second, window)
        )
    if window.bursts is not None:
        section["bursts"] = burst_figures(fast, window)
    if kind == "feedsvc":
        section["mirror"] = None
        if mirror.get("enabled") and publisher_summary is not None:
            lags = [s["mirror_lag_s"] for s in samples if s.get("mirror_lag_s") is not None]
            section["mirror"] = {
                "acknowledged": mirror["delivered"],
                "published": publisher_summary["published"],
                "lag_s_max": max(lags) if lags else None,
            }
    return section


def step_targets(rate: float, factor: float, max_steps: int) -> list[float]:
    """The target rates of --profile step: --rate (STEP_START_RATE when 0), times factor each
    step, in whole ticks/s."""
    first = rate if rate > 0 else STEP_START_RATE
    return [float(max(1, round(first * factor**index))) for index in range(max_steps)]


def step_sustained(target_rate: float, publish_rate: float | None, gaps: int) -> bool:
    """Whether a step held its target: the achieved publish rate is at least
    STEP_SUSTAINED_FRACTION of it and the fast subscribers saw no gaps."""
    return (
        publish_rate is not None
        and publish_rate >= STEP_SUSTAINED_FRACTION * target_rate
        and gaps == 0
    )


def step_figures(target_rate: float, section: dict[str, Any]) -> dict[str, Any]:
    """One step's row of `steps` from its run's section: the fast subscribers' gaps decide."""
    fast = [entry for entry in section["subscribers"] if not entry["slow"]]
    gaps = sum(entry["gaps"] for entry in fast)
    return {
        "target_rate": target_rate,
        "publish_rate": section["publish_rate"],
        "latency_us": section["latency_us"],
        "gaps": gaps,
        "missed": sum(entry["missed"] for entry in fast),
        "publisher_cpu_cores_mean": section["publisher"]["cpu_cores_mean"],
        "sustained": step_sustained(target_rate, section["publish_rate"], gaps),
    }


def steps_section(steps: list[dict[str, Any]], shown_section: dict[str, Any]) -> dict[str, Any]:
    """The section of --profile step: `shown_section` (the last sustained step's run, the first
    step's when none was) plus `steps`, `max_sustained_rate` (None when none was) and
    `stopped_by`."""
    sustained_targets = [step["target_rate"] for step in steps if step["sustained"]]
    return {
        **shown_section,
        "steps": steps,
        "max_sustained_rate": sustained_targets[-1] if sustained_targets else None,
        # max_steps: every step was sustained, so the highest sustained rate is a lower bound.
        "stopped_by": "max_steps" if steps[-1]["sustained"] else "not_sustained",
    }


def ratios(feedsvc: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """feedsvc's figures over the baseline's (rates: higher is better; latency: lower)."""
    figures = {"publish_rate": ratio(feedsvc["publish_rate"], baseline["publish_rate"])}
    for name in PERCENTILE_NAMES:
        figures[name] = ratio(feedsvc["latency_us"][name], baseline["latency_us"][name])
    if "latency_src_us" in feedsvc and "latency_src_us" in baseline:
        for name in PERCENTILE_NAMES:
            figures[f"src_{name}"] = ratio(
                feedsvc["latency_src_us"][name], baseline["latency_src_us"][name]
            )
    figures["publisher_cpu_cores_mean"] = ratio(
        feedsvc["publisher"]["cpu_cores_mean"], baseline["publisher"]["cpu_cores_mean"]
    )
    if "bursts" in feedsvc and "bursts" in baseline:
        figures["burst_p99"] = ratio(
            feedsvc["bursts"]["in_bursts"]["latency_us"]["p99"],
            baseline["bursts"]["in_bursts"]["latency_us"]["p99"],
        )
    if "max_sustained_rate" in feedsvc and "max_sustained_rate" in baseline:
        figures["max_sustained_rate"] = ratio(
            feedsvc["max_sustained_rate"], baseline["max_sustained_rate"]
        )
    return figures


def _run_figures(section: dict[str, Any]) -> dict[str, Any]:
    """One run's headline figures, as `repeated_section` lists them."""
    figures: dict[str, Any] = {
        "publish_rate": section["publish_rate"],
        "publisher_cpu_cores_mean": section["publisher"]["cpu_cores_mean"],
        "gaps": sum(entry["gaps"] for entry in section["subscribers"] if not entry["slow"]),
    }
    for name in LATENCY_FIGURES:
        if name in section:
            figures[name] = dict(section[name])
    if "feed" in section:
        figures["feed_sent"] = section["feed"]["sent"]
        figures["published_total"] = section["published_total"]
    return figures


def repeated_section(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """--repeats N runs of one kind as one section: the median of the publish rate, of the
    publisher's mean CPU and of every latency percentile are the section's own figures (so the
    table and `ratios` read it like one run); ``repeats`` holds each run's figures and, per
    figure, the median, min and max over the runs. Subscribers, samples and over_time are the
    last run's; ``over_time_by_run`` keeps every run's for the plots."""
    runs = [_run_figures(section) for section in sections]
    combined = dict(sections[-1])
    combined["publisher"] = dict(combined["publisher"])
    spread: dict[str, Any] = {}

    def summary(values: list[float | None]) -> dict[str, float | None]:
        known = [value for value in values if value is not None]
        return {
            "median": median(known),
            "min": min(known) if known else None,
            "max": max(known) if known else None,
        }

    for key in ("publish_rate", "publisher_cpu_cores_mean"):
        spread[key] = summary([run[key] for run in runs])
    combined["publish_rate"] = spread["publish_rate"]["median"]
    combined["publisher"]["cpu_cores_mean"] = spread["publisher_cpu_cores_mean"]["median"]
    for name in LATENCY_FIGURES:
        if all(name in run for run in runs):
            spread[name] = {
                percentile: summary([run[name][percentile] for run in runs])
                for percentile in PERCENTILE_NAMES
            }
            combined[name] = {
                percentile: figures["median"] for percentile, figures in spread[name].items()
            }
    combined["repeats"] = {"count": len(sections), "runs": runs, "spread": spread}
    combined["over_time_by_run"] = [section["over_time"] for section in sections]
    return combined
