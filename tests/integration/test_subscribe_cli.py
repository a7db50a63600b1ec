"""`feedsvc subscribe` as a real process against a real `feedsvc serve` process."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import PROJECT_ROOT, free_tcp_port

SYMBOL_COUNT = 20
TICKS_PER_S = 2_000
# Upper bound of every wait; generous because other test runs share the two cores.
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def feedsvc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "feedsvc.cli", *args]


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Stop a started process by its own pid: SIGTERM, then SIGKILL if it does not exit."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


def start_serve(args: list[str], ipc_socket: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `feedsvc serve` and wait until its ipc socket file exists (it is then bound)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            feedsvc_command("serve", *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=PROJECT_ROOT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not ipc_socket.exists():
            if process.poll() is not None:
                pytest.fail(
                    f"feedsvc serve exited with {process.returncode}:\n{log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"feedsvc serve did not bind {ipc_socket}:\n{log_path.read_text()}")
            time.sleep(0.05)
    except BaseException:
        stop_process(process)
        raise
    return process


@pytest.fixture(scope="module")
def serve_endpoints() -> Iterator[dict[str, str]]:
    """One `feedsvc serve` for the module: synthetic ticks on ipc and tcp, nothing else."""
    # ipc paths are limited to ~107 bytes: a short folder of our own (the module outlives ipc_dir).
    folder = Path(tempfile.mkdtemp(prefix="fs-cli-"))
    ipc_socket = folder / "ticks"
    endpoints = {"ipc": f"ipc://{ipc_socket}", "tcp": f"tcp://127.0.0.1:{free_tcp_port()}"}
    process = start_serve(
        [
            "--set",
            f"publisher.endpoints=[{endpoints['ipc']},{endpoints['tcp']}]",
            "--set",
            "ingest.endpoint=",
            "--set",
            "metrics.port=0",
            "--set",
            "kafka.enabled=false",
            "--set",
            "sync.endpoint=",
            "--set",
            "recovery.endpoint=",
            "--set",
            f"synthetic.rate={TICKS_PER_S}",
            "--set",
            f"synthetic.symbols={SYMBOL_COUNT}",
        ],
        ipc_socket,
        folder / "serve.log",
    )
    try:
        yield endpoints
    finally:
        stop_process(process)
        shutil.rmtree(folder, ignore_errors=True)


def run_subscribe(*args: str) -> subprocess.CompletedProcess[bytes]:
    # subprocess.run kills the child by its pid if the timeout passes.
    return subprocess.run(
        feedsvc_command("subscribe", *args),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=RUN_TIMEOUT_S,
        cwd=PROJECT_ROOT,
        check=False,
    )


def json_lines(output: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines()]


def summary_of(stderr: bytes) -> dict[str, Any]:
    """The JSON summary: the last line on stderr."""
    lines = stderr.strip().splitlines()
    assert lines, "no summary on stderr"
    summary = orjson.loads(lines[-1])
    for counter in ("received", "gaps", "missed", "missed_by_symbol", "restarts"):
        assert counter in summary
    assert {"heartbeat_misses", "duration_s"} <= set(summary)
    return summary


def assert_contiguous_per_symbol(ticks: list[dict[str, Any]]) -> None:
    """Each tick carries seq/epoch/ts; after a symbol's first tick its seq grows by exactly one."""
    last_seq_by_symbol: dict[str, int] = {}
    for tick in ticks:
        assert isinstance(tick["seq"], int)
        assert isinstance(tick["epoch"], int)
        assert isinstance(tick["ts"], int)
        symbol = tick["sym"]
        if symbol in last_seq_by_symbol:
            assert tick["seq"] == last_seq_by_symbol[symbol] + 1, f"{symbol} jumped: {tick}"
        last_seq_by_symbol[symbol] = tick["seq"]
    assert len({tick["epoch"] for tick in ticks}) == 1


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_subscribe_json_prints_count_contiguous_ticks_and_a_summary(
    serve_endpoints: dict[str, str], transport: str
) -> None:
    result = run_subscribe("--json", "--count", "500", "--endpoint", serve_endpoints[transport])
    assert result.returncode == 0, result.stderr.decode()
    ticks = json_lines(result.stdout)
    assert len(ticks) == 500
    assert_contiguous_per_symbol(ticks)
    assert len({tick["sym"] for tick in ticks}) == SYMBOL_COUNT
    summary = summary_of(result.stderr)
    assert summary["received"] >= 500
    assert summary["delivered"] == 500
    assert (summary["gaps"], summary["missed"], summary["missed_by_symbol"]) == (0, 0, {})


def test_subscribe_one_symbol_for_a_duration_gets_only_that_symbol(
    serve_endpoints: dict[str, str],
) -> None:
    started_at = time.monotonic()
    result = run_subscribe(
        "SYN0001", "--json", "--duration", "2", "--endpoint", serve_endpoints["ipc"]
    )
    assert result.returncode == 0, result.stderr.decode()
    assert time.monotonic() - started_at >= 2
    ticks = json_lines(result.stdout)
    # 2,000 ticks/s over 20 symbols is about 100/s for SYN0001.
    assert len(ticks) >= 20
    assert {tick["sym"] for tick in ticks} == {"SYN0001"}
    assert_contiguous_per_symbol(ticks)
    summary = summary_of(result.stderr)
    assert summary["received"] == len(ticks)
    assert summary["duration_s"] >= 2
    assert summary["gaps"] == 0


def read_first_line(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """Read stdout until one full line has arrived; returns everything read."""
    assert process.stdout is not None
    received = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in received:
        remaining_s = deadline - time.monotonic()
        assert remaining_s > 0, "subscribe printed no tick"
        readable, _, _ = select.select([process.stdout], [], [], remaining_s)
        if readable:
            chunk = os.read(process.stdout.fileno(), 65_536)
            assert chunk, f"subscribe closed stdout, exit code {process.wait(STOP_TIMEOUT_S)}"
            received += chunk
    return received


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_subscribe_cleanly_with_the_summary(
    serve_endpoints: dict[str, str], stop_signal: signal.Signals
) -> None:
    process = subprocess.Popen(
        feedsvc_command("subscribe", "--json", "--endpoint", serve_endpoints["tcp"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=PROJECT_ROOT,
    )
    try:
        first_output = read_first_line(process, START_TIMEOUT_S)
        process.send_signal(stop_signal)
        rest_of_output, stderr = process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        stop_process(process)
    assert process.returncode == 0, stderr.decode()
    ticks = json_lines(first_output + rest_of_output)
    assert_contiguous_per_symbol(ticks)
    summary = summary_of(stderr)
    # Every delivered tick was written out before exit, none cut in half.
    assert summary["delivered"] == len(ticks)
    assert summary["gaps"] == 0
