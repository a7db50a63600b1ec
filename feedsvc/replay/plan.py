"""What a replay reads: per partition, the offsets [start, end) that hold ``--since`` ..
``--until``, located with Kafka's offsets_for_times (no scan from the beginning) and clamped to
the watermarks captured when the replay starts, so that a replay of a live topic ends.

The Kafka timestamps only bound the read; the exact window is applied to each tick's own ``ts``
afterwards (`feedsvc.replay.ticks.TickFilter`). They can bound it because the mirror stamps each
message with CreateTime when it produces it: never earlier than the tick's ``ts``, later only by
the mirror's lag.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from feedsvc.replay.reader import PartitionRange, offsets_at_time, topic_partitions, watermarks
from feedsvc.replay.times import NS_PER_MS

if TYPE_CHECKING:
    from confluent_kafka import Consumer

# The start of --since is looked up at (since - START_SLACK_MS). Zero would be enough: CreateTime
# >= ts, so a tick with ts >= since has CreateTime >= since. One second more covers clock skew
# between the publisher's clock and the mirror producer's (another process, maybe another host);
# it costs reading at most one extra second of ticks, which the exact ts filter then drops.
START_SLACK_MS: Final = 1_000
# The end of a partition for --until is the first message whose Kafka timestamp is at or past
# (until + END_SLACK_MS). A tick with ts < until was produced before until + the mirror's lag, so
# this is exact as long as the mirror lags less than END_SLACK_MS; ticks read past until are
# dropped by the exact ts filter.
END_SLACK_MS: Final = 60_000


def start_offsets(
    consumer: Consumer, topic: str, since_ns: int, partitions: Iterable[int] | None = None
) -> dict[int, int | None]:
    """Per partition, where reading for ``--since since_ns`` starts (None: nothing that recent).

    Uses offsets_for_times at ``since - START_SLACK_MS`` (floored to Kafka's milliseconds, which
    keeps a tick whose ts is in the same millisecond as since).
    """
    if partitions is None:
        partitions = topic_partitions(consumer, topic)
    return offsets_at_time(consumer, topic, partitions, since_ns // NS_PER_MS - START_SLACK_MS)


def end_offsets_for_until(
    consumer: Consumer, topic: str, until_ns: int, partitions: Iterable[int]
) -> dict[int, int | None]:
    """Per partition, the first offset past ``--until until_ns`` + END_SLACK_MS (None: none yet)."""
    until_ms_ceiling = -(-until_ns // NS_PER_MS)
    return offsets_at_time(consumer, topic, partitions, until_ms_ceiling + END_SLACK_MS)


def plan_ranges(
    consumer: Consumer, topic: str, since_ns: int | None, until_ns: int | None
) -> list[PartitionRange]:
    """What to read: per partition, from --since (or the low watermark) to the high watermark
    captured now (or the --until end if earlier)."""
    partitions = topic_partitions(consumer, topic)
    # Captured before the time lookups, and everything is clamped to it: a live topic keeps
    # growing, and the replay ends at what was there when it started.
    bounds = watermarks(consumer, topic, partitions)
    starts: Mapping[int, int | None] = (
        {} if since_ns is None else start_offsets(consumer, topic, since_ns, partitions)
    )
    ends: Mapping[int, int | None] = (
        {} if until_ns is None else end_offsets_for_until(consumer, topic, until_ns, partitions)
    )
    ranges = []
    for partition in partitions:
        low, high = bounds[partition]
        start = low
        if since_ns is not None:
            found = starts.get(partition)
            start = high if found is None else min(max(found, low), high)
        end = high
        found_end = ends.get(partition)
        if found_end is not None:
            end = max(min(found_end, high), start)
        ranges.append(PartitionRange(partition, start, end))
    return ranges
