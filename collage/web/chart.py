"""The throughput chart's geometry: stacked bars per hour, drawn as inline SVG by a template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

WIDTH, HEIGHT = 720, 160  # the SVG's own units; CSS scales it to the page
AXIS = 18  # room under the bars for the hour labels
SERIES = (("built", "built"), ("errors", "error"), ("retries", "retry"))


@dataclass(frozen=True)
class Segment:
    """One coloured part of a bar."""

    kind: str
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    """One hour: where it is drawn, its parts, its label and its tooltip."""

    x: float
    width: float
    segments: tuple[Segment, ...]
    label: str | None
    title: str


@dataclass(frozen=True)
class Chart:
    """What the template draws: the bars, the tallest hour and the day's totals."""

    width: int
    height: int
    baseline: float
    bars: tuple[Bar, ...]
    peak: int
    totals: dict[str, int]


def throughput(hours: Sequence[dict[str, Any]]) -> Chart:
    """Lay out one stacked bar per hour (built, errors, retries), scaled to the busiest hour."""
    baseline = HEIGHT - AXIS
    peak = max((sum(int(h[name]) for name, _ in SERIES) for h in hours), default=0)
    slot = WIDTH / max(len(hours), 1)
    bars = []
    for n, hour in enumerate(hours):
        top: float = baseline
        segments = []
        for name, kind in SERIES:
            size: float = baseline * int(hour[name]) / peak if peak else 0.0
            if size > 0:
                # A single event still shows: at least one unit high.
                size = max(size, 1.0)
                top -= size
                segments.append(Segment(kind, round(top, 2), round(size, 2)))
        start = hour["hour"].astimezone(UTC)
        label = f"{start:%H}h" if n % 3 == 0 else None
        title = f"{start:%Y-%m-%d %H}:00 UTC: " + ", ".join(
            f"{int(hour[name]):,} {name}" for name, _ in SERIES
        )
        bars.append(Bar(round(n * slot + 1, 2), round(slot - 2, 2), tuple(segments), label, title))
    totals = {name: sum(int(h[name]) for h in hours) for name, _ in SERIES}
    return Chart(WIDTH, HEIGHT, baseline, tuple(bars), peak, totals)
