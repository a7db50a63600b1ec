"""Ingest decoding (rejections counted by reason), the synthetic feed and its pacing."""

from __future__ import annotations

import orjson

from feedsvc.protocol.ticks import REJECT_REASONS, tick_problem
from feedsvc.server.ingest import IngestDecoder
from feedsvc.server.pacing import RatePacer
from feedsvc.server.synthetic import SyntheticFeed, synthetic_symbols

GOOD = {"sym": "AAPL", "bid": 1.0, "ask": 1.01, "bid_size": 100, "ask_size": 100}


def test_single_object_and_batch_are_accepted() -> None:
    decoder = IngestDecoder(max_message_bytes=10_000)
    assert decoder.decode(orjson.dumps(GOOD)) == [GOOD]
    batch = [GOOD, {**GOOD, "sym": "MSFT"}]
    assert decoder.decode(orjson.dumps(batch)) == batch
    assert decoder.rejected_total == 0


def test_bad_ticks_in_a_batch_are_rejected_one_by_one_and_good_ones_kept() -> None:
    decoder = IngestDecoder(max_message_bytes=10_000)
    batch = [GOOD, {"sym": "X"}, {**GOOD, "bid": "x"}, 5, {**GOOD, "sym": "IBM"}]
    accepted = decoder.decode(orjson.dumps(batch))
    assert [tick["sym"] for tick in accepted] == ["AAPL", "IBM"]
    assert decoder.rejected_by_reason["missing_field"] == 1
    assert decoder.rejected_by_reason["bad_price"] == 1
    assert decoder.rejected_by_reason["not_object"] == 1
    assert decoder.rejected_total == 3


def test_frame_level_rejections() -> None:
    decoder = IngestDecoder(max_message_bytes=200)
    assert decoder.decode(b"{not json") == []
    assert decoder.decode(b"\xff\xfe") == []
    assert decoder.decode(orjson.dumps([GOOD] * 10)) == []
    assert decoder.rejected_by_reason["not_json"] == 2
    assert decoder.rejected_by_reason["too_large"] == 1
    assert set(decoder.rejected_by_reason) == set(REJECT_REASONS)


def test_synthetic_symbols_are_fixed_width_so_none_prefixes_another() -> None:
    symbols = synthetic_symbols(20_000)
    assert len(set(symbols)) == 20_000
    assert len({len(symbol) for symbol in symbols}) == 1
    assert symbols[:2] == ["SYN00000", "SYN00001"]


def test_synthetic_ticks_are_valid_random_walks() -> None:
    feed = SyntheticFeed(symbol_count=5, seed=42)
    ticks = feed.generate(5_000)
    assert len(ticks) == 5_000
    assert all(tick_problem(tick) is None for tick in ticks)
    assert all(tick["bid"] < tick["ask"] for tick in ticks)
    assert {tick["sym"] for tick in ticks} == set(feed.symbols)
    # Successive quotes of one symbol move by a few cents at most: a walk, not noise.
    last_mid: dict[str, float] = {}
    for tick in ticks:
        mid = (tick["bid"] + tick["ask"]) / 2
        if tick["sym"] in last_mid:
            assert abs(mid - last_mid[tick["sym"]]) <= 0.0301
        last_mid[tick["sym"]] = mid


def test_same_seed_same_walk() -> None:
    assert SyntheticFeed(3, seed=7).generate(100) == SyntheticFeed(3, seed=7).generate(100)


def test_pacer_holds_the_rate_and_forgets_excess_lag() -> None:
    pacer = RatePacer(rate=1_000, start=0.0, max_batch=10_000, max_lag_s=0.1)
    assert pacer.due(0.0) == 0
    assert pacer.due(0.5) == 100  # behind by 500 ticks: capped at 0.1 s worth
    assert pacer.due(0.6) == 100
    assert pacer.due(0.6) == 0
    assert 0 < pacer.seconds_until_next(0.6) <= 0.001 + 1e-9


def test_pacer_batches_are_bounded_and_rate_zero_means_flat_out() -> None:
    pacer = RatePacer(rate=1e6, start=0.0, max_batch=512)
    assert pacer.due(0.05) == 512
    flat_out = RatePacer(rate=0, start=0.0, max_batch=512)
    assert flat_out.due(0.0) == 512
    assert flat_out.seconds_until_next(0.0) == 0.0
