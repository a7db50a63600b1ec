"""`feedsvc loadtest`: synthetic load through a real service, measured by real subscribers.

The orchestrator starts a ``feedsvc serve`` process (synthetic feed at ``--rate``; sync, metrics
and ingest off; the Kafka mirror on with ``--mirror``) and N subscriber processes (this module in
a hidden role, built on `feedsvc.client.Subscriber`, so they share no GIL with the publisher).
K of them are slow: they sleep between reads to read at ``--slow-fraction`` of the rate.
With ``--baseline`` the same load then goes through a minimal raw pyzmq PUB (pre-encoded frames
``SYM <seq> <ts> <padding>``, paced like the synthetic feed) and raw SUB sockets.

Profiles
--------
- steady: one run at ``--rate``.
- burst: one run at ``--rate`` with spikes to ``--burst-factor`` x the rate for
  ``--burst-duration`` s every ``--burst-every`` s (`feedsvc.server.pacing.BurstSchedule`,
  windows on the Unix clock, so the service and the baseline publisher burst at the same moments).
- step: short steady runs of ``--step-duration`` s at rising rates (``--rate``, or 10k with rate
  0, times ``--step-factor`` each step) until a step is not sustained (achieved publish rate
  under 0.95 x the target, or gaps at a fast subscriber) or ``--max-steps``.

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
  the same figure as their tick age. Subscribers keep one histogram per second of receive time;
  the whole-run figures merge them, ``over_time`` lists them for the measured seconds (the
  measurement starts on a whole Unix second, with bursts at the end of a burst window, so the
  seconds and the windows line up in every run).
- behind_at_stop = per symbol, the newest seq any subscriber of the run saw minus this
  subscriber's last seq, summed: ticks it had not read (queued, or dropped by the PUB socket at
  its high-water mark) when it was stopped. A slow subscriber's drops lie past its queue, so they
  appear here and in its tick age, not as gaps within its observed span. All subscribers are
  stopped at once so the fast ones' figure stays near 0.
- publisher CPU and RSS are sampled from /proc once a second; with ``--mirror`` the service's
  Prometheus endpoint is on (loopback) and the mirror's lag, queue and acknowledged count are
  scraped at each sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import zmq

from feedsvc.bench import loadtest_plot
from feedsvc.client import Subscriber
from feedsvc.curve import CurveClientKeys, create_key_pair, load_key_pair
from feedsvc.curve import connect as curve_connect
from feedsvc.server.pacing import BurstSchedule, RatePacer
from feedsvc.server.synthetic import synthetic_symbols

if TYPE_CHECKING:
    from rich.table import Table

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
NS_PER_S: Final = 1_000_000_000
# Time for the subscribers to settle after the first tick before the measured seconds begin.
SETTLE_S: Final = 0.2
# With --profile step and --rate 0, the first step's rate.
STEP_START_RATE: Final = 10_000
# A step is sustained when it achieves this fraction of its target rate (and has no gaps).
STEP_SUSTAINED_FRACTION: Final = 0.95
SCRAPE_TIMEOUT_S: Final = 0.5
# The service's mirror figures scraped at each sample: report field -> Prometheus sample name.
MIRROR_METRICS: Final = {
    "mirror_lag_s": "feedsvc_mirror_lag_seconds",
    "mirror_queue_ticks": "feedsvc_mirror_queue_ticks",
    "mirror_delivered_total": "feedsvc_mirror_delivered_total",
}


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
    """Latencies in microseconds, kept per second of receive time (Unix seconds)."""

    def __init__(self) -> None:
        self.values_by_second: dict[int, list[int]] = {}
        self._second = -1
        self._values: list[int] = []

    def record(self, received_ns: int, published_ns: int) -> None:
        """One tick: its latency, filed under the second it was received in."""
        second = received_ns // NS_PER_S
        if second != self._second:
            self._second = second
            self._values = self.values_by_second.setdefault(second, [])
        self._values.append((received_ns - published_ns) // 1000)

    def dump(self) -> dict[str, dict[str, Any]]:
        """JSON-able form for the orchestrator: per second (as text), the tick count and an
        encoded HdrHistogram if hdrh is installed, else the raw values."""
        if not _hdr_available():
            return {
                str(second): {"count": len(values), "raw": values}
                for second, values in self.values_by_second.items()
            }
        from hdrh.histogram import HdrHistogram

        histogram = HdrHistogram(1, LATENCY_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
        record_value = histogram.record_value
        dumps = {}
        for second, values in self.values_by_second.items():
            for value in values:
                record_value(min(max(value, 1), LATENCY_HIGHEST_US))
            dumps[str(second)] = {"count": len(values), "hdr": histogram.encode().decode("ascii")}
            histogram.reset()
        return dumps


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
    record, observe, now_ns = latencies.record, spans.observe, time.time_ns
    interval_s = _slow_interval_s(args) if args.slow_role else 0.0
    received = 0
    with (
        _stop_on_sigterm() as stopped,
        Subscriber(
            args.endpoint, symbols=synthetic_symbols(args.symbols), curve=_client_keys(args)
        ) as subscriber,
    ):
        next_read = time.monotonic()
        while not stopped():
            tick = subscriber.recv(timeout=0.2)
            if tick is None:
                continue
            if received == 0:
                _announce_ready()
            received += 1
            record(now_ns(), tick["ts"])
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
            "latency_by_second": latencies.dump(),
        }
    print(json.dumps(result))
    return 0


def raw_frame_prefixes(symbol_count: int) -> list[bytes]:
    """The baseline's pre-encoded topics (``b"SYM "``), one per synthetic symbol."""
    return [symbol.encode() + b" " for symbol in synthetic_symbols(symbol_count)]


# With --curve: the throwaway keys in args.curve_dir (see _make_curve_keys).
_SERVER_KEY_NAME: Final = "server"
_CLIENT_KEY_NAME: Final = "client"


def _make_curve_keys(directory: Path) -> None:
    """A server pair and one client pair, the client's public key alone in authorized/."""
    create_key_pair(directory, _SERVER_KEY_NAME)
    client_public, _ = create_key_pair(directory, _CLIENT_KEY_NAME)
    (directory / "authorized").mkdir()
    shutil.copy(client_public, directory / "authorized")


def _client_keys(args: argparse.Namespace) -> CurveClientKeys | None:
    if args.curve_dir is None:
        return None
    return CurveClientKeys.from_files(
        args.curve_dir / f"{_SERVER_KEY_NAME}.key",
        args.curve_dir / f"{_CLIENT_KEY_NAME}.key_secret",
    )


def run_raw_publisher(args: argparse.Namespace) -> int:
    """Hidden role: the baseline PUB, paced like the synthetic feed (bursts included); runs
    until SIGTERM."""
    prefixes = raw_frame_prefixes(args.symbols)
    # Fixed widths: seq 10 digits, ts 19 digits, then padding to RAW_FRAME_BYTES.
    padding = [b" " + b"." * (RAW_FRAME_BYTES - len(p) - 31) for p in prefixes]
    seq_by_index = [0] * len(prefixes)
    context = zmq.Context(io_threads=1)
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, RAW_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    if args.curve_dir is not None:
        # Curve without an allow-list check: the encryption is the cost being compared.
        public, secret = load_key_pair(args.curve_dir / f"{_SERVER_KEY_NAME}.key_secret")
        socket.curve_publickey, socket.curve_secretkey = public, secret
        socket.curve_server = True
    socket.bind(args.endpoint)
    send, now_ns, monotonic = socket.send, time.time_ns, time.monotonic
    bursts = (
        BurstSchedule(args.burst_rate, args.burst_every, args.burst_duration)
        if args.burst_rate
        else None
    )
    start = monotonic()
    pacer = RatePacer(args.rate, start, bursts=bursts, unix_offset_s=time.time() - start)
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
    # The same place and shape as `feedsvc serve --summary-file`, for the figures compared.
    summary = {"published": sent, "mirror": {"enabled": False}}
    args.summary_file.write_text(json.dumps(summary))
    return 0


def run_raw_subscriber(args: argparse.Namespace) -> int:
    """Hidden role: a raw SUB to everything; gaps counted from the embedded per-symbol seq."""
    latencies, spans = LatencyRecorder(), SpanCounter()
    record, observe, now_ns = latencies.record, spans.observe, time.time_ns
    interval_s = _slow_interval_s(args) if args.slow_role else 0.0
    last_seq: dict[bytes, int] = {}
    received = missed = gaps = 0
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, RAW_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    curve_connect(socket, args.endpoint, _client_keys(args))
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
                record(now_ns(), ts)
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
        "latency_by_second": latencies.dump(),
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


def burst_schedule(args: argparse.Namespace) -> BurstSchedule | None:
    """The run's bursts (--profile burst), or None."""
    if args.profile != "burst":
        return None
    return BurstSchedule(args.rate * args.burst_factor, args.burst_every, args.burst_duration)


def _serve_command(
    args: argparse.Namespace, endpoint: str, metrics_port: int, summary_path: Path
) -> list[str]:
    settings = [
        f"publisher.endpoints=[{endpoint}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        f"metrics.port={metrics_port}",
        "metrics.host=127.0.0.1",
        "synthetic.enabled=true",
        f"synthetic.rate={args.rate}",
        f"synthetic.symbols={args.symbols}",
    ]
    if args.curve_dir is not None:
        settings += [
            "curve.enabled=true",
            f"curve.server_secret={args.curve_dir / _SERVER_KEY_NAME}.key_secret",
            f"curve.authorized_keys={args.curve_dir / 'authorized'}",
        ]
    bursts = burst_schedule(args)
    if bursts is not None:
        settings += [
            f"synthetic.burst_rate={bursts.rate}",
            f"synthetic.burst_every_s={bursts.every_s}",
            f"synthetic.burst_duration_s={bursts.duration_s}",
        ]
    if args.mirror:
        settings += [
            "kafka.enabled=true",
            f"kafka.bootstrap={args.kafka_bootstrap}",
            f"kafka.topic={args.kafka_topic or 'loadtest-' + uuid.uuid4().hex[:12]}",
        ]
    else:
        settings.append("kafka.enabled=false")
    command = [sys.executable, "-m", "feedsvc.cli", "serve", "--summary-file", str(summary_path)]
    for setting in settings:
        command += ["--set", setting]
    return command


def _role_command(args: argparse.Namespace, role: str, endpoint: str, slow: bool) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "feedsvc.bench.loadtest",
        f"--role={role}",
        f"--endpoint={endpoint}",
        f"--rate={args.rate}",
        f"--symbols={args.symbols}",
        f"--slow-fraction={args.slow_fraction}",
    ]
    if args.curve_dir is not None:
        command.append(f"--curve-dir={args.curve_dir}")
    bursts = burst_schedule(args)
    if role == "raw-publisher" and bursts is not None:
        command += [
            f"--burst-rate={bursts.rate}",
            f"--burst-every={bursts.every_s}",
            f"--burst-duration={bursts.duration_s}",
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
    return _collect(process, timeout_s)


def _collect(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """The output of a process already sent SIGTERM, once it exits.

    Never a second SIGTERM: a worker restores the default handler once its loop is over, and a
    second signal then would kill it before it printed its result.
    """
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


@dataclass(frozen=True)
class MeasuredWindow:
    """The measured part of one run: whole Unix seconds from `start_unix_s`, and its bursts."""

    start_unix_s: int
    duration_s: float
    bursts: BurstSchedule | None = None

    @property
    def seconds(self) -> range:
        """The Unix seconds measured whole (a trailing part second is left out)."""
        return range(self.start_unix_s, self.start_unix_s + int(self.duration_s))

    def burst_windows(self) -> list[tuple[float, float]]:
        """The burst windows in the window, in seconds since its start."""
        if self.bursts is None:
            return []
        start, end = self.start_unix_s, self.start_unix_s + self.duration_s
        return [(begin - start, stop - start) for begin, stop in self.bursts.windows(start, end)]


def measurement_start(now_unix_s: float, bursts: BurstSchedule | None) -> int:
    """The Unix second the measured seconds begin at.

    A whole second, so each subscriber's per-second histograms are exactly the measured seconds;
    with (whole-second) bursts, the end of a burst window, so every run of the invocation (feedsvc,
    baseline) sees the windows at the same offsets.
    """
    start = math.ceil(now_unix_s + SETTLE_S)
    if bursts is not None:
        start += round(bursts.duration_s - start) % round(bursts.every_s)
    return start


def mirror_figures(exposition: str) -> dict[str, float | None]:
    """The `MIRROR_METRICS` values in a Prometheus text exposition (None where absent)."""
    value_by_name = {}
    for line in exposition.splitlines():
        name, _, value = line.partition(" ")
        value_by_name[name] = value
    figures: dict[str, float | None] = {}
    for field_name, metric in MIRROR_METRICS.items():
        try:
            figures[field_name] = float(value_by_name[metric])
        except (KeyError, ValueError):
            figures[field_name] = None
    return figures


def _scrape_mirror(opener: urllib.request.OpenerDirector, port: int) -> dict[str, float | None]:
    try:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as reply:
            return mirror_figures(reply.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        # A missed scrape (the service busy, or not listening yet) is a gap in the series.
        return dict.fromkeys(MIRROR_METRICS)


def _progress_line(label: str, sample: dict[str, Any], duration_s: float, in_burst: bool) -> str:
    cores, rss = sample["cpu_cores"], sample["rss_bytes"]
    parts = [
        f"loadtest {label}: {sample['t_s']:5.1f}/{duration_s:g} s",
        f"publisher CPU {'-' if cores is None else f'{cores:.2f}'} cores",
        f"RSS {'-' if rss is None else f'{rss / 2**20:.1f}'} MiB",
    ]
    if "mirror_lag_s" in sample:
        lag, queue = sample["mirror_lag_s"], sample["mirror_queue_ticks"]
        parts.append(
            f"mirror lag {'-' if lag is None else f'{lag:.3f}'} s "
            f"(queue {_number(queue)} ticks, {_number(sample['mirror_delivered_total'])} acked)"
        )
    if in_burst:
        parts.append("in a burst")
    return ", ".join(parts)


def measure(
    kind: str, args: argparse.Namespace, workdir: Path, label: str | None = None
) -> dict[str, Any]:
    """One run (kind "feedsvc" or "baseline"): publisher + subscribers for args.duration s.

    `label` names the run in the progress lines (default: kind).
    """
    label = label or kind
    endpoint = _endpoint(args.transport, workdir, f"{kind}-ticks")
    log_path = workdir / f"{kind}-publisher.log"
    summary_path = workdir / f"{kind}-publisher-summary.json"
    # The mirror's lag is only visible through the service's metrics endpoint.
    metrics_port = _free_tcp_port() if kind == "feedsvc" and args.mirror else 0
    if kind == "feedsvc":
        publisher_command = _serve_command(args, endpoint, metrics_port, summary_path)
        subscriber_role = "feedsvc-subscriber"
    else:
        publisher_command = [
            *_role_command(args, "raw-publisher", endpoint, False),
            f"--summary-file={summary_path}",
        ]
        subscriber_role = "raw-subscriber"
    bursts = burst_schedule(args)
    # No proxy: the environment's http_proxy must not catch a loopback scrape.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    samples: list[dict[str, Any]] = []
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
            raise LoadtestError(f"{label}: {error}; publisher log:\n{_tail(log_path)}") from None
        window = MeasuredWindow(measurement_start(time.time(), bursts), args.duration, bursts)
        time.sleep(max(0.0, window.start_unix_s - time.time()))
        start = time.monotonic()
        cpu_before = process_cpu_seconds(publisher.pid)
        previous_at, previous_cpu = start, cpu_before
        while (now := time.monotonic()) < start + args.duration:
            time.sleep(min(SAMPLE_INTERVAL_S, start + args.duration - now))
            if publisher.poll() is not None:
                raise LoadtestError(
                    f"{label}: the publisher exited with {publisher.returncode}; "
                    f"log:\n{_tail(log_path)}"
                )
            at, cpu = time.monotonic(), process_cpu_seconds(publisher.pid)
            cores = None
            if cpu is not None and previous_cpu is not None:
                cores = (cpu - previous_cpu) / (at - previous_at)
            sample = {
                "t_s": at - start,
                "cpu_cores": cores,
                "rss_bytes": process_rss_bytes(publisher.pid),
            }
            if metrics_port:
                sample.update(_scrape_mirror(opener, metrics_port))
            samples.append(sample)
            previous_at, previous_cpu = at, cpu
            # The second just sampled: its middle, not the boundary it ends on.
            in_burst = bursts is not None and bursts.in_burst(time.time() - SAMPLE_INTERVAL_S / 2)
            print(
                _progress_line(label, sample, args.duration, in_burst), file=sys.stderr, flush=True
            )
        cpu_after, end = process_cpu_seconds(publisher.pid), time.monotonic()
        # All at once: stopped one after another, the later ones would read further and the
        # earlier ones would look behind.
        for process, _slow in subscribers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        results = []
        for process, slow in subscribers:
            output = _collect(process, STOP_TIMEOUT_S)
            lines = [line for line in output.splitlines() if line.strip().startswith(b"{")]
            if not lines:
                raise LoadtestError(
                    f"{label}: a subscriber reported nothing (exit code {process.returncode})"
                )
            result = json.loads(lines[-1])
            result["slow"] = slow
            results.append(result)
        _stop(publisher, STOP_TIMEOUT_S)
        publisher_exit = publisher.returncode
    try:
        publisher_summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        publisher_summary = None  # it did not get to write one: reported as unknown
    return summarize(
        kind,
        results,
        samples,
        publisher_summary,
        publisher_exit,
        cpu_before,
        cpu_after,
        end - start,
        window,
    )


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _merged_seconds(
    dumps_by_second: list[dict[str, dict[str, Any]]], seconds: list[int]
) -> dict[str, Any]:
    """Received ticks/s per subscriber and latency over some seconds of some subscribers."""
    dumps = [
        by_second[str(second)]
        for by_second in dumps_by_second
        for second in seconds
        if str(second) in by_second
    ]
    received = sum(dump["count"] for dump in dumps)
    per_subscriber_second = len(dumps_by_second) * len(seconds)
    return {
        "received": received,
        "received_per_s": received / per_subscriber_second if per_subscriber_second else None,
        "latency_us": latency_percentiles(dumps),
    }


def over_time(
    dumps_by_second: list[dict[str, dict[str, Any]]], window: MeasuredWindow
) -> list[dict[str, Any]]:
    """Per measured second: received ticks (summed and per subscriber) and latency percentiles
    over the given subscribers' per-second dumps; `in_burst` when it overlaps a burst window."""
    burst_windows = window.burst_windows()
    rows = []
    for offset, second in enumerate(window.seconds):
        merged = _merged_seconds(dumps_by_second, [second])
        latency = merged["latency_us"]
        rows.append(
            {
                "t_s": offset,
                "received": merged["received"],
                "received_per_subscriber": merged["received_per_s"],
                **{name: latency[name] for name in ("p50", "p99", "p999", "max")},
                "in_burst": any(
                    begin < offset + 1 and end > offset for begin, end in burst_windows
                ),
            }
        )
    return rows


def burst_figures(
    dumps_by_second: list[dict[str, dict[str, Any]]], window: MeasuredWindow
) -> dict[str, Any]:
    """Received ticks/s per subscriber and latency percentiles: per burst window, over the
    seconds in any window, and over the seconds outside every window."""
    bursts = window.bursts
    assert bursts is not None
    windows = []
    seconds_in_a_burst: set[int] = set()
    for begin, end in window.burst_windows():
        seconds = [
            second
            for offset, second in enumerate(window.seconds)
            if begin < offset + 1 and end > offset
        ]
        seconds_in_a_burst.update(seconds)
        windows.append(
            {"start_s": begin, "end_s": end, **_merged_seconds(dumps_by_second, seconds)}
        )
    outside = [second for second in window.seconds if second not in seconds_in_a_burst]
    return {
        "rate": bursts.rate,
        "every_s": bursts.every_s,
        "duration_s": bursts.duration_s,
        "windows": windows,
        "in_bursts": _merged_seconds(dumps_by_second, sorted(seconds_in_a_burst)),
        "outside": _merged_seconds(dumps_by_second, outside),
    }


def summarize(
    kind: str,
    results: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    publisher_summary: dict[str, Any] | None,
    publisher_exit: int | None,
    cpu_before: float | None,
    cpu_after: float | None,
    window_s: float,
    window: MeasuredWindow,
) -> dict[str, Any]:
    """One report section from the subscribers' results and the publisher's samples and summary
    (its --summary-file; None if it wrote none)."""
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
        by_second = result.pop("latency_by_second")
        latency = latency_percentiles(list(by_second.values()))
        entry = {"index": index, **result, "latency_us": latency}
        entry["received_by_second"] = [
            by_second.get(str(second), {}).get("count", 0) for second in window.seconds
        ]
        entry["consistent"] = result["received"] + result["missed"] == result["published_in_span"]
        if result["slow"]:
            entry["tick_age_us"] = latency
        subscribers.append((entry, by_second))
    # The fast subscribers' spans are long; a slow one's few ticks give a noisy rate.
    readers = [entry for entry, _ in subscribers if not entry["slow"]] or [
        entry for entry, _ in subscribers
    ]
    rates = [entry["publish_rate"] for entry in readers if entry["publish_rate"]]
    mirror = (publisher_summary or {}).get("mirror") or {}
    cpu_values = [s["cpu_cores"] for s in samples if s["cpu_cores"] is not None]
    rss_values = [s["rss_bytes"] for s in samples if s["rss_bytes"] is not None]
    # The section's latency is the fast subscribers' (all of them if every one is slow).
    fast = [by_second for entry, by_second in subscribers if not entry["slow"]] or [
        by_second for _, by_second in subscribers
    ]
    section: dict[str, Any] = {
        "publish_rate": max(rates) if rates else None,
        "latency_us": latency_percentiles(
            [dump for by_second in fast for dump in by_second.values()]
        ),
        "subscribers": [entry for entry, _ in subscribers],
        "published_total": publisher_summary["published"] if publisher_summary else None,
        "publisher_exit_code": publisher_exit,
        "publisher": {
            "cpu_cores_mean": (cpu_after - cpu_before) / window_s
            if cpu_before is not None and cpu_after is not None
            else None,
            "cpu_cores_max": max(cpu_values) if cpu_values else None,
            "rss_bytes_max": max(rss_values) if rss_values else None,
            "samples": samples,
        },
        "window": {"start_unix_s": window.start_unix_s, "duration_s": window.duration_s},
        "over_time": over_time(fast, window),
    }
    if window.bursts is not None:
        section["bursts"] = burst_figures(fast, window)
    if kind == "feedsvc":
        section["mirror"] = None
        if mirror.get("enabled"):
            lags = [s["mirror_lag_s"] for s in samples if s.get("mirror_lag_s") is not None]
            section["mirror"] = {
                "acknowledged": mirror["delivered"],
                "published": publisher_summary["published"],  # type: ignore[index]
                "lag_s_max": max(lags) if lags else None,
            }
    return section


def step_targets(rate: float, factor: float, max_steps: int) -> list[float]:
    """The target rates of --profile step: --rate (STEP_START_RATE when 0), times factor each
    step, in whole ticks/s."""
    first = rate if rate > 0 else STEP_START_RATE
    return [float(max(1, round(first * factor**index))) for index in range(max_steps)]


def step_sustained(target_rate: float, publish_rate: float | None, gaps: int) -> bool:
    """Whether a step held its target: the achieved publish rate is at least
    STEP_SUSTAINED_FRACTION of it and the fast subscribers saw no gaps."""
    return (
        publish_rate is not None
        and publish_rate >= STEP_SUSTAINED_FRACTION * target_rate
        and gaps == 0
    )


def measure_steps(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """--profile step for one kind: steady runs at rising rates until one is not sustained.

    The section's own figures are those of the last sustained step (of the first step when none
    was), plus `steps` (one summary per step run) and `max_sustained_rate` (None when none was).
    """
    step_args = argparse.Namespace(**vars(args))
    step_args.duration = args.step_duration or args.duration
    steps: list[dict[str, Any]] = []
    first_section: dict[str, Any] | None = None
    sustained_section: dict[str, Any] | None = None
    for number, target in enumerate(
        step_targets(args.rate, args.step_factor, args.max_steps), start=1
    ):
        step_args.rate = target
        section = measure(kind, step_args, workdir, label=f"{kind} step {number} ({target:,.0f}/s)")
        fast = [entry for entry in section["subscribers"] if not entry["slow"]]
        gaps = sum(entry["gaps"] for entry in fast)
        sustained = step_sustained(target, section["publish_rate"], gaps)
        steps.append(
            {
                "target_rate": target,
                "publish_rate": section["publish_rate"],
                "latency_us": section["latency_us"],
                "gaps": gaps,
                "missed": sum(entry["missed"] for entry in fast),
                "publisher_cpu_cores_mean": section["publisher"]["cpu_cores_mean"],
                "sustained": sustained,
            }
        )
        print(
            f"loadtest {kind} step {number}: target {target:,.0f}/s, achieved "
            f"{_number(section['publish_rate'])}/s, p99 {_number(section['latency_us']['p99'])} "
            f"us, {gaps} gaps at the fast subscribers: "
            + ("sustained" if sustained else "not sustained, stopping"),
            file=sys.stderr,
            flush=True,
        )
        first_section = first_section or section
        if not sustained:
            break
        sustained_section = section
    assert first_section is not None
    sustained_targets = [step["target_rate"] for step in steps if step["sustained"]]
    return {
        **(sustained_section or first_section),
        "steps": steps,
        "max_sustained_rate": sustained_targets[-1] if sustained_targets else None,
        # max_steps: every step was sustained, so the highest sustained rate is a lower bound.
        "stopped_by": "max_steps" if steps[-1]["sustained"] else "not_sustained",
    }


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def ratios(feedsvc: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """feedsvc's figures over the baseline's (rates: higher is better; latency: lower)."""
    figures = {"publish_rate": _ratio(feedsvc["publish_rate"], baseline["publish_rate"])}
    for name in ("p50", "p99", "p999", "max"):
        figures[name] = _ratio(feedsvc["latency_us"][name], baseline["latency_us"][name])
    figures["publisher_cpu_cores_mean"] = _ratio(
        feedsvc["publisher"]["cpu_cores_mean"], baseline["publisher"]["cpu_cores_mean"]
    )
    if "bursts" in feedsvc and "bursts" in baseline:
        figures["burst_p99"] = _ratio(
            feedsvc["bursts"]["in_bursts"]["latency_us"]["p99"],
            baseline["bursts"]["in_bursts"]["latency_us"]["p99"],
        )
    if "max_sustained_rate" in feedsvc and "max_sustained_rate" in baseline:
        figures["max_sustained_rate"] = _ratio(
            feedsvc["max_sustained_rate"], baseline["max_sustained_rate"]
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
        lag = mirror.get("lag_s_max")
        console.print(
            f"mirror: {mirror['acknowledged']:,} of {mirror['published']:,} published ticks "
            f"acknowledged by Kafka; lag max {'-' if lag is None else f'{lag:.3f} s'}"
        )
    if "bursts" in report["feedsvc"]:
        console.print(_bursts_table(report))
    if "steps" in report["feedsvc"]:
        console.print(_steps_table(report))
        for kind in ("feedsvc", "baseline"):
            if kind in report:
                section = report[kind]
                bound = " (every step sustained: a lower bound)"
                console.print(
                    f"{kind} max sustained rate: {_number(section['max_sustained_rate'])} "
                    f"ticks/s{bound if section['stopped_by'] == 'max_steps' else ''}"
                )
    if "ratios" in report:
        console.print(
            "ratios feedsvc/baseline: "
            + ", ".join(f"{name} {_number(value, 3)}" for name, value in report["ratios"].items())
        )


def _percentile_cells(latency: dict[str, Any]) -> list[str]:
    return [_number(latency[name]) for name in ("p50", "p99", "p999", "max")]


def _bursts_table(report: dict[str, Any]) -> Table:
    """One row per burst window and one for the seconds outside them, per run."""
    from rich.table import Table

    bursts = report["feedsvc"]["bursts"]
    table = Table(
        title=f"bursts to {bursts['rate']:,.0f} ticks/s for {bursts['duration_s']:g} s every "
        f"{bursts['every_s']:g} s (fast subscribers; latency in us)"
    )
    for column in ("run", "seconds", "received/s per sub", "p50", "p99", "p99.9", "max"):
        table.add_column(column, justify="left" if column in ("run", "seconds") else "right")
    for kind in ("feedsvc", "baseline"):
        if kind not in report:
            continue
        section_bursts = report[kind]["bursts"]
        rows = [
            (f"burst {window['start_s']:g}-{window['end_s']:g}", window)
            for window in section_bursts["windows"]
        ]
        rows.append(("outside bursts", section_bursts["outside"]))
        for index, (name, figures) in enumerate(rows):
            table.add_row(
                kind if index == 0 else "",
                name,
                _number(figures["received_per_s"]),
                *_percentile_cells(figures["latency_us"]),
            )
    return table


def _steps_table(report: dict[str, Any]) -> Table:
    """One row per step run, per kind."""
    from rich.table import Table

    table = Table(title="steps (fast subscribers; latency in us)")
    for column in ("run", "step", "target/s", "achieved/s", "p50", "p99", "p99.9", "max", "gaps"):
        table.add_column(column, justify="left" if column in ("run", "step") else "right")
    table.add_column("sustained")
    for kind in ("feedsvc", "baseline"):
        if kind not in report:
            continue
        for number, step in enumerate(report[kind]["steps"], start=1):
            table.add_row(
                kind if number == 1 else "",
                str(number),
                _number(step["target_rate"]),
                _number(step["publish_rate"]),
                *_percentile_cells(step["latency_us"]),
                _number(step["gaps"]),
                "yes" if step["sustained"] else "no",
            )
    return table


def check_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, or None."""
    if args.rate < 0 or args.duration <= 0 or args.symbols < 1 or args.subscribers < 1:
        return "--rate must be >= 0, --duration > 0, --symbols and --subscribers >= 1"
    if not 0 <= args.slow <= args.subscribers:
        return f"--slow must be between 0 and --subscribers ({args.subscribers})"
    if not 0 < args.slow_fraction <= 1:
        return "--slow-fraction must be > 0 and <= 1"
    if args.mirror and not args.kafka_bootstrap:
        return "--mirror needs --kafka-bootstrap HOST:PORT"
    if args.curve and args.transport != "tcp":
        return "--curve needs --transport tcp (ipc endpoints are never encrypted)"
    if args.profile == "burst":
        if args.rate <= 0:
            return "--profile burst needs --rate > 0 (rate 0 is already as fast as possible)"
        if args.burst_factor <= 1:
            return "--burst-factor must be > 1"
        if not 1 <= args.burst_duration < args.burst_every:
            return "--burst-duration must be >= 1 and < --burst-every"
        if args.duration < args.burst_every:
            return f"--duration must be >= --burst-every ({args.burst_every}) to hold a burst"
    if args.profile == "step":
        if args.step_factor <= 1 or args.max_steps < 1:
            return "--step-factor must be > 1 and --max-steps >= 1"
        if args.step_duration is not None and args.step_duration <= 0:
            return "--step-duration must be > 0"
    if args.plot is not None:
        return loadtest_plot.matplotlib_problem()
    return None


def run_from_args(args: argparse.Namespace) -> int:
    """The `feedsvc loadtest` command."""
    problem = check_usage(args)
    if problem is not None:
        print(f"feedsvc loadtest: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # ipc paths are limited to ~107 bytes: a short temporary folder.
    workdir = Path(tempfile.mkdtemp(prefix="lt-"))
    args.curve_dir = workdir / "keys" if args.curve else None
    if args.curve_dir is not None:
        _make_curve_keys(args.curve_dir)
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
            "curve": args.curve,
            "latency_histogram": "hdr" if _hdr_available() else "sorted raw values",
        }
    }
    settings = report["settings"]
    if args.profile == "burst":
        settings.update(
            burst_factor=args.burst_factor,
            burst_every_s=args.burst_every,
            burst_duration_s=args.burst_duration,
        )
    if args.profile == "step":
        settings.update(
            step_first_rate=step_targets(args.rate, args.step_factor, 1)[0],
            step_factor=args.step_factor,
            max_steps=args.max_steps,
            step_duration_s=args.step_duration or args.duration,
            step_sustained_fraction=STEP_SUSTAINED_FRACTION,
        )
    run = measure_steps if args.profile == "step" else measure
    try:
        report["feedsvc"] = run("feedsvc", args, workdir)
        if args.baseline:
            report["baseline"] = run("baseline", args, workdir)
            report["ratios"] = ratios(report["feedsvc"], report["baseline"])
    except LoadtestError as error:
        print(f"feedsvc loadtest: {error}\n(logs kept in {workdir})", file=sys.stderr)
        return EXIT_FAILED
    shutil.rmtree(workdir)
    print_table(report)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.report}", file=sys.stderr)
    if args.plot is not None:
        for path in loadtest_plot.write_plots(report, args.plot):
            print(f"plot written to {path}", file=sys.stderr)
    return 0


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `feedsvc loadtest`."""
    parser.add_argument(
        "--rate", type=float, default=10_000, help="ticks/s in total (0 = as fast as possible)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of measurement (with --profile step: per step, unless --step-duration)",
    )
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
        "--curve",
        action="store_true",
        help="CurveZMQ on the tcp endpoint (needs --transport tcp): feedsvc with curve.enabled "
        "and a throwaway listed client key per run; with --baseline the raw PUB/SUB use Curve "
        "too, so the ratios compare like with like",
    )
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
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="steady",
        help="steady: one run at --rate; burst: --rate with spikes (--burst-*); step: runs at "
        "rising rates until one is not sustained, reporting the highest sustained rate "
        "(--step-*, --max-steps)",
    )
    parser.add_argument(
        "--burst-factor",
        type=float,
        default=4.0,
        metavar="M",
        help="burst profile: the rate in a burst is M x --rate (default 4)",
    )
    parser.add_argument(
        "--burst-every",
        type=int,
        default=5,
        metavar="S",
        help="burst profile: a burst starts every S whole seconds of the clock (default 5)",
    )
    parser.add_argument(
        "--burst-duration",
        type=int,
        default=1,
        metavar="S",
        help="burst profile: each burst lasts S whole seconds (default 1)",
    )
    parser.add_argument(
        "--step-factor",
        type=float,
        default=1.5,
        help="step profile: each step's rate is the previous one's times this (default 1.5); "
        f"the first is --rate, or {STEP_START_RATE:,} with --rate 0",
    )
    parser.add_argument(
        "--step-duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="step profile: seconds of measurement per step (default: --duration)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=8,
        metavar="N",
        help="step profile: at most this many steps (default 8)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also run the same load (profile included) through raw pyzmq, and give ratios",
    )
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="write PNG plots here: latency and throughput over time (mirror lag with --mirror), "
        "or the steps (needs matplotlib: pip install feedsvc[bench])",
    )


ROLES: Final = {
    "feedsvc-subscriber": run_feedsvc_subscriber,
    "raw-subscriber": run_raw_subscriber,
    "raw-publisher": run_raw_publisher,
}


def main(argv: list[str] | None = None) -> int:
    """Hidden roles, run by the orchestrator as `python -m feedsvc.bench.loadtest --role=...`."""
    parser = argparse.ArgumentParser(description="feedsvc loadtest worker (internal)")
    parser.add_argument("--role", choices=tuple(ROLES), required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--slow-fraction", type=float, default=0.01)
    parser.add_argument("--slow-role", action="store_true")
    parser.add_argument("--burst-rate", type=float, default=0.0)
    parser.add_argument("--burst-every", type=float, default=60.0)
    parser.add_argument("--burst-duration", type=float, default=5.0)
    parser.add_argument("--curve-dir", type=Path, default=None)
    parser.add_argument("--summary-file", type=Path, default=None)
    args = parser.parse_args(argv)
    return ROLES[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
