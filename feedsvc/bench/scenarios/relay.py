"""Benchmark for the relay tier (docs/relay.md): what one hop through `feedsvc relay` costs.

1. Hop latency: one `feedsvc serve` (synthetic feed at `--rate` ticks/s, tcp) and
   `--subscribers` SUB sockets (plain pyzmq, subscribed to everything, latency = receive
   time.time_ns() - the tick's ts in the project's LatencyRecorder, seq gaps per symbol), either
   connected to serve directly or split evenly over `--relays` relays connected to serve. Runs
   alternate direct / relay, `--repeats` pairs of `--duration` s. Reported per mode: p50 / p99 /
   p99.9 (median over runs, min-max), delivered rate per subscriber, gaps, serve's CPU per tick
   and the relays' CPU per tick; the hop's added p50 against a target of +30 us.
   `--sockets-per-process` lets one subscriber process hold several SUB sockets (64 subscribers
   as 8 processes x 8 sockets on a 2-core machine): they are sockets, not processes, and the
   report says so.
2. Capacity (unless --skip-capacity): the highest gap-free rate to `--capacity-subscribers`
   subscriber processes through one relay, against the same subscribers on the source directly.
   The source is a minimal raw pyzmq PUB sending pre-built frames in feedsvc's format (seq per
   symbol), so that the relay, not `feedsvc serve`, is what is measured. Rates double from
   `--capacity-start` up to `--max-rate`, `--step-duration` s each; a mode stops at its first
   step with a gap or a subscriber below 95% of the target rate.

Roles run as separate processes (``python -m feedsvc.bench.scenarios.relay_roles --role
subscriber`` / ``--role source``); the pure parts are in relay_analysis.

Usage: python scripts/bench_relay.py [--rate 5000] [--subscribers 8] [--relays 1]
           [--sockets-per-process 1] [--duration 8] [--repeats 3] [--skip-capacity]
           [--max-rate 320000] [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Final

from feedsvc.bench.latency import hdr_available
from feedsvc.bench.procs import (
    ProcessError,
    ServeProcess,
    free_tcp_port,
    kill_process,
    log_tail,
    machine_cpu_seconds,
    process_cpu_seconds,
    stop_process,
)
from feedsvc.bench.report import Progress, machine_facts, machine_lines, write_json
from feedsvc.bench.scenarios.relay_analysis import (
    MODES,
    RELAY,
    _fmt,
    alternating_modes,
    capacity_lines,
    capacity_rates,
    capacity_search,
    capacity_summary,
    combine_subscribers,
    endpoints_for_sockets,
    hop_summary,
    latency_lines,
    ns_per_tick,
    options_error,
    saturated_runs,
    sockets_per_process,
    step_outcome,
    summarize_mode,
    topology_line,
)
from feedsvc.bench.scenarios.relay_roles import READY_LINE, SYMBOLS
from feedsvc.relay.service import SERVING_LINE as RELAY_SERVING_LINE

ROLE_MODULE: Final = "feedsvc.bench.scenarios.relay_roles"
# The source sends this long before the capacity window, so connections and queues settle.
SETTLE_S: Final = 0.5
RELAY_START_TIMEOUT_S: Final = 30.0
# Beyond the window: time for the roles to write their results and exit.
FINISH_MARGIN_S: Final = 30.0
ROLE_READY_TIMEOUT_S: Final = 60.0
# From every capacity role being ready to the source's first send (the relay's XSUB reconnects
# to a newly bound source within its 100 ms reconnect interval).
SOURCE_LEAD_S: Final = 0.3

progress = Progress("bench_relay")


def _role_command(role: str, **values: Any) -> list[str]:
    command = [sys.executable, "-m", ROLE_MODULE, f"--role={role}"]
    return command + [f"--{name.replace('_', '-')}={value}" for name, value in values.items()]


class RelayProcess:
    """A real `feedsvc relay` forwarding `upstream` to `endpoint` (no sync, recovery, metrics);
    its log goes to `log_path`."""

    def __init__(
        self, upstream: str, endpoint: str, log_path: Path, settings: Sequence[str]
    ) -> None:
        self.endpoint = endpoint
        self.log_path = log_path
        self._log_file = log_path.open("wb")
        values = [
            f'relay.upstreams=[{{publisher: "{upstream}"}}]',
            f"relay.endpoints=[{endpoint}]",
            "relay.sync_endpoint=",
            "relay.recovery_endpoint=",
            "relay.metrics_port=0",
            *settings,
        ]
        command = [sys.executable, "-m", "feedsvc.cli", "relay"]
        self.popen = subprocess.Popen(
            command + [part for value in values for part in ("--set", value)],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_until_serving(self, timeout_s: float = RELAY_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while RELAY_SERVING_LINE not in self.log_path.read_text(errors="replace"):
            if self.popen.poll() is not None:
                raise ProcessError(
                    f"feedsvc relay exited with code {self.popen.returncode}; its log "
                    f"({self.log_path}):\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ProcessError(f"feedsvc relay did not start in {timeout_s:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop it by its pid (SIGTERM, then SIGKILL) and close its log."""
        try:
            stop_process(self.popen)
        finally:
            kill_process(self.popen)
            self._log_file.close()


@contextmanager
def start_relays(
    count: int, upstream: str, folder: Path, name: str, settings: Sequence[str]
) -> Iterator[list[RelayProcess]]:
    """`count` serving relays of `upstream`, each stopped on the way out."""
    with ExitStack() as stack:
        relays = []
        for number in range(count):
            endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
            relay = RelayProcess(upstream, endpoint, folder / f"{name}-{number}.log", settings)
            stack.callback(relay.close)
            relays.append(relay)
        for relay in relays:
            relay.wait_until_serving()
        yield relays


def _stop_role(process: subprocess.Popen[bytes]) -> None:
    try:
        stop_process(process)
    finally:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


@contextmanager
def started_roles(commands: Sequence[list[str]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Role processes (stdin and stdout piped for the ready/go handshake), each stopped by its
    pid on the way out."""
    with ExitStack() as stack:
        processes = []
        for command in commands:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            stack.callback(_stop_role, process)
            processes.append(process)
        yield processes


def wait_ready(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Until every role printed READY_LINE; ProcessError when one exits or the time runs out."""
    deadline = time.monotonic() + ROLE_READY_TIMEOUT_S
    for process in processes:
        assert process.stdout is not None
        timeout_s = max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        line = process.stdout.readline() if readable else b""
        if line.decode(errors="replace").strip() != READY_LINE:
            process.poll()
            raise ProcessError(
                f"a role process ({process.args[3]}) was not ready in "
                f"{ROLE_READY_TIMEOUT_S:.0f} s (exit code {process.returncode})"
            )


def send_go(processes: Sequence[subprocess.Popen[bytes]], timing: Mapping[str, float]) -> None:
    """Hand every ready role the window's monotonic times."""
    line = json.dumps(timing).encode() + b"\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(line)
        process.stdin.flush()


def subscriber_commands(
    endpoints: Sequence[str],
    counts: Sequence[int],
    folder: Path,
    name: str,
) -> tuple[list[list[str]], list[Path]]:
    commands, outs = [], []
    first = 0
    for number, count in enumerate(counts):
        out = folder / f"{name}-sub-{number}.json"
        joined = ",".join(endpoints[first : first + count])
        commands.append(_role_command("subscriber", endpoints=joined, out=out))
        outs.append(out)
        first += count
    return commands, outs


def read_results(
    processes: Sequence[subprocess.Popen[bytes]], outs: Sequence[Path], end_at: float
) -> list[dict[str, Any]]:
    """Wait for the role processes (bounded) and read what each wrote."""
    results = []
    for process, out in zip(processes, outs, strict=True):
        process.wait(timeout=max(0.0, end_at - time.monotonic()) + FINISH_MARGIN_S)
        if not out.exists():
            raise ProcessError(f"a role process exited with code {process.returncode}, no {out}")
        results.append(json.loads(out.read_text()))
    return results


def _cpu(pids: Sequence[int]) -> list[float | None]:
    return [process_cpu_seconds(pid) for pid in pids]


def _delta(after: Sequence[float | None], before: Sequence[float | None]) -> float | None:
    pairs = list(zip(after, before, strict=True))
    # No process (no relay in direct mode) is "not measured", not zero CPU.
    if not pairs or any(a is None or b is None for a, b in pairs):
        return None
    return sum(a - b for a, b in pairs)  # type: ignore[operator]


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def latency_run(options: argparse.Namespace, folder: Path, index: int, mode: str) -> dict[str, Any]:
    """One serve, and the subscribers on it directly or through --relays relays."""
    name = f"run-{index}-{mode}"
    pub = f"tcp://127.0.0.1:{free_tcp_port()}"
    settings = [
        f"publisher.endpoints=[{pub}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "metrics.port=0",
        "kafka.enabled=false",
        f"synthetic.rate={options.rate}",
        f"synthetic.symbols={SYMBOLS}",
        *options.settings,
    ]
    serve = ServeProcess([part for s in settings for part in ("--set", s)], folder / f"{name}.log")
    try:
        serve.wait_until_serving()
        relay_count = options.relays if mode == RELAY else 0
        with start_relays(
            relay_count, pub, folder, f"{name}-relay", options.relay_settings
        ) as relays:
            upstreams = [relay.endpoint for relay in relays] or [pub]
            endpoints = endpoints_for_sockets(options.subscribers, upstreams)
            counts = sockets_per_process(options.subscribers, options.sockets_per_process)
            commands, outs = subscriber_commands(endpoints, counts, folder, name)
            with started_roles(commands) as subscribers:
                wait_ready(subscribers)
                start_at = time.monotonic() + options.warmup
                end_at = start_at + options.duration
                send_go(subscribers, {"start_at": start_at, "end_at": end_at})
                pids = [serve.pid, *(relay.pid for relay in relays)]
                sub_pids = [process.pid for process in subscribers]
                sleep_until(start_at)
                cpu_before, sub_before = _cpu(pids), _cpu(sub_pids)
                machine_before = machine_cpu_seconds()
                sleep_until(end_at)
                cpu_after, sub_after = _cpu(pids), _cpu(sub_pids)
                machine_after = machine_cpu_seconds()
                results = read_results(subscribers, outs, end_at)
    finally:
        stop_process(serve.popen)
        serve.close()
    run = {"mode": mode, "relays": relay_count}
    run |= combine_subscribers(results, options.duration, start_at)
    ticks = run["published_in_window"]
    run["serve_ns_per_tick"] = ns_per_tick(_delta(cpu_after[:1], cpu_before[:1]), ticks)
    run["relay_ns_per_tick"] = ns_per_tick(_delta(cpu_after[1:], cpu_before[1:]), ticks)
    run["serve_rate"] = ticks / options.duration
    subscriber_cpu = _delta(sub_after, sub_before)
    run["subscriber_cores"] = None if subscriber_cpu is None else subscriber_cpu / options.duration
    if machine_before and machine_after:
        run["machine_busy_cores"] = (machine_after[0] - machine_before[0]) / options.duration
    return run


def capacity_step(
    options: argparse.Namespace, folder: Path, mode: str, rate: float
) -> dict[str, Any]:
    """The raw source at `rate`, the capacity subscribers on it directly or through one relay."""
    name = f"capacity-{mode}-{rate:.0f}"
    bind = f"tcp://127.0.0.1:{free_tcp_port()}"
    relay_count = 1 if mode == RELAY else 0
    with start_relays(relay_count, bind, folder, f"{name}-relay", options.relay_settings) as relays:
        upstreams = [relay.endpoint for relay in relays] or [bind]
        endpoints = endpoints_for_sockets(options.capacity_subscribers, upstreams)
        source_out = folder / f"{name}-source.json"
        source = _role_command("source", bind=bind, rate=rate, out=source_out)
        counts = [1] * options.capacity_subscribers
        commands, outs = subscriber_commands(endpoints, counts, folder, name)
        with started_roles([source, *commands]) as processes:
            wait_ready(processes)
            send_at = time.monotonic() + SOURCE_LEAD_S
            start_at = send_at + SETTLE_S
            end_at = start_at + options.step_duration
            send_go(processes, {"send_at": send_at, "start_at": start_at, "end_at": end_at})
            pids = [relay.pid for relay in relays]
            sleep_until(start_at)
            cpu_before = _cpu(pids)
            sleep_until(end_at)
            cpu_after = _cpu(pids)
            results = read_results(processes, [source_out, *outs], end_at)
    source_result, subscriber_results = results[0], results[1:]
    step = {"mode": mode, "rate": rate}
    step |= combine_subscribers(subscriber_results, options.step_duration, start_at)
    step["source_rate"] = source_result["rate_in_window"]
    step["relay_ns_per_tick"] = ns_per_tick(
        _delta(cpu_after, cpu_before), step["published_in_window"]
    )
    return step


def latency_section(options: argparse.Namespace, folder: Path, document: dict[str, Any]) -> None:
    """The alternating direct / relay runs, their summaries and the hop's verdict."""
    runs: list[dict[str, Any]] = []
    order = alternating_modes(options.repeats)
    for index, mode in enumerate(order):
        progress(
            f"[{index + 1}/{len(order)}] {mode}: {document['topology']}, "
            f"{options.duration:g} s at {options.rate:,.0f} ticks/s"
        )
        run = latency_run(options, folder, index, mode)
        runs.append(run)
        latency = run["latency_us"]
        late = run["late_sockets"]
        progress(
            f"  p50/p99/p99.9 {latency['p50']}/{latency['p99']}/{latency['p999']} us, "
            f"{_fmt(run['rate_per_subscriber_median'])} ticks/s per subscriber, "
            f"gaps {run['gaps']}, serve {_fmt(run['serve_ns_per_tick'])} ns/tick, "
            f"relays {_fmt(run['relay_ns_per_tick'])} ns/tick, "
            f"machine busy {_fmt(run.get('machine_busy_cores'), 2)} cores"
            + (f", {late} sockets had no tick before the window: raise --warmup" if late else "")
        )
    document["runs"] = runs
    document["modes"] = {
        mode: summarize_mode([run for run in runs if run["mode"] == mode]) for mode in MODES
    }
    document["saturated_runs"] = saturated_runs(runs, document["machine"]["cpus_usable"])
    document["hop"] = hop_summary(document["modes"], runs)


def capacity_section(options: argparse.Namespace, folder: Path, document: dict[str, Any]) -> None:
    """The interleaved step searches, direct (the raw pyzmq baseline) and through one relay."""
    rates = capacity_rates(options.capacity_start, options.max_rate)

    def run_step(mode: str, rate: float) -> dict[str, Any]:
        progress(f"capacity {mode}: {rate:,.0f} ticks/s for {options.step_duration:g} s")
        step = capacity_step(options, folder, mode, rate)
        passed, why = step_outcome(step, rate)
        progress(f"  {'pass' if passed else 'FAIL'}: {why}")
        return step

    steps = capacity_search(rates, MODES, run_step)
    document["capacity"] = {
        "subscribers": options.capacity_subscribers,
        "step_s": options.step_duration,
        "rates": rates,
        "steps": steps,
        "summary": capacity_summary(steps, options.max_rate),
    }


def run_benchmark(options: argparse.Namespace) -> int:
    error = options_error(options)
    if error:
        print(f"bench_relay: {error}", file=sys.stderr)
        return 2
    document: dict[str, Any] = {
        "machine": machine_facts(),
        "settings": {
            "rate": options.rate,
            "subscribers": options.subscribers,
            "sockets_per_process": options.sockets_per_process,
            "relays": options.relays,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "repeats": options.repeats,
            "symbols": SYMBOLS,
            "histogram": "hdr" if hdr_available() else "raw",
        },
        "topology": topology_line(options),
    }
    for line in machine_lines(document["machine"]):
        print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as folder_name:
        folder = Path(folder_name)
        if options.repeats:
            latency_section(options, folder, document)
            for line in latency_lines(document):
                print(line, flush=True)
        if not options.skip_capacity:
            capacity_section(options, folder, document)
            for line in capacity_lines(document):
                print(line, flush=True)
    if options.json:
        write_json(options.json, document)
        progress(f"results written to {options.json}")
    if options.plot:
        from feedsvc.bench.scenarios.relay_plot import plot

        plot(document, options.plot, progress)
    return 0


def add_setting_arguments(parser: argparse.ArgumentParser, serves: str) -> None:
    """--set (for `serves`) and --relay-set (for every relay): settings passed through."""
    for flag, dest, what in (
        ("--set", "settings", f"a `feedsvc serve` setting for {serves}"),
        ("--relay-set", "relay_settings", "a `feedsvc relay` setting (e.g. relay.io_threads=2)"),
    ):
        parser.add_argument(
            flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=what
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5_000.0, help="serve's ticks/s (latency)")
    parser.add_argument("--subscribers", type=int, default=8, help="SUB sockets in all")
    parser.add_argument("--relays", type=int, default=1, help="relays in relay mode")
    parser.add_argument(
        "--sockets-per-process",
        type=int,
        default=1,
        help="SUB sockets per subscriber process (polled together)",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds from every subscriber being connected to the latency window",
    )
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (direct, relay)")
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--capacity-start", type=float, default=20_000.0)
    parser.add_argument("--max-rate", type=float, default=320_000.0)
    parser.add_argument("--step-duration", type=float, default=3.0)
    parser.add_argument("--capacity-subscribers", type=int, default=8)
    add_setting_arguments(parser, "every latency run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
