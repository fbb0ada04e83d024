"""Per-call overhead of tracing a tiny MLP, in microseconds.

Run by hand (``make bench``), never in CI::

    .venv/bin/python benchmarks/overhead.py                 # timing table
    .venv/bin/python benchmarks/overhead.py --rounds 50 --calls 500
    .venv/bin/python benchmarks/overhead.py --profile       # cProfile of the 1-save case

Cases, all on the same model and input:

* ``raw``     ``net(x)``: the plain forward pass, no nnsight at all.
* ``empty``   ``with model.trace(x): pass``
* ``1 save``  ``model.layer1.output.save()``
* ``4 saves`` the outputs of layer1, sigma1, layer2 and sigma2, each saved.
* ``1 edit``  ``model.layer1.output[:, 0] = 0``

Method: interleaved rounds. Every round runs each case ``--calls`` times back
to back, in an order rotated by one case per round (so no case always runs
first or right after the same neighbour), and records that round's mean time
per call. The table reports the median over rounds (and the spread between the
25th and 75th percentile of rounds). Warm-up rounds run first and are dropped.
Autograd is either off for every case (``torch.no_grad()``, the default) or on
for every case (``--grad``); torch runs on one thread.

A second section times a 30-layer MLP (30 ``Linear(64, 64)`` + ``ReLU`` blocks, batch 1):

* ``deep raw``       ``deep(x)``
* ``deep 30 hooks``  30 raw ``register_forward_hook`` hooks storing each block's output
  (registered, run, removed: what a user without nnsight writes)
* ``deep empty``     an empty trace
* ``deep 30 saves``  every block's ``.output.save()``

Beside each time the table prints the case's function calls (``nnsight_core.testing.call_counts``:
Python calls / C calls of one call, and Python calls more than raw), the cost measure that
does not depend on the machine; tests/torch/test_call_counts.py pins them.

Derived numbers and targets:

* fixed cost per trace = ``empty - raw``                  target <= 40 us
* per extra intervention = ``(4 saves - 1 save) / 3``     target <= 8 us
  (one intervention here is a module output read plus its ``.save()``: two
  graph nodes and one forward hook), and ``1 save - empty`` for the first one.
* 30 saves vs 30 raw hooks = ``(deep 30 saves - deep raw) / (deep 30 hooks - deep raw)``
                                                          target <= 1.5
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import platform
import statistics
import sys
from collections import OrderedDict
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

import nnsight_core
from nnsight_core.testing import CallCounts
from _timing import count_calls, measure, profile_report, quartiles  # benchmarks/ is on sys.path as a script
from nnsight_torch import NNsight

#: Targets, in microseconds per call.
TARGET_FIXED_US = 40.0
TARGET_PER_INTERVENTION_US = 8.0
#: Target of the overhead of saving all 30 layers relative to the overhead of 30 raw hooks.
TARGET_DEEP_RATIO = 1.5
DEPTH = 30


def build() -> Tuple[nn.Module, NNsight, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict([
        ("layer1", nn.Linear(5, 10)),
        ("sigma1", nn.Sigmoid()),
        ("layer2", nn.Linear(10, 2)),
        ("sigma2", nn.Sigmoid()),
    ]))
    x = torch.rand(1, 5)
    return net, NNsight(net), x


def make_cases(net: nn.Module, model: NNsight, x: torch.Tensor) -> Dict[str, Callable[[int], None]]:
    """Each case runs its body ``n`` times; the loop lives inside so harness cost stays out."""

    def raw(n: int) -> None:
        for _ in range(n):
            net(x)

    def empty(n: int) -> None:
        for _ in range(n):
            with model.trace(x):
                pass

    def save1(n: int) -> None:
        for _ in range(n):
            with model.trace(x):
                model.layer1.output.save()

    def save4(n: int) -> None:
        for _ in range(n):
            with model.trace(x):
                model.layer1.output.save()
                model.sigma1.output.save()
                model.layer2.output.save()
                model.sigma2.output.save()

    def edit1(n: int) -> None:
        for _ in range(n):
            with model.trace(x):
                model.layer1.output[:, 0] = 0

    return {"raw": raw, "empty": empty, "1 save": save1, "4 saves": save4, "1 edit": edit1}


def build_deep() -> Tuple[nn.Module, NNsight, torch.Tensor]:
    torch.manual_seed(0)
    deep = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(DEPTH)])
    return deep, NNsight(deep), torch.rand(1, 64)


def make_deep_cases(deep: nn.Module, model: NNsight, x: torch.Tensor) -> Dict[str, Callable[[int], None]]:
    blocks = list(deep)
    envoys = list(model)

    def raw(n: int) -> None:
        for _ in range(n):
            deep(x)

    def hooks(n: int) -> None:
        for _ in range(n):
            kept: List[torch.Tensor] = []
            handles = [block.register_forward_hook(lambda m, a, out: kept.append(out)) for block in blocks]
            try:
                deep(x)
            finally:
                for handle in handles:
                    handle.remove()

    def empty(n: int) -> None:
        for _ in range(n):
            with model.trace(x):
                pass

    def saves(n: int) -> None:
        for _ in range(n):
            with model.trace(x):
                for envoy in envoys:
                    envoy.output.save()

    return {"deep raw": raw, f"deep {DEPTH} hooks": hooks, "deep empty": empty, f"deep {DEPTH} saves": saves}


def check_deep(deep: nn.Module, model: NNsight, x: torch.Tensor) -> None:
    with model.trace(x):
        saved = [envoy.output.save() for envoy in model]
    torch.testing.assert_close(saved[-1].value, deep(x))


def check(net: nn.Module, model: NNsight, x: torch.Tensor) -> None:
    """Make sure every case does what it claims before timing it."""
    expected = net.layer1(x)
    with model.trace(x):
        h = model.layer1.output.save()
    torch.testing.assert_close(h.value, expected)
    with model.trace(x):
        saved = [model.layer1.output.save(), model.sigma1.output.save(),
                 model.layer2.output.save(), model.sigma2.output.save()]
    torch.testing.assert_close(saved[-1].value, net(x))
    with model.trace(x) as tracer:
        model.layer1.output[:, 0] = 0
        h = model.layer1.output.save()
    assert float(h.value.detach()[0, 0]) == 0.0, "the edit case did not edit layer1's output"
    edited = expected.clone()
    edited[:, 0] = 0
    torch.testing.assert_close(tracer.output, net[1:](edited))


def verdict(value: float, target: float) -> str:
    return f"{'ok  ' if value <= target else 'MISS'} (target <= {target:g} us)"


def report(per_round: Dict[str, List[float]], args: argparse.Namespace, grad_mode: str,
           counts: Dict[str, CallCounts]) -> None:
    med = {name: statistics.median(v) for name, v in per_round.items()}
    raw = med["raw"]
    print(f"\n{'case':<14} {'median us/call':>15} {'p25-p75 of rounds':>19} {'best round':>11} "
          f"{'median - raw':>13} {'calls py/C':>12} {'py - raw':>9}")
    print("-" * 100)
    for name, values in per_round.items():
        lo, hi = quartiles(values)
        base = "deep raw" if name.startswith("deep") else "raw"
        minus = "" if name == base else f"{med[name] - med[base]:+13.2f}"
        count = counts[name]
        more = "" if name == base else f"{count.python - counts[base].python:+9d}"
        print(f"{name:<14} {med[name]:>15.2f} {lo:>9.2f} - {hi:<7.2f} {min(values):>11.2f} {minus:>13} "
              f"{f'{count.python}/{count.c}':>12} {more:>9}")

    fixed = med["empty"] - raw
    extra = (med["4 saves"] - med["1 save"]) / 3
    first = med["1 save"] - med["empty"]
    edit = med["1 edit"] - med["empty"]
    print("\nderived (from medians):")
    print(f"  fixed cost per trace     empty - raw              {fixed:8.2f} us   "
          f"{verdict(fixed, TARGET_FIXED_US)}")
    print(f"  per extra intervention   (4 saves - 1 save) / 3   {extra:8.2f} us   "
          f"{verdict(extra, TARGET_PER_INTERVENTION_US)}")
    print(f"  first intervention       1 save - empty           {first:8.2f} us   "
          f"{verdict(first, TARGET_PER_INTERVENTION_US)}")
    print(f"  one in-place edit        1 edit - empty           {edit:8.2f} us")
    py = {name: count.python for name, count in counts.items()}
    print(f"  Python calls: empty trace +{py['empty'] - py['raw']} over raw, first save "
          f"+{py['1 save'] - py['empty']}, each further save +{(py['4 saves'] - py['1 save']) / 3:g}, "
          f"one edit +{py['1 edit'] - py['empty']}")
    if f"deep {DEPTH} saves" in med:
        deep_raw = med["deep raw"]
        ratio = (med[f"deep {DEPTH} saves"] - deep_raw) / (med[f"deep {DEPTH} hooks"] - deep_raw)
        print(f"  {DEPTH} saves vs {DEPTH} hooks (saves - raw) / (hooks - raw)  {ratio:6.2f} x     "
              f"{'ok  ' if ratio <= TARGET_DEEP_RATIO else 'MISS'} (target <= {TARGET_DEEP_RATIO:g})")
    print(f"\n{args.rounds} rounds x {args.calls} calls per case, {args.warmup} warm-up round(s) "
          f"dropped; {grad_mode}.")


def profile(cases: Dict[str, Callable[[int], None]], calls: int, top: int) -> None:
    fn = cases["1 save"]
    fn(max(calls // 10, 10))  # warm up outside the profiler
    profiler = cProfile.Profile()
    profiler.enable()
    fn(calls)
    profiler.disable()

    profile_report(profiler, calls, f"cProfile of the '1 save' case, {calls} traces", top,
                   [("/nnsight_core/", "nnsight_core"), ("/nnsight_torch/", "nnsight_torch"),
                    ("/pluggy/", "pluggy"), ("/torch/utils/_pytree", "torch pytree"),
                    ("/torch/", "torch (Python)")],
                   "overhead.py", ("us", 1e6))


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="measured rounds (default 30)")
    parser.add_argument("--calls", type=int, default=200,
                        help="calls of each case per round (default 200)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up rounds dropped (default 3)")
    parser.add_argument("--grad", action="store_true",
                        help="leave autograd on for every case (default: torch.no_grad() for all)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing, run the '1 save' case under cProfile and print "
                             "the top functions by tottime")
    parser.add_argument("--profile-calls", type=int, default=5000,
                        help="traces to run under the profiler (default 5000)")
    parser.add_argument("--top", type=int, default=25, help="functions to list with --profile")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1 or args.warmup < 0:
        parser.error("--rounds and --calls must be >= 1, --warmup >= 0")

    torch.set_num_threads(1)
    net, model, x = build()
    cases = make_cases(net, model, x)
    deep, deep_model, deep_x = build_deep()
    if not args.profile:
        cases.update(make_deep_cases(deep, deep_model, deep_x))
    grad_mode = ("autograd ON for every case (--grad)" if args.grad
                 else "autograd OFF for every case (torch.no_grad())")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"nnsight_core {nnsight_core.__version__}, torch threads {torch.get_num_threads()}, "
          f"{platform.machine()}")
    print(grad_mode)

    with contextlib.nullcontext() if args.grad else torch.no_grad():
        check(net, model, x)
        check_deep(deep, deep_model, deep_x)
        if args.profile:
            profile(cases, args.profile_calls, args.top)
        else:
            counts = count_calls(cases)
            per_round = measure(cases, args.rounds, args.calls, args.warmup)
            report(per_round, args, grad_mode, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
