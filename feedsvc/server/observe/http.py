"""A small bounded HTTP server for /metrics and /healthz: one thread, one asyncio event loop.

It must never take the publishing loop down with it, whatever its clients do. So there is no
thread per connection, and every resource a client can hold is bounded: open connections, the
time and bytes of a request head, the time to take a response. A connection carries one request
and is closed after its response. Whatever goes wrong with one connection is caught inside its
handler, counted by reason and logged as a summary at most once per `REJECT_LOG_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from feedsvc.logs import RateLimiter

log = logging.getLogger("feedsvc.http")

# Why a connection was closed without a normal response, the label values of the counter.
REJECT_REASONS: Final = (
    "too_many_connections",
    "timeout",
    "too_large",
    "bad_request",
    "reset",
    "internal",
)
MAX_HEAD_BYTES: Final = 8192
LISTEN_BACKLOG: Final = 128
REJECT_LOG_INTERVAL_S: Final = 10.0
# close() waits this long for the loop thread; it is a daemon thread, so it cannot outlive us.
CLOSE_TIMEOUT_S: Final = 1.0
_HEAD_END: Final = b"\r\n\r\n"
_SERVED_METHODS: Final = frozenset({b"GET", b"HEAD"})
_HTTP_VERSIONS: Final = frozenset({b"HTTP/1.0", b"HTTP/1.1"})

# (status, content type, body)
Response = tuple[int, str, bytes]


class _Connection:
    __slots__ = ("evicted", "transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.evicted = False


class BoundedHttpServer:
    """GET and HEAD for whatever `respond(path)` answers, in a daemon thread of its own.

    Parameters
    ----------
    host, port:
        Where to listen; port 0 picks a free port (see `port`). Bound in the constructor, so a
        port in use raises OSError here.
    respond:
        path (without the query) -> (status, content type, body). Runs in the event-loop
        thread, so it must be quick; an exception from it is answered with 500.
    max_connections:
        Open connections at most. When one more arrives, the oldest connection still sending
        its request head is closed to make room; if every connection is already being
        answered, the new one is closed at once. Either way counted as too_many_connections.
    request_timeout_s:
        The whole request head must arrive within this time of the connect.
    write_timeout_s:
        The client must take the whole response within this time.
    """

    def __init__(
        self,
        host: str,
        port: int,
        respond: Callable[[str], Response],
        *,
        max_connections: int = 32,
        request_timeout_s: float = 5.0,
        write_timeout_s: float = 5.0,
        thread_name: str = "feedsvc-http",
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._respond = respond
        self._max_connections = max_connections
        self._request_timeout_s = request_timeout_s
        self._write_timeout_s = write_timeout_s
        self.rejected_by_reason = dict.fromkeys(REJECT_REASONS, 0)
        # Oldest first (dicts keep insertion order): the connections still sending their head.
        self._reading: dict[_Connection, None] = {}
        self._open: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported = dict(self.rejected_by_reason)
        self._reported_at = time.monotonic()
        self._last_internal_error: str | None = None
        self._log_limiter = RateLimiter(REJECT_LOG_INTERVAL_S, time.monotonic)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(LISTEN_BACKLOG)
        except OSError:
            self._listener.close()
            raise
        self._port: int = self._listener.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        self._stop_requested: asyncio.Future[None] = self._loop.create_future()
        self._summary_timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._closed = False

    @property
    def port(self) -> int:
        """The bound port (the one the OS picked when asked for 0)."""
        return self._port

    @property
    def connections_open(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop listening and close every connection; returns within about CLOSE_TIMEOUT_S."""
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():
            self._listener.close()
            self._loop.close()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed already: the thread is ending
            self._loop.call_soon_threadsafe(self._request_stop)
        self._thread.join(timeout=CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("http server thread still running %.1f s after close()", CLOSE_TIMEOUT_S)

    def _request_stop(self) -> None:
        if not self._stop_requested.done():
            self._stop_requested.set_result(None)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception as error:  # the server is gone, but the service must go on
            log.error("http server stopped: %s", _describe(error))
        finally:
            self._listener.close()
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(
            self._serve_connection,
            sock=self._listener,
            limit=MAX_HEAD_BYTES,
            backlog=LISTEN_BACKLOG,
        )
        self._summary_timer = self._loop.call_later(REJECT_LOG_INTERVAL_S, self._periodic_summary)
        try:
            await self._stop_requested
        finally:
            if self._summary_timer is not None:
                self._summary_timer.cancel()
            server.close()
            for connection in self._open:
                connection.transport.abort()
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_S / 2)
            await asyncio.sleep(0)  # the aborted transports close their sockets in a callback
            self._log_summary()  # what came after the last summary, once

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection, one request: nothing may escape from here but a shutdown."""
        connection = _Connection(writer.transport)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._open.add(connection)
        try:
            if len(self._open) > self._max_connections and not self._evict_oldest_reader():
                self._reject("too_many_connections")
                return
            await self._answer(connection, reader, writer)
        except asyncio.CancelledError:
            return  # close(): the server is going away
        except TimeoutError:
            self._reject("timeout")
        except OSError:  # from the socket: reset, broken pipe, unreachable peer
            if not connection.evicted:  # its eviction was counted already
                self._reject("reset")
        except Exception as error:
            self._reject("internal", _describe(error))
        finally:
            self._reading.pop(connection, None)
            self._open.discard(connection)
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()

    def _evict_oldest_reader(self) -> bool:
        """Close the connection that has been sending its head the longest; False if none is."""
        for connection in self._reading:
            connection.evicted = True
            del self._reading[connection]
            self._open.discard(connection)
            connection.transport.abort()
            self._reject("too_many_connections")
            return True
        return False

    async def _answer(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read the head and send the response. A client's fault is counted here; an error
        while sending the response (TimeoutError, ConnectionError) is left to the caller."""
        self._reading[connection] = None
        try:
            async with asyncio.timeout(self._request_timeout_s):
                head = await reader.readuntil(_HEAD_END)
        except asyncio.LimitOverrunError:
            self._reject("too_large")
            message = f"request head over {MAX_HEAD_BYTES} bytes\n".encode()
            await self._send_refusal(writer, 431, message)
            return
        except asyncio.IncompleteReadError:
            # Eviction aborts the transport, which the reader sees as an end of stream.
            if not connection.evicted:
                self._reject("reset")
            return
        finally:
            self._reading.pop(connection, None)
        if connection.evicted:
            return  # the head had arrived, but its transport is closed already
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or parts[2] not in _HTTP_VERSIONS or not parts[1].startswith(b"/"):
            self._reject("bad_request")
            await self._send_refusal(writer, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1]
        if method not in _SERVED_METHODS:
            await self._send(writer, (501, "text/plain", b"only GET and HEAD are served\n"))
            return
        try:
            response = self._respond(target.split(b"?", 1)[0].decode("latin-1"))
        except Exception as error:
            self._reject("internal", _describe(error))
            response = (500, "text/plain", b"internal error\n")
        await self._send(writer, response, with_body=method == b"GET")

    async def _send_refusal(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        """The error response to a request already counted as rejected: best effort."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            await self._send(writer, (status, "text/plain", body))

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, with_body: bool = True
    ) -> None:
        """Write the response and close, all within write_timeout_s (else TimeoutError)."""
        status, content_type, body = response
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        writer.write(head + body if with_body else head)
        async with asyncio.timeout(self._write_timeout_s):
            await writer.drain()
            writer.close()
            await writer.wait_closed()

    def _reject(self, reason: str, internal_error: str | None = None) -> None:
        self.rejected_by_reason[reason] += 1
        if internal_error is not None:
            self._last_internal_error = internal_error
        if self._log_limiter.allow():
            self._log_summary()

    def _periodic_summary(self) -> None:
        """Reports what came after the last summary even if no further rejection comes."""
        if self.rejected_by_reason != self._reported and self._log_limiter.allow():
            self._log_summary()
        self._summary_timer = self._loop.call_later(REJECT_LOG_INTERVAL_S, self._periodic_summary)

    def _log_summary(self) -> None:
        now = time.monotonic()
        since = {
            reason: count - self._reported[reason]
            for reason, count in self.rejected_by_reason.items()
            if count != self._reported[reason]
        }
        if not since:
            return
        internal = (
            f"; last internal error: {self._last_internal_error}" if since.get("internal") else ""
        )
        log.warning(
            "HTTP on port %d: %d connections closed without a normal response in the last "
            "%.0f s, by reason: %s%s",
            self._port,
            sum(since.values()),
            now - self._reported_at,
            since,
            internal,
        )
        self._reported = dict(self.rejected_by_reason)
        self._reported_at = now

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Errors asyncio reports outside any handler (a failed accept, say): counted, no
        traceback per occurrence."""
        error = context.get("exception")
        message = context.get("message", "asyncio error")
        self._reject("internal", f"{message}: {_describe(error)}" if error else message)


def _describe(error: BaseException) -> str:
    """Type and message, the one line logged instead of a traceback."""
    return f"{type(error).__name__}: {error}"
