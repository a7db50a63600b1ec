"""`feedsvc loadtest`: synthetic load through a real service, measured by real subscribers.

The orchestrator starts a ``feedsvc serve`` process (synthetic feed at ``--rate``; sync, metrics
and ingest off; the Kafka mirror on with ``--mirror``) and N subscriber processes (this module in
a hidden role, built on `feedsvc.client.Subscriber`, so they share no GIL with the publisher).
K of them are slow: they sleep between reads to read at ``--slow-fraction`` of the rate.
With ``--baseline`` the same load then goes through a minimal raw pyzmq PUB (pre-encoded frames
``SYM <seq> <ts> <padding>``, paced like the synthetic feed) and raw SUB sockets.

How the figures are made
------------------------
- published for a subscriber's symbols = per symbol it saw, ``last seq - first seq + 1`` (both
  seen by that subscriber), summed. Every tick in that span was either received or missed, so
  ``received + missed == published_in_span`` holds per subscriber (the report checks it).
- publish_rate = the largest over the fast subscribers (all, if every one is slow) of
  ``published_in_span / (last ts - first ts)``, the ts being the publisher's own stamps of the
  ticks that subscriber saw.
- latency = receive ``time.time_ns()`` - ``ts``, per tick, at the fast subscribers (HdrHistogram
  in microseconds if ``hdrh`` is installed, else sorted raw values); the slow subscribers report
  the same figure as their tick age.
- behind_at_stop = per symbol, the newest seq any subscriber of the run saw minus this
  subscriber's last seq, summed: ticks it had not read (queued, or dropped by the PUB socket at
  its high-water mark) when it was stopped. A slow subscriber's drops lie past its queue, so they
  appear here and in its tick age, not as gaps within its observed span.
- publisher CPU and RSS are sampled from /proc once a second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

import zmq

from feedsvc.client import Subscriber
from feedsvc.ingest import RatePacer, synthetic_symbols

PROFILES: Final = ("steady", "step", "burst")
EXIT_USAGE: Final = 2
EXIT_FAILED: Final = 1
# With --rate 0 the slow subscribers read at the fraction of this assumed rate.
UNPACED_RATE_ESTIMATE: Final = 100_000
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 60.0
SAMPLE_INTERVAL_S: Final = 1.0
RAW_FRAME_BYTES: Final = 100
RAW_HWM: Final = 10_000
LATENCY_HIGHEST_US: Final = 60_000_000
HDR_SIGNIFICANT_DIGITS: Final = 3
_STOPPED = re.compile(r"stopped: published (\d+) ticks")
_MIRROR = re.compile(r"mirror: (\d+) of (\d+) published ticks acknowledged by Kafka")


class LoadtestError(RuntimeError):
    """A run could not be made; str() says which process failed and why."""


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process (all its threads), from /proc; None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int | None:
    """Resident set size of a process from /proc/PID/status; None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _hdr_available() -> bool:
    try:
        import hdrh.histogram  # noqa: F401
    except ImportError:
        return False
    return True


class LatencyRecorder:
    """Latencies in microseconds: an HdrHistogram if hdrh is installed, else the raw values."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def dump(self) -> dict[str, Any]:
        """JSON-able form for the orchestrator: an encoded HdrHistogram, or the raw values."""
        if _hdr_available():
            from hdrh.histogram import HdrHistogram

            histogram = HdrHistogram(1, LATENCY_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
            for value in self.values:
                histogram.record_value(min(max(value, 1), LATENCY_HIGHEST_US))
            return {"hdr": histogram.encode().decode("ascii") if self.values else None}
        return {"raw": self.values}


def latency_percentiles(dumps: list[dict[str, Any]]) -> dict[str, float | None]:
    """p50, p99, p999 and max (us) over the merged dumps of `LatencyRecorder.dump`."""
    empty = {"p50": None, "p99": None, "p999": None, "max": None, "count": 0}
    if any("hdr" in dump for dump in dumps):
        from hdrh.histogram import HdrHistogram

        merged = HdrHistogram(1, LATENCY_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
        for dump in dumps:
            if dump.get("hdr"):
                merged.add(HdrHistogram.decode(dump["hdr"].encode("ascii")))
        if merged.get_total_count() == 0:
            return empty
        return {
            "p50": merged.get_value_at_percentile(50.0),
            "p99": merged.get_value_at_percentile(99.0),
            "p999": merged.get_value_at_percentile(99.9),
            "max": merged.get_max_value(),
            "count": merged.get_total_count(),
        }
    values = sorted(value for dump in dumps for value in dump.get("raw", []))
    if not values:
        return empty

    def at(fraction: float) -> int:
        return values[min(len(values) - 1, int(fraction * len(values)))]

    return {
        "p50": at(0.5),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": values[-1],
        "count": len(values),
    }


class SpanCounter:
    """Per symbol: first and last seq seen, and the first and last publisher ts overall."""

    def __init__(self) -> None:
        self.first_seq: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def observe(self, symbol: str, seq: int, ts: int) -> None:
        if symbol not in self.first_seq:
            self.first_seq[symbol] = seq
        self.last_seq[symbol] = seq
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts

    def summary(self) -> dict[str, Any]:
        published = sum(self.last_seq[s] - self.first_seq[s] + 1 for s in self.first_seq)
        span_s = None
        if self.first_ts is not None and self.last_ts is not None:
            span_s = (self.last_ts - self.first_ts) / 1e9
        return {
            "published_in_span": published,
            "symbols_seen": len(self.first_seq),
            "span_s": span_s,
            "publish_rate": published / span_s if span_s else None,
            "last_seq_by_symbol": self.last_seq,
        }


@contextmanager
def _stop_on_sigterm() -> Iterator[Callable[[], bool]]:
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield lambda: stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _slow_interval_s(args: argparse.Namespace) -> float:
    rate = args.rate if args.rate > 0 else UNPACED_RATE_ESTIMATE
    return 1.0 / (rate * args.slow_fraction)


def _announce_ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def run_feedsvc_subscriber(args: argparse.Namespace) -> int:
    """Hidden role: a `Subscriber` to every synthetic symbol; prints one JSON result on stdout."""
    latencies, spans = LatencyRecorder(), SpanCounter()
    record, observe, now_ns = latencies.values.append, spans.observe, time.time_ns
    interval_s = _slow_interval_s(args) if args.slow_role else 0.0
    received = 0
    with (
        _stop_on_sigterm() as stopped,
        Subscriber(args.endpoint, symbols=synthetic_symbols(args.symbols)) as subscriber,
    ):
        next_read = time.monotonic()
        while not stopped():
            tick = subscriber.recv(timeout=0.2)
            if tick is None:
                continue
            if received == 0:
                _announce_ready()
            received += 1
            record((now_ns() - tick["ts"]) // 1000)
            observe(tick["sym"], tick["seq"], tick["ts"])
            if interval_s:
                next_read += interval_s
                pause = next_read - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        stats = subscriber.stats
        result = {
            "received": received,
            "missed": stats.missed,
            "gaps": stats.gaps,
            "duplicates": stats.duplicates,
            **spans.summary(),
            "latency": latencies.dump(),
        }
    print(json.dumps(result))
    return 0


def raw_frame_prefixes(symbol_count: int) -> list[bytes]:
    """The baseline's pre-encoded topics (``b"SYM "``), one per synthetic symbol."""
    return [symbol.encode() + b" " for symbol in synthetic_symbols(symbol_count)]


def run_raw_publisher(args: argparse.Namespace) -> int:
    """Hidden role: the baseline PUB, paced like the synthetic feed; runs until SIGTERM."""
    prefixes = raw_frame_prefixes(args.symbols)
    # Fixed widths: seq 10 digits, ts 19 digits, then padding to RAW_FRAME_BYTES.
    padding = [b" " + b"." * (RAW_FRAME_BYTES - len(p) - 31) for p in prefixes]
    seq_by_index = [0] * len(prefixes)
    context = zmq.Context(io_threads=1)
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, RAW_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(args.endpoint)
    send, now_ns, monotonic = socket.send, time.time_ns, time.monotonic
    pacer = RatePacer(args.rate, monotonic())
    index, count, sent = 0, len(prefixes), 0
    try:
        with _stop_on_sigterm() as stopped:
            while not stopped():
                due = pacer.due(monotonic())
                for _ in range(due):
                    seq = seq_by_index[index] + 1
                    seq_by_index[index] = seq
                    send(b"%s%010d %019d%s" % (prefixes[index], seq, now_ns(), padding[index]))
                    index = index + 1 if index + 1 < count else 0
                sent += due
                if not due:
                    time.sleep(min(0.001, pacer.seconds_until_next(monotonic())))
    finally:
        socket.close(linger=0)
        context.term()
    print(f"stopped: published {sent} ticks", file=sys.stderr, flush=True)
    return 0


def run_raw_subscriber(args: argparse.Namespace) -> int:
    """Hidden role: a raw SUB to everything; gaps counted from the embedded per-symbol seq."""
    latencies, spans = LatencyRecorder(), SpanCounter()
    record, observe, now_ns = latencies.values.append, spans.observe, time.time_ns
    interval_s = _slow_interval_s(args) if args.slow_role else 0.0
    last_seq: dict[bytes, int] = {}
    received = missed = gaps = 0
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, RAW_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(args.endpoint)
    try:
        with _stop_on_sigterm() as stopped:
            next_read = time.monotonic()
            while not stopped():
                if not socket.poll(200):
                    continue
                frame = socket.recv()
                topic, seq_text, ts_text, _ = frame.split(b" ", 3)
                seq, ts = int(seq_text), int(ts_text)
                if received == 0:
                    _announce_ready()
                received += 1
                record((now_ns() - ts) // 1000)
                previous = last_seq.get(topic)
                if previous is not None and seq > previous + 1:
                    gaps += 1
                    missed += seq - previous - 1
                last_seq[topic] = seq
                observe(topic.decode(), seq, ts)
                if interval_s:
                    next_read += interval_s
                    pause = next_read - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
    finally:
        socket.close(linger=0)
        context.term()
    result = {
        "received": received,
        "missed": missed,
        "gaps": gaps,
        "duplicates": 0,
        **spans.summary(),
        "latency": latencies.dump(),
    }
    print(json.dumps(result))
    return 0


def _free_tcp_port() -> int:
    import socket as net

    with net.socket(net.AF_INET, net.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _endpoint(transport: str, workdir: Path, name: str) -> str:
    if transport == "ipc":
        return f"ipc://{workdir}/{name}"
    return f"tcp://127.0.0.1:{_free_tcp_port()}"


def _serve_command(args: argparse.Namespace, endpoint: str) -> list[str]:
    settings = [
        f"publisher.endpoints=[{endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "metrics.port=0",
        "synthetic.enabled=true",
        f"synthetic.rate={args.rate}",
        f"synthetic.symbols={args.symbols}",
    ]
    if args.mirror:
        settings += [
            "kafka.enabled=true",
            f"kafka.bootstrap={args.kafka_bootstrap}",
            f"kafka.topic={args.kafka_topic or 'loadtest-' + uuid.uuid4().hex[:12]}",
        ]
    else:
        settings.append("kafka.enabled=false")
    command = [sys.executable, "-m", "feedsvc.cli", "serve"]
    for setting in settings:
        command += ["--set", setting]
    return command


def _role_command(args: argparse.Namespace, role: str, endpoint: str, slow: bool) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "feedsvc.loadtest",
        f"--role={role}",
        f"--endpoint={endpoint}",
        f"--rate={args.rate}",
        f"--symbols={args.symbols}",
        f"--slow-fraction={args.slow_fraction}",
    ]
    return [*command, "--slow-role"] if slow else command


def _wait_ready(subscriber: subprocess.Popen[bytes], publisher: subprocess.Popen[bytes]) -> None:
    assert subscriber.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if publisher.poll() is not None:
            raise LoadtestError(f"the publisher exited early with code {publisher.returncode}")
        if subscriber.poll() is not None:
            raise LoadtestError(f"a subscriber exited early with code {subscriber.returncode}")
        readable, _, _ = select.select([subscriber.stdout], [], [], 0.1)
        if readable:
            line = subscriber.stdout.readline()
            if line.strip() == b"ready":
                return
    raise LoadtestError(f"a subscriber got no tick within {READY_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=5)
        raise LoadtestError(f"process {process.pid} did not stop on SIGTERM") from None
    return output or b""


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)


def measure(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One run (kind "feedsvc" or "baseline"): publisher + subscribers for args.duration s."""
    endpoint = _endpoint(args.transport, workdir, f"{kind}-ticks")
    log_path = workdir / f"{kind}-publisher.log"
    if kind == "feedsvc":
        publisher_command = _serve_command(args, endpoint)
        subscriber_role = "feedsvc-subscriber"
    else:
        publisher_command = _role_command(args, "raw-publisher", endpoint, False)
        subscriber_role = "raw-subscriber"
    samples: list[dict[str, float | int | None]] = []
    with ExitStack() as cleanup, log_path.open("wb") as log:
        publisher = subprocess.Popen(publisher_command, stdout=subprocess.DEVNULL, stderr=log)
        cleanup.callback(_kill, publisher)
        subscribers = []
        for index in range(args.subscribers):
            slow = index >= args.subscribers - args.slow
            process = subprocess.Popen(
                _role_command(args, subscriber_role, endpoint, slow), stdout=subprocess.PIPE
            )
            cleanup.callback(_kill, process)
            subscribers.append((process, slow))
        try:
            for process, _slow in subscribers:
                _wait_ready(process, publisher)
        except LoadtestError as error:
            raise LoadtestError(f"{kind}: {error}; publisher log:\n{_tail(log_path)}") from None
        start = time.monotonic()
        cpu_before = process_cpu_seconds(publisher.pid)
        previous_at, previous_cpu = start, cpu_before
        while (now := time.monotonic()) < start + args.duration:
            time.sleep(min(SAMPLE_INTERVAL_S, start + args.duration - now))
            if publisher.poll() is not None:
                raise LoadtestError(
                    f"{kind}: the publisher exited with {publisher.returncode}; "
                    f"log:\n{_tail(log_path)}"
                )
            at, cpu = time.monotonic(), process_cpu_seconds(publisher.pid)
            cores = None
            if cpu is not None and previous_cpu is not None:
                cores = (cpu - previous_cpu) / (at - previous_at)
            rss = process_rss_bytes(publisher.pid)
            sample = {"t_s": at - start, "cpu_cores": cores, "rss_bytes": rss}
            samples.append(sample)
            previous_at, previous_cpu = at, cpu
            print(
                f"loadtest {kind}: {sample['t_s']:5.1f}/{args.duration:g} s, publisher CPU "
                f"{'-' if cores is None else f'{cores:.2f}'} cores, RSS "
                f"{'-' if rss is None else f'{rss / 2**20:.1f}'} MiB",
                file=sys.stderr,
                flush=True,
            )
        cpu_after, end = process_cpu_seconds(publisher.pid), time.monotonic()
        results = []
        for process, slow in subscribers:
            output = _stop(process, STOP_TIMEOUT_S)
            lines = [line for line in output.splitlines() if line.strip().startswith(b"{")]
            if not lines:
                raise LoadtestError(f"{kind}: a subscriber reported nothing")
            result = json.loads(lines[-1])
            result["slow"] = slow
            results.append(result)
        _stop(publisher, STOP_TIMEOUT_S)
        publisher_exit = publisher.returncode
    log_text = log_path.read_text(errors="replace")
    return summarize(
        kind, results, samples, log_text, publisher_exit, cpu_before, cpu_after, end - start
    )


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def summarize(
    kind: str,
    results: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    log_text: str,
    publisher_exit: int | None,
    cpu_before: float | None,
    cpu_after: float | None,
    window_s: float,
) -> dict[str, Any]:
    """One report section from the subscribers' results and the publisher's samples and log."""
    # Per symbol the newest seq any subscriber of this run saw: how far behind each one stopped.
    newest_seq: dict[str, int] = {}
    for result in results:
        for symbol, seq in result["last_seq_by_symbol"].items():
            newest_seq[symbol] = max(seq, newest_seq.get(symbol, 0))
    subscribers = []
    for index, result in enumerate(results):
        last_seq = result.pop("last_seq_by_symbol")
        result["behind_at_stop"] = sum(
            newest - last_seq.get(symbol, 0) for symbol, newest in newest_seq.items()
        )
        dump = result.pop("latency")
        latency = latency_percentiles([dump])
        entry = {"index": index, **result, "latency_us": latency}
        entry["consistent"] = result["received"] + result["missed"] == result["published_in_span"]
        if result["slow"]:
            entry["tick_age_us"] = latency
        subscribers.append((entry, dump))
    # The fast subscribers' spans are long; a slow one's few ticks give a noisy rate.
    readers = [entry for entry, _ in subscribers if not entry["slow"]] or [
        entry for entry, _ in subscribers
    ]
    rates = [entry["publish_rate"] for entry in readers if entry["publish_rate"]]
    stopped = _STOPPED.search(log_text)
    mirror = _MIRROR.search(log_text)
    cpu_values = [s["cpu_cores"] for s in samples if s["cpu_cores"] is not None]
    rss_values = [s["rss_bytes"] for s in samples if s["rss_bytes"] is not None]
    # The section's latency is the fast subscribers' (all of them if every one is slow).
    fast_dumps = [dump for entry, dump in subscribers if not entry["slow"]]
    section: dict[str, Any] = {
        "publish_rate": max(rates) if rates else None,
        "latency_us": latency_percentiles(fast_dumps or [dump for _, dump in subscribers]),
        "subscribers": [entry for entry, _ in subscribers],
        "published_total": int(stopped.group(1)) if stopped else None,
        "publisher_exit_code": publisher_exit,
        "publisher": {
            "cpu_cores_mean": (cpu_after - cpu_before) / window_s
            if cpu_before is not None and cpu_after is not None
            else None,
            "cpu_cores_max": max(cpu_values) if cpu_values else None,
            "rss_bytes_max": max(rss_values) if rss_values else None,
            "samples": samples,
        },
    }
    if kind == "feedsvc":
        section["mirror"] = (
            {"acknowledged": int(mirror.group(1)), "published": int(mirror.group(2))}
            if mirror
            else None
        )
    return section


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def ratios(feedsvc: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """feedsvc's figures over the baseline's (publish rate: higher is better; latency: lower)."""
    figures = {"publish_rate": _ratio(feedsvc["publish_rate"], baseline["publish_rate"])}
    for name in ("p50", "p99", "p999", "max"):
        figures[name] = _ratio(feedsvc["latency_us"][name], baseline["latency_us"][name])
    figures["publisher_cpu_cores_mean"] = _ratio(
        feedsvc["publisher"]["cpu_cores_mean"], baseline["publisher"]["cpu_cores_mean"]
    )
    return figures


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(report: dict[str, Any]) -> None:
    """The readable summary: one row per subscriber per section, then the ratios."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="feedsvc loadtest (latency in us; slow rows: tick age)")
    for column in (
        "run",
        "sub",
        "received",
        "missed",
        "gaps",
        "behind",
        "published in span",
        "publish rate/s",
        "p50",
        "p99",
        "p99.9",
        "max",
    ):
        table.add_column(column, justify="left" if column in ("run", "sub") else "right")
    for kind in ("feedsvc", "baseline"):
        section = report.get(kind)
        if section is None:
            continue
        latency = section["latency_us"]
        table.add_row(
            kind,
            "all fast",
            "",
            "",
            "",
            "",
            "",
            _number(section["publish_rate"]),
            *(_number(latency[name]) for name in ("p50", "p99", "p999", "max")),
        )
        for entry in section["subscribers"]:
            mine = entry["latency_us"]
            table.add_row(
                "",
                f"{entry['index']}{' slow' if entry['slow'] else ''}",
                _number(entry["received"]),
                _number(entry["missed"]),
                _number(entry["gaps"]),
                _number(entry["behind_at_stop"]),
                _number(entry["published_in_span"]),
                _number(entry["publish_rate"]),
                *(_number(mine[name]) for name in ("p50", "p99", "p999", "max")),
            )
    # Piped output (CI logs) gets a width that fits every column instead of 80.
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    for kind in ("feedsvc", "baseline"):
        section = report.get(kind)
        if section is None:
            continue
        publisher = section["publisher"]
        rss = publisher["rss_bytes_max"]
        console.print(
            f"{kind} publisher: CPU {_number(publisher['cpu_cores_mean'], 2)} cores mean, "
            f"{_number(publisher['cpu_cores_max'], 2)} max; RSS max "
            f"{'-' if rss is None else f'{rss / 2**20:.1f} MiB'}; "
            f"published in total {_number(section['published_total'])}"
        )
    mirror = report["feedsvc"].get("mirror")
    if mirror is not None:
        console.print(
            f"mirror: {mirror['acknowledged']:,} of {mirror['published']:,} published ticks "
            "acknowledged by Kafka"
        )
    if "ratios" in report:
        console.print(
            "ratios feedsvc/baseline: "
            + ", ".join(f"{name} {_number(value, 3)}" for name, value in report["ratios"].items())
        )


def check_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, or None."""
    if args.profile != "steady":
        return f"--profile {args.profile} is not implemented yet; only steady is"
    if args.rate < 0 or args.duration <= 0 or args.symbols < 1 or args.subscribers < 1:
        return "--rate must be >= 0, --duration > 0, --symbols and --subscribers >= 1"
    if not 0 <= args.slow <= args.subscribers:
        return f"--slow must be between 0 and --subscribers ({args.subscribers})"
    if not 0 < args.slow_fraction <= 1:
        return "--slow-fraction must be > 0 and <= 1"
    if args.mirror and not args.kafka_bootstrap:
        return "--mirror needs --kafka-bootstrap HOST:PORT"
    return None


def run_from_args(args: argparse.Namespace) -> int:
    """The `feedsvc loadtest` command."""
    problem = check_usage(args)
    if problem is not None:
        print(f"feedsvc loadtest: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # ipc paths are limited to ~107 bytes: a short temporary folder.
    workdir = Path(tempfile.mkdtemp(prefix="lt-"))
    report: dict[str, Any] = {
        "settings": {
            "profile": args.profile,
            "rate": args.rate,
            "duration_s": args.duration,
            "symbols": args.symbols,
            "subscribers": args.subscribers,
            "slow": args.slow,
            "slow_fraction": args.slow_fraction,
            "transport": args.transport,
            "mirror": args.mirror,
            "latency_histogram": "hdr" if _hdr_available() else "sorted raw values",
        }
    }
    try:
        report["feedsvc"] = measure("feedsvc", args, workdir)
        if args.baseline:
            report["baseline"] = measure("baseline", args, workdir)
            report["ratios"] = ratios(report["feedsvc"], report["baseline"])
    except LoadtestError as error:
        print(f"feedsvc loadtest: {error}\n(logs kept in {workdir})", file=sys.stderr)
        return EXIT_FAILED
    for path in workdir.iterdir():
        path.unlink()
    workdir.rmdir()
    print_table(report)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.report}", file=sys.stderr)
    return 0


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `feedsvc loadtest`."""
    parser.add_argument(
        "--rate", type=float, default=10_000, help="ticks/s in total (0 = as fast as possible)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measurement")
    parser.add_argument("--symbols", type=int, default=50, help="synthetic symbols")
    parser.add_argument("--subscribers", type=int, default=4, help="subscriber processes")
    parser.add_argument("--slow", type=int, default=0, metavar="K", help="K of them are slow")
    parser.add_argument(
        "--slow-fraction",
        type=float,
        default=0.01,
        help="slow subscribers read at this fraction of --rate (default 0.01)",
    )
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mirror to Kafka (needs --kafka-bootstrap)",
    )
    parser.add_argument("--kafka-bootstrap", default=None, metavar="HOST:PORT")
    parser.add_argument(
        "--kafka-topic", default=None, help="mirror topic (default: a new loadtest-... topic)"
    )
    parser.add_argument("--profile", choices=PROFILES, default="steady")
    parser.add_argument(
        "--baseline", action="store_true", help="also run the same load through raw pyzmq"
    )
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report here")


ROLES: Final = {
    "feedsvc-subscriber": run_feedsvc_subscriber,
    "raw-subscriber": run_raw_subscriber,
    "raw-publisher": run_raw_publisher,
}


def main(argv: list[str] | None = None) -> int:
    """Hidden roles, run by the orchestrator as `python -m feedsvc.loadtest --role=...`."""
    parser = argparse.ArgumentParser(description="feedsvc loadtest worker (internal)")
    parser.add_argument("--role", choices=tuple(ROLES), required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--slow-fraction", type=float, default=0.01)
    parser.add_argument("--slow-role", action="store_true")
    args = parser.parse_args(argv)
    return ROLES[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
