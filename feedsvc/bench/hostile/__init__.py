"""Hostile peers and a well-behaved victim: what one unauthenticated peer can do to `feedsvc serve`.

Each attack is a function ``attack(endpoints, *, duration_s, stop, **sizes) -> dict`` that runs
against the service's loopback endpoints for at most `duration_s` (and at most its counts), closes
its sockets and returns what it did: messages sent, bytes, connections, replies, errors by kind.
Its defaults are the sizes the outside check used; `scaled_parameters` scales the volume ones
(how many peers, connections, batches ...) for quick runs, never the shape that makes a message
hostile (a nesting depth, a size near a limit). `ATTACKS` names them all; ``python -m
feedsvc.bench.hostile NAME`` runs one in its own process (so its CPU and GIL are not the victim's).

Modules: peer (endpoints, tally, budget), zmtp (raw ZMTP framing for peers that must not read),
payloads (the hostile messages), messages and connections (the attacks), attacks (their
registry), process (an attack in its own process), victim (the SUB measuring the feed).
Memory, gaps and latency are measured with the harness core (feedsvc.bench.procs, .sequence,
.latency).
"""

from feedsvc.bench.hostile.attacks import (
    ATTACKS,
    SCALED_PARAMETERS,
    Attack,
    attack_defaults,
    run_attack,
    scaled_parameters,
)
from feedsvc.bench.hostile.payloads import (
    MAX_MESSAGE_BYTES,
    MAX_SYMBOLS_PER_REQUEST,
    bad_symbol_request,
    big_tick_frame,
    nested_sync_request,
    nested_tick_frame,
    valid_batch,
)
from feedsvc.bench.hostile.peer import AttackTally, Endpoints
from feedsvc.bench.hostile.process import attack_command, collect_attack, start_attack
from feedsvc.bench.hostile.victim import Victim, longest_gap
from feedsvc.bench.hostile.zmtp import (
    open_raw_zmtp,
    tcp_address,
    zmtp_frame,
    zmtp_greeting,
    zmtp_ready,
    zmtp_request,
    zmtp_subscription,
)

__all__ = [
    "ATTACKS",
    "MAX_MESSAGE_BYTES",
    "MAX_SYMBOLS_PER_REQUEST",
    "SCALED_PARAMETERS",
    "Attack",
    "AttackTally",
    "Endpoints",
    "Victim",
    "attack_command",
    "attack_defaults",
    "bad_symbol_request",
    "big_tick_frame",
    "collect_attack",
    "longest_gap",
    "nested_sync_request",
    "nested_tick_frame",
    "open_raw_zmtp",
    "run_attack",
    "scaled_parameters",
    "start_attack",
    "tcp_address",
    "valid_batch",
    "zmtp_frame",
    "zmtp_greeting",
    "zmtp_ready",
    "zmtp_request",
    "zmtp_subscription",
]
