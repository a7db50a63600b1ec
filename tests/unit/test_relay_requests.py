"""The relay's request forwarder, over real inproc sockets: what a client behind a relay relies
on (its own request id back, the reply's frames unchanged, a clear error instead of silence when
the upstream is down or slow) and that no request, however malformed, stops the forwarder from
serving the next one. Fuzzed with Hypothesis through `RequestForwarder.serve`, as the relay's
loop calls it (derandomized in the test command; scripts/fuzz.sh searches at random)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import orjson
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from feedsvc.protocol.recovery import (
    ERROR_BAD_REQUEST,
    ERROR_BUSY,
    ERROR_NOT_JSON,
    ERROR_TOO_LARGE,
    ERROR_UNKNOWN_EPOCH,
    ERROR_UPSTREAM_UNAVAILABLE,
    MAX_REQUEST_BYTES,
    RETRYABLE_ERRORS,
)
from feedsvc.protocol.sync import RETRYABLE_ERRORS as SYNC_RETRYABLE_ERRORS
from feedsvc.relay.requests import (
    EPOCH_NOT_KNOWN_YET,
    KIND_RECOVERY,
    KIND_SYNC,
    OUTCOME_ANSWERED,
    OUTCOME_TIMEOUT,
    RequestForwarder,
    merge_sync_replies,
)
from tests.conftest import free_tcp_port, fuzz_examples

_names = itertools.count()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A forwarder between a client socket and an upstream socket ("" = no upstream)."""

    def __init__(
        self, context: zmq.Context, kind: str, upstream_up: bool = True, max_pending: int = 100
    ) -> None:
        name = next(_names)
        self.front_endpoint = f"inproc://relay-front-{name}"
        # An upstream that is up is bound on inproc before the forwarder connects (connected at
        # once); one that is down is a tcp port nobody listens on (an inproc connect would make
        # its pipe at once, peer or not).
        upstream_endpoint = (
            f"inproc://relay-upstream-{name}"
            if upstream_up
            else f"tcp://127.0.0.1:{free_tcp_port()}"
        )
        self.upstream: zmq.Socket | None = None
        if upstream_up:
            self.upstream = context.socket(zmq.ROUTER if kind == KIND_RECOVERY else zmq.REP)
            self.upstream.bind(upstream_endpoint)
        self.clock = FakeClock()
        self.forwarder = RequestForwarder(
            context,
            kind,
            lambda socket: socket.bind(self.front_endpoint),
            [upstream_endpoint],
            lambda socket, endpoint: socket.connect(endpoint),
            timeout_s=2.0,
            max_pending=max_pending,
            clock=self.clock,
        )
        self.poller = zmq.Poller()
        for socket in self.forwarder.sockets():
            self.poller.register(socket, zmq.POLLIN)

    def pump(self, timeout_ms: int = 200) -> None:
        """Let the forwarder serve what is ready (as the relay's loop does)."""
        ready = dict(self.poller.poll(timeout_ms))
        self.forwarder.serve(ready)
        self.forwarder.expire()

    def close(self) -> None:
        self.forwarder.close()
        if self.upstream is not None:
            self.upstream.close(linger=0)


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def dealer(context: zmq.Context, endpoint: str) -> zmq.Socket:
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(endpoint)
    return client


def reply_of(client: zmq.Socket, rig: Rig, tries: int = 10) -> list[bytes]:
    for _ in range(tries):
        if client.poll(0):
            return client.recv_multipart()
        rig.pump(50)
    raise AssertionError("no reply")


def test_a_recovery_reply_comes_back_with_the_clients_id_and_its_frames_unchanged(
    context: zmq.Context,
) -> None:
    rig = Rig(context, KIND_RECOVERY)
    client = dealer(context, rig.front_endpoint)
    request = {
        "op": "recover",
        "id": "AAPL.17",
        "symbol": "AAPL",
        "epoch": 5,
        "first": 1,
        "last": 2,
    }
    client.send(orjson.dumps(request))
    rig.pump()
    assert rig.upstream is not None and rig.upstream.poll(1000)
    peer, forwarded = rig.upstream.recv_multipart()
    upstream_request = orjson.loads(forwarded)
    # The upstream sees one frame, with the relay's own id (ids of clients may collide).
    assert upstream_request["id"] != "AAPL.17"
    assert {key: value for key, value in upstream_request.items() if key != "id"} == {
        key: value for key, value in request.items() if key != "id"
    }
    header = {"ok": True, "id": upstream_request["id"], "count": 2}
    body = b'AAPL {"seq":1}\nAAPL {"seq":2}'
    rig.upstream.send_multipart([peer, orjson.dumps(header), body])
    reply = reply_of(client, rig)
    assert orjson.loads(reply[0]) == {"ok": True, "id": "AAPL.17", "count": 2}
    assert reply[1:] == [body]
    assert rig.forwarder.outcomes[OUTCOME_ANSWERED] == 1 and rig.forwarder.pending == 0
    client.close()
    rig.close()


def test_a_sync_request_goes_through_with_the_req_envelope(context: zmq.Context) -> None:
    rig = Rig(context, KIND_SYNC)
    client = context.socket(zmq.REQ)
    client.connect(rig.front_endpoint)
    client.send(b'{"op":"snapshot","client":"c1","marker":"m1"}')
    rig.pump()
    assert rig.upstream is not None and rig.upstream.poll(1000)
    assert rig.upstream.recv() == b'{"op":"snapshot","client":"c1","marker":"m1"}'
    rig.upstream.send(b'{"ok":true}')
    rig.pump()
    assert client.poll(1000) and client.recv() == b'{"ok":true}'
    client.close(linger=0)
    rig.close()


@pytest.mark.parametrize("kind", [KIND_SYNC, KIND_RECOVERY])
def test_an_upstream_that_is_not_there_gets_a_retryable_error_at_once(
    context: zmq.Context, kind: str
) -> None:
    rig = Rig(context, kind, upstream_up=False)
    client = context.socket(zmq.REQ)
    client.connect(rig.front_endpoint)
    client.send(b'{"op":"recover","id":"x"}')
    rig.pump()
    assert client.poll(1000)
    reply = orjson.loads(client.recv())
    assert reply["ok"] is False and reply["error"] == ERROR_UPSTREAM_UNAVAILABLE
    assert ERROR_UPSTREAM_UNAVAILABLE in RETRYABLE_ERRORS
    assert ERROR_UPSTREAM_UNAVAILABLE in SYNC_RETRYABLE_ERRORS
    client.close(linger=0)
    rig.close()


def test_a_silent_upstream_times_out_with_an_error_and_its_late_reply_is_dropped(
    context: zmq.Context,
) -> None:
    rig = Rig(context, KIND_RECOVERY)
    client = dealer(context, rig.front_endpoint)
    client.send(b'{"op":"recover","id":"slow"}')
    rig.pump()
    assert rig.upstream is not None and rig.upstream.poll(1000)
    peer, forwarded = rig.upstream.recv_multipart()
    rig.pump(0)
    assert not client.poll(0) and rig.forwarder.pending == 1  # not yet: within the timeout
    rig.clock.now = 2.5
    rig.pump(0)
    reply = orjson.loads(reply_of(client, rig)[-1])
    assert (reply["id"], reply["error"]) == ("slow", ERROR_UPSTREAM_UNAVAILABLE)
    assert rig.forwarder.outcomes[OUTCOME_TIMEOUT] == 1
    late_id = orjson.loads(forwarded)["id"]
    rig.upstream.send_multipart([peer, orjson.dumps({"ok": True, "id": late_id})])
    rig.pump()
    assert not client.poll(100)  # the client had its answer already
    client.close()
    rig.close()


def test_past_max_pending_requests_a_client_is_told_busy(context: zmq.Context) -> None:
    rig = Rig(context, KIND_RECOVERY, max_pending=2)
    client = dealer(context, rig.front_endpoint)
    for number in range(3):
        client.send(b'{"op":"recover","id":"r%d"}' % number)
    for _ in range(5):
        rig.pump(50)
    reply = orjson.loads(reply_of(client, rig)[-1])
    assert (reply["id"], reply["error"]) == ("r2", ERROR_BUSY) and "retry_after_ms" in reply
    assert rig.forwarder.pending == 2
    client.close()
    rig.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"not json"], ERROR_NOT_JSON),
        ([b"[1, 2]"], ERROR_BAD_REQUEST),
        ([b'{"op":"recover","id":7}'], ERROR_BAD_REQUEST),
        ([b"x" * (MAX_REQUEST_BYTES + 1)], ERROR_TOO_LARGE),
        ([b"a", b"b", b"c"], ERROR_BAD_REQUEST),
    ],
)
def test_a_malformed_recovery_request_is_refused_by_the_relay_itself(
    context: zmq.Context, frames: list[bytes], code: str
) -> None:
    rig = Rig(context, KIND_RECOVERY)
    client = dealer(context, rig.front_endpoint)
    client.send_multipart(frames)
    reply = orjson.loads(reply_of(client, rig)[-1])
    assert (reply["ok"], reply["error"]) == (False, code)
    assert rig.upstream is not None and not rig.upstream.poll(0)  # nothing went upstream
    client.close()
    rig.close()


@settings(max_examples=fuzz_examples(150))
@given(
    frames=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.builds(
                orjson.dumps,
                st.dictionaries(
                    st.sampled_from(["op", "id", "symbol", "epoch", "first", "last", "x"]),
                    st.one_of(
                        st.none(),
                        st.integers(-(2**63), 2**63 - 1),
                        st.text(max_size=10),
                        st.booleans(),
                    ),
                ),
            ),
        ),
        min_size=1,
        max_size=4,
    ),
    kind=st.sampled_from([KIND_SYNC, KIND_RECOVERY]),
)
def test_any_request_is_answered_or_forwarded_and_the_next_valid_one_still_works(
    frames: list[bytes], kind: str
) -> None:
    context = zmq.Context()
    rig = Rig(context, kind)
    try:
        client = dealer(context, rig.front_endpoint)
        client.send_multipart(frames)
        rig.pump()
        assert rig.upstream is not None
        forwarded = rig.upstream.poll(0)
        while rig.upstream.poll(0):  # the upstream sees only well-formed requests
            message = rig.upstream.recv_multipart()
            if kind == KIND_RECOVERY:
                assert len(message) == 2 and isinstance(orjson.loads(message[1])["id"], str)
            else:
                rig.upstream.send(b'{"ok":true}')  # a REP answers before it takes the next
        if not forwarded and client.poll(200):
            reply = orjson.loads(client.recv_multipart()[-1])
            assert reply["ok"] is False and isinstance(reply["error"], str)
        assert rig.forwarder.outcomes["internal_error"] == 0
        # Whatever came before, a valid request of another client goes through.
        other = dealer(context, rig.front_endpoint)
        if kind == KIND_SYNC:
            other.send_multipart([b"", b'{"op":"snapshot"}'])
        else:
            other.send(b'{"op":"recover","id":"next"}')
        for _ in range(100):  # bounded: 100 polls of at most 20 ms
            rig.pump(20)
            if rig.upstream.poll(0):
                break
        assert rig.upstream.poll(0), "a valid request after a bad one was not forwarded"
    finally:
        rig.close()
        context.destroy(linger=0)


class ShardRig:
    """A forwarder in front of two upstreams (shards "a" and "b", epochs 100 and 200); the one
    at index `down` is a tcp port nobody listens on."""

    EPOCHS = (100, 200)

    def __init__(self, context: zmq.Context, kind: str, down: int | None = None) -> None:
        name = next(_names)
        self.front_endpoint = f"inproc://relay-front-{name}"
        endpoints = [
            f"tcp://127.0.0.1:{free_tcp_port()}"
            if index == down
            else f"inproc://relay-shard-{name}-{index}"
            for index in range(2)
        ]
        self.upstreams = []
        for index, endpoint in enumerate(endpoints):
            if index == down:
                continue
            upstream = context.socket(zmq.ROUTER if kind == KIND_RECOVERY else zmq.REP)
            upstream.bind(endpoint)
            self.upstreams.append(upstream)
        self.forwarder = RequestForwarder(
            context,
            kind,
            lambda socket: socket.bind(self.front_endpoint),
            endpoints,
            lambda socket, endpoint: socket.connect(endpoint),
            timeout_s=2.0,
            max_pending=100,
            clock=FakeClock(),
            upstream_for_epoch=lambda epoch: (
                self.EPOCHS.index(epoch) if epoch in self.EPOCHS else None
            ),
        )
        self.poller = zmq.Poller()
        for socket in self.forwarder.sockets():
            self.poller.register(socket, zmq.POLLIN)

    def pump(self, timeout_ms: int = 200) -> None:
        self.forwarder.serve(dict(self.poller.poll(timeout_ms)))

    def close(self) -> None:
        self.forwarder.close()
        for upstream in self.upstreams:
            upstream.close(linger=0)


def snapshot_of(shard: str, epoch: int, entries: dict[str, int]) -> bytes:
    """A shard's snapshot reply: symbol -> seq (0: never ticked there)."""
    snapshot = {
        symbol: {"seq": seq, "tick": {"sym": symbol, "seq": seq, "epoch": epoch} if seq else None}
        for symbol, seq in entries.items()
    }
    reply = {"ok": True, "epoch": epoch, "shard": shard, "marker": "_sync.m1", "snapshot": snapshot}
    return orjson.dumps(reply)


def test_a_sync_request_goes_to_every_shard_and_their_snapshots_come_back_as_one(
    context: zmq.Context,
) -> None:
    rig = ShardRig(context, KIND_SYNC)
    client = context.socket(zmq.REQ)
    client.connect(rig.front_endpoint)
    request = b'{"op":"snapshot","client":"c1","marker":"m1","symbols":["A1","B1"]}'
    client.send(request)
    rig.pump()
    for upstream, shard, epoch, entries in zip(
        rig.upstreams, "ab", ShardRig.EPOCHS, ({"A1": 7, "B1": 0}, {"A1": 0, "B1": 3}), strict=True
    ):
        assert upstream.poll(1000) and upstream.recv() == request
        upstream.send(snapshot_of(shard, epoch, entries))
    for _ in range(10):
        rig.pump(50)
        if client.poll(0):
            break
    reply = orjson.loads(client.recv())
    assert reply["ok"] is True and reply["epochs"] == {"a": 100, "b": 200}
    assert reply["marker"] == "_sync.m1" and reply["epoch"] == 100
    # Each symbol from the shard that has it, with that shard's epoch.
    assert reply["snapshot"]["A1"]["seq"] == 7 and reply["snapshot"]["A1"]["epoch"] == 100
    assert reply["snapshot"]["B1"]["seq"] == 3 and reply["snapshot"]["B1"]["epoch"] == 200
    client.close(linger=0)
    rig.close()


def test_with_one_shard_down_a_sync_gets_the_other_shards_snapshot(context: zmq.Context) -> None:
    rig = ShardRig(context, KIND_SYNC, down=1)
    client = context.socket(zmq.REQ)
    client.connect(rig.front_endpoint)
    client.send(b'{"op":"snapshot","client":"c1","marker":"m1"}')
    rig.pump()
    (upstream,) = rig.upstreams
    assert upstream.poll(1000)
    upstream.recv()
    upstream.send(snapshot_of("a", 100, {"A1": 7}))
    for _ in range(10):
        rig.pump(50)
        if client.poll(0):
            break
    reply = orjson.loads(client.recv())
    assert reply["ok"] is True and reply["shard"] == "a" and reply["snapshot"]["A1"]["seq"] == 7
    client.close(linger=0)
    rig.close()


def test_a_recovery_request_goes_to_the_shard_publishing_its_epoch(context: zmq.Context) -> None:
    rig = ShardRig(context, KIND_RECOVERY)
    client = dealer(context, rig.front_endpoint)
    for index, epoch in enumerate(ShardRig.EPOCHS):
        request = {"op": "recover", "id": f"r{epoch}", "symbol": "X1", "epoch": epoch}
        client.send(orjson.dumps(request))
        rig.pump()
        chosen, other = rig.upstreams[index], rig.upstreams[1 - index]
        assert chosen.poll(1000) and not other.poll(0)
        peer, forwarded = chosen.recv_multipart()
        relay_id = orjson.loads(forwarded)["id"]
        chosen.send_multipart([peer, orjson.dumps({"ok": True, "id": relay_id, "count": 0})])
        header = orjson.loads(reply_of(client, rig)[0])  # type: ignore[arg-type]
        assert header == {"ok": True, "id": f"r{epoch}", "count": 0}
    # An epoch no shard publishes now (a shard restarted since): the relay says so itself.
    client.send(orjson.dumps({"op": "recover", "id": "old", "symbol": "X1", "epoch": 99}))
    header = orjson.loads(reply_of(client, rig)[0])  # type: ignore[arg-type]
    assert header["ok"] is False and header["error"] == ERROR_UNKNOWN_EPOCH
    assert header["id"] == "old"
    # While a shard has not sent its first heartbeat, its epoch may be the one: worth a retry.
    rig.forwarder._upstream_for_epoch = lambda _epoch: EPOCH_NOT_KNOWN_YET
    client.send(orjson.dumps({"op": "recover", "id": "early", "symbol": "X1", "epoch": 99}))
    header = orjson.loads(reply_of(client, rig)[0])  # type: ignore[arg-type]
    assert header["error"] == ERROR_UPSTREAM_UNAVAILABLE and header["id"] == "early"
    client.close(linger=0)
    rig.close()


def test_merged_sync_replies_pass_a_refusal_through_and_merge_ready_replies() -> None:
    refusal = b'{"ok":false,"error":"bad_symbol","detail":"x"}'
    assert merge_sync_replies([b'{"ok":true}', refusal]) == refusal
    assert orjson.loads(merge_sync_replies([b'{"ok":true}', b'{"ok":true}'])) == {"ok": True}
    # Two upstreams naming themselves the same shard with different epochs: refused, not mixed.
    same = [snapshot_of("a", 100, {"A1": 1}), snapshot_of("a", 200, {"A1": 0})]
    merged = orjson.loads(merge_sync_replies(same))
    assert merged["ok"] is False and "publisher.shard" in merged["detail"]
    # A relay behind this one already merged shards: their epochs carry over.
    inner = orjson.loads(merge_sync_replies([snapshot_of("a", 100, {}), snapshot_of("b", 200, {})]))
    outer = orjson.loads(
        merge_sync_replies([orjson.dumps(inner), snapshot_of("c", 300, {"C1": 4})])
    )
    assert outer["epochs"] == {"a": 100, "b": 200, "c": 300}
    assert outer["snapshot"]["C1"]["epoch"] == 300


_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_json = st.recursive(
    st.none() | st.booleans() | _int64 | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_reply_fields = st.fixed_dictionaries(
    {"ok": st.just(True)},
    optional={
        "epoch": _int64 | _json,
        "shard": st.text(max_size=4) | _json,
        "epochs": _json,
        "marker": _json,
        "snapshot": st.dictionaries(st.text(max_size=6), _json, max_size=4) | _json,
    },
)


@settings(max_examples=fuzz_examples(200), deadline=None)
@given(st.lists(_reply_fields.map(orjson.dumps) | st.binary(max_size=40), min_size=2, max_size=3))
def test_any_upstream_replies_merge_into_one_json_reply(replies: list[bytes]) -> None:
    """Whatever the shards answer, the client gets one JSON object with "ok", and a merged
    snapshot only when every part was one."""
    merged = orjson.loads(merge_sync_replies(replies))
    if isinstance(merged, dict) and merged.get("ok") is True and "snapshot" in merged:
        assert isinstance(merged["epochs"], dict) and isinstance(merged["snapshot"], dict)
        assert all("epoch" in entry for entry in merged["snapshot"].values())


@settings(max_examples=fuzz_examples(150), deadline=None)
@given(
    body=st.builds(
        orjson.dumps,
        st.fixed_dictionaries(
            {"op": st.just("recover"), "id": st.text(min_size=1, max_size=8)},
            optional={"epoch": _json | st.sampled_from(ShardRig.EPOCHS), "symbol": _json},
        ),
    )
    | st.binary(max_size=60),
)
def test_any_recovery_request_to_a_relay_of_shards_is_routed_or_answered(body: bytes) -> None:
    """In front of several shards the epoch decides where a request goes: whatever it holds,
    the request reaches exactly the shard of its epoch or the client gets an error, and the
    forwarder goes on."""
    context = zmq.Context()
    rig = ShardRig(context, KIND_RECOVERY)
    try:
        client = dealer(context, rig.front_endpoint)
        client.send(body)
        rig.pump()
        reached = [index for index, upstream in enumerate(rig.upstreams) if upstream.poll(0)]
        assert len(reached) <= 1
        if reached:
            fields = orjson.loads(body)
            assert fields["epoch"] == ShardRig.EPOCHS[reached[0]]
        else:
            assert client.poll(1000)
            reply = orjson.loads(client.recv_multipart()[-1])
            assert reply["ok"] is False and isinstance(reply["error"], str)
        assert rig.forwarder.outcomes["internal_error"] == 0
    finally:
        rig.close()
        context.destroy(linger=0)
