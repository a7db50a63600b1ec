"""The relay benchmark's pure parts (see feedsvc.bench.scenarios.relay): the raw source's frame
template, the split of subscribers over processes and relays, the capacity search, run summaries,
the hop verdict and the report lines. No processes, no sockets."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from feedsvc.bench.latency import latency_percentiles
from feedsvc.bench.report import median, ratio
from feedsvc.protocol.ticks import encode_frame

DIRECT: Final = "direct"
RELAY: Final = "relay"
MODES: Final = (DIRECT, RELAY)
HOP_TARGET_US: Final = 30.0
# A capacity step passes with no gap and every subscriber at >= this share of the target rate.
DELIVERED_FRACTION: Final = 0.95
# Steps of a capacity search at most (20k doubled 16 times is past anything loopback carries).
MAX_STEPS: Final = 16
# A run that kept this share of the machine's CPUs busy measured the machine, not the relay.
SATURATED_SHARE: Final = 0.9
# Placeholders in the encoded template tick, replaced by %d (unique in the frame).
_SEQ_PLACEHOLDER: Final = -1
_TS_PLACEHOLDER: Final = -2


def tick_template(symbol: str, epoch: int) -> bytes:
    """A frame as `feedsvc serve` sends it for `symbol` (same fields, same order, orjson), with
    `%d` where seq and ts go: `template % (seq, ts)` is the frame."""
    tick = {"sym": symbol, "bid": 100.0, "ask": 100.02, "bid_size": 100, "ask_size": 200}
    tick |= {"seq": _SEQ_PLACEHOLDER, "epoch": epoch, "ts": _TS_PLACEHOLDER}
    frame = encode_frame(symbol, tick)
    frame = frame.replace(b'"seq":%d' % _SEQ_PLACEHOLDER, b'"seq":%d')
    return frame.replace(b'"ts":%d' % _TS_PLACEHOLDER, b'"ts":%d')


def sockets_per_process(subscribers: int, per_process: int) -> list[int]:
    """How many SUB sockets each subscriber process holds; raises ValueError unless the
    subscribers split evenly (so every process carries the same load)."""
    if subscribers < 1 or per_process < 1:
        raise ValueError("--subscribers and --sockets-per-process must be at least 1")
    if subscribers % per_process:
        raise ValueError(
            f"--subscribers {subscribers} is not a multiple of --sockets-per-process {per_process}"
        )
    return [per_process] * (subscribers // per_process)


def endpoints_for_sockets(sockets: int, endpoints: Sequence[str]) -> list[str]:
    """The endpoint of each SUB socket: round robin, so the relays get an even share each
    and a process with several sockets spreads them over the relays too."""
    if not endpoints:
        raise ValueError("no endpoint to connect to")
    return [endpoints[index % len(endpoints)] for index in range(sockets)]


def alternating_modes(repeats: int) -> list[str]:
    """The order of the latency runs: direct, relay, direct, relay ... (`repeats` pairs), so a
    drift of the machine's load touches both modes alike."""
    return [mode for _ in range(repeats) for mode in MODES]


def capacity_rates(start: float, max_rate: float) -> list[float]:
    """Rates doubling from `start` while <= `max_rate` (at most MAX_STEPS); just `max_rate`
    when it is below `start`."""
    if max_rate < start:
        return [max_rate]
    rates = []
    rate = start
    while rate <= max_rate and len(rates) < MAX_STEPS:
        rates.append(rate)
        rate *= 2
    return rates


def step_outcome(step: Mapping[str, Any], target_rate: float) -> tuple[bool, str]:
    """(passed, why) of one capacity step: no gap and every subscriber at >= 95% of
    `target_rate`; a step whose subscribers were not in place in time fails as such."""
    if step.get("late_sockets"):
        return False, f"{step['late_sockets']} sockets had no tick before the window"
    if step["gaps"]:
        return False, f"{step['gaps']} gaps ({step['missed']} ticks missed)"
    lowest = step["rate_per_subscriber_min"]
    if lowest is None or lowest < DELIVERED_FRACTION * target_rate:
        why = f"slowest subscriber {lowest or 0:,.0f}/s < {DELIVERED_FRACTION:.0%} of target"
        source_rate = step.get("source_rate")
        if source_rate is not None and source_rate < DELIVERED_FRACTION * target_rate:
            why += f" (the source sent only {source_rate:,.0f}/s)"
        return False, why
    return True, "gap-free at the target rate"


def capacity_search(
    rates: Sequence[float],
    modes: Sequence[str],
    run_step: Callable[[str, float], dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Step every mode through `rates`, interleaved (both modes at one rate before the next,
    so both see the same machine), each mode stopping at its first failing step. `run_step`
    returns the step's figures; "passed" and "why" are added here."""
    steps: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    active = list(modes)
    for rate in rates:
        for mode in list(active):
            step = run_step(mode, rate)
            step["passed"], step["why"] = step_outcome(step, rate)
            steps[mode].append(step)
            if not step["passed"]:
                active.remove(mode)
        if not active:
            break
    return steps


def highest_passing(steps: Sequence[Mapping[str, Any]]) -> float | None:
    """The highest target rate of the passing steps before the first failure; None if none."""
    best = None
    for step in steps:
        if not step["passed"]:
            break
        best = step["rate"]
    return best


def combine_subscribers(
    results: Sequence[Mapping[str, Any]], window_s: float, start_at: float
) -> dict[str, Any]:
    """One run's figures from every subscriber process's result: per SUB socket rates, gaps and
    the ticks published in the window (each socket saw every symbol's seq span), latency
    percentiles over all sockets' ticks."""
    sockets = [socket for result in results for socket in result["sockets"]]
    rates = [socket["received_in_window"] / window_s for socket in sockets]
    late = [
        socket
        for socket in sockets
        if socket["first_tick_at"] is None or socket["first_tick_at"] > start_at
    ]
    return {
        "sockets": len(sockets),
        "rate_per_subscriber_median": median(rates),
        "rate_per_subscriber_min": min(rates, default=None),
        "gaps": sum(socket["gaps"] for socket in sockets),
        "missed": sum(socket["missed"] for socket in sockets),
        "published_in_window": max((s["published_in_window"] for s in sockets), default=0),
        "late_sockets": len(late),
        "latency_us": latency_percentiles(result["latency"] for result in results),
    }


def ns_per_tick(cpu_s: float | None, ticks: int) -> float | None:
    """CPU ns spent per tick published; None when either is unknown or no tick was published."""
    if cpu_s is None or ticks <= 0:
        return None
    return cpu_s * 1e9 / ticks


def middle_and_range(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median, min and max of the known values (None each when none is known)."""
    known = [value for value in values if value is not None]
    return {
        "median": median(known),
        "min": min(known, default=None),
        "max": max(known, default=None),
    }


def summarize_mode(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One mode's runs: medians (with min-max) of the percentiles, rates and CPU per tick."""
    return {
        "runs": len(runs),
        **{
            f"{name}_us": middle_and_range([run["latency_us"][name] for run in runs])
            for name in ("p50", "p99", "p999")
        },
        "rate_per_subscriber": middle_and_range(
            [run["rate_per_subscriber_median"] for run in runs]
        ),
        "rate_per_subscriber_min": min(
            (
                run["rate_per_subscriber_min"]
                for run in runs
                if run["rate_per_subscriber_min"] is not None
            ),
            default=None,
        ),
        "gaps": sum(run["gaps"] for run in runs),
        "missed": sum(run["missed"] for run in runs),
        "serve_ns_per_tick": middle_and_range([run["serve_ns_per_tick"] for run in runs]),
        "relay_ns_per_tick": middle_and_range([run["relay_ns_per_tick"] for run in runs]),
    }


def saturated_runs(runs: Sequence[Mapping[str, Any]], cpus: int) -> int:
    """How many runs kept the machine at >= SATURATED_SHARE of its CPUs: their latencies are
    queueing behind busy cores (subscribers, mostly), not the path being measured."""
    return sum(
        1
        for run in runs
        if run.get("machine_busy_cores") is not None
        and run["machine_busy_cores"] >= SATURATED_SHARE * cpus
    )


def hop_verdict(
    direct_p50_us: float | None, relay_p50_us: float | None, target_us: float = HOP_TARGET_US
) -> dict[str, Any]:
    """The relay hop's added p50 (relay minus direct, us) and PASS when at most `target_us`."""
    if direct_p50_us is None or relay_p50_us is None:
        return {"added_p50_us": None, "target_us": target_us, "verdict": "UNKNOWN"}
    added = relay_p50_us - direct_p50_us
    return {
        "added_p50_us": added,
        "target_us": target_us,
        "verdict": "PASS" if added <= target_us else "MISS",
    }


def capacity_summary(
    steps: Mapping[str, Sequence[Mapping[str, Any]]], max_rate: float
) -> dict[str, Any]:
    """Highest passing rate per mode, whether it only stopped at --max-rate (a lower bound then),
    and relay / direct."""
    highest = {mode: highest_passing(mode_steps) for mode, mode_steps in steps.items()}
    bounded = {
        mode: bool(mode_steps) and all(step["passed"] for step in mode_steps)
        for mode, mode_steps in steps.items()
    }
    return {
        "highest_rate": highest,
        "stopped_at_max_rate": bounded,
        "max_rate": max_rate,
        "relay_to_direct": ratio(highest.get(RELAY), highest.get(DIRECT)),
    }


def _fmt(value: float | None, places: int = 0) -> str:
    return "-" if value is None else f"{value:,.{places}f}"


def _cell(figures: Mapping[str, float | None]) -> str:
    if figures["median"] is None:
        return "-"
    return f"{_fmt(figures['median'])} ({_fmt(figures['min'])}-{_fmt(figures['max'])})"


def topology_line(options: argparse.Namespace) -> str:
    """What the subscribers are: SUB sockets in how many processes (sockets, not processes)."""
    counts = sockets_per_process(options.subscribers, options.sockets_per_process)
    return (
        f"{options.subscribers} subscribers = {len(counts)} processes x "
        f"{options.sockets_per_process} SUB socket(s) each"
        + (" (sockets, not processes)" if options.sockets_per_process > 1 else "")
    )


def latency_lines(document: Mapping[str, Any]) -> list[str]:
    """The hop-latency report: one row per mode, then the verdict."""
    settings = document["settings"]
    lines = [
        f"relay hop latency: serve at {settings['rate']:,.0f} ticks/s, {document['topology']}, "
        f"{settings['relays']} relay(s) in relay mode, {settings['repeats']} alternating runs "
        f"of {settings['duration_s']:g} s per mode; median (min-max) over runs",
        f"  {'mode':<7} {'p50 us':>16} {'p99 us':>18} {'p99.9 us':>18} {'rate/sub':>9} "
        f"{'min':>8} {'gaps':>6} {'serve ns/tick':>20} {'relay ns/tick':>20}",
    ]
    for mode in MODES:
        summary = document["modes"][mode]
        lines.append(
            f"  {mode:<7} {_cell(summary['p50_us']):>16} {_cell(summary['p99_us']):>18} "
            f"{_cell(summary['p999_us']):>18} {_fmt(summary['rate_per_subscriber']['median']):>9} "
            f"{_fmt(summary['rate_per_subscriber_min']):>8} {summary['gaps']:>6} "
            f"{_cell(summary['serve_ns_per_tick']):>20} {_cell(summary['relay_ns_per_tick']):>20}"
        )
    hop = document["hop"]
    lines.append(
        f"added by the relay hop: p50 {_fmt(hop['added_p50_us'], 1)} us "
        f"(target <= +{hop['target_us']:g} us)   {hop['verdict']}; pairs "
        f"{' '.join(_fmt(value, 0) for value in hop['added_p50_pairs_us']) or '-'} us; "
        f"p99 {_fmt(hop['added_p99_us'], 1)} us"
    )
    if document["saturated_runs"]:
        lines.append(
            f"warning: {document['saturated_runs']} of {len(document['runs'])} runs kept >= "
            f"{SATURATED_SHARE:.0%} of the CPUs busy: their latencies are queueing on a full "
            f"machine (the subscribers, mostly), not the hop; compare the CPU per tick instead"
        )
    return lines


def capacity_lines(document: Mapping[str, Any]) -> list[str]:
    """The capacity report: every step, then the highest passing rates and their ratio."""
    capacity = document["capacity"]
    summary = capacity["summary"]
    lines = [
        f"capacity: raw pyzmq PUB -> {capacity['subscribers']} subscriber processes, "
        f"{capacity['step_s']:g} s steps; pass = no gap and every subscriber >= "
        f"{DELIVERED_FRACTION:.0%} of the rate"
    ]
    for mode in MODES:
        for step in capacity["steps"][mode]:
            lines.append(
                f"  {mode:<7} {step['rate']:>9,.0f}/s  source {_fmt(step['source_rate']):>9}/s  "
                f"slowest sub {_fmt(step['rate_per_subscriber_min']):>9}/s  gaps {step['gaps']:>5}"
                f"  {'pass' if step['passed'] else 'FAIL'}: {step['why']}"
            )
    highest = summary["highest_rate"]

    def bound(mode: str) -> str:
        at_max = summary["stopped_at_max_rate"][mode]
        return ("at least " if at_max else "") + _fmt(highest[mode])

    lines.append(
        f"highest gap-free rate: through 1 relay {bound(RELAY)} ticks/s, direct (baseline) "
        f"{bound(DIRECT)} ticks/s, relay / direct {_fmt(summary['relay_to_direct'], 2)}"
    )
    return lines


def options_error(options: argparse.Namespace) -> str | None:
    """What is wrong with the command line, for the user; None when it can run."""
    try:
        sockets_per_process(options.subscribers, options.sockets_per_process)
    except ValueError as error:
        return str(error)
    if not 1 <= options.relays <= options.subscribers:
        return "--relays must be between 1 and --subscribers"
    if options.repeats < 0 or options.duration <= 0 or options.step_duration <= 0:
        return "--repeats must be >= 0, --duration and --step-duration > 0"
    if options.repeats == 0 and options.skip_capacity:
        return "--repeats 0 with --skip-capacity measures nothing"
    if options.capacity_subscribers < 1 or options.capacity_start <= 0 or options.max_rate <= 0:
        return "--capacity-subscribers, --capacity-start and --max-rate must be positive"
    return None


def pair_differences(runs: Sequence[Mapping[str, Any]], name: str) -> list[float | None]:
    """Relay minus direct `name` percentile (us) of each alternating pair (run 2k, run 2k+1),
    whichever order the pair ran in: how steady the hop's cost is from pair to pair."""
    by_mode = [
        {run["mode"]: run for run in runs[index : index + 2]}
        for index in range(0, len(runs) - 1, 2)
    ]
    differences: list[float | None] = []
    for pair in by_mode:
        if set(pair) != set(MODES):
            continue
        relay, direct = pair[RELAY]["latency_us"][name], pair[DIRECT]["latency_us"][name]
        differences.append(None if relay is None or direct is None else relay - direct)
    return differences


def hop_summary(
    modes: Mapping[str, Mapping[str, Any]], runs: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """`hop_verdict` of the modes' median p50s, with the added median p99 and the per-pair
    differences beside it."""
    hop = hop_verdict(modes[DIRECT]["p50_us"]["median"], modes[RELAY]["p50_us"]["median"])
    hop["added_p50_pairs_us"] = pair_differences(runs, "p50")
    relay_p99, direct_p99 = modes[RELAY]["p99_us"]["median"], modes[DIRECT]["p99_us"]["median"]
    no_p99 = relay_p99 is None or direct_p99 is None
    hop["added_p99_us"] = None if no_p99 else relay_p99 - direct_p99
    return hop
