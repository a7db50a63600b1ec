"""Hosts simulated with Linux network namespaces, for tests of behaviour across machines.

`Hosts(names, links)` creates one namespace per name and a veth pair per link, each link its
own /30 of 10.203.0.0/16 (no route between links: traffic between two hosts goes only where
a link joins them, as across machines). `with Hosts(...) as hosts:` removes every namespace it
made when the block ends, whatever happened in it; removing a namespace removes its veth ends.
Needs root (CI runs as root on this machine kind).

    with Hosts(["pub", "relay", "sub"], [("pub", "relay"), ("relay", "sub")]) as hosts:
        subprocess.Popen(hosts.command("pub", ["feedsvc", "serve", ...]))
        hosts.address("pub", "relay")  # pub's address on its link to relay
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Self

SUBNET_PREFIX = "10.203"
COMMAND_TIMEOUT_S = 10.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S)


def leftover_namespaces(prefix: str) -> list[str]:
    """Namespaces whose name starts with `prefix` (`ip netns list`)."""
    listed = subprocess.run(
        ["ip", "netns", "list"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix)]


class Hosts:
    def __init__(self, names: Sequence[str], links: Sequence[tuple[str, str]]) -> None:
        # Unique per run, so a leftover of a killed run never collides with this one.
        self.prefix = f"fs{os.getpid() % 100_000}{secrets.token_hex(2)}-"
        self._names = list(names)
        self._links = list(links)
        self._namespaces: dict[str, str] = {}
        # (host, peer) -> (interface, address)
        self._ends: dict[tuple[str, str], tuple[str, str]] = {}

    def __enter__(self) -> Self:
        try:
            for name in self._names:
                namespace = self.prefix + name
                _ip("netns", "add", namespace)
                self._namespaces[name] = namespace
                _ip("-n", namespace, "link", "set", "lo", "up")
            for index, (a, b) in enumerate(self._links):
                self._add_link(index, a, b)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._remove()

    def _add_link(self, index: int, a: str, b: str) -> None:
        # Interface names are at most 15 bytes: short ones, made unique by their namespace.
        end_a, end_b = f"v{index}a", f"v{index}b"
        temporary_a = f"{self.prefix[:8]}{index}a"
        temporary_b = f"{self.prefix[:8]}{index}b"
        _ip("link", "add", temporary_a, "type", "veth", "peer", "name", temporary_b)
        for temporary, end, host, peer, last in (
            (temporary_a, end_a, a, b, 1),
            (temporary_b, end_b, b, a, 2),
        ):
            namespace = self._namespaces[host]
            _ip("link", "set", temporary, "netns", namespace, "name", end)
            address = f"{SUBNET_PREFIX}.{index}.{last}"
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", end)
            _ip("-n", namespace, "link", "set", end, "up")
            self._ends[(host, peer)] = (end, address)

    def _remove(self) -> None:
        for namespace in self._namespaces.values():
            subprocess.run(
                ["ip", "netns", "del", namespace], capture_output=True, timeout=COMMAND_TIMEOUT_S
            )
        self._namespaces.clear()

    def address(self, host: str, peer: str) -> str:
        """`host`'s IPv4 address on its link with `peer`."""
        return self._ends[(host, peer)][1]

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `host`. `ip netns exec` enters the namespace and execs the command,
        so the pid of a Popen of this is the command's own pid (to stop it by)."""
        return ["ip", "netns", "exec", self._namespaces[host], *argv]

    def link_down(self, a: str, b: str) -> None:
        """Cut the link between a and b (both ends down), as a pulled cable."""
        self._set_link(a, b, "down")

    def link_up(self, a: str, b: str) -> None:
        self._set_link(a, b, "up")

    def _set_link(self, a: str, b: str, state: str) -> None:
        for host, peer in ((a, b), (b, a)):
            interface, _address = self._ends[(host, peer)]
            _ip("-n", self._namespaces[host], "link", "set", interface, state)
