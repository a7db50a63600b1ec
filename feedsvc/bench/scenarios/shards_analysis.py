"""The shards benchmark's pure parts (see feedsvc.bench.scenarios.shards): which shards a mode
runs, one run's figures from two snapshots of counters and CPU, medians per mode, the two/one
ratio, the capacity arithmetic for a bigger host and the report lines. No processes, no sockets."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from feedsvc.bench.report import median, ratio
from feedsvc.bench.scenarios.relay_analysis import _fmt, middle_and_range

ONE: Final = "one"
TWO: Final = "two"
MODES: Final = (ONE, TWO)
RELAY_PROCESS: Final = "relay"
SUBSCRIBER_PROCESS: Final = "subscriber"
# Bounds that keep one invocation to minutes on a small machine.
MAX_REPEATS: Final = 20
MAX_DURATION_S: Final = 120.0
# Rounding slack when whole cores are counted (2.0000000001 relay cores still fit on 2).
_CORE_SLACK: Final = 1e-9


@dataclass(frozen=True)
class Shard:
    """One `feedsvc serve` of a mode: its publisher.shard name ("" = unnamed), symbol prefix
    and symbol count."""

    name: str
    prefix: str
    symbols: int

    @property
    def process(self) -> str:
        """Its name in the figures: "serve" alone, "serve-east" as a named shard."""
        return f"serve-{self.name}" if self.name else "serve"


def shard_layout(mode: str, symbols: int) -> list[Shard]:
    """Mode "one": one unnamed serve with all `symbols` (prefix SYN); mode "two": shards east
    and west (prefixes EAST, WEST) with half each, so both modes publish the same symbol set
    size."""
    if mode == ONE:
        return [Shard("", "SYN", symbols)]
    if mode == TWO:
        east = symbols // 2
        return [Shard("east", "EAST", east), Shard("west", "WEST", symbols - east)]
    raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")


def alternating_modes(repeats: int) -> list[str]:
    """one, two, one, two ... (`repeats` pairs): a drift of the machine's load touches both."""
    return [mode for _ in range(repeats) for mode in MODES]


def counter_rate(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """Per second of a counter read twice ({"count", "at"}: value and monotonic read time)."""
    elapsed = after["at"] - before["at"]
    if elapsed <= 0:
        return None
    return (after["count"] - before["count"]) / elapsed


def _per_tick_ns(cores: float | None, ticks_per_s: float | None) -> float | None:
    if cores is None or not ticks_per_s:
        return None
    return cores * 1e9 / ticks_per_s


def run_figures(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    serve_processes: Sequence[str],
    subscriber: Mapping[str, Any],
    cpus: int,
) -> dict[str, Any]:
    """One run's figures from snapshots at the window's start and end.

    Parameters
    ----------
    before, after:
        {"cpu_at": monotonic s, "cpu_s": {process: CPU s or None}, "machine": [busy, steal] CPU
        s or None, "counters": {name: {"count", "at"}}} with a counter per serve process
        (ticks published) and, when its refreshes were caught, "relay_in" (messages into the
        relay's proxy, with "cpu_s": the relay's CPU read at the same moment).
    serve_processes:
        The serve processes' names (Shard.process).
    subscriber:
        relay_analysis.combine_subscribers of the subscriber role's result (one SUB socket).
    cpus:
        The machine's usable CPUs, for each process's share of them.
    """
    cpu_window_s = after["cpu_at"] - before["cpu_at"]
    cores: dict[str, float | None] = {}
    for process, cpu_after in after["cpu_s"].items():
        cpu_before = before["cpu_s"].get(process)
        known = cpu_after is not None and cpu_before is not None and cpu_window_s > 0
        cores[process] = (cpu_after - cpu_before) / cpu_window_s if known else None
    counters_before, counters_after = before["counters"], after["counters"]
    published = {
        process: counter_rate(counters_before[process], counters_after[process])
        for process in serve_processes
    }
    rates = list(published.values())
    aggregate = None if any(rate is None for rate in rates) else sum(rates)  # type: ignore[arg-type]
    relay_before, relay_after = counters_before.get("relay_in"), counters_after.get("relay_in")
    relay_in = relay_ns = relay_span = None
    if relay_before and relay_after:
        relay_in = counter_rate(relay_before, relay_after)
        relay_span = relay_after["at"] - relay_before["at"]
        forwarded = relay_after["count"] - relay_before["count"]
        if forwarded > 0 and None not in (relay_before["cpu_s"], relay_after["cpu_s"]):
            relay_ns = (relay_after["cpu_s"] - relay_before["cpu_s"]) * 1e9 / forwarded
    received = subscriber["rate_per_subscriber_median"]
    machine_busy = machine_steal = None
    if before.get("machine") and after.get("machine") and cpu_window_s > 0:
        machine_busy = (after["machine"][0] - before["machine"][0]) / cpu_window_s
        machine_steal = (after["machine"][1] - before["machine"][1]) / cpu_window_s
    ours = [value for value in cores.values() if value is not None]
    scrape_seconds = [
        reading.get("scrape_s", 0.0)
        for snapshot in (counters_before, counters_after)
        for reading in snapshot.values()
        if reading
    ]
    return {
        "published_per_s": published,
        "aggregate_published_per_s": aggregate,
        "cores": cores,
        "share_of_machine": {
            process: None if value is None else value / cpus for process, value in cores.items()
        },
        "machine_busy_cores": machine_busy,
        "machine_steal_cores": machine_steal,
        # The orchestrator, its scrapes and anything else that ran on the machine.
        "other_cores": None if machine_busy is None else machine_busy - sum(ours),
        "serve_ticks_per_core_s": {
            process: ratio(published[process], cores.get(process)) for process in serve_processes
        },
        "relay_in_per_s": relay_in,
        "relay_ns_per_tick": relay_ns,
        "relay_span_s": relay_span,
        "received_per_s": received,
        "delivered_share": ratio(received, aggregate),
        "subscriber_ns_per_tick": _per_tick_ns(cores.get(SUBSCRIBER_PROCESS), received),
        "role_gaps": subscriber["gaps"],
        "role_missed": subscriber["missed"],
        "late_sockets": subscriber["late_sockets"],
        "latency_us": subscriber["latency_us"],
        "cpu_window_s": cpu_window_s,
        "slowest_scrape_s": max(scrape_seconds, default=0.0),
    }


def _processes(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every process named in the runs' CPU figures, in first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run["cores"]))
    return list(names)


def summarize_mode(runs: Sequence[Mapping[str, Any]], cpus: int) -> dict[str, Any]:
    """One mode's runs: median (min-max) of every rate, each process's cores and share of the
    machine, CPU per tick; the role's gap counts summed."""
    processes = _processes(runs)
    serve_processes = [name for name in processes if name.startswith("serve")]
    cores = {
        process: middle_and_range([run["cores"].get(process) for run in runs])
        for process in processes
    }
    return {
        "runs": len(runs),
        "aggregate_published_per_s": middle_and_range(
            [run["aggregate_published_per_s"] for run in runs]
        ),
        "published_per_s": {
            process: middle_and_range([run["published_per_s"].get(process) for run in runs])
            for process in serve_processes
        },
        "serve_ticks_per_core_s": {
            process: middle_and_range([run["serve_ticks_per_core_s"].get(process) for run in runs])
            for process in serve_processes
        },
        "cores": cores,
        "share_of_machine": {
            process: {
                key: None if value is None else value / cpus for key, value in figures.items()
            }
            for process, figures in cores.items()
        },
        "other_cores": middle_and_range([run["other_cores"] for run in runs]),
        "machine_busy_cores": middle_and_range([run["machine_busy_cores"] for run in runs]),
        "relay_in_per_s": middle_and_range([run["relay_in_per_s"] for run in runs]),
        "relay_ns_per_tick": middle_and_range([run["relay_ns_per_tick"] for run in runs]),
        "received_per_s": middle_and_range([run["received_per_s"] for run in runs]),
        "delivered_share": middle_and_range([run["delivered_share"] for run in runs]),
        "subscriber_ns_per_tick": middle_and_range([run["subscriber_ns_per_tick"] for run in runs]),
        "role_gaps": sum(run["role_gaps"] for run in runs),
        "role_missed": sum(run["role_missed"] for run in runs),
        "late_sockets": sum(run["late_sockets"] for run in runs),
    }


def pair_ratios(runs: Sequence[Mapping[str, Any]], name: str) -> list[float | None]:
    """two / one of `name` in each alternating pair (runs 2k and 2k+1, either order)."""
    ratios: list[float | None] = []
    for index in range(0, len(runs) - 1, 2):
        pair = {run["mode"]: run for run in runs[index : index + 2]}
        if set(pair) == set(MODES):
            ratios.append(ratio(pair[TWO][name], pair[ONE][name]))
    return ratios


def two_to_one(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The aggregate publish rate two / one: median of the per-pair ratios, and the pairs."""
    pairs = pair_ratios(runs, "aggregate_published_per_s")
    return {"median": median(pairs), "pairs": pairs}


def capacity_plan(
    shard_ticks_per_core_s: float,
    relay_cpu_s_per_tick: float,
    host_cores: int = 16,
    reserved_cores: float = 2.0,
    shard_cores: float = 1.0,
    relay_max_cores: float = 1.0,
    subscriber_cpu_s_per_tick: float | None = None,
) -> dict[str, Any]:
    """How many flat-out shards and relays a `host_cores` host holds, from measured unit costs.

    Assumptions (stated in the report): each shard gets `shard_cores` cores and publishes at
    the measured ticks per core-second; a relay costs the measured CPU per forwarded tick and
    one relay tops out at `relay_max_cores` (so it carries whole shards up to that); the relays
    together get whole cores (their total load rounded up); `reserved_cores` stay for the
    subscribers and the OS. Nothing else is assumed to scale: no NIC, memory-bandwidth or
    cross-socket limits.

    Returns
    -------
    The shard rate, shards and relays that fit, the cores each takes and the aggregate rate
    (and, given the subscriber's CPU per tick, the cores one subscriber of everything needs).
    """
    if shard_ticks_per_core_s <= 0 or relay_cpu_s_per_tick <= 0 or shard_cores <= 0:
        raise ValueError("the unit costs and shard_cores must be positive")
    available = host_cores - reserved_cores
    relay_capacity = relay_max_cores / relay_cpu_s_per_tick
    # A shard faster than one relay can forward is held to the relay's rate.
    relay_bound = shard_ticks_per_core_s * shard_cores > relay_capacity
    shard_rate = min(shard_ticks_per_core_s * shard_cores, relay_capacity)
    relay_cores_per_shard = shard_rate * relay_cpu_s_per_tick
    shards_per_relay = max(1, math.floor(relay_capacity / shard_rate + _CORE_SLACK))
    shards, relay_cores = 0, 0
    for count in range(1, math.floor(available / shard_cores) + 1):
        needed = math.ceil(count * relay_cores_per_shard - _CORE_SLACK)
        if count * shard_cores + needed <= available:
            shards, relay_cores = count, needed
    aggregate = shards * shard_rate
    return {
        "host_cores": host_cores,
        "reserved_cores": reserved_cores,
        "shard_cores": shard_cores,
        "relay_max_cores": relay_max_cores,
        "shard_rate": shard_rate,
        "relay_bound": relay_bound,
        "relay_capacity": relay_capacity,
        "relay_cores_per_shard": relay_cores_per_shard,
        "shards_per_relay": shards_per_relay,
        "shards": shards,
        "relays": math.ceil(shards / shards_per_relay),
        "shard_cores_total": shards * shard_cores,
        "relay_cores_total": relay_cores,
        "cores_used": shards * shard_cores + relay_cores + reserved_cores,
        "aggregate_rate": aggregate,
        "subscriber_cores_for_everything": None
        if subscriber_cpu_s_per_tick is None
        else aggregate * subscriber_cpu_s_per_tick,
    }


def capacity_inputs(runs: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The unit costs the arithmetic starts from: a shard's ticks per core-second (median over
    mode "one", where the serve shares the machine with one fewer publisher), the relay's and
    the subscriber's CPU per tick (medians over all runs)."""
    shard = [
        value
        for run in runs
        if run["mode"] == ONE
        for value in run["serve_ticks_per_core_s"].values()
    ]
    relay_ns = median(run["relay_ns_per_tick"] for run in runs)
    subscriber_ns = median(run["subscriber_ns_per_tick"] for run in runs)
    return {
        "shard_ticks_per_core_s": median(shard),
        "relay_cpu_s_per_tick": None if relay_ns is None else relay_ns / 1e9,
        "subscriber_cpu_s_per_tick": None if subscriber_ns is None else subscriber_ns / 1e9,
    }


def capacity_section(
    runs: Sequence[Mapping[str, Any]], host_cores: int, reserved_cores: float
) -> dict[str, Any]:
    """`capacity_inputs` and, when all are known, the `capacity_plan` from them."""
    inputs = capacity_inputs(runs)
    shard, relay = inputs["shard_ticks_per_core_s"], inputs["relay_cpu_s_per_tick"]
    plan = None
    if shard and relay:
        plan = capacity_plan(
            shard,
            relay,
            host_cores=host_cores,
            reserved_cores=reserved_cores,
            subscriber_cpu_s_per_tick=inputs["subscriber_cpu_s_per_tick"],
        )
    return {"inputs": inputs, "plan": plan}


def _cell(figures: Mapping[str, float | None], places: int = 0) -> str:
    if figures["median"] is None:
        return "-"
    return (
        f"{_fmt(figures['median'], places)} "
        f"({_fmt(figures['min'], places)}-{_fmt(figures['max'], places)})"
    )


def _percent(figures: Mapping[str, float | None]) -> str:
    if figures["median"] is None:
        return "-"
    return (
        f"{100 * figures['median']:.0f}% "
        f"({100 * (figures['min'] or 0):.0f}-{100 * (figures['max'] or 0):.0f})"
    )


def report_lines(document: Mapping[str, Any]) -> list[str]:
    """The human-readable report: rates per mode, the ratio, the CPU split, the arithmetic."""
    settings, modes = document["settings"], document["modes"]
    cpus = document["machine"]["cpus_usable"]
    lines = [
        f"shards behind one relay: flat-out `feedsvc serve` (synthetic.rate=0, "
        f"{settings['symbols']} symbols in all) -> 1 relay -> 1 subscriber of everything; "
        f"{settings['repeats']} alternating pairs of {settings['duration_s']:g} s windows after "
        f"{settings['warmup_s']:g} s warm-up; median (min-max) over runs",
        f"  {'mode':<5} {'aggregate published/s':>28} {'per publisher /s':>46} "
        f"{'into the relay /s':>28} {'subscriber received/s':>28} {'delivered':>10} "
        f"{'gaps':>6}",
    ]
    for mode in MODES:
        summary = modes[mode]
        per_publisher = ", ".join(
            f"{process} {_fmt(figures['median'])}"
            for process, figures in summary["published_per_s"].items()
        )
        gaps = str(summary["role_gaps"])
        lines.append(
            f"  {mode:<5} {_cell(summary['aggregate_published_per_s']):>28} {per_publisher:>46} "
            f"{_cell(summary['relay_in_per_s']):>28} {_cell(summary['received_per_s']):>28} "
            f"{_fmt(100 * (summary['delivered_share']['median'] or 0), 1) + '%':>10} {gaps:>6}"
        )
    lines.append(
        "  (published = ticks each serve handed to its PUB socket; a PUB drops at its high-water "
        "mark, so 'into the relay' is what crossed the first hop; gaps = the subscriber role's "
        "count, per symbol within its shard's epoch: what the subscriber could not keep up with)"
    )
    ratio_figures = document["two_to_one"]
    pairs = " ".join(_fmt(value, 3) for value in ratio_figures["pairs"]) or "-"
    lines.append(
        f"aggregate publish rate two / one: {_fmt(ratio_figures['median'], 3)} "
        f"(median of per-pair ratios; pairs {pairs})"
    )
    lines.append(f"CPU split, share of the machine's {cpus} cores, median (min-max) over runs:")
    for mode in MODES:
        summary = modes[mode]
        split = ", ".join(
            f"{process} {_percent(figures)}"
            for process, figures in summary["share_of_machine"].items()
        )
        other = summary["other_cores"]["median"]
        busy = summary["machine_busy_cores"]["median"]
        lines.append(
            f"  {mode:<5} {split}; other {_fmt(None if other is None else 100 * other / cpus)}%; "
            f"machine busy {_fmt(busy, 2)} of {cpus} cores"
        )
    lines.append("CPU per tick, median (min-max):")
    for mode in MODES:
        summary = modes[mode]
        per_core = ", ".join(
            f"{process} {_cell(figures)}"
            for process, figures in summary["serve_ticks_per_core_s"].items()
        )
        lines.append(
            f"  {mode:<5} ticks per serve core-second: {per_core}; relay "
            f"{_cell(summary['relay_ns_per_tick'])} ns/forwarded tick; subscriber "
            f"{_cell(summary['subscriber_ns_per_tick'])} ns/received tick"
        )
    lines += capacity_lines(document["capacity"])
    return lines


def capacity_lines(capacity: Mapping[str, Any]) -> list[str]:
    """The arithmetic, its inputs and its assumptions, as report lines."""
    inputs, plan = capacity["inputs"], capacity["plan"]
    relay_s = inputs["relay_cpu_s_per_tick"]
    lines = [
        "capacity arithmetic (computed from the medians above, not measured on such a host):",
        f"  inputs: one shard {_fmt(inputs['shard_ticks_per_core_s'])} ticks per core-second "
        f"(mode one); relay {_fmt(None if relay_s is None else relay_s * 1e9)} ns CPU per "
        f"forwarded tick (all runs)",
    ]
    if plan is None:
        return [*lines, "  not computed: a unit cost was not measured"]
    subscriber = plan["subscriber_cores_for_everything"]
    lines += [
        f"  assumed: {plan['host_cores']} cores, {plan['reserved_cores']:g} left for "
        f"subscribers and the OS; each shard gets {plan['shard_cores']:g} core at the measured "
        f"ticks per core-second; one relay tops out at {plan['relay_max_cores']:g} core "
        f"({_fmt(plan['relay_capacity'])} ticks/s); relays together get whole cores; no NIC or "
        f"memory-bandwidth limit",
        f"  per shard {_fmt(plan['shard_rate'])} ticks/s"
        + (" (held to one relay's capacity)" if plan["relay_bound"] else "")
        + f", costing the relay {plan['relay_cores_per_shard']:.2f} core; one relay carries "
        f"{plan['shards_per_relay']} shard(s)",
        f"  => {plan['shards']} shards ({plan['shard_cores_total']:g} cores) + "
        f"{plan['relays']} relay(s) ({plan['relay_cores_total']} cores) + "
        f"{plan['reserved_cores']:g} reserved = {plan['cores_used']:g} of {plan['host_cores']} "
        f"cores (one more shard would not fit): aggregate {_fmt(plan['aggregate_rate'])} ticks/s",
    ]
    if subscriber is not None:
        lines.append(
            f"  a subscriber of everything at that rate would need {subscriber:.1f} cores at "
            f"the measured subscriber cost: subscribers must take slices (by symbol prefix)"
        )
    return lines


def options_error(options: argparse.Namespace) -> str | None:
    """What is wrong with the command line, for the user; None when it can run."""
    if not 1 <= options.repeats <= MAX_REPEATS:
        return f"--repeats must be 1 to {MAX_REPEATS}"
    if not 0 < options.duration <= MAX_DURATION_S or not 0 <= options.warmup <= MAX_DURATION_S:
        return f"--duration must be in (0, {MAX_DURATION_S:g}] s and --warmup in [0, ...]"
    if options.symbols < 2:
        return "--symbols must be at least 2 (mode two splits them over two shards)"
    if options.host_cores < 1 or not 0 <= options.reserved_cores < options.host_cores:
        return "--host-cores must be >= 1 and --reserved-cores in [0, --host-cores)"
    return None
