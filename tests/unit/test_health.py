"""The health rule: healthy only while the PUB socket is open, the service is not stopping and
its loop has run within LOOP_STALL_S."""

from __future__ import annotations

from feedsvc.server.observe.health import LOOP_STALL_S, health_document, unhealthy_reason


def test_each_condition_of_the_rule_names_itself() -> None:
    alive = {"pub_open": True, "stopping": False, "loop_alive_at": 100.0}
    assert unhealthy_reason(**alive, now=100.0 + LOOP_STALL_S) is None
    assert "closed" in unhealthy_reason(**{**alive, "pub_open": False}, now=100.0)  # type: ignore[operator]
    assert unhealthy_reason(**{**alive, "stopping": True}, now=100.0) == "stopping"
    assert unhealthy_reason(**{**alive, "loop_alive_at": None}, now=100.0) == "not publishing yet"
    stalled = unhealthy_reason(**alive, now=100.0 + LOOP_STALL_S + 0.1)
    assert stalled is not None and "has not run" in stalled


def test_the_document_says_ok_only_without_a_reason() -> None:
    fields = {
        "epoch": 7,
        "endpoints": ["ipc:///x"],
        "mirror_enabled": False,
        "mirror_connected": False,
        "last_publish_unix_s": 0.0,
        "fds_open": 30,
        "fd_limit": 1024,
        "connections": {"publisher": 2},
    }
    ok = health_document(reason=None, **fields)  # type: ignore[arg-type]
    assert ok["status"] == "ok" and ok["last_tick_unix_s"] is None
    assert ok["fds"] == {"open": 30, "limit": 1024} and ok["connections"] == {"publisher": 2}
    down = health_document(reason="stopping", **fields)  # type: ignore[arg-type]
    assert (down["status"], down["reason"]) == ("unavailable", "stopping")
