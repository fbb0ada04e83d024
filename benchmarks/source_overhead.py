"""Per-trace overhead of ``envoy.source`` on one module, relative to a plain ``.output`` save.

Run by hand, never in CI::

    .venv/bin/python benchmarks/source_overhead.py
    .venv/bin/python benchmarks/source_overhead.py --rounds 60 --smollm2   # the real model

Model: the tiny 2-layer Llama of ``nnsight_transformers.testing`` (or SmolLM2-135M with
``--smollm2``), eager attention, fp32, CPU, autograd off, one prompt. Cases, each a whole
trace of one forward pass (tokenizer included):

* ``raw``             ``hf(**tokenizer(prompt))``, for scale
* ``output``          save ``layers[0].self_attn.output[0]``                        (the baseline)
* ``source``          save ``layers[0].self_attn.source.o_proj_0.output``: the attention's
                      forward runs rewritten, every call in it through the dispatcher
* ``source nested``   save ``...source.attention_interface_0.source.softmax_0.output``:
                      the attention function rewritten too

Timing: interleaved rounds (``_timing.measure``), the ratio is the median over rounds of
(case / output in the same round) with its 25th-75th percentile. Before timing, the script
checks that the saved call-site value equals the module's output.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from _timing import measure, quartiles  # benchmarks/ is on sys.path when run as a script

PROMPT = "The Eiffel Tower is in the city of"
BASE = "output"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M instead of the tiny Llama")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    from nnsight_transformers import LanguageModel

    if args.smollm2:
        from nnsight_transformers import smollm2_checkpoint
        folder = smollm2_checkpoint(progress=lambda msg: print(msg, file=sys.stderr))
    else:
        from nnsight_transformers.testing import tiny_llama_checkpoint
        folder = tiny_llama_checkpoint()
    model = LanguageModel(folder, attn_implementation="eager", dispatch=True)
    hf, tok = model._model, model.tokenizer
    attn = model.model.layers[0].self_attn

    with model.trace(PROMPT):
        site = attn.source.o_proj_0.output.save()
        whole = attn.output[0].save()
    assert torch.equal(site.value, whole.value)

    def raw(n: int) -> None:
        for _ in range(n):
            hf(**tok(PROMPT, return_tensors="pt"))

    def output(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT):
                attn.output[0].save()

    def source(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT):
                attn.source.o_proj_0.output.save()

    def nested(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT):
                attn.source.attention_interface_0.source.softmax_0.output.save()

    cases = {"raw": raw, BASE: output, "source": source, "source nested": nested}
    times = measure(cases, rounds=args.rounds, calls=args.calls, warmup=3)
    print(f"{'smollm2-135m' if args.smollm2 else 'tiny llama'}, {args.rounds} rounds x {args.calls} "
          f"traces; ratio to `{BASE}` (median, 25-75%)")
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[BASE])]
        lo, hi = quartiles(ratios)
        print(f"  {name:<14} {statistics.median(values):9.1f} us/trace   "
              f"{statistics.median(ratios):5.3f} x  ({lo:.3f}-{hi:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
