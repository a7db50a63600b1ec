"""The errors `feedsvc replay` reports to the user instead of a traceback."""

from __future__ import annotations


class ReplayError(Exception):
    """A problem the user can fix (broker, topic, output path); str() says what and what to do."""


class KafkaProblem(ReplayError):
    """A ReplayError on the Kafka side: reported with the bootstrap address and librdkafka's
    last error."""
