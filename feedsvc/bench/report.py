"""What every benchmark reports the same way: progress lines on stderr, the machine it ran on,
medians and spreads over repeated runs, ratios to a baseline from the same run, JSON results."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import zmq


class Progress:
    """Progress lines on stderr, each prefixed with the benchmark's name (stdout stays for the
    report)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, text: str) -> None:
        print(f"{self.name}: {text}", file=sys.stderr, flush=True)


def machine_facts() -> dict[str, Any]:
    """The machine and the library versions a figure was measured with."""
    model = None
    try:
        found = re.search(
            r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE
        )
        model = found.group(1).strip() if found else None
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "orjson": orjson.__version__,
        "load_average_1m_at_start": os.getloadavg()[0],
    }


def machine_lines(facts: Mapping[str, Any]) -> list[str]:
    """A report's header about the machine (`machine_facts`): CPUs, platform, versions, load."""
    return [
        f"machine: {facts['cpu_count']} CPUs ({facts['cpus_usable']} usable), {facts['cpu_model']}",
        f"         {facts['platform']}",
        f"         {facts['python']}, pyzmq {facts['pyzmq']}, libzmq {facts['libzmq']}, "
        f"orjson {facts['orjson']}; load average (1 min) at start "
        f"{facts['load_average_1m_at_start']:.2f}",
    ]


def median(values: Iterable[float | None]) -> float | None:
    """The median of the known values; None when none is known."""
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def spread(values: Iterable[float | None]) -> float | None:
    """(max - min) / median of the known values: how noisy repeated runs were."""
    known = [value for value in values if value is not None]
    middle = statistics.median(known) if known else None
    if not middle:
        return None
    return (max(known) - min(known)) / middle


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, None when either is unknown or the baseline is 0."""
    if value is None or not baseline:
        return None
    return value / baseline


def write_json(path: Path, document: Any) -> None:
    """Write `document` whole or not at all (a reader never sees half a report), making the
    folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    partial.replace(path)


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fraction(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def fixed(value: float | None, places: int = 2) -> str:
    """`value` with `places` decimals, "-" when unknown: every report's number cell."""
    return "-" if value is None else f"{value:.{places}f}"


def cores(value: float | None) -> str:
    return fixed(value, 2)


def pyplot_or_none(progress: Callable[[str], None]) -> Any:
    """matplotlib.pyplot with the file-only Agg backend, or None (said through `progress`) when
    matplotlib is not installed: a benchmark's figures do not depend on its plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        progress("--plot needs matplotlib (pip install matplotlib); no plot written")
        return None
    return pyplot
