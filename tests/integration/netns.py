"""Hosts simulated with Linux network namespaces, for integration tests across several machines.

`Hosts(names, links)` makes one namespace per name (`lo` up) and one veth pair per link, each
link its own /30 (link i: `<SUBNET_PREFIX>.i.1` on a, `.2` on b). There is no route between
links, so traffic goes only where a link joins two hosts, as between machines. Leaving the
`with` block removes every namespace it made, whatever happened in it; removing a namespace
removes its veth ends. Needs root (CAP_SYS_ADMIN) and iproute2.

    with Hosts(["pub", "relay", "sub"], [("pub", "relay"), ("relay", "sub")]) as hosts:
        subprocess.Popen(hosts.command("pub", ["feedsvc", "serve", ...]))
        hosts.address("pub", "relay")  # pub's address on its link to relay
        hosts.link_down("pub", "relay")  # a pulled cable; link_up() plugs it back

As a pytest fixture factory (every Hosts made in a test is removed after it):

    @pytest.fixture
    def make_hosts() -> Iterator[Callable[[Sequence[str], Sequence[tuple[str, str]]], Hosts]]:
        with contextlib.ExitStack() as stack:
            yield lambda names, links: stack.enter_context(Hosts(names, links))

    def test_cut(make_hosts) -> None:
        hosts = make_hosts(["a", "b"], [("a", "b")])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

# First two octets of every link's /30. The addresses exist only inside the test namespaces
# (which have no route out), so a clash with the machine's own networks would not matter; a
# private range nobody uses keeps `ip addr` output unambiguous anyway. Change it here.
SUBNET_PREFIX = "10.203"
MAX_LINKS = 256  # one /30 per value of the third octet
COMMAND_TIMEOUT_S = 10.0  # any single `ip` call; they take milliseconds
LINK_STATE_TIMEOUT_S = 5.0  # a veth is up within milliseconds of both ends being set up
IFNAMSIZ = 15  # the kernel's limit on an interface name (16 bytes with the NUL)
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class NetnsError(RuntimeError):
    """An `ip` command failed; the message holds the command and its stderr."""


def _ip(*args: str) -> str:
    """Run `ip args`, bounded in time; its stdout, or NetnsError saying what failed."""
    try:
        done = subprocess.run(
            ["ip", *args], check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except subprocess.CalledProcessError as error:
        raise NetnsError(f"ip {' '.join(args)}: {error.stderr.strip()}") from error
    return done.stdout


def leftover_namespaces(prefix: str) -> list[str]:
    """Names of existing namespaces (`ip netns list`) that start with `prefix`."""
    # Lines look like "name" or "name (id: 3)".
    names = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix)]


class Hosts:
    """Network namespaces as hosts, joined by veth links; a context manager that removes them."""

    def __init__(
        self,
        names: Sequence[str],
        links: Sequence[tuple[str, str]],
        subnet_prefix: str = SUBNET_PREFIX,
    ) -> None:
        self._names = list(names)
        self._links = [(a, b) for a, b in links]
        self._subnet_prefix = subnet_prefix
        self._check()
        # Unique per run and instance, so neither a leftover of a killed run nor a concurrent
        # run (another pid) collides with this one; re-drawn in __enter__ if in use, so read it
        # (e.g. for leftover_namespaces) after entering.
        self.prefix = self._new_prefix()
        self._namespaces: dict[str, str] = {}  # host -> namespace, also for half-made ones
        # (host, peer) -> (interface, address) of host's end of the link to peer.
        self._ends: dict[tuple[str, str], tuple[str, str]] = {}
        self._entered = False

    def _check(self) -> None:
        # Everything checkable is checked before anything is created.
        if len(set(self._names)) != len(self._names):
            raise ValueError(f"duplicate host names: {self._names}")
        for name in self._names:
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(f"host name {name!r}: use 1-64 of A-Z a-z 0-9 _ -")
        if len(self._links) > MAX_LINKS:
            raise ValueError(f"{len(self._links)} links: at most {MAX_LINKS}")
        seen: set[frozenset[str]] = set()
        for a, b in self._links:
            if a not in self._names or b not in self._names:
                raise ValueError(f"link ({a!r}, {b!r}): both must be among {self._names}")
            if a == b or frozenset((a, b)) in seen:
                # address(host, peer) names one link: a pair may be linked only once.
                raise ValueError(f"link ({a!r}, {b!r}): a self-link or a duplicate")
            seen.add(frozenset((a, b)))

    @staticmethod
    def _new_prefix() -> str:
        return f"fs-{os.getpid()}-{secrets.token_hex(2)}-"

    def __enter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a Hosts can be entered only once")
        self._entered = True
        try:
            while leftover_namespaces(self.prefix):  # rare (1 in 65536); never share one
                self.prefix = self._new_prefix()
            for name in self._names:
                self._add_namespace(name)
            for index, (a, b) in enumerate(self._links):
                self._add_link(index, a, b)
            for a, b in self._links:
                self._wait_link_up(a, b)
        except BaseException as error:
            # Halfway: __exit__ is not called when __enter__ raises, so clean up here.
            for problem in self._remove():
                error.add_note(f"cleanup after the failed creation: {problem}")
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        problems = self._remove()
        if not problems:
            return
        if exc is not None:
            # The test's own failure is the news; a cleanup problem must not replace it.
            for problem in problems:
                exc.add_note(f"Hosts cleanup: {problem}")
            return
        raise NetnsError("Hosts cleanup failed: " + "; ".join(problems))

    def _add_namespace(self, name: str) -> None:
        namespace = self.prefix + name
        # Recorded before `ip netns add`: if that times out, the namespace may exist anyway.
        self._namespaces[name] = namespace
        try:
            _ip("netns", "add", namespace)
        except NetnsError:
            # It definitely failed, e.g. the name exists: not ours, so never delete it.
            del self._namespaces[name]
            raise
        # Without lo up even 127.0.0.1 is unreachable inside the namespace.
        _ip("-n", namespace, "link", "set", "lo", "up")

    def _add_link(self, index: int, a: str, b: str) -> None:
        # Both ends are created directly in their namespaces (never in the root one, where a
        # half-made pair would survive the namespaces' removal), so the names need only be
        # unique per namespace: "veth<index>" is at most 7 characters.
        interface = f"veth{index}"
        assert len(interface) <= IFNAMSIZ
        namespace_a, namespace_b = self._namespaces[a], self._namespaces[b]
        peer = ["peer", "name", interface, "netns", namespace_b]
        _ip("-n", namespace_a, "link", "add", interface, "type", "veth", *peer)
        self._ends[(a, b)] = (interface, f"{self._subnet_prefix}.{index}.1")
        self._ends[(b, a)] = (interface, f"{self._subnet_prefix}.{index}.2")
        for host, peer in ((a, b), (b, a)):
            self._configure_end(host, peer)

    def _configure_end(self, host: str, peer: str) -> None:
        namespace = self._namespaces[host]
        interface, address = self._ends[(host, peer)]
        _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", interface)
        _ip("-n", namespace, "link", "set", interface, "up")

    def _remove(self) -> list[str]:
        """Remove every namespace made (or maybe made); what went wrong, if anything."""
        problems: list[str] = []
        for namespace in self._namespaces.values():
            try:
                # A process still inside keeps the namespace, and its veth ends, alive after
                # `ip netns del` (only the name goes): kill what the test failed to stop.
                for pid in _ip("netns", "pids", namespace).split():
                    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                        os.kill(int(pid), signal.SIGKILL)
                _ip("netns", "del", namespace)
            except (NetnsError, subprocess.SubprocessError) as error:
                try:
                    still_there = namespace in leftover_namespaces(namespace)
                except (NetnsError, subprocess.SubprocessError):
                    still_there = True  # unknown: say so rather than hide a leftover
                if still_there:
                    problems.append(f"{namespace}: {error}")
                # else: it never came to exist (an `ip netns add` that timed out early).
        self._namespaces.clear()
        return problems

    def _namespace(self, host: str) -> str:
        try:
            return self._namespaces[host]
        except KeyError:
            raise KeyError(f"no host {host!r} (or the Hosts is not entered)") from None

    def _end(self, host: str, peer: str) -> tuple[str, str]:
        try:
            return self._ends[(host, peer)]
        except KeyError:
            raise KeyError(f"no link between {host!r} and {peer!r}") from None

    def address(self, host: str, peer: str) -> str:
        """`host`'s IPv4 address on its link with `peer`."""
        return self._end(host, peer)[1]

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `host`'s namespace, for subprocess.Popen/run."""
        # `ip netns exec` enters the namespace and then execs argv (checked: a Popen's pid
        # equals os.getpid() printed by the command; tests/integration/test_netns.py), so a
        # Popen's pid is the command's own, to signal and wait for.
        return ["ip", "netns", "exec", self._namespace(host), *argv]

    def link_down(self, a: str, b: str) -> None:
        """Cut the link between `a` and `b` (both ends down), as a pulled cable."""
        # Packets are then dropped silently (no RST), and the /30's route goes, so a new
        # connect across the link fails at once with "network unreachable".
        for host, peer in ((a, b), (b, a)):
            interface, _address = self._end(host, peer)
            _ip("-n", self._namespace(host), "link", "set", interface, "down")

    def link_up(self, a: str, b: str) -> None:
        """Plug the link between `a` and `b` back in; returns once it carries traffic."""
        for host, peer in ((a, b), (b, a)):
            interface, _address = self._end(host, peer)
            _ip("-n", self._namespace(host), "link", "set", interface, "up")
        for host, peer in ((a, b), (b, a)):
            # The kernel keeps IPv4 addresses over down/up and re-adds their routes on up;
            # re-add an address that something else removed meanwhile.
            if not self._has_address(host, peer):
                self._configure_end(host, peer)
        self._wait_link_up(a, b)

    def _has_address(self, host: str, peer: str) -> bool:
        interface, address = self._end(host, peer)
        shown = json.loads(_ip("-j", "-n", self._namespace(host), "addr", "show", "dev", interface))
        return any(info.get("local") == address for link in shown for info in link["addr_info"])

    def _wait_link_up(self, a: str, b: str) -> None:
        # A veth reports carrier only once both ends are up; wait for that, bounded.
        deadline = time.monotonic() + LINK_STATE_TIMEOUT_S
        for host, peer in ((a, b), (b, a)):
            interface, _address = self._end(host, peer)
            while True:
                shown = _ip("-j", "-n", self._namespace(host), "link", "show", "dev", interface)
                if json.loads(shown)[0]["operstate"] == "UP":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{host}'s end of the link to {peer} not up in {LINK_STATE_TIMEOUT_S} s"
                    )
                time.sleep(0.01)
