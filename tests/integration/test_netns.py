"""tests/integration/netns.py: what a test simulating several hosts relies on.

Linked hosts reach each other over TCP and unlinked ones do not; a cut link stops new
connections and plugging it back restores them; a command's pid is its own (to stop it by);
no namespace outlives the `with` block, however it ends. Every process is real and is stopped
by its own pid in a finally. Needs root, as the helper does.
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import pytest

from tests.integration import netns
from tests.integration.netns import Hosts, leftover_namespaces

PORT = 7000  # any port: every namespace is fresh, nothing else listens in it
CONNECT_TIMEOUT_S = 1.0  # what a client waits for a connect that is to fail
PROCESS_TIMEOUT_S = 10.0  # bound on any process of these tests

# Accepts connections one after another, answering each "<its host name> got <what it read>".
LISTENER = """
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[2])))
listener.listen()
print("listening", flush=True)
while True:
    connection, _ = listener.accept()
    with connection:
        connection.settimeout(2)
        connection.sendall(sys.argv[1].encode() + b" got " + connection.recv(100))
"""

# Connects, sends "ping" and prints the answer; on failure prints "error <exception>", exits 1.
CLIENT = """
import socket, sys
try:
    address = (sys.argv[1], int(sys.argv[2]))
    with socket.create_connection(address, timeout=float(sys.argv[3])) as connection:
        connection.sendall(b"ping")
        print(connection.recv(100).decode())
except OSError as error:
    print("error", type(error).__name__, error)
    sys.exit(1)
"""


@contextmanager
def started(argv: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process of argv, killed by its pid and waited for when the block ends."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.kill()  # os.kill(process.pid, SIGKILL), unless it was already reaped
        process.wait(timeout=PROCESS_TIMEOUT_S)
        assert process.stdout is not None
        process.stdout.close()


def read_line(process: subprocess.Popen[bytes], timeout_s: float = PROCESS_TIMEOUT_S) -> str:
    """The next line of the process's output; fails after timeout_s or at its end."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([process.stdout], [], [], remaining)[0]:
            pytest.fail(f"no line from {process.args} within {timeout_s} s (got {line!r})")
        # One byte at a time: a buffered read could swallow more than the line.
        byte = os.read(process.stdout.fileno(), 1)
        if not byte:
            pytest.fail(f"{process.args} ended (rc {process.poll()}) after {line!r}")
        line += byte
    return line.decode().rstrip("\n")


@contextmanager
def listening(hosts: Hosts, host: str) -> Iterator[subprocess.Popen[bytes]]:
    """The listener running in `host`, from when it listens until the block ends."""
    with started(hosts.command(host, [sys.executable, "-c", LISTENER, host, str(PORT)])) as proc:
        assert read_line(proc) == "listening"
        yield proc


def connect(hosts: Hosts, host: str, address: str) -> tuple[int, str]:
    """Connect from `host` to address:PORT and send "ping": (exit code, answer or error)."""
    argv = [sys.executable, "-c", CLIENT, address, str(PORT), str(CONNECT_TIMEOUT_S)]
    with started(hosts.command(host, argv)) as process:
        output, _ = process.communicate(timeout=PROCESS_TIMEOUT_S)
        return process.returncode, output.decode().strip()


def test_command_runs_in_the_host_with_the_commands_own_pid() -> None:
    with Hosts(["a", "b"], [("a", "b")]) as hosts:
        code = "import os, socket; print(os.getpid(), sorted(n for _, n in socket.if_nameindex()))"
        with started(hosts.command("a", [sys.executable, "-c", code])) as process:
            output, _ = process.communicate(timeout=PROCESS_TIMEOUT_S)
        # `ip netns exec` execs the command: the pid to signal is the Popen's.
        assert output.decode().split(" ", 1) == [str(process.pid), "['lo', 'veth0']\n"]


def test_linked_hosts_reach_each_other_over_tcp_and_unlinked_hosts_do_not() -> None:
    with (
        Hosts(["a", "b", "c"], [("a", "b"), ("b", "c")]) as hosts,
        listening(hosts, "a"),
        listening(hosts, "c"),
    ):
        assert connect(hosts, "b", hosts.address("a", "b")) == (0, "a got ping")
        assert connect(hosts, "b", hosts.address("c", "b")) == (0, "c got ping")
        # lo is up: a host reaches its own services on 127.0.0.1 (and only its own).
        assert connect(hosts, "a", "127.0.0.1") == (0, "a got ping")
        assert connect(hosts, "b", "127.0.0.1")[0] == 1
        # a and c are each linked to b only: no way between them, whichever address is tried.
        for source, target in (("a", "c"), ("c", "a")):
            for address in (hosts.address(target, "b"), hosts.address("b", target)):
                began = time.monotonic()
                returncode, output = connect(hosts, source, address)
                assert returncode == 1 and output.startswith("error"), (source, address, output)
                assert time.monotonic() - began < CONNECT_TIMEOUT_S + 3


def test_link_down_cuts_tcp_and_link_up_restores_it() -> None:
    with Hosts(["a", "b"], [("a", "b")]) as hosts, listening(hosts, "b"):
        address = hosts.address("b", "a")
        addresses = (hosts.address("a", "b"), address)
        assert connect(hosts, "a", address) == (0, "b got ping")

        hosts.link_down("a", "b")
        began = time.monotonic()
        returncode, output = connect(hosts, "a", address)
        assert returncode == 1 and output.startswith("error"), output
        assert time.monotonic() - began < CONNECT_TIMEOUT_S + 3
        # Also the other way: the cut is of both ends.
        assert connect(hosts, "b", hosts.address("a", "b"))[0] == 1

        hosts.link_up("a", "b")
        assert (hosts.address("a", "b"), hosts.address("b", "a")) == addresses
        assert connect(hosts, "a", address) == (0, "b got ping")


def test_each_link_has_its_own_private_slash_30() -> None:
    links = [("a", "b"), ("b", "c"), ("a", "c")]
    with Hosts(["a", "b", "c"], links) as hosts:
        networks = []
        for a, b in links:
            end_a = ipaddress.ip_interface(f"{hosts.address(a, b)}/30")
            end_b = ipaddress.ip_interface(f"{hosts.address(b, a)}/30")
            assert end_a.network == end_b.network and end_a != end_b
            assert end_a.ip.is_private
            networks.append(end_a.network)
        assert len(set(networks)) == len(links)
        with pytest.raises(KeyError):
            hosts.address("a", "a")


def test_no_namespace_remains_after_the_block() -> None:
    with Hosts(["a", "b"], [("a", "b")]) as hosts:
        prefix = hosts.prefix
        assert sorted(leftover_namespaces(prefix)) == [prefix + "a", prefix + "b"]
    assert leftover_namespaces(prefix) == []


def test_no_namespace_remains_when_the_body_raises() -> None:
    hosts = Hosts(["a", "b"], [("a", "b")])
    with pytest.raises(ZeroDivisionError), hosts:
        assert len(leftover_namespaces(hosts.prefix)) == 2
        _ = 1 / 0
    assert leftover_namespaces(hosts.prefix) == []


def test_no_namespace_remains_when_creation_fails_halfway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_ip = netns._ip

    def ip_failing_at_the_second_link(*args: str) -> str:
        if "veth1" in args:
            raise netns.NetnsError("simulated failure")
        return real_ip(*args)

    monkeypatch.setattr(netns, "_ip", ip_failing_at_the_second_link)
    hosts = Hosts(["a", "b", "c"], [("a", "b"), ("b", "c")])
    with pytest.raises(netns.NetnsError, match="simulated"), hosts:
        pytest.fail("the body ran although creation failed")
    assert leftover_namespaces(hosts.prefix) == []


def test_a_process_left_running_in_a_host_is_killed_at_the_end() -> None:
    # Else it would keep its namespace, and the veth ends, alive after `ip netns del`.
    code = "import time; print('in', flush=True); time.sleep(30)"
    with ExitStack() as stack:
        with Hosts(["a"], []) as hosts:
            process = stack.enter_context(started(hosts.command("a", [sys.executable, "-c", code])))
            assert read_line(process) == "in"  # inside the namespace by now
        assert process.wait(timeout=PROCESS_TIMEOUT_S) == -signal.SIGKILL


@pytest.mark.parametrize(
    ("names", "links"),
    [
        (["a", "a"], []),
        (["a", "b"], [("a", "x")]),
        (["a", "b"], [("a", "a")]),
        (["a", "b"], [("a", "b"), ("b", "a")]),
        (["a/b"], []),
    ],
)
def test_bad_hosts_or_links_are_refused_before_anything_is_created(
    names: list[str], links: list[tuple[str, str]]
) -> None:
    this_process = f"fs-{os.getpid()}-"  # (other processes may make namespaces meanwhile)
    before = leftover_namespaces(this_process)
    with pytest.raises(ValueError):
        Hosts(names, links)
    assert leftover_namespaces(this_process) == before
