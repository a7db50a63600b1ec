"""The slow-subscriber benchmark's plot: the publisher's RSS over time per phase, and the slow
conflating subscriber's tick age, one row per transport (matplotlib, imported only here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from feedsvc.bench.report import pyplot_or_none
from feedsvc.bench.scenarios.slow_report import TARGET_AGE_P99_MS


def plot(phases: Sequence[dict[str, Any]], path: Path, progress: Callable[[str], None]) -> None:
    """Write the PNG to `path`; without matplotlib say so through `progress` and write none."""
    pyplot = pyplot_or_none(progress)
    if pyplot is None:
        return
    transports = list(dict.fromkeys(phase["transport"] for phase in phases))
    figure, axes = pyplot.subplots(
        len(transports), 2, figsize=(13, 4 * len(transports)), squeeze=False
    )
    for row, transport in enumerate(transports):
        rss_axis, age_axis = axes[row]
        for phase in (phase for phase in phases if phase["transport"] == transport):
            samples = phase["rss_samples"]
            line = rss_axis.plot(
                [t for t, _ in samples],
                [kb / 1_024 for _, kb in samples],
                label=f"{phase['phase']} {phase['label']}",
            )[0]
            rss_axis.axhline(
                phase["rss"]["bound_kb"] / 1_024, color=line.get_color(), linestyle=":"
            )
            if phase["phase"] == "B":
                series = phase["slow"]["age_series"]
                age_axis.plot([t for t, _ in series], [age for _, age in series], ".", ms=2)
        rss_axis.set(
            title=f"{transport}: publisher RSS (dotted: bound)",
            xlabel="s since the window started",
            ylabel="MiB",
        )
        rss_axis.legend(fontsize="small")
        age_axis.axhline(TARGET_AGE_P99_MS, color="red", linestyle="--", label="target p99")
        age_axis.set(
            title=f"{transport}: slow conflating subscriber, tick age",
            xlabel="s since the window started",
            ylabel="ms",
            yscale="log",
        )
        age_axis.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    print(f"plot written to {path}")
