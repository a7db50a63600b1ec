"""The publish benchmark's figures: one run's counts turned into rates and drops, the runs turned
into medians and ratios (the JSON document), and that document printed as a table."""

from __future__ import annotations

import bisect
import itertools
import os
import statistics
from collections.abc import Sequence
from typing import Any, Final

from feedsvc.bench.report import cores, fraction, machine_lines, median, rate, ratio, spread
from feedsvc.bench.scenarios.publish_roles import RING_SIZE

TARGET_RATIO: Final = 0.5
# Spread of the repeats (max - min over median) above which the figures are called noisy.
NOISY_SPREAD: Final = 0.10
OTHER_CPU_NOTE_CORES: Final = 0.2
DROP_NOTE_FRACTION: Final = 0.01
KINDS: Final = ("baseline", "feedsvc")
LABELS: Final = {"baseline": "baseline (raw pyzmq PUB)", "feedsvc": "feedsvc serve"}


def count_at(samples: Sequence[Sequence[float]], at: float) -> float:
    """The publisher's send count at monotonic time `at`, interpolated between its
    (time, count) samples."""
    times = [sample[0] for sample in samples]
    index = bisect.bisect_left(times, at)
    if index <= 0:
        return float(samples[0][1])
    if index >= len(samples):
        return float(samples[-1][1])
    (t_before, n_before), (t_after, n_after) = samples[index - 1], samples[index]
    return n_before + (n_after - n_before) * (at - t_before) / (t_after - t_before)


def unwrap(counter: int, estimate: float) -> int:
    """The send index whose ring counter is `counter`, nearest the publisher's own count."""
    return counter + RING_SIZE * round((estimate - counter) / RING_SIZE)


def _per_s(value: float | None, window_s: float) -> float | None:
    return None if value is None else value / window_s


def summarize(
    kind: str,
    subscriber: dict[str, Any],
    publisher_samples: Sequence[Sequence[float]] | None,
    hwm: int,
) -> dict[str, Any]:
    """Turn the subscriber's (and baseline publisher's) raw counts into rates and drops.

    The baseline's ring counter is unwrapped with the publisher's own count, which is safe only
    while far fewer than RING_SIZE / 2 messages are in flight: bounded HWMs guarantee that.
    """
    start, end = subscriber["window_start"], subscriber["window_end"]
    window_s = end - start
    received = subscriber["received"]
    start_by_key, end_by_key = subscriber["start_by_key"], subscriber["end_by_key"]
    sent_in_window: int | None = None
    sent_per_s: float | None = None
    if kind == "baseline" and publisher_samples:
        sent = count_at(publisher_samples, end) - count_at(publisher_samples, start)
        sent_per_s = sent / window_s
        if subscriber["edges_complete"] and 0 < hwm <= RING_SIZE // 8:
            first = unwrap(start_by_key["counter"], count_at(publisher_samples, start))
            after = unwrap(end_by_key["counter"], count_at(publisher_samples, end))
            sent_in_window = after - first
    elif subscriber["edges_complete"]:
        sent_in_window = sum(end_by_key[key] - start_by_key[key] for key in start_by_key)
        sent_per_s = sent_in_window / window_s
    dropped = None if sent_in_window is None else sent_in_window - received
    marks = subscriber["marks"]
    per_second = [
        (count_after - count_before) / (t_after - t_before)
        for (t_before, count_before), (t_after, count_after) in itertools.pairwise(marks)
        if t_after - t_before >= 0.5
    ]
    publisher_cpu_s, busy_s = subscriber["publisher_cpu_s"], subscriber["machine_busy_cpu_s"]
    other_cpu_s = None
    if publisher_cpu_s is not None and busy_s is not None:
        other_cpu_s = max(0.0, busy_s - publisher_cpu_s - subscriber["subscriber_cpu_s"])
    return {
        "kind": kind,
        # Monotonic clock (system-wide on Linux): other processes' samples can be aligned to it.
        "window_start": start,
        "window_end": end,
        "marks": marks,
        "window_s": window_s,
        "received": received,
        "received_per_s": received / window_s,
        "received_per_s_each_second": per_second,
        "sent_in_window": sent_in_window,
        "sent_per_s": sent_per_s,
        "dropped": dropped,
        "drop_fraction": None
        if dropped is None or not sent_in_window
        else dropped / sent_in_window,
        "mean_frame_bytes": subscriber["mean_frame_bytes"],
        "subscriber_cpu_cores": subscriber["subscriber_cpu_s"] / window_s,
        "publisher_cpu_cores": _per_s(publisher_cpu_s, window_s),
        # Ticks delivered per CPU-second the publisher used: less sensitive to other load.
        "received_per_publisher_cpu_s": received / publisher_cpu_s if publisher_cpu_s else None,
        "other_cpu_cores": _per_s(other_cpu_s, window_s),
        "steal_cpu_cores": _per_s(subscriber["machine_steal_cpu_s"], window_s),
    }


def summarize_kind(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and the spread of received/s) over one kind's runs."""
    received = [run["received_per_s"] for run in runs]

    def median_of(key: str) -> float | None:
        return median(run[key] for run in runs)

    return {
        "received_per_s_median": median(received),
        "received_per_s_runs": received,
        "sent_per_s_median": median_of("sent_per_s"),
        "received_per_publisher_cpu_s_median": median_of("received_per_publisher_cpu_s"),
        "drop_fraction_median": median_of("drop_fraction"),
        "spread": spread(received),
        "publisher_cpu_cores_median": median_of("publisher_cpu_cores"),
        "subscriber_cpu_cores_median": median_of("subscriber_cpu_cores"),
        "other_cpu_cores_median": median_of("other_cpu_cores"),
        "steal_cpu_cores_median": median_of("steal_cpu_cores"),
        "mean_frame_bytes": median_of("mean_frame_bytes"),
    }


def build_figures(
    facts: dict[str, Any], settings: dict[str, Any], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The benchmark's result document (what --json writes) from alternating runs."""
    summary = {kind: summarize_kind([run for run in runs if run["kind"] == kind]) for kind in KINDS}
    feedsvc, baseline = summary["feedsvc"], summary["baseline"]
    received_ratio = ratio(feedsvc["received_per_s_median"], baseline["received_per_s_median"])
    # Each feedsvc run over the baseline run just before it: cancels slow drifts of machine speed.
    pair_ratios = [
        feedsvc_run["received_per_s"] / baseline_run["received_per_s"]
        for baseline_run, feedsvc_run in zip(
            [run for run in runs if run["kind"] == "baseline"],
            [run for run in runs if run["kind"] == "feedsvc"],
            strict=True,
        )
    ]
    efficiency_ratio = ratio(
        feedsvc["received_per_publisher_cpu_s_median"],
        baseline["received_per_publisher_cpu_s_median"],
    )
    verdict = "PASS" if received_ratio is not None and received_ratio >= TARGET_RATIO else "MISS"
    return {
        "machine": facts,
        "settings": settings,
        "summary": summary,
        "ratio_received": received_ratio,
        "ratio_received_per_pair": pair_ratios,
        "ratio_sent": ratio(feedsvc["sent_per_s_median"], baseline["sent_per_s_median"]),
        "ratio_received_per_publisher_cpu_s": efficiency_ratio,
        "target_ratio": TARGET_RATIO,
        "verdict": verdict,
        "runs": runs,
        "load_average_1m_at_end": os.getloadavg()[0],
    }


def report_notes(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Why the figures may be off: noisy repeats, other load, a subscriber that fell behind."""
    notes = []
    for kind in KINDS:
        figures = summary[kind]
        if figures["spread"] is not None and figures["spread"] > NOISY_SPREAD:
            notes.append(
                f"{kind} runs spread {100 * figures['spread']:.0f}% of the median: "
                "noisy (other load, see the other/steal columns, or the VM's speed varying), "
                "consider a rerun or more --repeats"
            )
        other = figures["other_cpu_cores_median"]
        if other is not None and other > OTHER_CPU_NOTE_CORES:
            notes.append(
                f"{kind}: other processes used {other:.2f} cores during the windows: "
                "the figures are low, consider a rerun"
            )
        drop = figures["drop_fraction_median"]
        if drop is not None and drop > DROP_NOTE_FRACTION:
            notes.append(
                f"{kind}: the subscriber missed {100 * drop:.1f}% (PUB dropped at the HWM): "
                "received/s is partly the subscriber's limit"
            )
    return notes


LEGEND: Final = (
    "medians",
    "received/s: ticks the subscriber got per second of the window",
    "sent/s: baseline = the publisher loop's own count; "
    "feedsvc = per-symbol seq spans seen by the subscriber",
    "dropped: (sent - received) / sent in the window",
    "/pub CPU-s: ticks received per CPU-second of the publisher process",
    "CPU: cores used in the window by the publisher (incl. its libzmq I/O thread), "
    "the subscriber, all other processes, hypervisor steal",
)


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(figures: dict[str, Any]) -> None:
    """The table on stdout, from `build_figures`' document."""
    facts, settings, summary = figures["machine"], figures["settings"], figures["summary"]
    print("\n".join(machine_lines(facts)))
    print(
        f"settings: {settings['duration_s']:g} s window after {settings['warmup_s']:g} s warm-up, "
        f"{settings['repeats']} repeats (alternating), {settings['symbols']} symbols, ipc, "
        f"SNDHWM=RCVHWM={settings['hwm']}, SNDBUF={settings['sndbuf_bytes']}"
    )
    print()
    header = (
        f"{'':26} {'received/s':>11} {'runs (received/s)':>30} {'sent/s':>11} "
        f"{'dropped':>8} {'frame B':>7} {'/pub CPU-s':>10} {'pub CPU':>7} {'sub CPU':>7} "
        f"{'other':>6} {'steal':>6}"
    )
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        row = summary[kind]
        runs_text = " ".join(f"{value / 1000:,.0f}k" for value in row["received_per_s_runs"])
        print(
            f"{LABELS[kind]:26} {rate(row['received_per_s_median']):>11} {runs_text:>30} "
            f"{rate(row['sent_per_s_median']):>11} "
            f"{fraction(row['drop_fraction_median']):>8} "
            f"{row['mean_frame_bytes'] or 0:>7.0f} "
            f"{rate(row['received_per_publisher_cpu_s_median']):>10} "
            f"{cores(row['publisher_cpu_cores_median']):>7} "
            f"{cores(row['subscriber_cpu_cores_median']):>7} "
            f"{cores(row['other_cpu_cores_median']):>6} "
            f"{cores(row['steal_cpu_cores_median']):>6}"
        )
    print("-" * len(header))
    pair_ratios = figures["ratio_received_per_pair"]
    print(
        f"ratio feedsvc/baseline (received): {_ratio_text(figures['ratio_received'])}   "
        f"target >= {figures['target_ratio']}   {figures['verdict']}"
    )
    print(
        f"ratio feedsvc/baseline (received), per adjacent pair: "
        f"{' '.join(f'{value:.3f}' for value in pair_ratios)} "
        f"(median {statistics.median(pair_ratios):.3f})"
    )
    if figures["ratio_sent"] is not None:
        print(f"ratio feedsvc/baseline (sent):     {figures['ratio_sent']:.3f}")
    if figures["ratio_received_per_publisher_cpu_s"] is not None:
        print(
            "ratio feedsvc/baseline (received per publisher CPU-second): "
            f"{figures['ratio_received_per_publisher_cpu_s']:.3f}"
        )
    print("\n".join(f"  {line}" for line in LEGEND))
    for note in report_notes(summary):
        print(f"note: {note}")
