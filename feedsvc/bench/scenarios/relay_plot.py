"""The relay benchmark's plot: latency percentiles per mode (median over runs, min-max bars) and,
when the capacity search ran, the slowest subscriber's delivered share of each step's rate
(matplotlib, imported only here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from feedsvc.bench.report import pyplot_or_none
from feedsvc.bench.scenarios.relay_analysis import DELIVERED_FRACTION, MODES


def plot(document: dict[str, Any], path: Path, progress: Callable[[str], None]) -> None:
    """Write the PNG to `path`; without matplotlib say so through `progress` and write none."""
    pyplot = pyplot_or_none(progress)
    if pyplot is None:
        return
    capacity = document.get("capacity")
    panels = [name for name in ("modes", "capacity") if document.get(name)]
    figure, axes = pyplot.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    axis_by_panel = dict(zip(panels, axes[0], strict=True))
    if "modes" in axis_by_panel:
        _latency_panel(axis_by_panel["modes"], document)
    if capacity:
        _capacity_panel(axis_by_panel["capacity"], capacity)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    progress(f"plot written to {path}")


def _latency_panel(latency_axis: Any, document: dict[str, Any]) -> None:
    names = ("p50", "p99", "p999")
    width = 0.38
    for offset, mode in zip((-width / 2, width / 2), MODES, strict=True):
        summary = document["modes"][mode]
        middles = [summary[f"{name}_us"]["median"] or 0 for name in names]
        below = [m - (summary[f"{n}_us"]["min"] or m) for m, n in zip(middles, names, strict=True)]
        above = [(summary[f"{n}_us"]["max"] or m) - m for m, n in zip(middles, names, strict=True)]
        latency_axis.bar(
            [index + offset for index in range(len(names))],
            middles,
            width,
            yerr=[below, above],
            capsize=4,
            label=mode,
        )
    latency_axis.set_xticks(range(len(names)), ["p50", "p99", "p99.9"])
    latency_axis.set_yscale("log")
    latency_axis.set_ylabel("latency from ts (us), median of runs, min-max")
    hop = document["hop"]
    added = hop["added_p50_us"]
    latency_axis.set_title(
        f"{document['topology']}\nrelay hop p50 "
        f"{'?' if added is None else f'{added:+.0f}'} us (target +{hop['target_us']:g}) "
        f"{hop['verdict']}",
        fontsize=9,
    )
    latency_axis.legend()


def _capacity_panel(capacity_axis: Any, capacity: dict[str, Any]) -> None:
    for mode in MODES:
        steps = capacity["steps"][mode]
        capacity_axis.plot(
            [step["rate"] for step in steps],
            [(step["rate_per_subscriber_min"] or 0) / step["rate"] for step in steps],
            marker="o",
            label=mode,
        )
    capacity_axis.axhline(DELIVERED_FRACTION, color="grey", linestyle="--", linewidth=1)
    capacity_axis.set_xscale("log")
    capacity_axis.set_xlabel("target rate (ticks/s), raw pyzmq source")
    capacity_axis.set_ylabel("slowest subscriber / target")
    ratio = capacity["summary"]["relay_to_direct"]
    capacity_axis.set_title(
        f"highest gap-free rate, relay / direct: {'?' if ratio is None else f'{ratio:.2f}'}",
        fontsize=9,
    )
    capacity_axis.legend()
