"""ZMTP handshake failures as libzmq's socket monitor reports them, shared by the service (which
counts refused handshakes by reason) and the client (which says why it is refused)."""

from __future__ import annotations

from typing import Final

import zmq

HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# Label values of refused handshakes: a key not on curve.authorized_keys or an address outside
# allowed_networks (ZAP said no); no Curve, the wrong server key or not ZMTP at all; anything
# libzmq does not detail (a peer that sees the mismatch too and hangs up first lands here: which
# side notices first is a race).
HANDSHAKE_REJECT_REASONS: Final = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "other",
}
