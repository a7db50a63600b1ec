"""PNG plots of a `feedsvc loadtest` report, drawn with matplotlib's Agg backend.

steady and burst profiles: latency percentiles over time and received ticks/s over time
(feedsvc and the baseline in one figure, burst windows shaded), and the Kafka mirror's lag over
time when the mirror was on. step profile: achieved against target rate, and latency, per step.
matplotlib is imported only when plotting: it is an optional dependency (the ``bench`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MISSING_MATPLOTLIB: Final = "--plot needs matplotlib (pip install feedsvc[bench])"
RUNS: Final = ("feedsvc", "baseline")
# Runs differ by line style, percentiles by colour: one legend reads both ways.
RUN_LINE_STYLES: Final = {"feedsvc": "-", "baseline": "--"}
RUN_COLOURS: Final = {"feedsvc": "tab:blue", "baseline": "tab:gray"}
# feedsvc drawn wider so it still shows where the baseline's line lies on top of it.
RUN_LINE_WIDTHS: Final = {"feedsvc": 3.0, "baseline": 1.5}
STEP_MARKER_SIZES: Final = {"feedsvc": 90, "baseline": 30}
PERCENTILE_COLOURS: Final = {"p50": "tab:blue", "p99": "tab:orange", "p999": "tab:red"}
PERCENTILE_LABELS: Final = {"p50": "p50", "p99": "p99", "p999": "p99.9"}
BURST_SHADE: Final = {"color": "tab:orange", "alpha": 0.15, "linewidth": 0}
FIGURE_SIZE_IN: Final = (10.0, 5.6)
DPI: Final = 110


def matplotlib_problem() -> str | None:
    """Why --plot cannot work here (matplotlib missing), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING_MATPLOTLIB
    return None


def write_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write the report's plots into `directory` (created if needed); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    runs = {kind: report[kind] for kind in RUNS if kind in report}
    if "steps" in report["feedsvc"]:
        figures = {"steps.png": _steps_figure(report, runs)}
    else:
        figures = {
            "latency.png": _latency_figure(report, runs),
            "throughput.png": _throughput_figure(report, runs),
        }
        if "over_time_by_run" in report["feedsvc"]:
            figures["latency_runs.png"] = _runs_figure(report, runs)
        samples = report["feedsvc"]["publisher"]["samples"]
        if any(sample.get("mirror_lag_s") is not None for sample in samples):
            figures["mirror_lag.png"] = _mirror_figure(report, samples)
    paths = []
    for name, figure in figures.items():
        path = directory / name
        figure.savefig(path, dpi=DPI)
        paths.append(path)
    return paths


def _new_figure(rows: int = 1, columns: int = 1, sharex: bool = False) -> tuple[Figure, Any]:
    # A Figure on its own Agg canvas, not pyplot: no global figure state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE_IN, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, sharex=sharex, squeeze=False)


def _settings_line(report: dict[str, Any]) -> str:
    settings = report["settings"]
    rate = settings["rate"]
    rate_text = f"{rate:,.0f} ticks/s" if rate else "unpaced"
    if settings["profile"] == "step":
        rate_text = (
            f"steps from {settings['step_first_rate']:,.0f} ticks/s, "
            f"x{settings['step_factor']:g} each"
        )
    return (
        f"{settings['profile']} profile, {rate_text}, "
        f"{settings['symbols']} symbols, {settings['subscribers']} subscribers "
        f"({settings['slow']} slow), {settings['transport']}, "
        f"Kafka mirror {'on' if settings['mirror'] else 'off'}"
    )


def _value(value: float | None) -> float:
    return math.nan if value is None else value


def _midpoints(rows: list[dict[str, Any]]) -> list[float]:
    return [row["t_s"] + 0.5 for row in rows]


def _shade_bursts(axes: Axes, section: dict[str, Any]) -> None:
    bursts = section.get("bursts")
    if bursts is None:
        return
    label = f"burst ({bursts['rate']:,.0f} ticks/s)"
    for window in bursts["windows"]:
        axes.axvspan(window["start_s"], window["end_s"], label=label, **BURST_SHADE)
        label = None


def _log_latency_axis(axes: Axes) -> None:
    # Labels at 1-2-5 steps in plain microseconds read faster than powers of ten.
    from matplotlib.ticker import LogLocator, NullFormatter

    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(_thousands)
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_ylabel("publish-to-receive latency (µs, log scale)")


def _finish_time_axes(axes: Axes, report: dict[str, Any]) -> None:
    axes.set_xlim(0, report["settings"]["duration_s"])
    axes.set_xlabel("time since the measurement started (s)")
    axes.grid(True, which="major", alpha=0.3)


def _latency_figure(report: dict[str, Any], runs: dict[str, dict[str, Any]]) -> Figure:
    figure, grid = _new_figure()
    axes = grid[0][0]
    _shade_bursts(axes, report["feedsvc"])
    for kind, section in runs.items():
        rows = section["over_time"]
        for name, colour in PERCENTILE_COLOURS.items():
            axes.plot(
                _midpoints(rows),
                [_value(row[name]) for row in rows],
                linestyle=RUN_LINE_STYLES[kind],
                color=colour,
                marker="o",
                markersize=3,
                label=f"{kind} {PERCENTILE_LABELS[name]}",
            )
    _log_latency_axis(axes)
    _finish_time_axes(axes, report)
    # Outside the axes: six lines and the shading leave no corner free of data.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    figure.suptitle("Latency per second at the fast subscribers")
    axes.set_title(_settings_line(report), fontsize=9)
    return figure


def _runs_figure(report: dict[str, Any], runs: dict[str, dict[str, Any]]) -> Figure:
    """--repeats: p99 and p99.9 per second of every run, the runs one after another (from
    ts_src with --source ingest): where a tail comes from one bad second or one bad run."""
    figure, grid = _new_figure()
    axes = grid[0][0]
    source = "src_" if "latency_src_us" in report["feedsvc"] else ""
    for kind, section in runs.items():
        by_run = section.get("over_time_by_run") or [section["over_time"]]
        offset = 0.0
        xs: list[float] = []
        values: dict[str, list[float]] = {"p99": [], "p999": []}
        for rows in by_run:
            xs += [offset + row["t_s"] + 0.5 for row in rows]
            for name in values:
                values[name] += [_value(row.get(f"{source}{name}")) for row in rows]
            offset += len(rows)
            xs.append(offset)  # a break between runs
            for name in values:
                values[name].append(float("nan"))
        for name, series in values.items():
            axes.plot(
                xs,
                series,
                linestyle=RUN_LINE_STYLES[kind],
                color=PERCENTILE_COLOURS[name],
                marker="o",
                markersize=2,
                label=f"{kind} {PERCENTILE_LABELS[name]}",
            )
    _log_latency_axis(axes)
    axes.set_xlabel("measured seconds, run after run")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    what = "from the feed handler's ts_src" if source else "from ts"
    figure.suptitle(f"Latency per second, every run ({what})")
    axes.set_title(_settings_line(report), fontsize=9)
    return figure


def _second_edges(rows: list[dict[str, Any]]) -> list[float]:
    return [*(row["t_s"] for row in rows), rows[-1]["t_s"] + 1] if rows else [0]


def _target_rates(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[float]:
    """The feed's target rate per measured second (the burst rate in burst seconds)."""
    settings = report["settings"]
    burst_rate = settings["rate"] * settings.get("burst_factor", 1)
    return [burst_rate if row["in_burst"] else settings["rate"] for row in rows]


def _thousands(value: float, _position: int) -> str:
    return f"{value:,.0f}"


def _throughput_figure(report: dict[str, Any], runs: dict[str, dict[str, Any]]) -> Figure:
    figure, grid = _new_figure()
    axes = grid[0][0]
    _shade_bursts(axes, report["feedsvc"])
    rows = report["feedsvc"]["over_time"]
    if report["settings"]["rate"] and rows:
        axes.stairs(
            _target_rates(report, rows),
            _second_edges(rows),
            baseline=None,
            color="black",
            linewidth=1,
            linestyle=":",
            label="feed target rate",
        )
    for kind, section in runs.items():
        rows = section["over_time"]
        # A count per second is a level over that second, not a point: stairs.
        axes.stairs(
            [_value(row["received_per_subscriber"]) for row in rows],
            _second_edges(rows),
            baseline=None,
            linestyle=RUN_LINE_STYLES[kind],
            color=RUN_COLOURS[kind],
            linewidth=RUN_LINE_WIDTHS[kind],
            label=f"{kind}: received per fast subscriber",
        )
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_formatter(_thousands)
    axes.set_ylabel("ticks/s")
    _finish_time_axes(axes, report)
    axes.legend(loc="lower left", fontsize=8)
    figure.suptitle("Throughput per second: ticks received by each fast subscriber")
    axes.set_title(_settings_line(report), fontsize=9)
    return figure


def _mirror_figure(report: dict[str, Any], samples: list[dict[str, Any]]) -> Figure:
    figure, grid = _new_figure(rows=2, sharex=True)
    lag_axes, queue_axes = grid[0][0], grid[1][0]
    times = [sample["t_s"] for sample in samples]
    for axes, field_name, label in (
        (lag_axes, "mirror_lag_s", "mirror lag (s)"),
        (queue_axes, "mirror_queue_ticks", "not yet acknowledged (ticks)"),
    ):
        _shade_bursts(axes, report["feedsvc"])
        axes.plot(
            times,
            [_value(sample.get(field_name)) for sample in samples],
            color="tab:purple",
            marker="o",
            markersize=3,
            label=label,
        )
        axes.set_ylim(bottom=0)
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    queue_axes.yaxis.set_major_formatter(_thousands)
    queue_axes.set_xlim(0, report["settings"]["duration_s"])
    queue_axes.set_xlabel("time since the measurement started (s)")
    if "bursts" in report["feedsvc"]:
        lag_axes.legend(loc="upper left", fontsize=8)
    figure.suptitle("Kafka mirror: lag and queue behind the publisher (scraped once a second)")
    lag_axes.set_title(_settings_line(report), fontsize=9)
    return figure


def _steps_figure(report: dict[str, Any], runs: dict[str, dict[str, Any]]) -> Figure:
    figure, grid = _new_figure(columns=2)
    rate_axes, latency_axes = grid[0][0], grid[0][1]
    targets = sorted(
        {step["target_rate"] for section in runs.values() for step in section["steps"]}
    )
    fraction = report["settings"].get("step_sustained_fraction", 0.95)
    rate_axes.plot(targets, targets, color="black", alpha=0.5, linewidth=1, label="target")
    rate_axes.plot(
        targets,
        [fraction * target for target in targets],
        color="black",
        alpha=0.5,
        linewidth=1,
        linestyle=":",
        label=f"{fraction:g} x target (sustained)",
    )
    for kind, section in runs.items():
        steps = section["steps"]
        colour = RUN_COLOURS[kind]
        step_targets = [step["target_rate"] for step in steps]
        achieved = [_value(step["publish_rate"]) for step in steps]
        rate_axes.plot(step_targets, achieved, color=colour, linestyle=RUN_LINE_STYLES[kind])
        for sustained, marker in ((True, "o"), (False, "X")):
            chosen = [index for index, step in enumerate(steps) if step["sustained"] is sustained]
            if chosen:
                rate_axes.scatter(
                    [step_targets[index] for index in chosen],
                    [achieved[index] for index in chosen],
                    color=colour,
                    marker=marker,
                    s=STEP_MARKER_SIZES[kind],
                    zorder=3,
                    label=f"{kind} {'sustained' if sustained else 'not sustained'}",
                )
        best = section["max_sustained_rate"]
        if best is not None:
            bound = " (every step sustained)" if section.get("stopped_by") == "max_steps" else ""
            rate_axes.axvline(
                best,
                color=colour,
                alpha=0.6,
                linestyle=RUN_LINE_STYLES[kind],
                linewidth=RUN_LINE_WIDTHS[kind],
                label=f"{kind} max sustained {best:,.0f}/s{bound}",
            )
        for name in ("p50", "p99"):
            latency_axes.plot(
                step_targets,
                [_value(step["latency_us"][name]) for step in steps],
                color=PERCENTILE_COLOURS[name],
                linestyle=RUN_LINE_STYLES[kind],
                marker="o",
                markersize=4,
                label=f"{kind} {PERCENTILE_LABELS[name]}",
            )
    rate_axes.xaxis.set_major_formatter(_thousands)
    rate_axes.yaxis.set_major_formatter(_thousands)
    latency_axes.xaxis.set_major_formatter(_thousands)
    rate_axes.set_xlabel("target rate (ticks/s)")
    rate_axes.set_ylabel("achieved publish rate (ticks/s)")
    rate_axes.set_title("Achieved against target rate per step", fontsize=10)
    rate_axes.legend(loc="upper left", fontsize=8)
    _log_latency_axis(latency_axes)
    latency_axes.set_xlabel("target rate (ticks/s)")
    latency_axes.set_title("Latency per step (fast subscribers)", fontsize=10)
    latency_axes.legend(loc="upper left", fontsize=8)
    for axes in (rate_axes, latency_axes):
        axes.grid(True, alpha=0.3)
    figure.suptitle(f"Step profile: highest sustained rate\n{_settings_line(report)}", fontsize=11)
    return figure
