"""`feedsvc serve`: the publisher service as a process, with its signals and its summary file."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import orjson

from feedsvc.cli import EXIT_USAGE, raise_if_curve_files_unusable, stop_on_signals
from feedsvc.config import ConfigError, load_config
from feedsvc.logs import setup_logging
from feedsvc.server.collector import settle_after_start
from feedsvc.server.service import Service, StartupError


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
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


def run_from_args(args: argparse.Namespace) -> int:
    """`feedsvc serve`: load and check the config, start the service, run it until a signal."""
    try:
        config = load_config(args.config, args.set)
        raise_if_curve_files_unusable(config)
    except ConfigError as error:
        print(f"feedsvc: config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log.level, config.log.format)
    service = Service(config, wait_subscribers=args.wait_subscribers)
    try:
        service.start()
    except StartupError as error:
        print(f"feedsvc: start-up error: {error}", file=sys.stderr)
        return EXIT_USAGE

    def reload_keys(_signum: int, _frame: object) -> None:
        service.request_key_reload()

    stop_on_signals(service.request_stop)
    signal.signal(signal.SIGHUP, reload_keys)
    settle_after_start()
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


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
