"""`feedsvc subscribe`: receive ticks like a trading client and show or print them.

With --json every tick is one JSON line on stdout and a JSON summary line goes to stderr at exit
(for scripts and tests); otherwise a live table shows the latest quote per symbol, the message
rate, gaps and whether the publisher is alive. With --sync the sync handshake comes first: the
snapshot's last value of every symbol is printed (or shown) before the live ticks, and per symbol
the seqs are contiguous from it on. SIGINT and SIGTERM stop cleanly with exit code 0, during the
handshake too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Final

import orjson
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from feedsvc.cli import EXIT_USAGE
from feedsvc.client import DEFAULT_SYNC_TIMEOUT_S, Subscriber, SyncError
from feedsvc.client.metrics import SubscriberMetrics
from feedsvc.curve import CurveClientKeys
from feedsvc.protocol.ticks import Tick

DEFAULT_ENDPOINT: Final = "ipc:///tmp/feedsvc/ticks"
# Longest wait for a tick, so --duration and a stop signal are noticed promptly.
RECV_TIMEOUT_S: Final = 0.1
# JSON lines are written buffered and flushed at least this often (stdout may be a pipe).
FLUSH_INTERVAL_S: Final = 0.25
TABLE_REFRESH_S: Final = 0.25
EXIT_SYNC_FAILED: Final = 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def add_subscribe_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `subscribe` command's arguments to `parser`."""
    parser.add_argument(
        "symbols",
        nargs="*",
        metavar="SYMBOL",
        help="exact symbols to receive (default: all, or only the --prefix ones)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        dest="endpoints",
        metavar="EP",
        help=f"publisher endpoint, repeatable (default: {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--prefix",
        action="append",
        dest="prefixes",
        default=[],
        metavar="P",
        help="subscribe to every topic beginning with P (raw prefix), repeatable",
    )
    parser.add_argument("--count", type=_positive_int, metavar="N", help="stop after N ticks")
    parser.add_argument(
        "--duration", type=_positive_seconds, metavar="SECONDS", help="stop after SECONDS"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each tick as one JSON line on stdout and a JSON summary on stderr",
    )
    parser.add_argument(
        "--conflate",
        action="store_true",
        help="deliver only the newest tick per symbol when falling behind",
    )
    parser.add_argument(
        "--sync",
        dest="sync_endpoint",
        metavar="EP",
        help="the service's sync.endpoint: start from its snapshot (last value of every symbol), "
        "then miss nothing",
    )
    parser.add_argument(
        "--sync-timeout",
        type=_positive_seconds,
        default=DEFAULT_SYNC_TIMEOUT_S,
        metavar="SECONDS",
        help="wait per handshake step and attempt (default: %(default)s)",
    )
    parser.add_argument(
        "--recover",
        dest="recovery_endpoint",
        metavar="EP",
        help="the service's recovery.endpoint: ask it for missed ticks, so each symbol's seqs "
        "are contiguous (docs/recovery-protocol.md); not with --conflate",
    )
    parser.add_argument(
        "--curve-server-key",
        type=Path,
        metavar="FILE",
        help="the service's public key (its NAME.key) when it runs with curve.enabled; used "
        "on tcp endpoints, with --curve-client-cert",
    )
    parser.add_argument(
        "--curve-client-cert",
        type=Path,
        metavar="FILE",
        help="this client's secret certificate (NAME.key_secret from feedsvc keygen); its "
        "NAME.key must be in the service's curve.authorized_keys",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve this subscriber's Prometheus metrics on HOST:PORT/metrics while it "
        "runs (default: 0, off)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address of the metrics server; 0.0.0.0 to be scraped from elsewhere "
        "(default: %(default)s)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run `feedsvc subscribe` with parsed arguments; returns the exit code."""
    return run_subscribe(
        endpoints=args.endpoints or [DEFAULT_ENDPOINT],
        symbols=args.symbols,
        prefixes=args.prefixes,
        count=args.count,
        duration_s=args.duration,
        as_json=args.json,
        conflate=args.conflate,
        sync_endpoint=args.sync_endpoint,
        sync_timeout_s=args.sync_timeout,
        recovery_endpoint=args.recovery_endpoint,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        curve_server_key=args.curve_server_key,
        curve_client_cert=args.curve_client_cert,
    )


class _Interrupted(Exception):
    """Raised by the signal handler to leave a blocking step (the sync handshake) at once."""


class _StopFlag:
    """Set by SIGINT/SIGTERM (or the limits); checked by the receive loop between short waits.

    Inside `interrupting()` the signal also raises _Interrupted, for steps that do not check it.
    """

    def __init__(self) -> None:
        self.stopped = False
        self._interrupting = False

    def set(self, _signum: int = 0, _frame: FrameType | None = None) -> None:
        self.stopped = True
        if self._interrupting:
            self._interrupting = False
            raise _Interrupted

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False


@contextlib.contextmanager
def _stop_on_signals(stop: _StopFlag) -> Iterator[None]:
    # Signal handlers can only be installed from the main thread (not when embedded elsewhere).
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, stop.set) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _curve_keys(server_key: Path | None, client_cert: Path | None) -> CurveClientKeys | None:
    if server_key is None and client_cert is None:
        return None
    if server_key is None or client_cert is None:
        raise ValueError("--curve-server-key and --curve-client-cert go together")
    return CurveClientKeys.from_files(server_key, client_cert)


def run_subscribe(
    endpoints: Sequence[str],
    symbols: Sequence[str] = (),
    prefixes: Sequence[str] = (),
    *,
    count: int | None = None,
    duration_s: float | None = None,
    as_json: bool = False,
    conflate: bool = False,
    sync_endpoint: str | None = None,
    sync_timeout_s: float = DEFAULT_SYNC_TIMEOUT_S,
    recovery_endpoint: str | None = None,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
    curve_server_key: Path | None = None,
    curve_client_cert: Path | None = None,
) -> int:
    """Subscribe and print ticks until `count` ticks, `duration_s` seconds or SIGINT/SIGTERM.

    With `sync_endpoint` the sync handshake runs first and the snapshot's ticks come first.
    With `recovery_endpoint` missed ticks are asked for and delivered in place.
    With `metrics_port` (not 0) the subscriber's Prometheus metrics are served on
    `metrics_host`:`metrics_port` while it runs.

    With `curve_server_key` and `curve_client_cert` tcp endpoints use CurveZMQ.

    Returns the exit code: 0 when stopped by a limit or a signal, 1 when the sync handshake
    failed, 2 for unusable arguments (or a metrics port that cannot be bound).
    """

    def on_dead() -> None:
        # The live table shows this in its caption; JSON lines get a line on stderr.
        if as_json:
            print(f"feedsvc subscribe: {_silence(subscriber)}", file=sys.stderr, flush=True)

    def on_alive() -> None:
        if as_json:
            print("feedsvc subscribe: messages arrive again", file=sys.stderr, flush=True)

    try:
        curve = _curve_keys(curve_server_key, curve_client_cert)
        subscriber = Subscriber(
            endpoints,
            symbols,
            prefixes,
            conflate=conflate,
            sync_endpoint=sync_endpoint,
            sync_timeout_s=sync_timeout_s,
            recovery_endpoint=recovery_endpoint,
            on_dead=on_dead,
            on_alive=on_alive,
            curve=curve,
        )
    except ValueError as error:
        print(f"feedsvc subscribe: {error}", file=sys.stderr)
        return EXIT_USAGE
    stop = _StopFlag()
    started_at = time.monotonic()
    metrics: SubscriberMetrics | None = None
    with subscriber, _stop_on_signals(stop), contextlib.ExitStack() as cleanup:
        if metrics_port:
            metrics = SubscriberMetrics(subscriber)
            try:
                metrics.serve(metrics_port, metrics_host)
            except OSError as error:
                print(f"feedsvc subscribe: metrics port {metrics_port}: {error}", file=sys.stderr)
                return EXIT_USAGE
            cleanup.callback(metrics.close)
        observe = metrics.observe if metrics is not None else None
        try:
            with stop.interrupting():
                subscriber.sync()
        except _Interrupted:
            pass  # stop is set: no ticks are received, the summary is still printed
        except SyncError as error:
            print(f"feedsvc subscribe: {error}", file=sys.stderr)
            return EXIT_SYNC_FAILED
        deadline = None if duration_s is None else started_at + duration_s
        if as_json:
            _print_json_lines(subscriber, stop, count, deadline, observe)
        else:
            _show_table(subscriber, stop, count, deadline, observe)
    summary = {**subscriber.stats.summary(), "duration_s": round(time.monotonic() - started_at, 3)}
    if as_json:
        sys.stderr.write(orjson.dumps(summary).decode() + "\n")
        sys.stderr.flush()
    else:
        _print_summary(summary)
    return 0


def _silence(subscriber: Subscriber) -> str:
    """What a silent feed means, with the handshake failure when there was one."""
    text = (
        f"no message (tick or heartbeat) for {subscriber.heartbeat_timeout_s:g} s from "
        f"{', '.join(subscriber.endpoints)}"
    )
    failure = subscriber.handshake_failure
    return text if failure is None else f"{text}: {failure}"


def _receive(
    subscriber: Subscriber,
    stop: _StopFlag,
    count: int | None,
    deadline: float | None,
    on_tick: Callable[[Tick], object],
    on_idle: Callable[[float], object],
    observe: Callable[[Tick], object] | None = None,
) -> None:
    """The receive loop: ticks to `on_tick`, `on_idle(now)` between them, until a limit or stop.

    With `observe` (the metrics' tick-age histogram) every tick goes to it first.
    """
    recv, monotonic = subscriber.recv, time.monotonic
    if observe is not None:
        handle = on_tick

        def on_tick(tick: Tick) -> None:
            observe(tick)
            handle(tick)

    remaining = count
    while not stop.stopped:
        tick = recv(RECV_TIMEOUT_S)
        now = monotonic()
        if tick is not None:
            on_tick(tick)
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return
        on_idle(now)
        if deadline is not None and now >= deadline:
            return


def _print_json_lines(
    subscriber: Subscriber,
    stop: _StopFlag,
    count: int | None,
    deadline: float | None,
    observe: Callable[[Tick], object] | None = None,
) -> None:
    stdout: BinaryIO = sys.stdout.buffer
    dumps, write = orjson.dumps, stdout.write
    flushed_at = time.monotonic()

    def write_tick(tick: Tick) -> None:
        write(dumps(tick, option=orjson.OPT_APPEND_NEWLINE))

    def flush_now_and_then(now: float) -> None:
        nonlocal flushed_at
        if now - flushed_at >= FLUSH_INTERVAL_S:
            stdout.flush()
            flushed_at = now

    try:
        _receive(subscriber, stop, count, deadline, write_tick, flush_now_and_then, observe)
        stdout.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python's exit-time flush
        # of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _LiveView:
    """The latest quote per symbol and the rates shown by the live table."""

    def __init__(self, subscriber: Subscriber, max_rows: int) -> None:
        self.subscriber = subscriber
        self.max_rows = max_rows
        self.latest_by_symbol: dict[str, Tick] = {}
        self.rate_per_s = 0.0
        self._received_at_last_rate = 0
        self._last_rate_at = time.monotonic()

    def update_rate(self, now: float) -> None:
        received = self.subscriber.stats.received
        elapsed_s = now - self._last_rate_at
        if elapsed_s > 0:
            self.rate_per_s = (received - self._received_at_last_rate) / elapsed_s
        self._received_at_last_rate, self._last_rate_at = received, now

    def table(self) -> Table:
        stats = self.subscriber.stats
        status = "[green]alive[/]" if self.subscriber.alive else "[red]dead[/]"
        caption = (
            f"publisher {status}   {self.rate_per_s:,.0f} msgs/s   received {stats.received:,}   "
            f"gaps {stats.gaps:,}   missed {stats.missed:,}   restarts {stats.restarts:,}"
        )
        if self.subscriber.recovery_endpoint is not None:
            caption += f"   recovered {stats.recovered:,}"
        if not self.subscriber.alive:
            caption += f"\n[red]{escape(_silence(self.subscriber))}[/]"
        table = Table(title=", ".join(self.subscriber.endpoints), caption=caption)
        for column in ("symbol", "bid", "ask", "bid size", "ask size", "seq", "missed"):
            table.add_column(column, justify="left" if column == "symbol" else "right")
        symbols = sorted(self.latest_by_symbol)
        for symbol in symbols[: self.max_rows]:
            tick = self.latest_by_symbol[symbol]
            table.add_row(
                symbol,
                str(tick.get("bid")),
                str(tick.get("ask")),
                str(tick.get("bid_size")),
                str(tick.get("ask_size")),
                str(tick.get("seq")),
                str(stats.missed_by_symbol.get(symbol, 0)),
            )
        if len(symbols) > self.max_rows:
            table.add_row(f"... {len(symbols) - self.max_rows} more", "", "", "", "", "", "")
        return table


def _show_table(
    subscriber: Subscriber,
    stop: _StopFlag,
    count: int | None,
    deadline: float | None,
    observe: Callable[[Tick], object] | None = None,
) -> None:
    console = Console()
    # Title, header, borders and caption take about 8 lines.
    view = _LiveView(subscriber, max_rows=max(5, console.height - 8))
    latest_by_symbol = view.latest_by_symbol
    refreshed_at = time.monotonic()

    def remember(tick: Tick) -> None:
        latest_by_symbol[tick["sym"]] = tick

    # Refreshed from this loop, not rich's thread, so the table never reads a changing dict.
    with Live(view.table(), console=console, auto_refresh=False, transient=False) as live:

        def refresh_now_and_then(now: float) -> None:
            nonlocal refreshed_at
            if now - refreshed_at >= TABLE_REFRESH_S:
                view.update_rate(now)
                live.update(view.table(), refresh=True)
                refreshed_at = now

        _receive(subscriber, stop, count, deadline, remember, refresh_now_and_then, observe)
        view.update_rate(time.monotonic())
        live.update(view.table(), refresh=True)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="summary", show_header=False)
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name, value in summary.items():
        if name == "missed_by_symbol":
            value = ", ".join(f"{symbol}: {n}" for symbol, n in sorted(value.items())) or "-"
        table.add_row(name, str(value))
    Console().print(table)
