"""What every hostile peer shares: the service's endpoints, the tally of what a peer did, its time
budget and pacing, its open-file limit and its own ZeroMQ context."""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import zmq

# Descriptors kept free for everything else a process opens (libraries, pipes, the probe).
FD_RESERVE: Final = 256


@dataclass(frozen=True)
class Endpoints:
    """Where the service listens (tcp on loopback)."""

    publisher: str
    ingest: str
    sync: str
    metrics_port: int
    metrics_host: str = "127.0.0.1"


@dataclass
class AttackTally:
    """What an attack did; `as_dict` is its result."""

    sent: int = 0
    bytes_sent: int = 0
    connections: int = 0
    replies: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result.update(result.pop("extra"))
        return result


class Budget:
    """An attack's time bound and stop signal: every loop asks it whether to go on."""

    def __init__(self, duration_s: float, stop: threading.Event | None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + duration_s
        self._stop = stop if stop is not None else threading.Event()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def over(self) -> bool:
        return self._stop.is_set() or time.monotonic() >= self.deadline

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds` (cut at the deadline or a stop); False once the budget is over."""
        timeout = min(seconds, self.remaining())
        if timeout > 0:
            self._stop.wait(timeout)
        return not self.over()

    def hold(self) -> None:
        """Keep what the attack holds open until the budget is over."""
        while self.sleep(0.1):
            pass


class Pacer:
    """Spaces events `1 / rate` seconds apart from the start; rate 0 = no spacing."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate = rate_per_s
        self.count = 0
        self.started = time.monotonic()

    def wait_turn(self, budget: Budget) -> bool:
        """Sleep until the next event is due; False once the budget is over."""
        self.count += 1
        if self.rate <= 0:
            return not budget.over()
        wait_s = self.started + (self.count - 1) / self.rate - time.monotonic()
        return budget.sleep(wait_s) if wait_s > 0 else not budget.over()

    def take_if_due(self) -> bool:
        """Count the next event if it is due now, without sleeping (for a select loop)."""
        if self.rate > 0 and self.started + self.count / self.rate > time.monotonic():
            return False
        self.count += 1
        return True


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def zmq_context() -> zmq.Context:
    # Its own context per attack, so closing it cannot touch anyone else's sockets.
    return zmq.Context()
