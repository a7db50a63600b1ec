"""`feedsvc keygen`: write a CurveZMQ key pair for a server or a client."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from feedsvc.cli import EXIT_USAGE
from feedsvc.curve import create_key_pair


def add_keygen_arguments(keygen: argparse.ArgumentParser) -> None:
    keygen.add_argument("directory", type=Path, metavar="DIR", help="where to write the files")
    keygen.add_argument("name", metavar="NAME", help="file name without extension, e.g. server")


def run_from_args(args: argparse.Namespace) -> int:
    """`feedsvc keygen DIR NAME`: write a CurveZMQ key pair."""
    try:
        public_file, secret_file = create_key_pair(args.directory, args.name)
    except (ValueError, OSError) as error:
        print(f"feedsvc keygen: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"public key (give it out; a server lists it in curve.authorized_keys): {public_file}")
    print(f"secret key (keep it; mode 600): {secret_file}")
    return 0
