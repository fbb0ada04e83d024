"""Overhead of DiffusionModel.generate relative to calling the diffusers pipeline directly.

Run by hand (``make bench-diffusion``), never in CI::

    .venv/bin/python benchmarks/diffusion_overhead.py
    .venv/bin/python benchmarks/diffusion_overhead.py --rounds 20 --steps 20 --threads 1

Pipeline: the tiny Stable-Diffusion-style pipeline of
``nnsight_diffusers.testing.tiny_stable_diffusion`` (CLIP text encoder, UNet,
VAE, DDIM; 16x16 images), loaded once with ``DiffusionPipeline.from_pretrained``
and wrapped as is (``DiffusionModel(pipeline)``), so every case runs the very
same modules. One prompt, ``--steps`` denoising steps, guidance 7.5 (the
denoiser sees two rows), ``output_type="pt"``, autograd off. A tiny pipeline
runs fast, so the fixed cost of a trace weighs more here than on a real one:
these ratios are an upper bound.

* ``raw``          ``pipeline(prompt, generator=..., num_inference_steps=steps)``
* ``empty``        ``with model.generate(prompt, seed=0, ...): pass``         target <= 1.03 x raw
* ``save / step``  the same, saving ``model.unet.output[0]`` at every step     target <= 1.03 x raw

Timing as in ``overhead.py``: interleaved rounds, each running every case
``--calls`` times in an order rotated per round; the ratio column is the median
over rounds of (case / raw in the same round).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Callable, Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import measure, quartiles  # noqa: E402

from diffusers import DiffusionPipeline  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from nnsight_diffusers import DiffusionModel  # noqa: E402
from nnsight_diffusers.testing import tiny_stable_diffusion  # noqa: E402

PROMPT = "a photo of a cat"
TARGETS = {"empty": 1.03, "save / step": 1.03}


def make_cases(pipeline: DiffusionPipeline, model: DiffusionModel, steps: int) -> Dict[str, Callable[[int], None]]:
    options = {"num_inference_steps": steps, "output_type": "pt", "guidance_scale": 7.5}

    def raw(n: int) -> None:
        for _ in range(n):
            pipeline(PROMPT, generator=[torch.Generator().manual_seed(0)], **options)

    def empty(n: int) -> None:
        for _ in range(n):
            with model.generate(PROMPT, seed=0, **options):
                pass

    def save_each_step(n: int) -> None:
        for _ in range(n):
            with model.generate(PROMPT, seed=0, **options):
                for _ in range(steps):
                    model.unet.output[0].save()
                    model.unet.next()

    return {"raw": raw, "empty": empty, "save / step": save_each_step}


def check(pipeline: DiffusionPipeline, model: DiffusionModel, steps: int) -> None:
    """Every case computes the same images, and the saved steps equal raw hooks."""
    options = {"num_inference_steps": steps, "output_type": "pt", "guidance_scale": 7.5}
    seen = []
    handle = pipeline.unet.register_forward_hook(lambda m, a, out: seen.append(out[0].clone()))
    try:
        expected = pipeline(PROMPT, generator=[torch.Generator().manual_seed(0)], **options).images
    finally:
        handle.remove()
    with model.generate(PROMPT, seed=0, **options) as tracer:
        saved = []
        for _ in range(steps):
            saved.append(model.unet.output[0].save())
            model.unet.next()
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)
    for got, want in zip(saved, seen, strict=True):
        torch.testing.assert_close(got.value, want, rtol=0, atol=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as folder:
        pipeline = DiffusionPipeline.from_pretrained(tiny_stable_diffusion(folder))
    pipeline.set_progress_bar_config(disable=True)
    model = DiffusionModel(pipeline)
    with torch.no_grad():
        check(pipeline, model, args.steps)
        per_round = measure(make_cases(pipeline, model, args.steps), args.rounds, args.calls,
                            args.warmup, unit_ns=1e6)
    raws = per_round["raw"]
    print(f"tiny SD pipeline, {args.steps} steps, guidance 7.5, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.calls} calls")
    print(f"{'case':<12} {'median ms':>10} {'p25-p75':>17} {'x raw paired':>13}   target")
    for name, values in per_round.items():
        low, high = quartiles(values)
        ratio = statistics.median(v / r for v, r in zip(values, raws))
        target = TARGETS.get(name)
        verdict = "" if target is None else f"{'ok  ' if ratio <= target else 'MISS'} (<= {target:g})"
        print(f"{name:<12} {statistics.median(values):10.2f} {low:8.2f}-{high:8.2f} {ratio:13.3f}   {verdict}")


if __name__ == "__main__":
    main()
