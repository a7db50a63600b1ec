"""The side path to Kafka, the audit trail (docs/audit-trail.md).

Why a process and not a thread: an inline ``produce()`` per tick cut the publish rate to 0.56x on
the 2-core machine, and a thread would still share the GIL with the hot path. The hot path only
appends each frame to a list; the service hands the list over as one numbered batch (frames
joined by newlines; JSON from orjson never holds a raw newline and symbols cannot) every
``kafka.handoff_batch_ticks`` ticks or ``kafka.handoff_max_delay_ms``, and keeps it until the
mirror process has committed it to Kafka in a transaction.

- handoff.py: the service's side: batches, retention, supervision of the process.
- process.py: the mirror process's loop.
- producer.py: the transactional producer, topics, checkpoints, the resume point.
- wire.py: what both sides agree on.
"""

from feedsvc.server.mirror.handoff import MirrorHandoff, MirrorStats
from feedsvc.server.mirror.producer import producer_settings
from feedsvc.server.mirror.wire import FRAME_SEPARATOR, split_batch

__all__ = ["FRAME_SEPARATOR", "MirrorHandoff", "MirrorStats", "producer_settings", "split_batch"]
