"""Figures from a running `feedsvc serve`'s /metrics, read with prometheus_client's parser (never
by matching text)."""

from __future__ import annotations

import urllib.request
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

PUBLISHED_TOTAL: Final = "feedsvc_ticks_published_total"


def metric_samples(exposition: str | bytes) -> dict[str, float]:
    """name{labels} -> value for every sample of a Prometheus exposition (labels sorted by name;
    a sample without labels is just its name)."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 10.0) -> dict[str, float]:
    """`metric_samples` of http://host:port/metrics; raises OSError when it does not answer."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as reply:
        return metric_samples(reply.read())
