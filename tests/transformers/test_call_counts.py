"""Per-generation-step cost in function calls (``nnsight_core.testing.call_counts``), pinned.

A step of ``generate`` is one call of every module, so what a trace adds per step is
the difference between runs of ``n + 1`` and ``n`` new tokens, minus what the raw Hugging
Face ``generate`` adds per step. Counts are deterministic (same Python, torch and
transformers), so these tests guard the per-step hot path in CI: ``.all()`` saves and
edits copy their template nodes for each step, ``.next()`` records a node per step.

A failure means one generation step of a trace got dearer: the bound is what a raw
forward hook costs per call (see tests/torch/test_call_counts.py); find the new calls
with ``sys.setprofile`` and remove them, or raise the bound with a reason in the commit.
"""

from __future__ import annotations

import pytest
import torch

from nnsight_core.testing import CallCounts, call_counts
from tests.helpers import LONG

#: Python calls each generation step of a trace may add to a step of raw ``generate``: the target.
PER_STEP = 12
#: What each costs now (pinned below the target; raise only with a reason in the commit).
SAVE_PER_STEP = 5
EDIT_PER_STEP = 8
NEXT_PER_STEP = 7
#: What an empty trace adds per step: nothing (no module is hooked).
EMPTY_PER_STEP = 0


@pytest.fixture
def model(checkpoints):
    from nnsight_transformers import LanguageModel

    return LanguageModel(checkpoints["llama"], dispatch=True)


def _per_step(make) -> CallCounts:
    with torch.no_grad():
        short, long = call_counts(make(4)), call_counts(make(5))
        longer = call_counts(make(6))
    first, second = long - short, longer - long
    assert first == second, f"two generation steps cost different numbers of calls: {first} then {second}"
    return first


def _raw_step(model):
    hf, tok = model._model, model.tokenizer

    def make(n):
        return lambda: hf.generate(**tok(LONG, return_tensors="pt"), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=tok.eos_token_id)
    return _per_step(make)


def _traced(model, body):
    def make(n):
        def run():
            with model.generate(LONG, max_new_tokens=n, min_new_tokens=n, do_sample=False) as tracer:
                body(tracer, n)
        return run
    return make


def test_an_empty_generation_trace_adds_nothing_per_step(model):
    extra = _per_step(_traced(model, lambda tracer, n: None)) - _raw_step(model)
    assert extra.python <= EMPTY_PER_STEP, (
        f"an empty generation trace now adds {extra.python} Python calls per step: something "
        "runs per model call although the graph hooks no module.")


def test_an_all_save_costs_at_most_a_raw_hook_per_step(model):
    def body(tracer, n):
        model.lm_head.all().output.save()

    extra = _per_step(_traced(model, body)) - _raw_step(model)
    assert extra.python <= SAVE_PER_STEP <= PER_STEP, (
        f"`.all().output.save()` now costs {extra.python} Python calls per generation step (bound "
        f"{SAVE_PER_STEP}): copying iteration templates per step got dearer.")


def test_an_iter_edit_costs_at_most_a_raw_hook_per_step(model):
    def body(tracer, n):
        with tracer.iter[:]:
            model.model.layers[0].output[:, -1] = 0

    extra = _per_step(_traced(model, body)) - _raw_step(model)
    assert extra.python <= EDIT_PER_STEP <= PER_STEP, (
        f"an in-place edit in `tracer.iter[:]` now costs {extra.python} Python calls per generation "
        f"step (bound {EDIT_PER_STEP}).")


def test_a_next_step_costs_at_most_a_raw_hook(model):
    def body(tracer, n):
        head = model.lm_head
        head.output.save()
        for _ in range(n - 1):
            head.next().output.save()

    extra = _per_step(_traced(model, body)) - _raw_step(model)
    assert extra.python <= NEXT_PER_STEP <= PER_STEP, (
        f"one `.next().output.save()` per generation step now costs {extra.python} Python calls "
        f"(bound {NEXT_PER_STEP}).")
