"""Per-symbol conflation: the `Conflator` keeps only the newest tick of each symbol until the
subscriber delivers it. No sockets."""

from __future__ import annotations

from typing import Any

from feedsvc.protocol.ticks import Tick


class Conflator:
    """Keeps only the newest tick per symbol until taken.

    It holds raw wire frames, decoded only when taken: a conflating reader passes over most ticks,
    and decoding every one of them cost it as much CPU as a fast reader, CPU the publisher and
    the other subscribers on the machine need. Ticks already decoded (a snapshot's) are held too.

    Symbols are handed out in the order their first pending tick arrived: replacing a pending tick
    keeps the symbol's place (a dict keeps insertion order on update), so a busy symbol cannot
    starve a quiet one.
    """

    def __init__(self) -> None:
        # topic -> [newest frame or decoded tick, raw frames it replaced (never decoded)]
        self._pending_by_topic: dict[bytes, list[Any]] = {}
        self.conflated = 0

    def offer_frame(self, topic: bytes, frame: bytes) -> None:
        """Hold a raw tick frame, replacing (and counting) the older pending one of its topic."""
        entry = self._pending_by_topic.get(topic)
        if entry is None:
            self._pending_by_topic[topic] = [frame, 0]
            return
        if type(entry[0]) is bytes:
            entry[1] += 1
        entry[0] = frame
        self.conflated += 1

    def offer(self, tick: Tick) -> None:
        """Hold a decoded tick (its seq already checked), replacing an older pending one."""
        topic = tick["sym"].encode()
        if topic in self._pending_by_topic:
            self.conflated += 1
        # Raw frames it replaces were not checked, but the tracker has seen this newer tick.
        self._pending_by_topic[topic] = [tick, 0]

    def take_entry(self) -> tuple[Tick | bytes, int] | None:
        """The longest-waiting symbol's newest frame or tick and how many unchecked raw frames it
        replaced; None if nothing is pending."""
        pending = self._pending_by_topic
        if not pending:
            return None
        item, replaced = pending.pop(next(iter(pending)))
        return item, replaced

    def __len__(self) -> int:
        return len(self._pending_by_topic)
