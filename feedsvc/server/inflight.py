"""Replies libzmq still holds for slow readers, bounded in bytes in total.

libzmq keeps a reply until it is written to the peer's connection (or the peer is gone). A
tracked zero-copy send says when; summing what is not done yet bounds replies to clients that
do not read as a whole, where a queue length per peer would bound them only per peer.
"""

from __future__ import annotations

from typing import Final

import zmq

# Trackers checked at once at most, between housekeeping passes.
MAX_TRACKED_REPLIES: Final = 4_096


class RepliesInFlight:
    """Tracked replies not yet written out, and their bytes (at most `max_bytes` are let in)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._held: list[tuple[zmq.MessageTracker, int]] = []

    def add(self, tracker: zmq.MessageTracker, size: int) -> None:
        self._held.append((tracker, size))
        self.bytes += size
        if len(self._held) > MAX_TRACKED_REPLIES:
            self.forget_sent()

    def room(self) -> int:
        """Bytes of replies that may be queued now."""
        self.forget_sent()
        return self.max_bytes - self.bytes

    def forget_sent(self) -> None:
        if self._held:
            self._held = [(tracker, size) for tracker, size in self._held if not tracker.done]
            self.bytes = sum(size for _tracker, size in self._held)
