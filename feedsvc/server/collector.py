"""The serve process's garbage-collector policy, applied once start-up is done.

Measured at 100k ticks/s in 1,000-tick ingest frames (20 s, `gc.callbacks`): with CPython's
defaults a frame's 1,000 decoded ticks trip the generation-0 threshold (700) while they are
alive, so every frame ran a collection (93 a second, up to 0.2 ms), promoted live ticks, and a
full collection walked start-up's 26,000 objects for 8.7-13 ms: a stall of every tick behind
it. After freezing start-up's objects and raising the threshold above what one frame can hold,
the same run made no collection at all after start-up.
"""

from __future__ import annotations

import gc
from typing import Final

# Above the containers one ingest frame can create (a 1 MiB frame of minimal ticks holds about
# 19,000 dicts), so a frame being handled is never collected; cyclic garbage, which the hot
# path does not make, still is, after at most this many allocations.
GENERATION0_THRESHOLD: Final = 50_000


def settle_after_start() -> None:
    """Collect what start-up left, move everything alive (modules, config, sockets) out of the
    collector's sight for good, and raise the generation-0 threshold."""
    gc.collect()
    gc.freeze()
    _, generation1, generation2 = gc.get_threshold()
    gc.set_threshold(GENERATION0_THRESHOLD, generation1, generation2)
