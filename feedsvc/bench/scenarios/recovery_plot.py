"""The recovery benchmark's plot: the fast subscriber's p50 / p99 per run without and with a
client recovering flat out, and the recovering client's reply latency (matplotlib, imported only
here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from feedsvc.bench.report import pyplot_or_none


def plot(document: dict[str, Any], path: Path, progress: Callable[[str], None]) -> None:
    """Write the PNG to `path`; without matplotlib say so through `progress` and write none."""
    pyplot = pyplot_or_none(progress)
    if pyplot is None:
        return
    runs = document["runs"]
    figure, (fast_axis, reply_axis) = pyplot.subplots(1, 2, figsize=(13, 4.5))
    pairs = range(1, len(runs) // 2 + 1)
    width = 0.38
    for offset, recovering, label in ((-width / 2, False, "without"), (width / 2, True, "with")):
        chosen = [run for run in runs if run["recovering"] is recovering]
        for percentile, hatch in (("p99", None), ("p50", "//")):
            fast_axis.bar(
                [pair + offset for pair in pairs],
                [run["fast_latency_us"][percentile] for run in chosen],
                width,
                label=f"{percentile} {label} a recovering client",
                hatch=hatch,
                alpha=0.9 if percentile == "p99" else 0.5,
            )
    fast_axis.set_xlabel("pair of runs")
    fast_axis.set_ylabel("fast subscriber latency from ts (us)")
    fast_axis.set_title(
        f"fast subscriber at {document['rate']:,.0f} ticks/s: p99 with / without "
        f"{document['fast_p99_ratio']:.2f}x"
    )
    fast_axis.set_xticks(list(pairs))
    fast_axis.legend(fontsize=8)
    replies = [run["recoverer"]["latency_us"] for run in runs if run["recovering"]]
    for percentile in ("p50", "p99"):
        reply_axis.plot(
            list(pairs), [reply[percentile] for reply in replies], marker="o", label=percentile
        )
    reply_axis.set_xlabel("run with a recovering client")
    reply_axis.set_ylabel("request to reply (us), replies of max_reply_bytes")
    reply_axis.set_title(
        f"recovery from the window: {document['recovered_ticks_per_s']:,.0f} ticks/s recovered"
    )
    reply_axis.set_xticks(list(pairs))
    reply_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    progress(f"plot written to {path}")
