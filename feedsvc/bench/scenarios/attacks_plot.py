"""The bench_attacks chart: per attack, the victim's rate ratio and serve's peak RSS, one bar per
report (e.g. before and after a change), drawn from the reports' JSON alone (--replot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

MB: Final = 1024 * 1024


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    """Bar chart per attack: the victim's rate ratio and the peak RSS, one bar per report (e.g.
    before and after a change), hatched where serve exited or was stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = [run["attack"] for run in [reports[-1]["baseline"], *reports[-1]["attacks"]]]
    figure, (rate_axes, rss_axes) = plt.subplots(
        1, 2, figsize=(12, 0.25 * len(names) * len(reports) + 2), sharey=True
    )
    height = 0.8 / len(reports)
    for index, report in enumerate(reports):
        by_name = {run["attack"]: run for run in [report["baseline"], *report["attacks"]]}
        runs = [by_name.get(name, {}) for name in names]
        positions = [row + index * height for row in range(len(names))]
        hatches = [
            "//" if run.get("stopped_at_rss_limit") or run.get("alive") is False else ""
            for run in runs
        ]
        ratios = [run.get("rate_ratio") or 0.0 for run in runs]
        peaks = [(run.get("peak_rss_bytes") or 0) / MB for run in runs]
        for axes, values in ((rate_axes, ratios), (rss_axes, peaks)):
            bars = axes.barh(positions, values, height=height, label=report["label"])
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
    rate_axes.set_yticks([row + 0.4 - height / 2 for row in range(len(names))], names)
    rate_axes.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    rate_axes.set_xlabel("victim rate / configured rate")
    rate_axes.invert_yaxis()
    rss_axes.set_xscale("log")
    rss_axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    rss_axes.set_xlabel("peak RSS of serve (MB, log)")
    rss_axes.legend(loc="lower right", fontsize="small")
    figure.suptitle("feedsvc under attack; hatched: serve exited or was stopped")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)
