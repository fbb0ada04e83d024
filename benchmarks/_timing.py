"""Timing helpers shared by the benchmark scripts: interleaved rounds and their quartiles."""

from __future__ import annotations

import cProfile
import gc
import io
import os
import pstats
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

from nnsight_core.testing import CallCounts, call_counts


def measure(cases: Dict[str, Callable[[int], None]], rounds: int, calls: int, warmup: int,
            clock: Callable[[], int] = time.perf_counter_ns, unit_ns: float = 1e3) -> Dict[str, List[float]]:
    """Per-round mean time per call of each case (in units of ``unit_ns`` nanoseconds).

    Each round runs every case ``calls`` times, in an order rotated by one case
    per round, so slow drifts of the machine hit every case alike.
    """
    names = list(cases)
    per_round: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        gc.collect()
        for name in order:
            start = clock()
            cases[name](calls)
            elapsed = clock() - start
            if r >= warmup:
                per_round[name].append(elapsed / calls / unit_ns)
    return per_round


def count_calls(cases: Dict[str, Callable[[int], None]]) -> Dict[str, CallCounts]:
    """Python and C calls of one call of each case (``nnsight_core.testing.call_counts``):
    the machine-independent cost, printed beside the timings."""
    return {name: call_counts(lambda: fn(1)) for name, fn in cases.items()}


def quartiles(values: List[float]) -> Tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def profile_report(profiler: cProfile.Profile, calls: int, title: str, top: int,
                   groups: Sequence[Tuple[str, str]], script: str, unit: Tuple[str, float]) -> None:
    """Print the top functions by self time, then self time grouped by package.

    Args:
        profiler: A finished profile of ``calls`` calls.
        title: First line of the report.
        top: How many functions to list.
        groups: ``(path fragment, label)`` pairs, tried in order.
        script: File name of the benchmark script (its own frames are "benchmark loop").
        unit: ``(name, seconds-to-unit factor)`` for the per-call column, e.g. ``("us", 1e6)``.
    """
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    total = stats.total_tt
    print(f"\n{title} (the profiler inflates Python-heavy code; compare shares, not absolute times).")
    by_group: Dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        group = _group(filename, groups, script)
        by_group[group] = by_group.get(group, 0.0) + tottime
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(stream.getvalue().rstrip())
    print("\nself time by package:")
    name, factor = unit
    for group, tt in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"  {group:<26} {tt / total * 100:5.1f}%   {tt / calls * factor:8.2f} {name} per call")


def _group(filename: str, groups: Sequence[Tuple[str, str]], script: str) -> str:
    path = filename.replace(os.sep, "/")
    for key, label in groups:
        if key in path:
            return label
    if filename == "~":
        return "builtins / C"
    if path.endswith(script):
        return "benchmark loop"
    return "other (stdlib, ...)"
