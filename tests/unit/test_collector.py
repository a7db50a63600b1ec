"""The serve process's collector policy: start-up's objects are frozen and a whole ingest frame
of ticks stays below the generation-0 threshold, so handling one never triggers a collection."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import orjson
import pytest

from feedsvc.server.collector import GENERATION0_THRESHOLD, settle_after_start
from feedsvc.server.ingest import IngestDecoder

MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture
def settled() -> Iterator[None]:
    threshold = gc.get_threshold()
    settle_after_start()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_start_up_objects_are_frozen_and_the_threshold_raised(settled: None) -> None:
    assert gc.get_freeze_count() > 1_000
    assert gc.get_threshold()[0] == GENERATION0_THRESHOLD


def test_the_largest_ingest_frame_is_decoded_without_a_collection(settled: None) -> None:
    tick = {"sym": "A", "bid": 1, "ask": 1, "bid_size": 1, "ask_size": 1}
    count = MAX_MESSAGE_BYTES // (len(orjson.dumps(tick)) + 1)
    frame = orjson.dumps([tick] * count)
    assert len(frame) <= MAX_MESSAGE_BYTES
    collections: list[int] = []

    def count_collections(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()  # the generation-0 count starts at 0, as after start-up
    gc.callbacks.append(count_collections)
    try:
        ticks = IngestDecoder(MAX_MESSAGE_BYTES).decode(frame)
    finally:
        gc.callbacks.remove(count_collections)
    assert len(ticks) == count > 15_000
    assert collections == []
