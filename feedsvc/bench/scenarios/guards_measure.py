"""One measuring process of bench_guards: the best pass of each measure, ns per tick, over the
feedsvc package of the tree given as its argument.

Run by path (`python guards_measure.py TREE`), never imported from the package: the process must
import `feedsvc` from TREE, so this file imports nothing of feedsvc before TREE is first on
sys.path.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

BATCHES, BATCH_TICKS, PASSES = 50, 1_000, 25


def _classes(root: Path) -> tuple[Any, Any]:
    """IngestDecoder and Publisher of the tree `root` (their modules moved in the package layout
    of issue 15; the trees compared may be from before it)."""
    import importlib

    layout = "feedsvc.server." if (root / "feedsvc" / "server").is_dir() else "feedsvc."
    ingest = importlib.import_module(layout + "ingest")
    publisher = importlib.import_module(layout + "publisher")
    for module in (ingest, publisher):
        # An editable install's import hook can resolve a name the tree lacks to another tree.
        if not Path(module.__file__ or "").resolve().is_relative_to(root):
            raise SystemExit(f"{module.__name__} came from {module.__file__}, not from {root}")
    return ingest.IngestDecoder, publisher.Publisher


def measure(root: Path) -> dict[str, float]:
    """Best pass of each measure in this process, ns per tick, with the feedsvc of `root`."""
    import orjson

    ingest_decoder, publisher_class = _classes(root)
    publisher = publisher_class(lambda frame: None, 1, 100_000)
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
    decoder = ingest_decoder(1 << 20)
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


if __name__ == "__main__":
    # The tree measured comes first, ahead of this file's folder and any installed feedsvc.
    tree = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(tree))
    print(json.dumps(measure(tree)))
