"""What the hostile-input guards cost per tick: Publisher.publish and IngestDecoder.decode of this
tree against another one (e.g. the commit before the guards), in alternating processes.

    git archive a921bf1 | tar -x -C /tmp/feedsvc-before
    .venv/bin/python scripts/bench_guards.py --before-root /tmp/feedsvc-before --processes 8

Prints one JSON document: per tree and measure, the median over processes of each process's
best pass, in ns per tick. One process measures one tree (its feedsvc package comes first on
sys.path, see guards_measure.py), so both are timed under the same conditions, turn about.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.kafka import PROJECT_ROOT
from feedsvc.bench.report import Progress, median

MEASURE_SCRIPT: Final = Path(__file__).with_name("guards_measure.py")
UNIT: Final = "ns per tick, median over processes of each one's best pass"

progress = Progress("bench_guards")


def measure_tree(root: Path, python: str = sys.executable) -> dict[str, float]:
    """One process's best passes over the feedsvc package of `root`."""
    output = subprocess.run(
        [python, str(MEASURE_SCRIPT), str(root)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output)


def guards_report(runs: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, Any]:
    """Per tree label and measure, the median over its processes (1 decimal), and the unit."""
    report: dict[str, Any] = {
        label: {
            name: round(median(run[name] for run in label_runs) or 0.0, 1) for name in label_runs[0]
        }
        for label, label_runs in runs.items()
    }
    report["unit"] = UNIT
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_guards.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--before-root", type=Path, required=True, help="the other tree")
    parser.add_argument("--processes", type=int, default=8, help="processes per tree")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for index in range(args.processes):
        for label, root in (("before", args.before_root.resolve()), ("after", PROJECT_ROOT)):
            progress(f"[{index + 1}/{args.processes}] {label}")
            runs[label].append(measure_tree(root))
    print(json.dumps(guards_report(runs), indent=2))
    return 0
