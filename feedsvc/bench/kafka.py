"""A real Apache Kafka broker for benchmarks and tests: scripts/kafka.sh on free loopback ports
and its own data directory, optionally with a SASL/PLAIN listener; or a cluster of three such
nodes (KafkaCluster) whose nodes can be killed and restarted one at a time."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from feedsvc.bench.procs import free_tcp_ports

PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT: Final = PROJECT_ROOT / "scripts" / "kafka.sh"
START_TIMEOUT_S: Final = 300.0
STOP_TIMEOUT_S: Final = 120.0
KILL_TIMEOUT_S: Final = 30.0
CLUSTER_NODES: Final = 3
# Settings of the caller's environment that would change what scripts/kafka.sh starts for a
# cluster (a SASL listener is single-broker only; the node count and ports are ours).
_CLUSTER_OVERRIDDEN: Final = ("KAFKA_SASL_PORT", "KAFKA_SASL_USERS")


class BrokerError(RuntimeError):
    """scripts/kafka.sh failed; str() carries its exit code and output."""


def run_kafka_script(
    args: Sequence[str],
    env: Mapping[str, str],
    timeout_s: float = START_TIMEOUT_S,
    ok_exit_codes: frozenset[int] = frozenset({0}),
) -> str:
    """Run `scripts/kafka.sh *args` with `env`; returns its stdout, raises BrokerError if it
    exits with a code not in ok_exit_codes or takes longer than timeout_s."""
    command = " ".join(args)
    try:
        result = subprocess.run(
            [str(KAFKA_SCRIPT), *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BrokerError(f"scripts/kafka.sh {command} took over {timeout_s:.0f} s") from None
    if result.returncode not in ok_exit_codes:
        raise BrokerError(
            f"scripts/kafka.sh {command} failed with exit {result.returncode}:\n"
            f"{result.stderr}{result.stdout}"
        )
    return result.stdout


def free_tcp_port_run(count: int, attempts: int = 50) -> list[int]:
    """`count` consecutive loopback ports free right now (scripts/kafka.sh numbers a cluster's
    ports from a base). The first is one free_tcp_ports gives; the rest are probed."""
    for _ in range(attempts):
        (base,) = free_tcp_ports(1)
        if base + count > 65536:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return list(range(base, base + count))
    raise BrokerError(f"found no {count} consecutive free loopback ports in {attempts} tries")


def _pid_if_running(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


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
        return run_kafka_script([command], self.env, timeout_s)

    def start(self) -> str:
        return self.run("start")

    def stop(self) -> str:
        return self.run("stop", STOP_TIMEOUT_S)

    def pid(self) -> int | None:
        """The broker JVM's pid while it runs (from scripts/kafka.sh's pid file)."""
        return _pid_if_running(self.data_dir / "kafka.pid")


class KafkaCluster:
    """Three KRaft nodes (each broker and controller) run by `KAFKA_NODES=3 scripts/kafka.sh`:
    replication factor 3 and min.insync.replicas 2 by default, one node at a time killable.

    Node n (1 to 3) has node.id n, client port `ports[n - 1]` and controller port
    `controller_ports[n - 1]`; both are runs of consecutive free ports, as the script numbers
    them from KAFKA_PORT and KAFKA_CONTROLLER_PORT.

    Parameters
    ----------
    data_dir:
        The cluster id and each node's folder (node-1/ ...) with its data, log and pid file.
    """

    def __init__(self, data_dir: Path) -> None:
        ports = free_tcp_port_run(2 * CLUSTER_NODES)
        self.nodes = CLUSTER_NODES
        self.ports = ports[:CLUSTER_NODES]
        self.controller_ports = ports[CLUSTER_NODES:]
        self.bootstrap = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.data_dir = data_dir
        inherited = {k: v for k, v in os.environ.items() if k not in _CLUSTER_OVERRIDDEN}
        self.env = {
            **inherited,
            "KAFKA_NODES": str(CLUSTER_NODES),
            "KAFKA_PORT": str(self.ports[0]),
            "KAFKA_CONTROLLER_PORT": str(self.controller_ports[0]),
            "KAFKA_DATA_DIR": str(data_dir),
        }

    def run(self, *args: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """Run `scripts/kafka.sh *args` for this cluster; returns its stdout, raises BrokerError
        if it fails."""
        return run_kafka_script(args, self.env, timeout_s)

    def start(self) -> str:
        """Start every node that is not running; returns once all three answer."""
        return self.run("start")

    def stop(self) -> str:
        return self.run("stop", timeout_s=STOP_TIMEOUT_S)

    def status(self) -> str:
        """`status` output: one line per node and a summary line, whether all, some or none of
        the nodes run (the script's exit 0, 4 or 3)."""
        return run_kafka_script(["status"], self.env, KILL_TIMEOUT_S, frozenset({0, 3, 4}))

    def kill_node(self, node: int) -> str:
        """SIGKILL node `node`'s JVM (a crash); its data stays for start_node."""
        return self.run("kill-node", str(self._checked(node)), timeout_s=KILL_TIMEOUT_S)

    def start_node(self, node: int) -> str:
        """Start node `node` again on its kept data; returns once it answers."""
        return self.run("start-node", str(self._checked(node)))

    def node_pid(self, node: int) -> int | None:
        """Node `node`'s JVM pid while it runs (from scripts/kafka.sh's pid file)."""
        return _pid_if_running(self.data_dir / f"node-{self._checked(node)}" / "kafka.pid")

    def node_bootstrap(self, node: int) -> str:
        """host:port of node `node` alone."""
        return f"127.0.0.1:{self.ports[self._checked(node) - 1]}"

    def _checked(self, node: int) -> int:
        if not 1 <= node <= self.nodes:
            raise ValueError(f"node must be 1 to {self.nodes}, got {node}")
        return node
