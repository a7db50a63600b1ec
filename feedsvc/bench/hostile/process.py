"""An attack in a process of its own (so its CPU and GIL are not the victim's): its command line,
starting it until it reports ready, and collecting its JSON result, always by its own pid."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from feedsvc.bench.hostile.peer import Endpoints
from feedsvc.bench.kafka import PROJECT_ROOT


def attack_command(
    name: str, endpoints: Endpoints, duration_s: float, parameters: Mapping[str, Any]
) -> list[str]:
    """The command line that runs attack `name` in its own process (see `main`)."""
    return [
        sys.executable,
        "-m",
        "feedsvc.bench.hostile",
        name,
        "--endpoints",
        json.dumps(asdict(endpoints)),
        "--duration",
        f"{duration_s:.3f}",
        "--parameters",
        json.dumps(dict(parameters)),
    ]


def start_attack(
    name: str,
    endpoints: Endpoints,
    duration_s: float,
    parameters: Mapping[str, Any],
    ready_timeout_s: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Start attack `name` in its own process; returns once it reports ready (imports done)."""
    process = subprocess.Popen(
        attack_command(name, endpoints, duration_s, parameters),
        stdout=subprocess.PIPE,
        # The project folder, whatever the caller's directory.
        cwd=PROJECT_ROOT,
    )
    try:
        ready = process.stdout.readline() if _readable(process.stdout, ready_timeout_s) else b""
    except BaseException:
        process.kill()
        process.wait()
        raise
    if not ready.startswith(b'{"ready"'):
        process.kill()
        process.wait()
        raise RuntimeError(f"attack {name}: its process did not start (exit {process.poll()})")
    return process


def _readable(stream: Any, timeout_s: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        return bool(selector.select(timeout_s))


def collect_attack(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """The result of an attack process: waits up to `timeout_s`, then stops it (SIGTERM, its
    budget's stop), then kills it; always by its own pid."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    lines = [line for line in output.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"failed": f"no result from the attack process (exit {process.returncode})"}
