"""`feedsvc relay`: the relay as a process, with its signals (SIGTERM/SIGINT: exit 0)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from feedsvc.cli import EXIT_USAGE, raise_if_curve_files_unusable, stop_on_signals
from feedsvc.config import ConfigError, load_config
from feedsvc.logs import setup_logging
from feedsvc.relay.service import Relay, StartupError, upstream_keys


def add_relay_arguments(relay: argparse.ArgumentParser) -> None:
    relay.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML config file; its relay section (and ipc, log) is used (default: built-in "
        "defaults, the same as config.yaml)",
    )
    relay.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set 'relay.endpoints=[tcp://0.0.0.0:5656]' (YAML value)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.set)
        upstream_keys(config.relay)
        raise_if_curve_files_unusable(config)
    except ConfigError as error:
        print(f"feedsvc: config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log.level, config.log.format)
    relay = Relay(config)
    try:
        relay.start()
    except StartupError as error:
        print(f"feedsvc: start-up error: {error}", file=sys.stderr)
        return EXIT_USAGE

    stop_on_signals(relay.request_stop)
    # 1: the proxy stopped by itself (logged), so a supervisor restarts the relay.
    return 0 if relay.run() else 1
