"""Timing helpers shared by the benchmark scripts: interleaved rounds and their quartiles."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Dict, List, Tuple


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


def quartiles(values: List[float]) -> Tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]
