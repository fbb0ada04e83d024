"""Overhead of LanguageModel traces on a GPU, as ratios to the raw model in the same run.

Prepared for a CUDA machine; runs on the CPU too (``--device cpu``), and with ``--tiny``
on a 2-layer Llama built from a config (no checkpoint), which is how the test suite checks
that the script runs::

    .venv/bin/python benchmarks/gpu.py                          # SmolLM2-135M, bf16, cuda
    .venv/bin/python benchmarks/gpu.py --device cpu --dtype float32 --tiny --rounds 3

Cases (autograd off; every raw case includes its tokenizer call, as a trace tokenizes too):

* ``raw``            ``hf(**tokenizer(prompt))``
* ``empty``          ``with model.trace(prompt): pass``                          target <= 1.01
* ``save all``       every decoder layer's ``.output.save()`` (30 on SmolLM2)    target <= 1.02
* ``1 edit``         ``model.model.layers[L // 3].mlp.output[:] = 0``            target <= 1.02
* ``raw generate``   ``hf.generate(..., max_new_tokens=N, min_new_tokens=N)`` (N = 50)
* ``generate saves`` the same traced, saving ``lm_head``'s output at every step
  (``model.lm_head.all().output.save()``)                                    target <= 1.02
* ``raw batch``      one padded batch of B prompts (B = 32) through ``hf``
* ``B invokes``      one trace with one invoke per prompt, each saving its last logits
                                                                              target <= 1.02

Timing: interleaved rounds (as ``overhead.py``), each case's calls followed by
``torch.cuda.synchronize()`` on CUDA so the time covers the kernels, not only their launch.
The table prints the median per call, the ratio to the section's raw case (median over
rounds of the paired ratio), and each case's Python/C calls (``call_counts``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

import nnsight_core
from _timing import count_calls, measure, quartiles  # benchmarks/ is on sys.path when run as a script
from nnsight_transformers import LanguageModel

PROMPT = "The Eiffel Tower is in the city of"
TARGETS = {"empty": 1.01, "save all": 1.02, "1 edit": 1.02, "generate saves": 1.02, "invokes": 1.02}
SECTIONS = {"forward": "raw", "generate": "raw generate", "batch": "raw batch"}


def load(args: argparse.Namespace) -> LanguageModel:
    if args.tiny:
        from nnsight_transformers.testing import tiny_llama_checkpoint
        folder = tiny_llama_checkpoint()
    else:
        from nnsight_transformers import smollm2_checkpoint
        folder = smollm2_checkpoint(progress=lambda message: print(message, file=sys.stderr))
    model = LanguageModel(folder, dispatch=True, torch_dtype=getattr(torch, args.dtype))
    return model.to(args.device)


def make_cases(model: LanguageModel, args: argparse.Namespace, sync: Callable[[], None]
               ) -> Dict[str, Dict[str, Callable[[int], None]]]:
    hf, tok = model._model, model.tokenizer
    device = torch.device(args.device)
    layers = model.model.layers
    edited = layers[len(layers) // 3]
    prompts = [f"{PROMPT} number {k}" if k % 2 else f"Prompt {k} is" for k in range(args.invokes)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    steps = args.new_tokens

    def encode(texts):
        enc = tok(texts, return_tensors="pt", padding=True, return_token_type_ids=False)
        return {key: value.to(device) for key, value in enc.items()}

    def timed(body: Callable[[], None]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                body()
            sync()
        return run

    def empty() -> None:
        with model.trace(PROMPT):
            pass

    def save_all() -> None:
        with model.trace(PROMPT):
            for layer in layers:
                layer.output.save()

    def edit() -> None:
        with model.trace(PROMPT):
            edited.mlp.output[:] = 0

    def raw_generate() -> None:
        hf.generate(**encode(PROMPT), max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                    pad_token_id=pad)

    def generate_saves() -> None:
        with model.generate(PROMPT, max_new_tokens=steps, min_new_tokens=steps, do_sample=False):
            model.lm_head.all().output.save()

    def raw_batch() -> None:
        enc = encode(prompts)
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        hf(**enc, position_ids=positions).logits[:, -1]

    def invokes() -> None:
        with model.trace() as tracer:
            for text in prompts:
                with tracer.invoke(text):
                    model.lm_head.output[:, -1].save()

    return {
        "forward": {"raw": timed(lambda: hf(**encode(PROMPT))), "empty": timed(empty),
                    "save all": timed(save_all), "1 edit": timed(edit)},
        "generate": {"raw generate": timed(raw_generate), "generate saves": timed(generate_saves)},
        "batch": {"raw batch": timed(raw_batch), f"{args.invokes} invokes": timed(invokes)},
    }


def report(section: str, per_round: Dict[str, List[float]], counts) -> None:
    raw_name = SECTIONS[section]
    raws = per_round[raw_name]
    print(f"  {section}")
    for name, values in per_round.items():
        paired = [v / r for v, r in zip(values, raws)]
        ratio = statistics.median(paired)
        lo, hi = quartiles(paired)
        target = TARGETS["invokes"] if name.endswith("invokes") else TARGETS.get(name)
        verdict = "" if name == raw_name or target is None else \
            f"{'ok  ' if ratio <= target else 'MISS'} (target <= {target:g})"
        count = counts[name]
        print(f"    {name:<16} {statistics.median(values):>10.3f} ms  x raw {ratio:7.4f} "
              f"({lo:.4f}-{hi:.4f})  calls {count.python}/{count.c}  {verdict}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--dtype", default="bfloat16", help="torch dtype name (default bfloat16)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer Llama from a config instead of SmolLM2")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20)")
    parser.add_argument("--calls", type=int, default=5, help="calls per case per round (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up rounds dropped (default 2)")
    parser.add_argument("--new-tokens", type=int, default=50, help="generated tokens (default 50)")
    parser.add_argument("--invokes", type=int, default=32, help="invokes of the batch case (default 32)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = load(args)
    print(f"python {platform.python_version()}, torch {torch.__version__}, nnsight_core "
          f"{nnsight_core.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{args.dtype}, {'tiny Llama' if args.tiny else 'SmolLM2-135M'}, "
          f"{len(model.model.layers)} layers; {args.rounds} rounds x {args.calls} calls")
    with torch.no_grad():
        cases = make_cases(model, args, sync)
        for section, section_cases in cases.items():
            counts = count_calls(section_cases)
            start = time.perf_counter()
            per_round = measure(section_cases, args.rounds, args.calls, args.warmup, unit_ns=1e6)
            report(section, per_round, counts)
            print(f"    ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
