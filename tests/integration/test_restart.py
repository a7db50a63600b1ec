"""A publisher restart under a connected client, with real `feedsvc serve` processes: the ticks
of the new epoch the client missed (while it reconnected) are reported exactly, as first seq
minus one per symbol, and a client that had synced syncs again."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import orjson
import zmq

from feedsvc.client import Subscriber
from tests.conftest import PROJECT_ROOT, ServeProcess, free_tcp_port, serve_settings

Serve = Callable[..., ServeProcess]
RATE = 2_000
SYMBOLS = 10
RECONNECT_MS = 3_000


def _missed_in_printed_seqs(ticks: list[dict[str, object]]) -> dict[str, int]:
    """What a client reading these ticks in order would count as missed: jumps within an epoch,
    and in every epoch after the first, a symbol's first seq minus one."""
    last: dict[tuple[int, str], int] = {}
    first_epoch = ticks[0]["epoch"]
    missed: dict[str, int] = defaultdict(int)
    for tick in ticks:
        key = (tick["epoch"], tick["sym"])
        previous = last.get(key)
        if previous is None:
            previous = 0 if tick["epoch"] != first_epoch else tick["seq"] - 1  # type: ignore[operator]
        missed[tick["sym"]] += tick["seq"] - previous - 1  # type: ignore[operator]
        last[key] = tick["seq"]  # type: ignore[assignment]
    return {symbol: count for symbol, count in missed.items() if count}


def test_missed_ticks_at_the_start_of_a_new_epoch_are_reported_and_a_synced_client_resyncs(
    serve: Serve,
) -> None:
    publisher = f"tcp://127.0.0.1:{free_tcp_port()}"
    sync = f"tcp://127.0.0.1:{free_tcp_port()}"
    ingest = f"tcp://127.0.0.1:{free_tcp_port()}"
    settings = [
        *serve_settings([publisher]),
        f"sync.endpoint={sync}",
        "recovery.endpoint=",
        f"ingest.endpoint={ingest}",
        f"synthetic.rate={RATE}",
        f"synthetic.symbols={SYMBOLS}",
    ]
    first = serve(*settings)
    ticks: list[dict[str, object]] = []
    # The client comes back 3 s after the old publisher went, long after the new one started
    # publishing: the first ticks of the new epoch are certain to be missed.
    context = zmq.Context()
    context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    with Subscriber(
        publisher, sync_endpoint=sync, rcvhwm=0, heartbeat_timeout_s=10.0, context=context
    ) as subscriber:

        def read(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                tick = subscriber.recv(timeout=0.1)
                if tick is not None:
                    ticks.append(tick)

        read(1.5)
        assert ticks, first.log
        first_epoch = ticks[-1]["epoch"]
        assert first.terminate() == 0
        second = serve(*settings)
        # A quiet symbol of the new epoch, ticked once right away: the client gets its value
        # live or from the snapshot of its second sync, either way.
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 15_000)  # until the new service has bound its ingest socket
        push.connect(ingest)
        quiet = {"sym": "QUIET", "bid": 1.0, "ask": 1.01, "bid_size": 1, "ask_size": 1}
        push.send(orjson.dumps(quiet))
        push.close()
        read(RECONNECT_MS / 1000 + 3.0)
        stats = subscriber.stats
        assert second.terminate() == 0
    context.term()
    new_epoch_ticks = [tick for tick in ticks if tick["epoch"] != first_epoch]
    assert new_epoch_ticks, "nothing received from the restarted publisher"
    assert stats.restarts == 1
    assert stats.syncs == 2, stats
    assert any(tick["sym"] == "QUIET" for tick in new_epoch_ticks)
    # The client's own accounting agrees exactly with the seqs it delivered.
    expected = _missed_in_printed_seqs(ticks)
    assert stats.missed_by_symbol == expected
    assert stats.missed == sum(expected.values())
    # The new service published for about a second before the client was back: those ticks of
    # the new epoch were missed, and they are no longer silently taken as a baseline.
    first_seqs = {}
    for tick in new_epoch_ticks:
        first_seqs.setdefault(tick["sym"], tick["seq"])
    assert sum(seq - 1 for seq in first_seqs.values()) > 0, first_seqs


def test_subscribe_json_summary_agrees_with_its_printed_seqs_across_a_restart(
    serve: Serve,
) -> None:
    publisher = f"tcp://127.0.0.1:{free_tcp_port()}"
    sync = f"tcp://127.0.0.1:{free_tcp_port()}"
    settings = [
        *serve_settings([publisher]),
        f"sync.endpoint={sync}",
        "recovery.endpoint=",
        f"synthetic.rate={RATE}",
        f"synthetic.symbols={SYMBOLS}",
    ]
    first = serve(*settings)
    subscribe = subprocess.Popen(
        [
            *(sys.executable, "-m", "feedsvc.cli", "subscribe", "--json"),
            # Long enough for the second service to start and the client to sync again even
            # on two busy cores.
            *("--endpoint", publisher, "--sync", sync, "--duration", "10"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    try:
        # The first service must have served the client before it goes: a start slower than a
        # fixed sleep (two busy cores) left the client seeing only the second epoch.
        assert subscribe.stdout is not None
        ready, _, _ = select.select([subscribe.stdout], [], [], 30.0)
        assert ready, "subscribe printed no tick of the first service"
        # Unbuffered, so that communicate() below reads the rest from where this stopped.
        first_output = os.read(subscribe.stdout.fileno(), 65_536)
        time.sleep(1.0)
        assert first.terminate() == 0
        second = serve(*settings)
        stdout, stderr = subscribe.communicate(timeout=30)
        stdout = first_output + stdout
        assert second.terminate() == 0
    finally:
        if subscribe.poll() is None:
            subscribe.kill()
            subscribe.wait()
    assert subscribe.returncode == 0, stderr.decode()
    ticks = [orjson.loads(line) for line in stdout.splitlines()]
    summary = orjson.loads(stderr.strip().splitlines()[-1])
    assert len({tick["epoch"] for tick in ticks}) == 2, "the restart did not happen in the window"
    assert summary["restarts"] == 1 and summary["syncs"] == 2
    expected = _missed_in_printed_seqs(ticks)
    assert summary["missed_by_symbol"] == expected
    assert summary["missed"] == sum(expected.values())
    assert summary["delivered"] == len(ticks)
