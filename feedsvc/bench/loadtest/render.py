"""The readable `feedsvc loadtest` report on stdout: a table per run and subscriber, the
publishers' CPU and memory, the mirror, bursts and steps, and the ratios to the baseline.
rich is imported only here, when the report is printed."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final

from feedsvc.bench.loadtest.analysis import PERCENTILE_NAMES

# report.rate is the thousands-separated whole number every count and rate here is shown as.
from feedsvc.bench.report import cores
from feedsvc.bench.report import rate as whole

if TYPE_CHECKING:
    from rich.table import Table

# Piped output (CI logs) gets a width that fits every column instead of 80.
PIPED_WIDTH: Final = 140


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}"


def print_table(report: dict[str, Any]) -> None:
    """The readable summary: one row per subscriber per section, then the ratios."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="feedsvc loadtest (latency in us; slow rows: tick age)")
    for column in (
        "run",
        "sub",
        "received",
        "missed",
        "gaps",
        "behind",
        "published in span",
        "publish rate/s",
        "p50",
        "p99",
        "p99.9",
        "max",
    ):
        table.add_column(column, justify="left" if column in ("run", "sub") else "right")
    for kind in ("feedsvc", "baseline"):
        section = report.get(kind)
        if section is None:
            continue
        table.add_row(
            kind,
            "all fast",
            "",
            "",
            "",
            "",
            "",
            whole(section["publish_rate"]),
            *_percentile_cells(section["latency_us"]),
        )
        if "latency_src_us" in section:
            source_cells = _percentile_cells(section["latency_src_us"])
            table.add_row("", "from ts_src", *[""] * 6, *source_cells)
        for entry in section["subscribers"]:
            table.add_row(
                "",
                f"{entry['index']}{' slow' if entry['slow'] else ''}",
                whole(entry["received"]),
                whole(entry["missed"]),
                whole(entry["gaps"]),
                whole(entry["behind_at_stop"]),
                whole(entry["published_in_span"]),
                whole(entry["publish_rate"]),
                *_percentile_cells(entry["latency_us"]),
            )
    console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
    console.print(table)
    for kind in ("feedsvc", "baseline"):
        section = report.get(kind)
        if section is None:
            continue
        publisher = section["publisher"]
        rss = publisher["rss_bytes_max"]
        console.print(
            f"{kind} publisher: CPU {cores(publisher['cpu_cores_mean'])} cores mean, "
            f"{cores(publisher['cpu_cores_max'])} max; RSS max "
            f"{'-' if rss is None else f'{rss / 2**20:.1f} MiB'}; "
            f"published in total {whole(section['published_total'])}"
        )
    for kind in ("feedsvc", "baseline"):
        section = report.get(kind)
        if section is None:
            continue
        if "feed" in section:
            feed = section["feed"]
            console.print(
                f"{kind}: the feed handler sent {whole(feed['sent'])} ticks in "
                f"{whole(feed['frames'])} frames ({whole(feed['unsent'])} not taken); published "
                f"{whole(section['published_total'])}"
            )
        if "repeats" in section:
            console.print(_repeats_line(kind, section["repeats"]))
    mirror = report["feedsvc"].get("mirror")
    if mirror is not None:
        lag = mirror.get("lag_s_max")
        console.print(
            f"mirror: {mirror['acknowledged']:,} of {mirror['published']:,} published ticks "
            f"acknowledged by Kafka; lag max {'-' if lag is None else f'{lag:.3f} s'}"
        )
    if "bursts" in report["feedsvc"]:
        console.print(_bursts_table(report))
    if "steps" in report["feedsvc"]:
        console.print(_steps_table(report))
        for kind in ("feedsvc", "baseline"):
            if kind in report:
                section = report[kind]
                bound = " (every step sustained: a lower bound)"
                console.print(
                    f"{kind} max sustained rate: {whole(section['max_sustained_rate'])} "
                    f"ticks/s{bound if section['stopped_by'] == 'max_steps' else ''}"
                )
    if "ratios" in report:
        console.print(
            "ratios feedsvc/baseline: "
            + ", ".join(f"{name} {_ratio_text(value)}" for name, value in report["ratios"].items())
        )


def _repeats_line(kind: str, repeats: dict[str, Any]) -> str:
    """The median and range of each latency percentile over the runs (the table shows the
    medians)."""
    parts = []
    for name, title in (("latency_src_us", "from ts_src"), ("latency_us", "from ts")):
        figures = repeats["spread"].get(name)
        if figures is None:
            continue
        cells = ", ".join(
            f"{percentile} {whole(figures[percentile]['median'])} "
            f"({whole(figures[percentile]['min'])}-{whole(figures[percentile]['max'])})"
            for percentile in PERCENTILE_NAMES
        )
        parts.append(f"{title}: {cells}")
    return f"{kind}, {repeats['count']} runs, median (min-max) in us: " + "; ".join(parts)


def _percentile_cells(latency: dict[str, Any]) -> list[str]:
    return [whole(latency[name]) for name in PERCENTILE_NAMES]


def _bursts_table(report: dict[str, Any]) -> Table:
    """One row per burst window and one for the seconds outside them, per run."""
    from rich.table import Table

    bursts = report["feedsvc"]["bursts"]
    table = Table(
        title=f"bursts to {bursts['rate']:,.0f} ticks/s for {bursts['duration_s']:g} s every "
        f"{bursts['every_s']:g} s (fast subscribers; latency in us)"
    )
    for column in ("run", "seconds", "received/s per sub", "p50", "p99", "p99.9", "max"):
        table.add_column(column, justify="left" if column in ("run", "seconds") else "right")
    for kind in ("feedsvc", "baseline"):
        if kind not in report:
            continue
        section_bursts = report[kind]["bursts"]
        rows = [
            (f"burst {window['start_s']:g}-{window['end_s']:g}", window)
            for window in section_bursts["windows"]
        ]
        rows.append(("outside bursts", section_bursts["outside"]))
        for index, (name, figures) in enumerate(rows):
            table.add_row(
                kind if index == 0 else "",
                name,
                whole(figures["received_per_s"]),
                *_percentile_cells(figures["latency_us"]),
            )
    return table


def _steps_table(report: dict[str, Any]) -> Table:
    """One row per step run, per kind."""
    from rich.table import Table

    table = Table(title="steps (fast subscribers; latency in us)")
    for column in ("run", "step", "target/s", "achieved/s", "p50", "p99", "p99.9", "max", "gaps"):
        table.add_column(column, justify="left" if column in ("run", "step") else "right")
    table.add_column("sustained")
    for kind in ("feedsvc", "baseline"):
        if kind not in report:
            continue
        for number, step in enumerate(report[kind]["steps"], start=1):
            table.add_row(
                kind if number == 1 else "",
                str(number),
                whole(step["target_rate"]),
                whole(step["publish_rate"]),
                *_percentile_cells(step["latency_us"]),
                whole(step["gaps"]),
                "yes" if step["sustained"] else "no",
            )
    return table
