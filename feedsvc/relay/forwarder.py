"""The tick path of the relay: upstream publishers -> XSUB -> zmq.proxy_steerable -> PUB.

The proxy runs in its own thread, in libzmq's C loop with the GIL released; Python does nothing
per tick. The main thread steers it over an inproc REQ/REP control pair (STATISTICS, TERMINATE).

The backend is a PUB rather than an XPUB on purpose: with an XPUB the proxy would pass every
client's subscription upstream, where the relay's one connection would count them all against
the publisher's per-connection subscription limits. The XSUB subscribes to everything once
instead (a relay sits close to its subscribers and carries one copy of the stream), and the
PUB filters per client in C.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import zmq

from feedsvc.config import RelayConfig
from feedsvc.server.sockets import PUBLISHER_MAX_MESSAGE_BYTES, PUBLISHER_MAX_MESSAGE_BYTES_CURVE

# libzmq's subscribe command on an XSUB: byte 1, then the prefix (empty: everything).
SUBSCRIBE_ALL: Final = b"\x01"
# ZMTP heartbeats on every relay connection: a link that went silent (a cut cable, a dead host)
# is closed and reconnected by libzmq instead of waiting for TCP to give up.
ZMTP_HEARTBEAT_IVL_MS: Final = 1_000
ZMTP_HEARTBEAT_TIMEOUT_MS: Final = 3_000
CONTROL_TIMEOUT_MS: Final = 2_000
_STATISTICS_FIELDS: Final = 8


@dataclass(frozen=True)
class ProxyStatistics:
    """What zmq_proxy_steerable's STATISTICS reports: messages and bytes received from the
    upstreams (frontend) and sent to the PUB (backend: once per tick, whatever the number of
    clients; the PUB's fan-out is not counted)."""

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0


def set_zmtp_heartbeats(socket: zmq.Socket) -> None:
    socket.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)


class TickForwarder:
    """The XSUB, the PUB and the proxy thread between them.

    The PUB is bound and the XSUB connected in the constructor (errors raise there); `start`
    hands both to the proxy thread, after which only the control socket is used from here.
    """

    def __init__(
        self,
        context: zmq.Context,
        config: RelayConfig,
        bind: Callable[[zmq.Socket, str], None],
        connect: Callable[[zmq.Socket, str], None],
        curve: bool = False,
    ) -> None:
        self._context = context
        self.frontend = context.socket(zmq.XSUB)
        self.frontend.setsockopt(zmq.RCVHWM, config.rcvhwm)
        self.frontend.setsockopt(zmq.LINGER, 0)
        set_zmtp_heartbeats(self.frontend)
        self.backend = context.socket(zmq.PUB)
        self.backend.setsockopt(zmq.SNDHWM, config.sndhwm)
        if config.sndbuf:
            self.backend.setsockopt(zmq.SNDBUF, config.sndbuf)
        self.backend.setsockopt(zmq.LINGER, 0)
        # Clients only send subscriptions: a larger message disconnects its sender, as at the
        # publisher. (Their number is not bounded here: a PUB does not show them; see
        # docs/relay.md.)
        self.backend.setsockopt(
            zmq.MAXMSGSIZE,
            PUBLISHER_MAX_MESSAGE_BYTES_CURVE if curve else PUBLISHER_MAX_MESSAGE_BYTES,
        )
        set_zmtp_heartbeats(self.backend)
        # Accepted / disconnected events count the relay's clients (read by the main thread).
        self.backend_monitor = self.backend.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
        )
        control_endpoint = f"inproc://feedsvc-relay-control-{id(self)}"
        self._control_server = context.socket(zmq.REP)
        self._control_server.bind(control_endpoint)
        self._control = context.socket(zmq.REQ)
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.setsockopt(zmq.RCVTIMEO, CONTROL_TIMEOUT_MS)
        self._control.connect(control_endpoint)
        for endpoint in config.endpoints:
            bind(self.backend, endpoint)
        self.frontend.send(SUBSCRIBE_ALL)
        for upstream in config.upstreams:
            connect(self.frontend, upstream["publisher"])
        self._thread = threading.Thread(target=self._run, name="feedsvc-relay-proxy", daemon=True)
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.frontend, self.backend, None, self._control_server)
        except zmq.ZMQError as error:  # the context was terminated, or libzmq failed
            self.error = str(error)

    def statistics(self) -> ProxyStatistics | None:
        """The proxy's counts, or None if it does not answer (it stopped)."""
        if not self.alive():
            return None
        try:
            self._control.send(b"STATISTICS")
            frames = self._control.recv_multipart()
        except zmq.ZMQError:
            return None
        if len(frames) != _STATISTICS_FIELDS:
            return None
        values = [struct.unpack("=Q", frame)[0] for frame in frames]
        return ProxyStatistics(values[0], values[1], values[6], values[7])

    def close(self) -> None:
        """TERMINATE the proxy, wait for its thread, close the sockets."""
        if self.alive():
            try:
                self._control.send(b"TERMINATE")
                self._control.recv()
            except zmq.ZMQError:
                pass
            self._thread.join(timeout=5)
        self.backend.disable_monitor()
        for socket in (
            self.backend_monitor,
            self._control,
            self._control_server,
            self.frontend,
            self.backend,
        ):
            socket.close(linger=0)
