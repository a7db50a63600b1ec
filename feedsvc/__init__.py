"""feedsvc: a market-data fan-out publisher (ZeroMQ PUB hot path, Kafka audit mirror)."""

__version__ = "0.1.0"
