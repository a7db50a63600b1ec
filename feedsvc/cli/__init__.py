"""The `feedsvc` command: parses arguments and calls the modules that do the work.

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
from pathlib import Path
from typing import Final, NamedTuple

import orjson

from feedsvc.config import ConfigError, load_config
from feedsvc.curve import create_key_pair, key_files_problem
from feedsvc.logs import setup_logging

EXIT_BAD_CONFIG = 2


def _serve(args: argparse.Namespace) -> int:
    from feedsvc.server.service import Service, StartupError

    try:
        config = load_config(args.config, args.set)
        if config.curve.enabled:
            problem = key_files_problem(config.curve.server_secret, config.curve.authorized_keys)
            if problem is not None:
                raise ConfigError(*problem)
    except ConfigError as error:
        print(f"feedsvc: config error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    setup_logging(config.log.level, config.log.format)
    service = Service(config, wait_subscribers=args.wait_subscribers)
    try:
        service.start()
    except StartupError as error:
        print(f"feedsvc: start-up error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger("feedsvc").info("received %s, stopping", signal.Signals(signum).name)
        service.request_stop()

    def reload_keys(_signum: int, _frame: object) -> None:
        service.request_key_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload_keys)
    service.run()
    if args.summary_file is not None:
        _write_atomically(
            args.summary_file, orjson.dumps(service.summary(), option=orjson.OPT_INDENT_2)
        )
    return 0


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a reader never sees half a summary."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data + b"\n")
    partial.replace(path)


def _keygen(args: argparse.Namespace) -> int:
    try:
        public_file, secret_file = create_key_pair(args.directory, args.name)
    except (ValueError, OSError) as error:
        print(f"feedsvc keygen: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"public key (give it out; a server lists it in curve.authorized_keys): {public_file}")
    print(f"secret key (keep it; mode 600): {secret_file}")
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class _LazyCommand(NamedTuple):
    """A subcommand whose module is imported only to run it (or to show its help)."""

    help: str
    module: str
    add_arguments: str
    run: str


_LAZY_COMMANDS: Final = {
    "subscribe": _LazyCommand(
        "receive ticks like a trading client",
        "feedsvc.cli.subscribe",
        "add_subscribe_arguments",
        "run_from_args",
    ),
    "replay": _LazyCommand(
        "read ticks back from the Kafka mirror; --verify audits their sequence",
        "feedsvc.replay.command",
        "add_replay_arguments",
        "run_from_args",
    ),
    "loadtest": _LazyCommand(
        "run the service under synthetic load and measure it (vs raw pyzmq)",
        "feedsvc.bench.loadtest",
        "add_loadtest_arguments",
        "run_from_args",
    ),
}


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the publisher service")
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML config file (default: built-in defaults, the same as config.yaml)",
    )
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set synthetic.rate=20000 (value parsed as YAML)",
    )
    serve.add_argument(
        "--wait-subscribers",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="hold ticks until N clients completed the sync handshake (each then gets seq 1 "
        "of every symbol it subscribed to)",
    )
    serve.add_argument(
        "--summary-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="at exit, write what the run did as JSON (published, ingested by source, rejected "
        "by reason, mirror counts ...) to PATH",
    )
    serve.set_defaults(handler=_serve)


def _add_keygen(commands: argparse._SubParsersAction) -> None:
    keygen = commands.add_parser(
        "keygen",
        help="write a CurveZMQ key pair: DIR/NAME.key (public) and DIR/NAME.key_secret",
    )
    keygen.add_argument("directory", type=Path, metavar="DIR", help="where to write the files")
    keygen.add_argument("name", metavar="NAME", help="file name without extension, e.g. server")
    keygen.set_defaults(handler=_keygen)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; of the lazily imported subcommands only `command`'s gets its arguments (all
    of them when None)."""
    parser = argparse.ArgumentParser(
        prog="feedsvc", description="Market-data fan-out publisher over ZeroMQ."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    for name, lazy in _LAZY_COMMANDS.items():
        sub = commands.add_parser(name, help=lazy.help)
        if command is None or command == name:
            module = importlib.import_module(lazy.module)
            add_arguments: Callable[[argparse.ArgumentParser], None] = getattr(
                module, lazy.add_arguments
            )
            add_arguments(sub)
            sub.set_defaults(handler=getattr(module, lazy.run))
    _add_keygen(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    # The subcommand is the first word that is not an option: only its module is imported.
    command = next((word for word in arguments if not word.startswith("-")), "")
    args = build_parser(command).parse_args(arguments)
    return args.handler(args)
