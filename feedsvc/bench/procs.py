"""Processes a benchmark starts and watches: free ports, `feedsvc serve` command lines, stopping
by pid, and CPU, memory, threads and file descriptors read from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from feedsvc.server.mirror.process import MIRROR_PROCESS_NAME

STOP_TIMEOUT_S: Final = 15.0
# `feedsvc serve` logs this once its sockets are bound: the moment a benchmark may connect.
SERVING_LINE: Final = "serving epoch="
_RSS_UNITS: Final = {"kb": 1024, "mb": 1024**2, "b": 1}


class ProcessError(RuntimeError):
    """A process a benchmark started did not do what it must; str() says which and why."""


def free_tcp_ports(count: int) -> list[int]:
    """Loopback ports free right now, all different (the probes stay open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_tcp_port() -> int:
    """One loopback port free right now."""
    return free_tcp_ports(1)[0]


def endpoint(transport: str, directory: Path, name: str) -> str:
    """An ipc endpoint in `directory` or a tcp one on a free loopback port."""
    if transport == "ipc":
        return f"ipc://{directory}/{name}"
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def serve_command(
    settings: Sequence[str],
    summary_file: Path | None = None,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """`feedsvc serve` with one `--set` per setting (later ones override earlier ones) and, if
    given, `--summary-file` for its final JSON summary."""
    command = [python, "-m", "feedsvc.cli", "serve"]
    if summary_file is not None:
        command += ["--summary-file", str(summary_file)]
    for setting in settings:
        command += ["--set", setting]
    return [*command, *extra_args]


def read_summary(path: Path) -> dict[str, Any]:
    """The JSON summary `feedsvc serve --summary-file` wrote at exit."""
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as error:
        raise ProcessError(f"feedsvc serve left no summary in {path}: {error}") from None


class ServeProcess:
    """A real `feedsvc serve` process started with `args` (`--set` pairs and options); stderr
    (its log) goes to `log_path`, its final JSON summary next to it."""

    def __init__(self, args: Sequence[str], log_path: Path, python: str = sys.executable) -> None:
        self.log_path = log_path
        self.summary_path = log_path.with_suffix(".summary.json")
        self._log_file = log_path.open("wb")
        self.popen = subprocess.Popen(
            [python, "-m", "feedsvc.cli", "serve", "--summary-file", str(self.summary_path), *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_serving(self, timeout_s: float = 30.0) -> None:
        wait_until_serving(self.popen, self.log_path, timeout_s)

    def summary(self) -> dict[str, Any]:
        """What the stopped service reported it did (--summary-file), as data."""
        if not self.summary_path.exists():
            raise ProcessError(f"serve wrote no summary; its log:\n{self.log}")
        return read_summary(self.summary_path)

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for the exit code; raises TimeoutExpired (after killing it) if it
        did not exit within `timeout_s`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_process(self.popen)
            raise

    def close(self) -> None:
        """Kill it if it still runs (by its pid) and close its log."""
        kill_process(self.popen)
        self._log_file.close()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until_serving(process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Wait until `feedsvc serve` (logging to `log_path`) has bound its sockets."""
    deadline = time.monotonic() + timeout_s
    while SERVING_LINE not in log_path.read_text(errors="replace"):
        if process.poll() is not None:
            raise ProcessError(
                f"feedsvc serve exited with code {process.returncode}; its log ({log_path}):\n"
                f"{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise ProcessError(f"feedsvc serve did not start in {timeout_s:.0f} s")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM `process` (by its pid), SIGKILL it if it has not exited in `timeout_s`; returns
    its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    return process.returncode


def kill_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)


def sigterm_exit_seconds(process: subprocess.Popen[Any], timeout_s: float = 60.0) -> float | None:
    """Send SIGTERM to `process` and time its exit; None if it had exited already or did not
    exit within `timeout_s` (then it is killed, by its pid)."""
    if process.poll() is not None:
        return None
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
    return time.monotonic() - started


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process (all its threads), from /proc; None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot (/proc/stat); None if unknown."""
    try:
        first_line = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [int(value) for value in first_line.split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def parse_proc_status(text: str) -> dict[str, int]:
    """VmRSS (as "rss_bytes") and Threads from the text of /proc/PID/status; missing = absent."""
    figures: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields = value.split()
        if name == "VmRSS" and fields:
            unit = fields[1].lower() if len(fields) > 1 else "kb"
            figures["rss_bytes"] = int(fields[0]) * _RSS_UNITS.get(unit, 1024)
        elif name == "Threads" and fields:
            figures["threads"] = int(fields[0])
    return figures


def process_status(pid: int) -> dict[str, int]:
    """`parse_proc_status` of a live process; {} if it is gone."""
    try:
        return parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    except (OSError, ValueError):
        return {}


def process_rss_bytes(pid: int) -> int | None:
    """Resident set size of a process; None once it is gone."""
    return process_status(pid).get("rss_bytes")


def open_fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`: /proc/PID/task/*/children, else a scan of every /proc/*/stat."""
    try:
        return [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        pass
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            children.append(int(entry.name))
    return children


def mirror_process_pid(serve_pid: int) -> int | None:
    """The mirror process: the serve process's multiprocessing 'spawn' child that named itself
    feedsvc-mirror (not the resource tracker, nor the recovery reader)."""
    for child in child_pids(serve_pid):
        try:
            command_line = Path(f"/proc/{child}/cmdline").read_bytes()
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if b"spawn_main" in command_line and name == MIRROR_PROCESS_NAME:
            return child
    return None


class RssSampler:
    """Samples a process's VmRSS (and threads, open files) every `interval_s` in a thread.

    Parameters
    ----------
    pid:
        The process to watch.
    limit_bytes:
        When a sample passes it, `on_limit(rss_bytes)` is called once and `limit_hit` is set.
    """

    def __init__(
        self,
        pid: int,
        interval_s: float = 0.2,
        limit_bytes: int | None = None,
        on_limit: Callable[[int], None] | None = None,
        fd_every: int = 5,
    ) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.limit_bytes = limit_bytes
        self.on_limit = on_limit
        self.fd_every = fd_every
        self.limit_hit = threading.Event()
        self.peak_bytes: int | None = None
        self.last_bytes: int | None = None
        self.peak_threads: int | None = None
        self.peak_fds: int | None = None
        self.samples = 0
        # (monotonic time, rss bytes) of every sample, for growth over a window.
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        status = process_status(self.pid)
        rss = status.get("rss_bytes")
        if rss is None:
            return
        self.samples += 1
        self.last_bytes = rss
        self.series.append((time.monotonic(), rss))
        self.peak_bytes = max(rss, self.peak_bytes or 0)
        self.peak_threads = max(status.get("threads", 0), self.peak_threads or 0)
        if self.samples % self.fd_every == 1:
            fds = open_fd_count(self.pid)
            if fds is not None:
                self.peak_fds = max(fds, self.peak_fds or 0)
        if self.limit_bytes is not None and rss > self.limit_bytes and not self.limit_hit.is_set():
            self.limit_hit.set()
            if self.on_limit is not None:
                self.on_limit(rss)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return {
            "peak_rss_bytes": self.peak_bytes,
            "last_rss_bytes": self.last_bytes,
            "peak_threads": self.peak_threads,
            "peak_fds": self.peak_fds,
            "samples": self.samples,
            "limit_hit": self.limit_hit.is_set(),
        }
