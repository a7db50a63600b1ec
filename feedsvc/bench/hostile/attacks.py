"""The registry of attacks: their names, which of their sizes `--scale` multiplies, their
defaults (the outside check's sizes), and running one in this process."""

from __future__ import annotations

import inspect
import resource
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from feedsvc.bench.hostile.connections import (
    connect_flood,
    http_reset,
    idle_subs,
    slowloris,
    snapshot_hoard,
    subscriptions,
)
from feedsvc.bench.hostile.messages import (
    big_symbols,
    ingest_flood,
    nested_sync,
    nested_tick,
    sync_flood,
    sync_inflight,
)
from feedsvc.bench.hostile.peer import Endpoints

Attack = Callable[..., dict[str, Any]]
ATTACKS: Final[Mapping[str, Attack]] = MappingProxyType(
    {
        "nested_tick": nested_tick,
        "nested_sync": nested_sync,
        "slowloris": slowloris,
        "subscriptions": subscriptions,
        "sync_flood": sync_flood,
        "ingest_flood": ingest_flood,
        "big_symbols": big_symbols,
        "snapshot_hoard": snapshot_hoard,
        "connect_flood": connect_flood,
        "idle_subs": idle_subs,
        "sync_inflight": sync_inflight,
        "http_reset": http_reset,
    }
)
# What --scale multiplies: the volume that costs the service memory, descriptors or log lines.
# The shape of a message stays (a depth, a size near a limit), and so do the rates of the
# attacks that cost CPU only (sync_flood, sync_inflight): scaled down they would show nothing,
# and they take no more than their duration.
SCALED_PARAMETERS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "nested_tick": (),
        "nested_sync": (),
        "slowloris": ("connections",),
        "subscriptions": ("prefixes",),
        "sync_flood": (),
        "ingest_flood": ("max_batches",),
        "big_symbols": ("symbols",),
        "snapshot_hoard": ("peers",),
        "connect_flood": ("connections",),
        "idle_subs": ("subscribers",),
        "sync_inflight": (),
        "http_reset": ("requests",),
    }
)


def attack_defaults(name: str) -> dict[str, Any]:
    """The size parameters of attack `name` and their defaults (the outside check's sizes)."""
    parameters = inspect.signature(ATTACKS[name]).parameters.values()
    return {
        parameter.name: parameter.default
        for parameter in parameters
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        and parameter.name not in ("duration_s", "stop")
    }


def scaled_parameters(name: str, scale: float) -> dict[str, Any]:
    """Attack `name`'s defaults with its volume parameters times `scale` (counts at least 1)."""
    parameters = attack_defaults(name)
    for key in SCALED_PARAMETERS[name]:
        value = parameters[key] * scale
        parameters[key] = max(1, round(value)) if isinstance(parameters[key], int) else value
    return parameters


def run_attack(
    name: str,
    endpoints: Endpoints,
    *,
    duration_s: float,
    stop: threading.Event | None = None,
    **parameters: Any,
) -> dict[str, Any]:
    """Run attack `name` in this process; its result with the name, parameters, time taken and
    the attacker's own peak RSS (an exception ends up in "failed", not raised)."""
    started = time.monotonic()
    result: dict[str, Any] = {"attack": name, "parameters": parameters}
    try:
        result.update(ATTACKS[name](endpoints, duration_s=duration_s, stop=stop, **parameters))
    except Exception as error:  # reported in the result: one attack must not end the run
        result["failed"] = f"{type(error).__name__}: {error}"
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    result["attacker_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result
