"""Summary of a benchmark run: jobs/s (or latency, RSS) per case and its ratios to yardsticks.

    python -m pytest benchmarks --benchmark-json=out.json && python benchmarks/report.py out.json

The same table is printed at the end of every benchmark session (``conftest.py``). A group's
yardsticks, measured in the same session, are its cases with ``extra_info["yardstick"]`` (a
short label, e.g. ``raw``, ``batched``); a group naming none has one, the test whose name has
``raw``. A case with ``extra_info["ideal_rate"]`` (jobs/s) is also compared with that rate.
Each case shows one ratio per yardstick other than itself. Throughput ratios are case /
yardstick (higher is better); latency (p50) and RSS ratios are ours / raw (lower is better;
the RSS yardstick is a bare python process with the driver connected).
"""

import json
import sys


def _rate(bench):
    """Operations per second from the median (a drain round counts ``jobs`` operations)."""
    median = bench["stats"]["median"]
    return bench.get("extra_info", {}).get("jobs", 1) / median if median else 0.0


def _yardsticks(members):
    """``(label, bench)`` for each yardstick of a group."""
    named = [(b["extra_info"]["yardstick"], b) for b in members
             if b.get("extra_info", {}).get("yardstick")]
    if named:
        return named
    raw = next((b for b in members if "raw" in b["name"]), None)
    return [("raw", raw)] if raw else []


def _ratios(bench, yardsticks, value):
    """``(label, ratio)`` of ``value(bench)`` to each yardstick's, then to an ideal rate."""
    out = []
    for label, yardstick in yardsticks:
        theirs = value(yardstick) if yardstick is not bench else None
        if theirs:
            out.append((label, value(bench) / theirs))
    ideal = bench.get("extra_info", {}).get("ideal_rate")
    if ideal:
        out.append((f"ideal {ideal:,.0f}/s", _rate(bench) / ideal))
    return out


def rows(benchmarks):
    """``(group, case, value, unit, ratios)`` tuples, ratios a list of ``(label, ratio)``."""
    groups = {}
    for bench in benchmarks:
        groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    out = []
    for group in sorted(groups):
        members = groups[group]
        yardsticks = _yardsticks(members)
        sticks = [b for _, b in yardsticks]
        for bench in sorted(members, key=lambda b: (b in sticks, b["name"])):
            info = bench.get("extra_info", {})
            name = bench["name"]
            if "p50_ms" in info:
                out.append((group, name, f"p50 {info['p50_ms']:.2f} / p99 {info['p99_ms']:.2f}",
                            "ms", _ratios(bench, yardsticks,
                                          lambda b: b["extra_info"].get("p50_ms"))))
            elif "rss_rest_mb" in info:
                out.append((group, name, f"rest {info['rss_rest_mb']:.1f}, "
                            f"+{info['rss_growth_mb']:.2f} after {info['jobs']} jobs", "MB",
                            [("raw", info["rss_rest_mb"] / info["raw_driver_rss_mb"])]))
            elif "short_done_s" in info:
                out.append((group, name, f"{info['short_jobs']} short done in "
                            f"{info['short_done_s']:.3f}s (long {info['long_s']:.0f}s)", "", []))
            else:
                out.append((group, name, f"{_rate(bench):,.0f}", "ops/s",
                            _ratios(bench, yardsticks, _rate)))
    return out


def format_table(benchmarks):
    lines = [f"{'group':<40} {'test':<44} {'result':>40} {'unit':<6} ratios"]
    for group, name, value, unit, ratios in rows(benchmarks):
        shown = ", ".join(f"{ratio:.2f}x {label}" for label, ratio in ratios)
        lines.append(f"{group:<40.40} {name:<44.44} {value:>40} {unit:<6} {shown}")
    return "\n".join(lines)


def main(path):
    with open(path) as f:
        print(format_table(json.load(f)["benchmarks"]))


if __name__ == "__main__":
    main(sys.argv[1])
