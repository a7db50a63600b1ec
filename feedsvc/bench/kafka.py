"""A real Apache Kafka broker for benchmarks and tests: scripts/kafka.sh on free loopback ports
and its own data directory, optionally with a SASL/PLAIN listener."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from feedsvc.bench.procs import free_tcp_ports

PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT: Final = PROJECT_ROOT / "scripts" / "kafka.sh"
START_TIMEOUT_S: Final = 300.0
STOP_TIMEOUT_S: Final = 120.0


class BrokerError(RuntimeError):
    """scripts/kafka.sh failed; str() carries its exit code and output."""


class KafkaBroker:
    """One single-node KRaft broker run by scripts/kafka.sh.

    Parameters
    ----------
    data_dir:
        Its log directory (formatted on first start) and pid file.
    sasl_users:
        user -> password; when given, a SASL_PLAINTEXT listener at `sasl_bootstrap` accepts
        these PLAIN users besides the PLAINTEXT one at `bootstrap`.
    """

    def __init__(self, data_dir: Path, sasl_users: Mapping[str, str] | None = None) -> None:
        self.port, controller_port, sasl_port = free_tcp_ports(3)
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_port = sasl_port if sasl_users else None
        self.sasl_bootstrap = f"127.0.0.1:{sasl_port}" if sasl_users else None
        self.sasl_passwords = dict(sasl_users or {})
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(controller_port),
            "KAFKA_DATA_DIR": str(data_dir),
        }
        if sasl_users:
            self.env["KAFKA_SASL_PORT"] = str(sasl_port)
            self.env["KAFKA_SASL_USERS"] = " ".join(f"{n}:{p}" for n, p in sasl_users.items())

    def run(self, command: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """Run `scripts/kafka.sh command`; returns its stdout, raises BrokerError if it fails."""
        try:
            result = subprocess.run(
                [str(KAFKA_SCRIPT), command],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(f"scripts/kafka.sh {command} took over {timeout_s:.0f} s") from None
        if result.returncode != 0:
            raise BrokerError(
                f"scripts/kafka.sh {command} failed with exit {result.returncode}:\n"
                f"{result.stderr}{result.stdout}"
            )
        return result.stdout

    def start(self) -> str:
        return self.run("start")

    def stop(self) -> str:
        return self.run("stop", STOP_TIMEOUT_S)

    def pid(self) -> int | None:
        """The broker JVM's pid while it runs (from scripts/kafka.sh's pid file)."""
        try:
            pid = int((self.data_dir / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None
