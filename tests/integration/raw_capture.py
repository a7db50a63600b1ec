"""Captures frames as they are on the wire, for the relay tests: a plain pyzmq SUB (no feedsvc
code), subscribed to the given prefixes, writing every frame received within --duration to --out
as one base64 line (a run in another network namespace can be compared byte for byte)."""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path

import zmq


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--prefix", action="append", default=[])
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    context = zmq.Context()
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    for prefix in args.prefix:
        subscriber.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    subscriber.connect(args.endpoint)
    deadline = time.monotonic() + args.duration
    with args.out.open("wb") as out:
        while time.monotonic() < deadline:
            if subscriber.poll(50):
                out.write(base64.b64encode(subscriber.recv()) + b"\n")
    subscriber.close()
    context.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
