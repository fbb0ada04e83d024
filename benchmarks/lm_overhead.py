"""Overhead of LanguageModel tracing on a real model, relative to plain Hugging Face code.

Run by hand, never in CI (it needs the SmolLM2 checkpoint cache, and about
four minutes on two CPU cores)::

    .venv/bin/python benchmarks/lm_overhead.py                    # all three sections
    .venv/bin/python benchmarks/lm_overhead.py --sections a c     # some of them
    .venv/bin/python benchmarks/lm_overhead.py --threads 1
    .venv/bin/python benchmarks/lm_overhead.py --profile          # cProfile of '100 invokes'
    .venv/bin/python benchmarks/lm_overhead.py --profile "30 saves" --profile-calls 20

Model: SmolLM2-135M-Instruct (``smollm2_checkpoint()``), fp32, CPU, autograd
off for every case (``torch.no_grad()``), ``torch.set_num_threads(--threads)``
with all CPUs (``os.cpu_count()``) by default. The raw cases run the very module
the LanguageModel wraps (``model._model``), so weights and kernels are shared.
Every raw case includes its tokenizer call, since a trace given text tokenizes
it too.

(a) forward, prompt "The Eiffel Tower is in the city of" (9 tokens):

* ``raw``       ``hf(**tokenizer(prompt))``
* ``empty``     ``with model.trace(prompt): pass``             target <= 1.01 x raw
* ``30 saves``  every decoder layer's output ``.save()``d      target <= 1.02 x raw
* ``1 edit``    ``model.model.layers[10].mlp.output[:] = 0``   target <= 1.02 x raw

(b) generation, same prompt, 20 new tokens, greedy:

* ``raw generate``   ``hf.generate(**tokenizer(prompt), max_new_tokens=20, do_sample=False)``
* ``empty generate`` ``with model.generate(prompt, max_new_tokens=20, do_sample=False): pass``
  (shown to split the cost; no target)
* ``20 saves``       the same, saving ``model.lm_head.output`` at each of the 20
  steps (``model.lm_head.next()`` moves to the next step)   target <= 1.02 x raw

(c) batching, 100 short prompts (5-12 tokens):

* ``raw batch``   ``hf(**tokenizer(prompts, padding=True))`` (left padding, position ids
  from the attention mask, as LanguageModel passes them), keeping ``logits[:, -1]``
* ``100 invokes`` one trace, one invoke per prompt, each saving
  ``model.lm_head.output.t[-1]``                 target time <= 1.02 x, peak memory <= 1.1 x

Below each case the table prints its function calls (``nnsight_core.testing.call_counts``
of one call: Python / C calls, and Python calls more than the section's raw case), the
cost measure that does not depend on the machine.

Timing method (as ``overhead.py``): interleaved rounds. Every round runs each
case of a section ``calls`` times back to back, in an order rotated by one case
per round, and records that round's mean time per call; warm-up rounds are
dropped. The table shows, per case, the median over rounds, the 25th-75th
percentile of rounds, and the ratio to the section's raw case two ways: "x raw
paired" is the median over rounds of (the case's time / raw's time in the same
round), which cancels slow drifts of the machine's speed and is what the
targets are checked against; "x raw of medians" divides the two medians.

Peak memory (c): each case runs in a fresh subprocess that loads the model,
warms up on two prompts, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``;
loading peaks higher than any forward pass) and reads the peak RSS (``VmHWM``,
or ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` where the mark cannot be
reset) before and after one run of the case. The children run with
``MALLOC_MMAP_THRESHOLD_=131072`` (unless set already), so freed tensors leave
the RSS at once and repeated runs agree to within a MiB. The growth of the peak
RSS is the memory the case needed beyond the loaded model; it is measured
``--mem-repeats`` times per case (alternating) and the median is reported.

On a shared or virtual machine the speed of the model itself drifts by several
percent from round to round (see the p25-p75 columns), which is more than the
1-2 % being measured: compare a case with its raw case only within one run,
use more rounds (``--rounds``), try ``--threads 1 --clock cpu``, and read the
spread before calling a target met or missed. ``--profile`` shows where the
time of one case goes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

import nnsight_core
from _timing import count_calls, measure, profile_report, quartiles  # benchmarks/ is on sys.path as a script
from nnsight_transformers import LanguageModel, smollm2_checkpoint

PROMPT = "The Eiffel Tower is in the city of"
NEW_TOKENS = 20
N_PROMPTS = 100
EDIT_LAYER = 10

#: (section, case) -> target ratio to the section's raw case.
TARGETS = {"empty": 1.01, "30 saves": 1.02, "1 edit": 1.02, "20 saves": 1.02, "100 invokes": 1.02}
TARGET_MEMORY = 1.1

#: section -> (raw case, default rounds, calls per round, warm-up rounds)
SECTIONS = {
    "a": ("raw", 80, 1, 3),
    "b": ("raw generate", 10, 1, 1),
    "c": ("raw batch", 7, 1, 1),
}
TITLES = {"a": "(a) forward, 1 prompt of 9 tokens",
          "b": f"(b) generate {NEW_TOKENS} new tokens, greedy",
          "c": f"(c) {N_PROMPTS} prompts in one batch"}


def prompts(n: int = N_PROMPTS) -> List[str]:
    """``n`` short factual prompts of different lengths (5 to 12 tokens)."""
    subjects = ["The Eiffel Tower", "The Colosseum", "Big Ben", "The Statue of Liberty",
                "The Brandenburg Gate", "The Sagrada Familia", "The Golden Gate Bridge",
                "The Kremlin", "The Acropolis", "Machu Picchu"]
    templates = ["{} is in the city of", "{} is located in", "People visit {} in",
                 "{} stands in", "You can see {} in the country of", "{} was built in",
                 "The closest airport to {} is in", "{} is a famous", "Tourists love {} because",
                 "{}"]
    out = [t.format(s) for t in templates for s in subjects]
    return out[:n]


def load(threads: int) -> Tuple[LanguageModel, torch.nn.Module, object]:
    torch.set_num_threads(threads)
    model = LanguageModel(smollm2_checkpoint(progress=lambda msg: print(msg, file=sys.stderr)),
                          dispatch=True)
    return model, model._model, model.tokenizer


def make_cases(model: LanguageModel, hf: torch.nn.Module, tok) -> Dict[str, Dict[str, Callable[[int], None]]]:
    """Each case runs its body ``n`` times; the loop lives inside so harness cost stays out."""
    pad = tok.pad_token_id
    batch = prompts()
    layers = model.model.layers

    def raw(n: int) -> None:
        for _ in range(n):
            hf(**tok(PROMPT, return_tensors="pt", return_token_type_ids=False))

    def empty(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT):
                pass

    def saves30(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT):
                for layer in layers:
                    layer.output.save()

    def edit1(n: int) -> None:
        for _ in range(n):
            with model.trace(PROMPT):
                layers[EDIT_LAYER].mlp.output[:] = 0

    def raw_generate(n: int) -> None:
        for _ in range(n):
            enc = tok(PROMPT, return_tensors="pt", return_token_type_ids=False)
            hf.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad)

    def empty_generate(n: int) -> None:
        for _ in range(n):
            with model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False):
                pass

    def saves20(n: int) -> None:
        for _ in range(n):
            with model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False):
                model.lm_head.output.save()
                for _step in range(NEW_TOKENS - 1):
                    model.lm_head.next().output.save()

    def raw_batch(n: int) -> None:
        for _ in range(n):
            enc = tok(batch, padding=True, return_tensors="pt", return_token_type_ids=False)
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            last = hf(**enc, position_ids=positions).logits[:, -1]  # noqa: F841 - kept like the saves

    def invokes100(n: int) -> None:
        for _ in range(n):
            with model.trace() as tracer:
                for text in batch:
                    with tracer.invoke(text):
                        model.lm_head.output.t[-1].save()

    return {
        "a": {"raw": raw, "empty": empty, "30 saves": saves30, "1 edit": edit1},
        "b": {"raw generate": raw_generate, "empty generate": empty_generate, "20 saves": saves20},
        "c": {"raw batch": raw_batch, "100 invokes": invokes100},
    }


def check(model: LanguageModel, hf: torch.nn.Module, tok) -> None:
    """Make sure every case computes what it claims before timing it."""
    enc = tok(PROMPT, return_tensors="pt", return_token_type_ids=False)
    hidden = []
    handles = [layer.register_forward_hook(lambda m, a, out: hidden.append(out))
               for layer in hf.model.layers]
    try:
        logits = hf(**enc).logits
    finally:
        for h in handles:
            h.remove()
    with model.trace(PROMPT) as tracer:
        saved = [layer.output.save() for layer in model.model.layers]
    assert len(saved) == len(hidden) == 30
    for got, want in zip(saved, hidden):
        torch.testing.assert_close(got.value, want)
    torch.testing.assert_close(tracer.output.logits, logits)

    with model.trace(PROMPT) as tracer:
        model.model.layers[EDIT_LAYER].mlp.output[:] = 0
    handle = hf.model.layers[EDIT_LAYER].mlp.register_forward_hook(lambda m, a, out: out * 0)
    try:
        edited = hf(**enc).logits
    finally:
        handle.remove()
    torch.testing.assert_close(tracer.output.logits, edited)
    assert not torch.allclose(edited, logits), "the edit case changed nothing"

    ids = hf.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
    with model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False):
        steps = [model.lm_head.output.save()]
        steps += [model.lm_head.next().output.save() for _ in range(NEW_TOKENS - 1)]
        generated = model.generator.output.save()
    assert torch.equal(generated.value, ids), "model.generate produced other tokens than raw generate"
    chosen = torch.stack([s.value[0, -1].argmax() for s in steps])
    assert torch.equal(chosen, ids[0, -NEW_TOKENS:]), "the saved step logits do not match the tokens"

    batch = prompts()
    enc = tok(batch, padding=True, return_tensors="pt", return_token_type_ids=False)
    positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    last = hf(**enc, position_ids=positions).logits[:, -1]
    with model.trace() as tracer:
        saved = []
        for text in batch:
            with tracer.invoke(text):
                saved.append(model.lm_head.output.t[-1].save())
    torch.testing.assert_close(torch.cat([s.value for s in saved]), last)


# -- timing ------------------------------------------------------------------------------

def verdict(value: float, target: Optional[float]) -> str:
    if target is None:
        return ""
    return f"{'ok  ' if value <= target else 'MISS'} (<= {target:g})"


# -- peak memory ---------------------------------------------------------------------------

def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: ``5`` into ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mib(reset_worked: bool) -> float:
    """Peak RSS in MiB: ``VmHWM`` when the mark could be reset, else ``ru_maxrss``."""
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def memory_child(case: str, threads: int) -> None:
    """Run in a fresh process: print JSON with the peak RSS before and after one run of ``case``.

    Loading the model peaks higher than a forward pass, so the peak mark is
    reset after the warm-up where the kernel allows it (Linux); elsewhere
    ``ru_maxrss`` is used and the load peak may hide the case's own.
    """
    model, hf, tok = load(threads)
    cases = make_cases(model, hf, tok)["c"]
    fn = cases[case]
    with torch.no_grad():
        # Warm up on two prompts, so one-time allocations (kernels, caches) are not counted.
        few = prompts(2)
        enc = tok(few, padding=True, return_tensors="pt", return_token_type_ids=False)
        hf(**enc)
        with model.trace() as tracer:
            for text in few:
                with tracer.invoke(text):
                    model.lm_head.output.t[-1].save()
        gc.collect()
        reset = _reset_peak()
        before = _peak_mib(reset)
        fn(1)
        after = _peak_mib(reset)
    print(json.dumps({"case": case, "before_mib": before, "after_mib": after, "hwm": reset}))


def measure_memory(threads: int, repeats: int) -> Dict[str, List[Tuple[float, float]]]:
    results: Dict[str, List[Tuple[float, float]]] = {"raw batch": [], "100 invokes": []}
    # A fixed mmap threshold makes glibc return every large tensor to the kernel when it is
    # freed, so RSS follows live tensor memory; with the default dynamic threshold the
    # same run varies by +-50 MiB. Set the variable yourself to override it.
    env = {**os.environ}
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    for _ in range(repeats):
        for case in results:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--memory-child", case,
                 "--threads", str(threads)],
                capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"memory subprocess for {case!r} failed:\n{proc.stderr}")
            data = json.loads(proc.stdout.strip().splitlines()[-1])
            results[case].append((data["before_mib"], data["after_mib"]))
    return results


# -- report ------------------------------------------------------------------------------------

def report(timings: Dict[str, Dict[str, List[float]]],
           memory: Optional[Dict[str, List[Tuple[float, float]]]], clock: str = "wall",
           counts: Optional[Dict[str, object]] = None) -> None:
    unit = "ms" if clock == "wall" else "cpu ms"
    print(f"\n{'case':<16} {'median ' + unit:>10} {'p25-p75 of rounds':>19} {'rounds':>6} "
          f"{'x raw':>7} {'p25-p75 of x raw':>17} {'x raw of':>9}   target")
    print(f"{'':<16} {'per call':>10} {'':>19} {'':>6} {'paired':>7} {'':>17} {'medians':>9}")
    for section, per_round in timings.items():
        raw_name = SECTIONS[section][0]
        raws = per_round[raw_name]
        raw = statistics.median(raws)
        print("-" * 96)
        print(TITLES[section])
        for name, values in per_round.items():
            med = statistics.median(values)
            lo, hi = quartiles(values)
            paired = [v / r for v, r in zip(values, raws)]
            ratio = statistics.median(paired)
            rlo, rhi = quartiles(paired)
            target = None if name == raw_name else TARGETS.get(name)
            print(f"  {name:<14} {med:>10.2f} {lo:>9.2f} - {hi:<7.2f} {len(values):>6} "
                  f"{ratio:>7.4f} {rlo:>8.4f}-{rhi:<8.4f} {med / raw:>9.4f}   {verdict(ratio, target)}")
            if counts and name in counts:
                count, base = counts[name], counts[raw_name]
                more = "" if name == raw_name else f", {count.python - base.python:+d} Python calls over raw"
                print(f"  {'':<14} calls: {count.python} Python / {count.c} C{more}")
    if memory:
        print("-" * 96)
        print(f"(c) peak RSS (fresh process per run; MiB; median of {len(memory['raw batch'])} runs)")
        growth = {c: statistics.median(a - b for b, a in runs) for c, runs in memory.items()}
        peak = {c: statistics.median(a for _, a in runs) for c, runs in memory.items()}
        for case in memory:
            ratio = growth[case] / growth["raw batch"] if growth["raw batch"] > 0 else float("nan")
            target = None if case == "raw batch" else TARGET_MEMORY
            runs = ", ".join(f"{a - b:.0f}" for b, a in memory[case])
            print(f"  {case:<14} growth {growth[case]:8.1f}  (runs: {runs}; peak RSS {peak[case]:.0f})"
                  f"  x raw {ratio:6.3f}   {verdict(ratio, target)}")


# -- profile -------------------------------------------------------------------------------------

def profile(cases: Dict[str, Callable[[int], None]], name: str, calls: int, top: int) -> None:
    fn = cases[name]
    fn(1)  # warm up outside the profiler
    profiler = cProfile.Profile()
    profiler.enable()
    start = time.perf_counter()
    fn(calls)
    wall = time.perf_counter() - start
    profiler.disable()

    profile_report(profiler, calls, f"cProfile of {name!r}, {calls} call(s): "
                   f"{wall / calls * 1e3:.1f} ms per call under the profiler", top,
                   [("/nnsight_core/", "nnsight_core"), ("/nnsight_torch/", "nnsight_torch"),
                    ("/nnsight_transformers/", "nnsight_transformers"), ("/pluggy/", "pluggy"),
                    ("/transformers/tokenization", "transformers tokenizer"),
                    ("/tokenizers/", "tokenizers"), ("/transformers/", "transformers (other)"),
                    ("/torch/", "torch (Python)")],
                   "lm_overhead.py", ("ms", 1e3))


# -- main ------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=sorted(SECTIONS),
                        help="which sections to time (default: a b c)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads (default: all CPUs, os.cpu_count())")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured rounds for every section (default a: 80, b: 10, c: 7)")
    parser.add_argument("--calls", type=int, default=None,
                        help="calls per case per round (default: 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: time.perf_counter (default); cpu: time.process_time, the CPU "
                             "time of this process (all its threads), less disturbed by other "
                             "processes on a shared machine"),
    parser.add_argument("--mem-repeats", type=int, default=3,
                        help="fresh-process peak-memory runs per case of (c) (0 skips; default 3)")
    parser.add_argument("--profile", nargs="?", const="100 invokes", default=None, metavar="CASE",
                        help="instead of timing, run CASE (default '100 invokes') under cProfile "
                             "and print the top functions by tottime")
    parser.add_argument("--profile-calls", type=int, default=3,
                        help="calls to run under the profiler (default 3)")
    parser.add_argument("--top", type=int, default=30, help="functions to list with --profile")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        memory_child(args.memory_child, args.threads)
        return 0

    model, hf, tok = load(args.threads)
    cases = make_cases(model, hf, tok)
    all_cases = {name: fn for section in cases.values() for name, fn in section.items()}
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}, nnsight_core "
          f"{nnsight_core.__version__}, {platform.machine()}, {os.cpu_count()} CPU(s), "
          f"torch threads {torch.get_num_threads()}; SmolLM2-135M-Instruct fp32, autograd off")

    with torch.no_grad():
        check(model, hf, tok)
        if args.profile:
            if args.profile not in all_cases:
                parser.error(f"--profile takes one of {sorted(all_cases)}")
            profile(all_cases, args.profile, args.profile_calls, args.top)
            return 0
        timings, counts = {}, {}
        for section in args.sections:
            _, rounds, calls, warmup = SECTIONS[section]
            rounds = args.rounds or rounds
            calls = args.calls or calls
            print(f"timing {TITLES[section]}: {rounds} rounds x {calls} call(s) per case, "
                  f"{warmup} warm-up round(s) ...", flush=True)
            clock = time.perf_counter_ns if args.clock == "wall" else time.process_time_ns
            counts.update(count_calls(cases[section]))
            timings[section] = measure(cases[section], rounds, calls, warmup, clock, unit_ns=1e6)
    memory = None
    if "c" in args.sections and args.mem_repeats > 0:
        print(f"measuring peak memory of (c) in {2 * args.mem_repeats} fresh processes ...", flush=True)
        memory = measure_memory(args.threads, args.mem_repeats)
    report(timings, memory, args.clock, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
