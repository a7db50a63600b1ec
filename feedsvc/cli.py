"""The `feedsvc` command: parses arguments and calls the modules that do the work."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from feedsvc import console, loadtest, replay
from feedsvc.config import ConfigError, load_config
from feedsvc.curve import create_key_pair
from feedsvc.logs import setup_logging
from feedsvc.service import Service, StartupError

EXIT_BAD_CONFIG = 2


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.set)
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
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedsvc", description="Market-data fan-out publisher over ZeroMQ."
    )
    commands = parser.add_subparsers(dest="command", required=True)

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
    serve.set_defaults(handler=_serve)

    subscribe = commands.add_parser("subscribe", help="receive ticks like a trading client")
    console.add_subscribe_arguments(subscribe)
    subscribe.set_defaults(handler=console.run_from_args)

    replay_parser = commands.add_parser(
        "replay", help="read ticks back from the Kafka mirror; --verify audits their sequence"
    )
    replay.add_replay_arguments(replay_parser)
    replay_parser.set_defaults(handler=replay.run_from_args)

    keygen = commands.add_parser(
        "keygen",
        help="write a CurveZMQ key pair: DIR/NAME.key (public) and DIR/NAME.key_secret",
    )
    keygen.add_argument("directory", type=Path, metavar="DIR", help="where to write the files")
    keygen.add_argument("name", metavar="NAME", help="file name without extension, e.g. server")
    keygen.set_defaults(handler=_keygen)

    loadtest_parser = commands.add_parser(
        "loadtest", help="run the service under synthetic load and measure it (vs raw pyzmq)"
    )
    loadtest.add_loadtest_arguments(loadtest_parser)
    loadtest_parser.set_defaults(handler=loadtest.run_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
