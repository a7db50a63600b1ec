"""The reason a silent subscriber gives: a refusal's reason survives the bare closes of later
reconnects, so which of the two the last attempt ended in does not decide what the user reads."""

from __future__ import annotations

import zmq

from feedsvc.client.diagnostics import SilenceReason

ENDPOINT = "tcp://127.0.0.1:5556"


def test_a_reason_is_not_replaced_by_a_later_bare_close() -> None:
    reason = SilenceReason()
    reason.note(
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, ENDPOINT
    )
    reason.note(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0, ENDPOINT)
    assert reason.text is not None and "disagree on Curve" in reason.text


def test_a_bare_close_is_reported_until_a_reason_arrives() -> None:
    reason = SilenceReason()
    reason.note(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0, ENDPOINT)
    assert reason.text is not None and "closed the connection" in reason.text
    reason.note(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, ENDPOINT)
    assert reason.text is not None and "curve.authorized_keys" in reason.text
    # The latest of two reasons wins: the service's configuration may have changed between.
    reason.note(
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, ENDPOINT
    )
    assert "disagree on Curve" in reason.text


def test_clearing_forgets_the_reason_and_its_rank() -> None:
    reason = SilenceReason()
    reason.note(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, ENDPOINT)
    reason.clear()
    assert reason.text is None
    reason.note(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0, ENDPOINT)
    assert reason.text is not None and "closed the connection" in reason.text
