"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = PROJECT_ROOT / "schemas"


def free_tcp_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    # ipc paths are limited to ~107 bytes and pytest's tmp paths can be long: use a short base.
    path = Path(tempfile.mkdtemp(prefix="fs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ipc_endpoint(ipc_dir: Path) -> str:
    return f"ipc://{ipc_dir}/ticks"


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class ServeProcess:
    """A real `feedsvc serve` process; stderr goes to a file the test can read."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.summary_path = log_path.with_suffix(".summary.json")
        self._log_file = log_path.open("wb")
        self.popen = subprocess.Popen(
            [
                *(sys.executable, "-m", "feedsvc.cli", "serve"),
                *("--summary-file", str(self.summary_path)),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        """What the stopped service reported it did (--summary-file), as data."""
        assert self.summary_path.exists(), f"serve wrote no summary; its log:\n{self.log}"
        return orjson.loads(self.summary_path.read_bytes())

    def terminate(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then wait for the exit code (killed after timeout_s)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
            raise

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=5)
        self._log_file.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: serve(*--set assignments) starts `feedsvc serve`; every process is killed after."""
    started: list[ServeProcess] = []

    def start(*assignments: str, extra_args: tuple[str, ...] = ()) -> ServeProcess:
        args = [part for assignment in assignments for part in ("--set", assignment)]
        process = ServeProcess([*args, *extra_args], tmp_path / f"serve-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def serve_settings(publish_endpoints: list[str], *extra: str) -> list[str]:
    """--set assignments for a test service: given endpoints, no ingest, no sync socket, no
    Kafka mirror, fast heartbeats."""
    return [
        f"publisher.endpoints=[{', '.join(publish_endpoints)}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "metrics.port=0",
        "kafka.enabled=false",
        "publisher.heartbeat_interval_s=0.1",
        *extra,
    ]


def subscribed_probe(
    context: zmq.Context, endpoint: str, process: ServeProcess, *prefixes: bytes
) -> zmq.Socket:
    """A SUB socket subscribed to `prefixes`, returned once its first message arrived: the
    service is up and the subscription has propagated."""
    probe = context.socket(zmq.SUB)
    probe.setsockopt(zmq.LINGER, 0)
    for prefix in prefixes:
        probe.setsockopt(zmq.SUBSCRIBE, prefix)
    probe.connect(endpoint)
    wait_for_first_message(probe, process)
    return probe


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, details: Callable[[], str] = str
) -> None:
    """Poll `condition` until it holds; fails naming `what` (and `details()`) after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}\n{details()}")
        time.sleep(0.05)


def wait_for_first_message(
    subscriber: zmq.Socket, process: ServeProcess, timeout_s: float = 20.0
) -> bytes:
    """Block until `subscriber` gets a frame (a heartbeat at least): the service is up and the
    subscription has propagated. Fails with the service's log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subscriber.poll(100):
            return subscriber.recv()
        if process.popen.poll() is not None:
            pytest.fail(f"feedsvc serve exited with {process.popen.returncode}:\n{process.log}")
    pytest.fail(f"no message from feedsvc serve within {timeout_s} s:\n{process.log}")


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric_samples(text: bytes) -> dict[str, float]:
    """name{labels} -> value, for every sample in an exposition (labels sorted by name)."""
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


KAFKA_SCRIPT = PROJECT_ROOT / "scripts" / "kafka.sh"


class KafkaBroker:
    """A real Apache Kafka broker started by scripts/kafka.sh for this test session.

    Clients connect in PLAINTEXT at `bootstrap`, or with SASL/PLAIN at `sasl_bootstrap` as one
    of the users in `sasl_passwords` (fresh random passwords per session).
    """

    def __init__(self, data_dir: Path) -> None:
        self.port = free_tcp_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_port = free_tcp_port()
        self.sasl_bootstrap = f"127.0.0.1:{self.sasl_port}"
        self.sasl_passwords = {name: secrets.token_urlsafe(16) for name in ("feedsvc", "auditor")}
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_tcp_port()),
            "KAFKA_SASL_PORT": str(self.sasl_port),
            "KAFKA_SASL_USERS": " ".join(f"{n}:{p}" for n, p in self.sasl_passwords.items()),
            "KAFKA_DATA_DIR": str(data_dir),
        }

    def run(self, command: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self) -> None:
        result = self.run("start")
        if result.returncode != 0:
            # No skipping: a missing broker is a failed run, with the script's reason.
            pytest.fail(
                f"Kafka broker did not start (scripts/kafka.sh start exit {result.returncode}):\n"
                f"{result.stderr}{result.stdout}",
                pytrace=False,
            )

    def stop(self) -> None:
        self.run("stop", timeout_s=120.0)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real broker per test session, on free loopback ports, data in a temporary folder."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


# Hypothesis profiles. "ci" (the default) replays the same examples on every run, so a red CI
# run is red again on a laptop and never flips on its own; "fuzz" (scripts/fuzz.sh) searches at
# random with many more examples, to find what the fixed examples miss. Both run without a
# deadline: on the 2-core machines a busy neighbour would make timings fail, not the code.
HYPOTHESIS_PROFILE_VARIABLE = "FEEDSVC_HYPOTHESIS_PROFILE"
hypothesis.settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "fuzz",
    derandomize=False,
    max_examples=5000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
# An unknown name fails loudly (InvalidArgument) instead of silently running "ci".
hypothesis.settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_VARIABLE) or "ci")


def fuzz_examples(ci_examples: int) -> int:
    """max_examples for a property: `ci_examples` under "ci", far more under "fuzz".

    A property's own max_examples overrides the profile's, so without this the fuzz profile
    would search no further than CI does.
    """
    if hypothesis.settings.get_current_profile_name() == "fuzz":
        return max(ci_examples * 50, 2000)
    return ci_examples
