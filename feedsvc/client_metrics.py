"""The name README 0.1 documented; the module is feedsvc.client.metrics."""

from feedsvc.client.metrics import SubscriberMetrics

__all__ = ["SubscriberMetrics"]
