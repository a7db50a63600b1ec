"""The asyncio subscriber: `AsyncSubscriber`, with ``await recv()``, ``async for`` and
``async with``; every decision is `_SubscriberCore`'s, this only awaits the sockets, and a
close() from another task ends the wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType
from typing import Self

import zmq
import zmq.asyncio

from feedsvc.client.core import _SubscriberCore
from feedsvc.protocol.ticks import Tick


class AsyncSubscriber(_SubscriberCore):
    """The asyncio subscriber: ``await recv()``, ``async for tick in subscriber``,
    ``async with AsyncSubscriber(...)``. Same parameters as `Subscriber`."""

    _socket_class = zmq.asyncio.Socket

    async def sync(self) -> None:
        """Run the sync handshake now, if there is a sync endpoint and it has not succeeded yet;
        as `Subscriber.sync`. Returns early, without error, if another task closes the subscriber.
        """
        wait = self._begin_sync()
        while wait is not None:
            poll = self._sync_poller(wait, zmq.asyncio.Poller()).poll(wait.timeout_ms)
            if not await self._unless_closed(poll):
                return
            wait = self._continue_sync()

    async def recv(self, timeout: float | None = None) -> Tick | None:
        """The next tick, waiting up to `timeout` seconds (None = until one comes).

        Runs the sync handshake first if it is due (as `Subscriber.recv`). Returns None when the
        timeout passes first, or once the subscriber is closed (also by another task while this
        one waits).
        """
        if self._sync_pending:
            await self.sync()
        if self._recovering:
            self._serve_recovery()
        tick = self._take_ready()
        if tick is None:
            for wait_ms in self._poll_waits_ms(timeout):
                if self._recovering:
                    # Replies and re-sends are due too: wait on both sockets.
                    waiting = self._both_sockets().poll(self._recovery_wait_ms(wait_ms))
                else:
                    waiting = self._owned_socket.poll(wait_ms)
                if not await self._unless_closed(waiting):
                    return None
                if self._recovering:
                    self._serve_recovery()
                tick = self._take_ready()
                if tick is not None:
                    break
        return tick

    def _both_sockets(self) -> zmq.asyncio.Poller:
        poller = self._recovery_poller
        if poller is None:
            poller = self._recovery_poller = zmq.asyncio.Poller()
            poller.register(self._owned_socket, zmq.POLLIN)
            poller.register(self._owned_recovery_socket, zmq.POLLIN)
        return poller

    async def _unless_closed(self, waiting: Awaitable[object]) -> bool:
        """Await `waiting`; False if close() cancelled it, True when it completed."""
        try:
            await waiting
        except asyncio.CancelledError:
            # close() cancels the pending poll; only a cancelled task must see the error.
            task = asyncio.current_task()
            if self._closed and (task is None or not task.cancelling()):
                return False
            raise
        return True

    async def __aiter__(self) -> AsyncIterator[Tick]:
        while not self._closed:
            tick = await self.recv()
            if tick is not None:
                yield tick

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
