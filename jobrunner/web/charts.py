"""Charts drawn on the server: the geometry of a bar chart with a line over it, for SVG.

``history_charts`` turns ``Inspector.history`` entries (one per minute, oldest first) into two
charts: the last hour per minute and the last day per hour. ``bar_chart`` computes where every
bar, point and label goes; the template ``_chart.html`` writes the SVG elements from it, so
that every label passes through the template's escaping. Bars are the jobs processed (every
settled run), the line the failed ones.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Sequence

WIDTH, HEIGHT = 720, 180
#: Room for the axis labels: left, right, top, bottom.
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


def _nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 times a power of ten at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return int(step * power)
    return int(10 * power)  # pragma: no cover  (the loop always returns)


def bar_chart(points: Sequence[dict], label_every: int, label_format: str,
              title: str, width: int = WIDTH, height: int = HEIGHT) -> dict[str, Any]:
    """Geometry of one chart of ``points`` (``{"at": epoch s, "processed", "failed"}``).

    Returns the SVG size, one bar per point (with a tooltip text), the failed line's points,
    the y axis ticks (0, half, top) and an x label every ``label_every`` points, the time in
    ``label_format`` (UTC).
    """
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    top = _nice_ceiling(max([p["processed"] for p in points] + [p["failed"] for p in points]
                            + [0]))
    slot = plot_w / max(1, len(points))
    bars, line = [], []
    for index, point in enumerate(points):
        x = LEFT + index * slot
        h = plot_h * point["processed"] / top
        when = _utc(point["at"])
        bars.append({"x": round(x + slot * 0.1, 1), "y": round(TOP + plot_h - h, 1),
                     "w": round(max(1.0, slot * 0.8), 1), "h": round(h, 1),
                     "tip": f"{when:%Y-%m-%d %H:%M} UTC: {point['processed']} processed, "
                            f"{point['failed']} failed"})
        line.append(f"{x + slot / 2:.1f},{TOP + plot_h - plot_h * point['failed'] / top:.1f}")
    ticks = [{"y": round(TOP + plot_h - plot_h * share, 1), "label": f"{round(top * share):,}"}
             for share in ((0, 0.5, 1) if top >= 2 else (0, 1))]
    labels = [{"x": round(LEFT + i * slot + slot / 2, 1), "label": f"{_utc(p['at']):{label_format}}"}
              for i, p in enumerate(points) if i % label_every == 0]
    return {"title": title, "width": width, "height": height, "bars": bars,
            "line": " ".join(line), "ticks": ticks, "labels": labels,
            "left": LEFT, "right": width - RIGHT, "bottom": TOP + plot_h, "label_y": height - 6,
            "processed": sum(p["processed"] for p in points),
            "failed": sum(p["failed"] for p in points), "empty": not points}


def per_hour(history: Sequence[dict], hours: int = 24) -> list[dict]:
    """The minute entries summed per hour, for the last ``hours`` hours (the current one last,
    partly over)."""
    if not history:
        return []
    last_hour = int(history[-1]["minute"]) // 3600 * 3600
    buckets = {last_hour - 3600 * i: {"at": last_hour - 3600 * i, "processed": 0, "failed": 0}
               for i in range(hours)}
    for entry in history:
        hour = int(entry["minute"]) // 3600 * 3600
        if hour in buckets:
            buckets[hour]["processed"] += int(entry.get("processed") or 0)
            buckets[hour]["failed"] += int(entry.get("failed") or 0)
    return [buckets[hour] for hour in sorted(buckets)]


def per_minute(history: Sequence[dict], minutes: int = 60) -> list[dict]:
    return [{"at": int(e["minute"]), "processed": int(e.get("processed") or 0),
             "failed": int(e.get("failed") or 0)} for e in history[-minutes:]]


def history_charts(history: Sequence[dict]) -> list[dict[str, Any]]:
    """The overview's two charts from ``history(1440)``; [] when the backend keeps none."""
    if not history:
        return []
    return [bar_chart(per_minute(history), 10, "%H:%M", "Last hour, per minute"),
            bar_chart(per_hour(history), 3, "%H:00", "Last day, per hour")]


def _utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(float(epoch), datetime.timezone.utc)
