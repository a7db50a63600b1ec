"""Draw docs/scale_out.png: the three topologies of docs/scale-out.md (one host, a relay tier,
shards behind a relay), boxes per process and hosts as shaded frames (matplotlib).

Usage: python scripts/draw_scale_out.py [OUT.png]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as pyplot
from matplotlib.axes import Axes
from matplotlib.patches import FancyBboxPatch

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "scale_out.png"
COLOURS = {
    "feed": "#d9e7f5",
    "serve": "#f7d9a8",
    "relay": "#c9e4c5",
    "client": "#eeeeee",
    "kafka": "#e3d3ee",
}


@dataclass(frozen=True)
class Box:
    name: str
    kind: str
    x: float
    y: float
    width: float = 1.6
    height: float = 0.6


def _host(axis: Axes, label: str, x: float, y: float, width: float, height: float) -> None:
    frame = FancyBboxPatch(
        (x, y),
        width,
        height,
        boxstyle="round,pad=0.05",
        facecolor="#fafafa",
        edgecolor="#999999",
        linestyle="--",
    )
    axis.add_patch(frame)
    axis.text(x + 0.08, y + height - 0.08, label, fontsize=7, color="#666666", va="top")


def _box(axis: Axes, box: Box) -> None:
    patch = FancyBboxPatch(
        (box.x, box.y),
        box.width,
        box.height,
        boxstyle="round,pad=0.03",
        facecolor=COLOURS[box.kind],
        edgecolor="#333333",
    )
    axis.add_patch(patch)
    axis.text(
        box.x + box.width / 2,
        box.y + box.height / 2,
        box.name,
        ha="center",
        va="center",
        fontsize=8,
    )


def _arrow(
    axis: Axes, start: Box, end: Box, label: str = "", dashed: bool = False, at: float = 0.5
) -> None:
    """An arrow from `start`'s right edge to `end`'s left edge, `label` at fraction `at`."""
    begin = (start.x + start.width, start.y + start.height / 2)
    finish = (end.x, end.y + end.height / 2)
    axis.annotate(
        "",
        xy=finish,
        xytext=begin,
        arrowprops={"arrowstyle": "->", "color": "#333333", "linestyle": "--" if dashed else "-"},
    )
    if label:
        middle = (
            begin[0] + (finish[0] - begin[0]) * at,
            begin[1] + (finish[1] - begin[1]) * at + 0.12,
        )
        axis.text(*middle, label, ha="center", fontsize=6.5, color="#444444")


def _one_host(axis: Axes) -> None:
    _host(axis, "host A", 1.9, 0.4, 2.0, 3.4)
    feed = Box("feed handler", "feed", 0.0, 2.6)
    serve = Box("feedsvc serve", "serve", 2.1, 2.0)
    kafka = Box("Kafka", "kafka", 2.1, 0.6)
    clients = [Box(f"subscriber {index}", "client", 4.6, 3.0 - index * 0.9) for index in range(3)]
    for box in (feed, serve, kafka, *clients):
        _box(axis, box)
    _arrow(axis, feed, serve, "PUSH")
    for client in clients:
        _arrow(axis, serve, client, "PUB: 1 copy each" if client is clients[0] else "", at=0.8)
    axis.annotate(
        "",
        xy=(2.9, 1.2),
        xytext=(2.9, 2.0),
        arrowprops={"arrowstyle": "->", "color": "#333333", "linestyle": "--"},
    )
    axis.text(3.0, 1.55, "mirror", fontsize=6.5, color="#444444")
    axis.set_title("1. one host", fontsize=9)


def _relay_tier(axis: Axes) -> None:
    _host(axis, "host A", -0.1, 1.4, 1.8, 1.2)
    _host(axis, "host B", 2.2, 2.4, 1.8, 1.2)
    _host(axis, "host C", 2.2, 0.4, 1.8, 1.2)
    serve = Box("feedsvc serve", "serve", 0.0, 1.7)
    relays = [Box("feedsvc relay", "relay", 2.3, 2.7), Box("feedsvc relay", "relay", 2.3, 0.7)]
    clients = [
        Box(f"subscriber {index}", "client", 4.6, 3.4 - index * 0.8, height=0.5)
        for index in range(4)
    ]
    for box in (serve, *relays, *clients):
        _box(axis, box)
    for relay in relays:
        _arrow(axis, serve, relay, "1 copy", at=0.8)
    for index, client in enumerate(clients):
        _arrow(axis, relays[index // 2], client)
    axis.set_title("2. a relay tier (XSUB -> proxy in C -> PUB)", fontsize=9)


def _shards(axis: Axes) -> None:
    _host(axis, "host A", 1.9, 0.3, 2.0, 3.7)
    _host(axis, "host B", 4.3, 1.4, 1.8, 1.2)
    feeds = [Box("feed: EAST*", "feed", 0.0, 3.0), Box("feed: WEST*", "feed", 0.0, 1.4)]
    shards = [
        Box("serve\nshard=east", "serve", 2.1, 3.0, width=1.3),
        Box("serve\nshard=west", "serve", 2.1, 1.4, width=1.3),
    ]
    kafka = Box("Kafka (1 topic)", "kafka", 2.1, 0.45, height=0.5)
    relay = Box("feedsvc relay\n2 upstreams", "relay", 4.4, 1.7)
    clients = [Box(f"subscriber {index}", "client", 6.6, 2.6 - index * 0.9) for index in range(3)]
    for box in (*feeds, *shards, kafka, relay, *clients):
        _box(axis, box)
    for feed, shard in zip(feeds, shards, strict=True):
        _arrow(axis, feed, shard, "PUSH")
        _arrow(axis, shard, relay)
    for client in clients:
        _arrow(axis, relay, client)
    for shard, bend in zip(shards, (-0.5, -0.3), strict=True):
        axis.annotate(
            "",
            xy=(kafka.x + kafka.width, kafka.y + kafka.height / 2),
            xytext=(shard.x + shard.width, shard.y + 0.1),
            arrowprops={
                "arrowstyle": "->",
                "color": "#333333",
                "linestyle": "--",
                "connectionstyle": f"arc3,rad={bend}",
            },
        )
    axis.text(3.75, 0.75, "mirror", fontsize=6.5, color="#444444")
    axis.text(6.6, 3.35, "each symbol under its\nshard's epoch", fontsize=6.5, color="#444444")
    axis.text(
        4.4,
        1.2,
        "sync: to every shard, merged\nrecovery: to the shard of the epoch",
        fontsize=6.5,
        color="#444444",
        va="top",
    )
    axis.set_title("3. shards behind one relay", fontsize=9)


def draw(path: Path) -> None:
    figure, axes = pyplot.subplots(1, 3, figsize=(17, 4.2), gridspec_kw={"width_ratios": [6, 6, 8]})
    for axis, panel in zip(axes, (_one_host, _relay_tier, _shards), strict=True):
        panel(axis)
        axis.set_xlim(-0.3, 8.5 if panel is _shards else 6.4)
        axis.set_ylim(0.0, 4.2)
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_OUT
    draw(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
