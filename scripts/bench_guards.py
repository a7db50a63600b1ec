"""What the hostile-input guards cost per tick: Publisher.publish and IngestDecoder.decode of this
tree against another one (e.g. the commit before the guards), in alternating processes.

    git archive a921bf1 | tar -x -C /tmp/feedsvc-before
    .venv/bin/python scripts/bench_guards.py --before-root /tmp/feedsvc-before --processes 8

Prints one JSON document: per tree and measure, the median over processes of each process's
best pass, in ns per tick. One process measures one tree (its feedsvc package comes first on
sys.path), so both are timed under the same conditions, turn about.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BATCHES, BATCH_TICKS, PASSES = 50, 1_000, 25


def measure() -> dict[str, float]:
    """Best pass of each measure in this process, ns per tick (the tree is sys.path[0]'s)."""
    import orjson

    from feedsvc.server.ingest import IngestDecoder
    from feedsvc.server.publisher import Publisher

    publisher = Publisher(lambda frame: None, 1, 100_000)
    # Ticks made here, not by the synthetic feed, whose module moved between the trees compared.
    batches = [
        [
            {
                "sym": f"SYN{(batch * BATCH_TICKS + index) % 50:04d}",
                "bid": 100.0 + index / 100,
                "ask": 100.02 + index / 100,
                "bid_size": 100 * (1 + index % 50),
                "ask_size": 100 * (1 + (index + 7) % 50),
            }
            for index in range(BATCH_TICKS)
        ]
        for batch in range(BATCHES)
    ]
    decoder = IngestDecoder(1 << 20)
    # ts_src is the optional field a feed handler sends most; it takes the validation's slow path.
    batch_frames = [orjson.dumps([{**tick, "ts_src": 1} for tick in batch]) for batch in batches]
    single_frames = [orjson.dumps({**tick, "ts_src": 1}) for tick in batches[0]]
    best = {"publish": float("inf"), "decode_batch": float("inf"), "decode_single": float("inf")}
    ticks = BATCHES * BATCH_TICKS
    for _ in range(PASSES):
        fresh = [[dict(tick) for tick in batch] for batch in batches]
        started = time.perf_counter()
        for batch in fresh:
            publisher.publish(batch)
        best["publish"] = min(best["publish"], (time.perf_counter() - started) / ticks * 1e9)
        started = time.perf_counter()
        for frame in batch_frames:
            decoder.decode(frame)
        elapsed = (time.perf_counter() - started) / ticks * 1e9
        best["decode_batch"] = min(best["decode_batch"], elapsed)
        started = time.perf_counter()
        for frame in single_frames:
            decoder.decode(frame)
        elapsed = (time.perf_counter() - started) / len(single_frames) * 1e9
        best["decode_single"] = min(best["decode_single"], elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-root", type=Path, required=True, help="the other tree")
    parser.add_argument("--processes", type=int, default=8, help="processes per tree")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one process's run
    args = parser.parse_args()
    if args.measure is not None:
        sys.path.insert(0, str(args.measure))
        print(json.dumps(measure()))
        return 0
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for index in range(args.processes):
        for label, root in (("before", args.before_root), ("after", PROJECT_ROOT)):
            print(f"[{index + 1}/{args.processes}] {label}", file=sys.stderr)
            output = subprocess.run(
                [sys.executable, __file__, "--before-root", str(root), "--measure", str(root)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[label].append(json.loads(output))
    report = {
        label: {
            name: round(statistics.median(run[name] for run in label_runs), 1)
            for name in label_runs[0]
        }
        for label, label_runs in runs.items()
    }
    report["unit"] = "ns per tick, median over processes of each one's best pass"  # type: ignore[assignment]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
