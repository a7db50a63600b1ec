"""A client and a feed handler written from the docs alone (README's wire contract,
docs/sync-protocol.md, docs/ingest-protocol.md): plain pyzmq and json, nothing of feedsvc. If the
docs leave out something a client in another language needs, this is where it shows.

Only the harness (starting `feedsvc serve`, reading /metrics) uses the test fixtures.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import zmq

from tests.conftest import (
    ServeProcess,
    free_tcp_port,
    http_get,
    metric_samples,
    serve_settings,
    wait_for,
)

Serve = Callable[..., ServeProcess]

# The numbers docs/sync-protocol.md recommends.
SUBSCRIBE_SETTLE_S = 0.010
REPLY_TIMEOUT_S = 2.0
MARKER_TIMEOUT_S = 2.0
ATTEMPTS = 5
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 1.0
RETRYABLE = ("busy", "internal_error")


class DocsClient:
    """The sync handshake and seq tracking, step by step as docs/sync-protocol.md says."""

    def __init__(self, context: zmq.Context, publisher: str, sync: str, symbols: list[str]):
        self.context, self.sync_endpoint, self.symbols = context, sync, symbols
        self.client = secrets.token_hex(8)  # [0-9A-Za-z_-]{1,64}
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        for symbol in symbols:
            self.sub.setsockopt(zmq.SUBSCRIBE, f"{symbol} ".encode())
        self.sub.setsockopt(zmq.SUBSCRIBE, b"_hb ")
        self.sub.connect(publisher)
        self.req = self._new_req()
        self.first_epoch: int | None = None
        self.last_seq: dict[tuple[int, str], int] = {}
        self.missed = 0
        self.delivered: list[dict[str, Any]] = []

    def _new_req(self) -> zmq.Socket:
        req = self.context.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(self.sync_endpoint)
        return req

    def sync(self) -> dict[str, Any]:
        """Steps 1 to 8; returns the applied snapshot reply."""
        backoff = BACKOFF_FIRST_S
        for _attempt in range(ATTEMPTS):
            marker = secrets.token_hex(8)
            topic = f"_sync.{marker}"
            self.sub.setsockopt(zmq.SUBSCRIBE, f"{topic} ".encode())
            try:
                time.sleep(SUBSCRIBE_SETTLE_S)
                request = {"op": "snapshot", "client": self.client, "marker": marker}
                self.req.send(json.dumps({**request, "symbols": self.symbols}).encode())
                if not self.req.poll(int(REPLY_TIMEOUT_S * 1000)):
                    self.req.close()  # Lazy Pirate: a REQ without its reply cannot send again
                    self.req = self._new_req()
                else:
                    reply = json.loads(self.req.recv())
                    if reply["ok"] is False and reply["error"] not in RETRYABLE:
                        raise AssertionError(f"refused: {reply}")
                    if reply["ok"] is True:
                        assert reply["marker"] == topic  # the reply names the marker topic
                        kept = self._read_until_marker(topic, marker, reply["epoch"])
                        if kept is not None:
                            self._apply(reply, kept)
                            self.req.send(json.dumps({**request, "op": "ready"}).encode())
                            assert self.req.poll(int(REPLY_TIMEOUT_S * 1000))
                            assert json.loads(self.req.recv()) == {"ok": True}
                            return reply
            finally:
                self.sub.setsockopt(zmq.UNSUBSCRIBE, f"{topic} ".encode())
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        raise AssertionError(f"no sync in {ATTEMPTS} attempts")

    def _read_until_marker(self, topic: str, marker: str, epoch: int) -> list[bytes] | None:
        kept = []
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.sub.poll(50):
                continue
            frame = self.sub.recv()
            frame_topic, _, payload = frame.partition(b" ")
            if frame_topic == topic.encode():
                body = json.loads(payload)
                assert body == {"epoch": epoch, "marker": marker}  # the bare id here
                return kept
            kept.append(frame)
        return None

    def _apply(self, reply: dict[str, Any], kept: list[bytes]) -> None:
        epoch = reply["epoch"]
        self.first_epoch = epoch
        for symbol, entry in reply["snapshot"].items():
            self.last_seq[epoch, symbol] = entry["seq"]
            if entry["tick"] is not None:
                self.delivered.append(entry["tick"])
        for frame in kept:
            self.take(frame)

    def take(self, frame: bytes) -> None:
        """One frame from SUB: heartbeats aside, the seq arithmetic of the README."""
        topic, _, payload = frame.partition(b" ")
        if topic.startswith(b"_"):
            return
        tick = json.loads(payload)
        key = (tick["epoch"], tick["sym"])
        if key in self.last_seq:
            expected = self.last_seq[key] + 1
        elif tick["epoch"] == self.first_epoch:
            expected = tick["seq"]
        else:
            expected = 1
        if tick["seq"] < expected:
            return  # covered by the snapshot, or a duplicate
        self.missed += tick["seq"] - expected
        self.last_seq[key] = tick["seq"]
        self.delivered.append(tick)

    def read(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.delivered) < count and time.monotonic() < deadline:
            if self.sub.poll(50):
                self.take(self.sub.recv())

    def close(self) -> None:
        self.sub.close(linger=0)
        self.req.close(linger=0)


def _push(context: zmq.Context, endpoint: str, frames: list[bytes]) -> None:
    """A feed handler as docs/ingest-protocol.md shows it."""
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 5_000)
    push.setsockopt(zmq.LINGER, 5_000)
    push.connect(endpoint)
    for frame in frames:
        push.send(frame)
    push.close()


def test_a_client_written_from_the_docs_syncs_and_receives_every_tick_from_the_snapshot_on(
    serve: Serve,
) -> None:
    publisher = f"tcp://127.0.0.1:{free_tcp_port()}"
    sync = f"tcp://127.0.0.1:{free_tcp_port()}"
    ingest = f"tcp://127.0.0.1:{free_tcp_port()}"
    metrics_port = free_tcp_port()
    process = serve(
        *serve_settings([publisher]),
        f"sync.endpoint={sync}",
        "recovery.endpoint=",
        f"ingest.endpoint={ingest}",
        f"metrics.port={metrics_port}",
        "synthetic.rate=5000",
        "synthetic.symbols=20",
    )
    context = zmq.Context()
    try:
        # A quiet symbol ticks once before the client joins; a batch with one invalid tick.
        quiet = {"sym": "QUIET", "bid": 10.0, "ask": 10.5, "bid_size": 1, "ask_size": 2}
        bad = {"sym": "QUIET2", "bid": "ten", "ask": 10.5, "bid_size": 1, "ask_size": 2}
        _push(context, ingest, [json.dumps([quiet, bad]).encode()])
        wait_for(lambda: _ingested(metrics_port) == 1, 20, "QUIET taken in", lambda: process.log)
        symbols = ["QUIET", *(f"SYN{index:04d}" for index in range(20))]
        client = DocsClient(context, publisher, sync, symbols)
        try:
            reply = client.sync()
            assert reply["snapshot"]["QUIET"]["seq"] == 1
            assert client.delivered[0]["sym"] == "QUIET" and client.delivered[0]["ask"] == 10.5
            client.read(3_000, timeout_s=20)
            assert len(client.delivered) >= 3_000
            assert client.missed == 0
            by_symbol: dict[str, list[int]] = {}
            for tick in client.delivered:
                by_symbol.setdefault(tick["sym"], []).append(tick["seq"])
            for symbol, seqs in by_symbol.items():
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), symbol
        finally:
            client.close()
        samples = metric_samples(http_get(metrics_port, "/metrics")[1])
        assert samples["feedsvc_sync_handshakes_completed_total"] == 1
        assert samples['feedsvc_ticks_rejected_total{reason="bad_price"}'] == 1
    finally:
        context.destroy(linger=0)


def _ingested(metrics_port: int) -> float:
    try:
        samples = metric_samples(http_get(metrics_port, "/metrics")[1])
    except OSError:  # not listening yet
        return 0.0
    return samples.get('feedsvc_ticks_ingested_total{source="ingest"}', 0.0)


# The numbers docs/recovery-protocol.md recommends.
RECOVERY_TIMEOUT_S = 1.0
RECOVERY_SENDS = 3


def _recover(dealer: zmq.Socket, request: dict[str, Any]) -> list[bytes]:
    """One request as docs/recovery-protocol.md says: a new id per send, 3 sends of 1 s."""
    for attempt in range(RECOVERY_SENDS):
        request["id"] = f"{request['symbol']}.{attempt}.{secrets.token_hex(4)}"
        dealer.send(json.dumps(request).encode())
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while dealer.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            parts = dealer.recv_multipart()
            if json.loads(parts[0])["id"] == request["id"]:
                return parts
    raise AssertionError("no recovery reply")


def test_a_dealer_written_from_the_docs_recovers_a_range_byte_for_byte(
    serve: Serve, tmp_path: Any
) -> None:
    publisher, recovery = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/recovery"
    process = serve(
        *serve_settings(
            [publisher],
            f"recovery.endpoint={recovery}",
            "synthetic.rate=2000",
            "synthetic.symbols=5",
        )
    )
    process.wait_until_serving()
    context = zmq.Context()
    try:
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"SYN0002 ")
        sub.connect(publisher)
        frames: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(frames) < 100 and time.monotonic() < deadline:
            if sub.poll(100):
                frames.append(sub.recv())
        assert len(frames) == 100
        ticks = [json.loads(frame.split(b" ", 1)[1]) for frame in frames]
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(recovery)
        wanted = {"symbol": "SYN0002", "epoch": ticks[0]["epoch"]}
        parts = _recover(
            dealer, {"op": "recover", **wanted, "first": ticks[10]["seq"], "last": ticks[59]["seq"]}
        )
        header = json.loads(parts[0])
        assert header["ok"] is True and header["source"] == "memory" and header["count"] == 50
        # One or more body frames, each whole tick frames joined by a newline.
        assert [frame for part in parts[1:] for frame in part.split(b"\n")] == frames[10:60]
        # An error says why, in the documented fields.
        parts = _recover(dealer, {"op": "recover", **wanted, "first": 1, "last": 10**6})
        error = json.loads(parts[0])
        assert error["ok"] is False and error["error"] == "range_too_large"
        assert error["max_ticks"] == 10_000 and len(parts) == 1
    finally:
        context.destroy(linger=0)
