"""The `feedsvc` command: parses arguments and calls the module that does the work.

Each subcommand's module is imported only when that subcommand runs: `feedsvc serve` must not
load librdkafka (only its mirror process needs it), rich or the load-test harness.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from feedsvc.config import Config

# Bad config or arguments: the exit code argparse itself uses for a usage error.
EXIT_USAGE: Final = 2


class _Command(NamedTuple):
    """A subcommand: its module provides add_<name>_arguments(parser) and run_from_args(args)."""

    help: str
    module: str
    add_arguments: str


COMMANDS: Final = {
    "serve": _Command("run the publisher service", "feedsvc.cli.serve", "add_serve_arguments"),
    "relay": _Command(
        "re-serve upstream publishers' streams on this host (libzmq's proxy)",
        "feedsvc.cli.relay",
        "add_relay_arguments",
    ),
    "subscribe": _Command(
        "receive ticks like a trading client", "feedsvc.cli.subscribe", "add_subscribe_arguments"
    ),
    "replay": _Command(
        "read ticks back from the Kafka mirror; --verify audits their sequence",
        "feedsvc.replay.command",
        "add_replay_arguments",
    ),
    "loadtest": _Command(
        "run the service under synthetic load and measure it (vs raw pyzmq)",
        "feedsvc.bench.loadtest",
        "add_loadtest_arguments",
    ),
    "keygen": _Command(
        "write a CurveZMQ key pair: DIR/NAME.key (public) and DIR/NAME.key_secret",
        "feedsvc.cli.keygen",
        "add_keygen_arguments",
    ),
}


def raise_if_curve_files_unusable(config: Config) -> None:
    """With curve.enabled, raise ConfigError naming the first unusable key file: a server never
    starts with Curve half set up."""
    from feedsvc.config import ConfigError
    from feedsvc.curve import key_files_problem

    curve = config.curve
    if curve.enabled:
        problem = key_files_problem(curve.server_secret, curve.authorized_keys)
        if problem is not None:
            raise ConfigError(*problem)


def stop_on_signals(request_stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT ask a long-running command to stop (it then exits 0), logged once."""

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger("feedsvc").info("received %s, stopping", signal.Signals(signum).name)
        request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; of the subcommands only `command`'s module is imported and gets its arguments
    (every one's when None)."""
    parser = argparse.ArgumentParser(
        prog="feedsvc", description="Market-data fan-out publisher over ZeroMQ."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, entry in COMMANDS.items():
        sub = commands.add_parser(name, help=entry.help)
        if command is None or command == name:
            module = importlib.import_module(entry.module)
            add_arguments: Callable[[argparse.ArgumentParser], None] = getattr(
                module, entry.add_arguments
            )
            add_arguments(sub)
            sub.set_defaults(handler=module.run_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    # The subcommand is the first word that is not an option: only its module is imported.
    command = next((word for word in arguments if not word.startswith("-")), "")
    args = build_parser(command).parse_args(arguments)
    return args.handler(args)
