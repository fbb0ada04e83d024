"""Peak memory of N invokes in one trace against the plain batched forward pass.

Run by hand (``make bench-memory``), never in CI::

    .venv/bin/python benchmarks/memory.py                        # 32 invokes of 128 tokens
    .venv/bin/python benchmarks/memory.py --invokes 64 --tokens 256 --repeats 5
    .venv/bin/python benchmarks/memory.py --invokes 100 --tokens 64 --case "hooks, every module" \
        --case "1 invoke, cache" --case "N invokes, cache"          # tracer.cache() vs raw hooks
    .venv/bin/python benchmarks/memory.py --smollm2 --invokes 100 --tokens 16 --case ...

The model is a randomly initialised Llama (``--layers`` decoder layers of width
``--hidden``, built from a config; no download) wrapped as a ``LanguageModel``
with the offline tokenizer of ``nnsight_transformers.testing``, or SmolLM2-135M
(``--smollm2``, fp32). Every invoke is one row of ``--tokens`` random token ids;
autograd is off. ``--case NAME`` (repeatable) runs some of the cases (``plain`` always runs).

Cases:

* ``plain``            the Hugging Face module called on the (N, T) batch: the baseline.
* ``trace, 1 invoke``  one trace whose single invoke is the whole batch; saves ``lm_head`` at ``t[-1]``.
* ``N invokes``        N invokes, nothing recorded.
* ``N invokes, save``  each invoke saves its ``lm_head.output.t[-1]``.
* ``N invokes, edit``  each invoke zeroes its rows of layer 1's MLP output (an in-place edit).
* ``N invokes, lens``  each invoke saves every layer's output at ``t[-1]`` (a logit-lens read).
* ``... lens, clone``  the same, saving ``.t[-1].clone()``.
* ``hooks, every module``  raw ``register_forward_hook`` hooks on every module, each keeping the
  module's output, around one plain batched forward pass: what ``tracer.cache()`` keeps, by hand.
* ``1 invoke, cache``  one trace whose single invoke is the whole batch, ``tracer.cache()`` of every module.
* ``N invokes, cache``  N invokes, ``tracer.cache()`` (trace-wide: each invoke's rows of every module).
  Target: at most 1.05x ``hooks, every module`` (printed below the table).
* ``plain, loop``      N forward passes of one row each, keeping a number from each.
* ``N traces, loop``   N traces of one row each, saving ``lm_head``'s output and keeping a number
  from it: a trace nobody keeps must be freed at once (with its output and saved values), not
  when Python's cycle collector next runs. Compare with ``plain, loop``.

What is measured: each case runs once in a fresh subprocess. After the model and
inputs are built and a small warm-up forward pass ran, the process resets its
resident-set high-water mark (``/proc/self/clear_refs``, Linux) and notes its
resident set size; after the case it reads the high-water mark (``VmHWM``). The
table shows the difference, the extra memory the case needed at its peak, as the
median over ``--repeats`` processes, and its ratio to ``plain``. Where
``clear_refs`` is not writable it falls back to ``ru_maxrss``, which also counts
the set-up's own peak. The children run with a fixed glibc mmap threshold
(``MALLOC_MMAP_THRESHOLD_``), so large freed blocks go back to the system at once
and RSS follows the live tensors; a few MiB of allocator noise remain.

A saved value that is a view (``t[-1]`` of an invoke's rows) keeps the whole
batched tensor it views alive, as any PyTorch view does: compare ``lens`` with
``lens, clone``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List

CASES = ("plain", "trace, 1 invoke", "N invokes", "N invokes, save", "N invokes, edit",
         "N invokes, lens", "N invokes, lens, clone", "hooks, every module", "1 invoke, cache",
         "N invokes, cache", "plain, loop", "N traces, loop")


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() // 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _peak_kib(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _build(args: argparse.Namespace) -> Any:
    """A LanguageModel of a random Llama (or of SmolLM2 with ``--smollm2``), and the (N, T) token ids."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from nnsight_transformers import LanguageModel

    if args.smollm2:
        from nnsight_transformers import smollm2_checkpoint

        model = LanguageModel(smollm2_checkpoint(progress=lambda msg: None), dispatch=True)
        vocab = model._model.config.vocab_size
        ids = torch.randint(1, vocab, (args.invokes, args.tokens), generator=torch.Generator().manual_seed(1))
        return model, ids

    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden,
                         intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=max(64, args.tokens))
    model = LanguageModel(LlamaForCausalLM(config).eval(), tokenizer=tokenizer)
    ids = torch.randint(1, len(tokenizer), (args.invokes, args.tokens),
                        generator=torch.Generator().manual_seed(1))
    return model, ids


def _case(name: str, model: Any, ids: Any) -> Callable[[], Any]:
    import torch

    layers = model.model.layers

    def plain() -> Any:
        return model._model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

    def one_invoke() -> Any:
        with model.trace(ids):
            logits = model.lm_head.output.t[-1].save()
        return logits

    def zero_layer1() -> List[Any]:
        layers[1].mlp.output[:] = 0
        return []

    def hooks_every_module() -> Any:
        kept: List[Any] = []
        handles = [module.register_forward_hook(lambda m, args, output: kept.append(output))
                   for _, module in model._model.named_modules()]
        try:
            model._model(input_ids=ids, attention_mask=torch.ones_like(ids))
        finally:
            for handle in handles:
                handle.remove()
        return kept

    def cache_one_invoke() -> Any:
        with model.trace(ids) as tracer:
            cache = tracer.cache()
        return cache

    def cache_invokes() -> Any:
        with model.trace() as tracer:
            caches = tracer.cache()             # every module, for each invoke as it closes
            for row in ids:
                with tracer.invoke(row):
                    pass
        return caches

    def plain_loop() -> Any:
        means = []
        for row in ids:
            logits = model._model(input_ids=row[None], attention_mask=torch.ones_like(row[None])).logits
            means.append(float(logits[0, -1].mean()))
        return means

    def traces_loop() -> Any:
        means = []
        for row in ids:
            with model.trace(row):
                logits = model.lm_head.output.save()
            means.append(float(logits.value[0, -1].mean()))
        return means

    def invokes(record: Callable[[], List[Any]]) -> Callable[[], Any]:
        def run() -> Any:
            kept = []
            with model.trace() as tracer:
                for row in ids:
                    with tracer.invoke(row):
                        kept.extend(record())
            return kept
        return run

    return {
        "plain": plain,
        "trace, 1 invoke": one_invoke,
        "N invokes": invokes(lambda: []),
        "N invokes, save": invokes(lambda: [model.lm_head.output.t[-1].save()]),
        "N invokes, edit": invokes(zero_layer1),
        "N invokes, lens": invokes(lambda: [layer.output.t[-1].save() for layer in layers]),
        "N invokes, lens, clone": invokes(lambda: [layer.output.t[-1].clone().save() for layer in layers]),
        "hooks, every module": hooks_every_module,
        "1 invoke, cache": cache_one_invoke,
        "N invokes, cache": cache_invokes,
        "plain, loop": plain_loop,
        "N traces, loop": traces_loop,
    }[name]


def child(args: argparse.Namespace) -> None:
    """Run one case in this process and print its peak as JSON."""
    import gc

    import torch

    torch.set_num_threads(1)
    model, ids = _build(args)
    with torch.no_grad():
        model._model(input_ids=ids[:1, :8])                      # warm-up: lazy kernels, imports
        run = _case(args.child, model, ids)
        gc.collect()
        reset = _reset_peak()
        before = _rss_kib()
        result = run()
        peak = _peak_kib(reset)
    del result
    print(json.dumps({"extra_kib": peak - before, "exact": reset}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--invokes", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smollm2", action="store_true",
                        help="SmolLM2-135M (smollm2_checkpoint(), fp32) instead of the random Llama")
    parser.add_argument("--case", action="append", dest="cases", metavar="NAME",
                        help="run this case (repeatable; default: all; 'plain' always runs)")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from nnsight_transformers.testing import tiny_llama_checkpoint

    wanted = ["plain"] + [c for c in (args.cases or CASES) if c != "plain"]
    unknown = [c for c in wanted if c not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; the cases are {list(CASES)}")
    args.folder = "" if args.smollm2 else tiny_llama_checkpoint()  # its tokenizer, made once for every process
    shared = [f"--{k}={getattr(args, k)}" for k in ("invokes", "tokens", "hidden", "layers", "folder")]
    shared += ["--smollm2"] if args.smollm2 else []
    # A fixed mmap threshold: glibc then returns every large freed block at once, instead of
    # raising the threshold and keeping such blocks in its heap, so RSS follows live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    results: Dict[str, float] = {}
    exact = True
    for name in wanted:
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, f"--child={name}", *shared],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"case {name!r} failed:\n{out.stderr[-3000:]}")
            report = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(report["extra_kib"] / 1024)
            exact = exact and report["exact"]
        results[name] = statistics.median(runs)
    what = "SmolLM2-135M fp32" if args.smollm2 else f"Llama {args.layers} layers x {args.hidden} wide"
    print(f"Peak memory above the set-up's resident set: N={args.invokes} invokes x {args.tokens} tokens, "
          f"{what}, median of {args.repeats} processes "
          f"({'VmHWM after clear_refs' if exact else 'ru_maxrss, includes the set-up peak'})")
    print(f"{'case':<24}{'peak MiB':>10}{'x plain':>10}")
    base = results["plain"]
    for name, mib in results.items():
        print(f"{name:<24}{mib:>10.1f}{mib / base if base > 0 else float('nan'):>10.2f}")
    if "hooks, every module" in results:
        hooks = results["hooks, every module"]
        for name in ("1 invoke, cache", "N invokes, cache"):
            if name in results:
                print(f"{name} / hooks, every module: {results[name] / hooks:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
