"""Summary of a benchmark run: jobs/s (or latency, RSS) per case and its ratio to the raw loop.

    python -m pytest benchmarks --benchmark-json=out.json && python benchmarks/report.py out.json

The same table is printed at the end of every benchmark session (``conftest.py``). In each
group, the test whose name has ``raw`` is the yardstick measured in the same session.
Throughput ratios are ours / raw (higher is better); latency (p50) and RSS ratios are ours /
raw (lower is better; the RSS yardstick is a bare python process with the driver connected).
"""

import json
import sys


def _rate(bench):
    """Operations per second from the median (a drain round counts ``jobs`` operations)."""
    median = bench["stats"]["median"]
    return bench.get("extra_info", {}).get("jobs", 1) / median if median else 0.0


def rows(benchmarks):
    """``(group, case, value, unit, ratio)`` tuples, ours next to the raw yardstick."""
    groups = {}
    for bench in benchmarks:
        groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    out = []
    for group in sorted(groups):
        members = groups[group]
        raw = next((b for b in members if "raw" in b["name"]), None)
        for bench in sorted(members, key=lambda b: "raw" in b["name"]):
            info = bench.get("extra_info", {})
            name = bench["name"]
            if "p50_ms" in info:
                ratio = (info["p50_ms"] / raw["extra_info"]["p50_ms"]
                         if raw and bench is not raw and raw["extra_info"].get("p50_ms") else None)
                out.append((group, name, f"p50 {info['p50_ms']:.2f} / p99 {info['p99_ms']:.2f}",
                            "ms", ratio))
            elif "rss_rest_mb" in info:
                out.append((group, name, f"rest {info['rss_rest_mb']:.1f}, "
                            f"+{info['rss_growth_mb']:.2f} after {info['jobs']} jobs", "MB",
                            info["rss_rest_mb"] / info["raw_driver_rss_mb"]))
            elif "short_done_s" in info:
                out.append((group, name, f"{info['short_jobs']} short done in "
                            f"{info['short_done_s']:.3f}s (long {info['long_s']:.0f}s)", "", None))
            else:
                rate = _rate(bench)
                ratio = rate / _rate(raw) if raw and bench is not raw else None
                out.append((group, name, f"{rate:,.0f}", "ops/s", ratio))
    return out


def format_table(benchmarks):
    lines = [f"{'group':<40} {'test':<34} {'result':>40} {'unit':<6} {'vs raw':>7}"]
    for group, name, value, unit, ratio in rows(benchmarks):
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        lines.append(f"{group:<40.40} {name:<34.34} {value:>40} {unit:<6} {shown:>7}")
    return "\n".join(lines)


def main(path):
    with open(path) as f:
        print(format_table(json.load(f)["benchmarks"]))


if __name__ == "__main__":
    main(sys.argv[1])
