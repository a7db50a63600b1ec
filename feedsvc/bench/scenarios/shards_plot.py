"""The shards benchmark's plot: the aggregate publish rate per mode (median, min-max bars, with
the subscriber's received rate beside it) and each process's CPU as stacked bars per mode
(matplotlib, imported only here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from feedsvc.bench.report import pyplot_or_none
from feedsvc.bench.scenarios.shards_analysis import MODES

BAR_WIDTH = 0.27
SERVE_COLORS = ("#1f77b4", "#6baed6", "#08519c")
OTHER_COLORS = {"relay": "#ff7f0e", "subscriber": "#2ca02c", "other": "#bdbdbd"}


def plot(document: dict[str, Any], path: Path, progress: Callable[[str], None]) -> None:
    """Write the PNG to `path`; without matplotlib say so through `progress` and write none."""
    pyplot = pyplot_or_none(progress)
    if pyplot is None:
        return
    figure, (rate_axis, cpu_axis) = pyplot.subplots(1, 2, figsize=(13, 5))
    _rate_panel(rate_axis, document)
    _cpu_panel(cpu_axis, document)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    progress(f"plot written to {path}")


def _bar_with_range(
    axis: Any, positions: list[float], figures: list[Mapping[str, float | None]], **style: Any
) -> None:
    middles = [entry["median"] or 0.0 for entry in figures]
    below = [m - (entry["min"] or m) for m, entry in zip(middles, figures, strict=True)]
    above = [(entry["max"] or m) - m for m, entry in zip(middles, figures, strict=True)]
    bars = axis.bar(positions, middles, BAR_WIDTH, yerr=[below, above], capsize=4, **style)
    axis.bar_label(bars, labels=[f"{m / 1000:,.0f}k" for m in middles], padding=3, fontsize=8)


def _rate_panel(axis: Any, document: Mapping[str, Any]) -> None:
    modes = document["modes"]
    positions = list(range(len(MODES)))
    series = (
        ("aggregate_published_per_s", "published (sum of the serves' own counters)", 1.0),
        ("relay_in_per_s", "into the relay (its proxy counter)", 0.75),
        ("received_per_s", "received by the subscriber", 0.5),
    )
    for offset, (key, label, alpha) in zip((-1, 0, 1), series, strict=True):
        _bar_with_range(
            axis,
            [position + offset * BAR_WIDTH for position in positions],
            [modes[mode][key] for mode in MODES],
            label=label,
            alpha=alpha,
            color="tab:blue",
        )
    labels = [f"{mode}: {len(modes[mode]['published_per_s'])} serve(s)" for mode in MODES]
    axis.set_xticks(positions, labels)
    axis.yaxis.set_major_formatter(lambda value, _position: f"{value / 1000:,.0f}k")
    axis.set_ylabel("ticks/s, median of runs, bars min-max")
    axis.set_ylim(0, axis.get_ylim()[1] * 1.35)
    ratio = document["two_to_one"]["median"]
    settings = document["settings"]
    axis.set_title(
        f"aggregate publish rate, serves flat out on {document['machine']['cpus_usable']} "
        f"cores; two / one = {'?' if ratio is None else f'{ratio:.2f}'}\n"
        f"{settings['repeats']} alternating pairs of {settings['duration_s']:g} s windows",
        fontsize=9,
    )
    axis.legend(fontsize=8, loc="upper left")


def _segment_color(segment: str, serve_index: int) -> str:
    if segment.startswith("serve"):
        return SERVE_COLORS[serve_index % len(SERVE_COLORS)]
    return OTHER_COLORS.get(segment, "tab:gray")


def _cpu_panel(axis: Any, document: Mapping[str, Any]) -> None:
    modes = document["modes"]
    cpus = document["machine"]["cpus_usable"]
    processes: dict[str, None] = {}
    for mode in MODES:
        processes.update(dict.fromkeys(modes[mode]["cores"]))
    # The serves at the bottom, then what they feed, then the rest of the machine.
    serves = [name for name in processes if name.startswith("serve")]
    segments = [*serves, *(name for name in processes if name not in serves), "other"]
    bottoms = [0.0] * len(MODES)
    for segment in segments:
        heights = []
        for mode in MODES:
            figures = (
                modes[mode]["other_cores"]
                if segment == "other"
                else modes[mode]["cores"].get(segment, {"median": None})
            )
            heights.append(max(0.0, figures["median"] or 0.0))
        color = _segment_color(segment, serves.index(segment) if segment in serves else 0)
        bars = axis.bar(range(len(MODES)), heights, 0.5, bottom=bottoms, label=segment, color=color)
        axis.bar_label(
            bars,
            labels=[f"{segment} {100 * h / cpus:.0f}%" if h >= 0.08 else "" for h in heights],
            label_type="center",
            fontsize=8,
        )
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axis.axhline(cpus, color="black", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(MODES)), list(MODES))
    axis.set_ylabel(f"cores, median of runs (dashed: the machine's {cpus})")
    axis.set_ylim(0, cpus * 1.1)
    axis.set_title(
        "CPU split per process over the window, % of the machine\n"
        "(other = machine busy minus these: orchestrator, scrapes, anything else)",
        fontsize=9,
    )
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
