"""Summaries of measured latencies and rates. Pure: no I/O, nothing from slotlog."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Milliseconds over `count` samples."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of already sorted values; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency(seconds: Sequence[float]) -> Latency:
    """Summarise latencies given in seconds, reported in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    return Latency(
        count=len(ms),
        mean=sum(ms) / len(ms) if ms else math.nan,
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p99=percentile(ms, 99),
        max=ms[-1] if ms else math.nan,
    )


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0 or math.isnan(value + baseline):
        return None
    return value / baseline
