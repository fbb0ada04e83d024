"""Sessions, persistent edits and the cache on tiny GPT-2 and Llama.

Expected values come from a separately loaded plain Hugging Face model with raw
forward hooks (see conftest), never from the library under test.
"""

import pytest
import torch
from torch.utils import _pytree as pytree

from nnsight_core import CacheError
from nnsight_core.testing import hook_count

from tests.helpers import LONG, MID, MLP0, SHORT, capture, left_pad, raw_hooks

ATOL = 1e-4
STEPS = 4


def envoy(lm, path):
    for part in path.split("."):
        lm = lm[int(part)] if part.isdigit() else getattr(lm, part)
    return lm


def zero(module, args, output):
    return torch.zeros_like(output)


def hf_generate(tiny, prompt, hooks):
    ids = tiny.ids(prompt)
    with raw_hooks(tiny.hf, hooks), torch.no_grad():
        return tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=STEPS, pad_token_id=tiny.eos)


def nbytes(value):
    return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor))


# -- sessions -------------------------------------------------------------------------------------


def test_session_patches_an_unsaved_hidden_state_into_the_next_trace(lm, tiny):
    layer = f"{tiny.layers_path}.0"
    with torch.no_grad(), lm.session():
        with lm.trace(MID):
            source = envoy(lm, layer).output               # nothing saved in trace 1
        with lm.trace(LONG):
            envoy(lm, layer).output[:, -1] = source[:, -1]
            logits = lm.lm_head.output.save()

    seen = {}
    with raw_hooks(tiny.hf, {layer: capture(seen, "mid")}):
        tiny.logits(tiny.ids(MID))

    def patch(module, args, output):
        output = output.clone()
        output[:, -1] = seen["mid"][:, -1]
        return output

    with raw_hooks(tiny.hf, {layer: patch}):
        expected = tiny.logits(tiny.ids(LONG))
    torch.testing.assert_close(logits.value, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(expected, tiny.logits(tiny.ids(LONG)), atol=ATOL)
    assert hook_count(lm._model) == 0


# -- persistent edits ------------------------------------------------------------------------------


def test_an_edit_applies_to_each_invoke_like_a_raw_hook(lm, tiny):
    mlp = MLP0[tiny.arch]
    with lm.edit() as edited:
        envoy(lm, mlp).output[:] = 0
    with torch.no_grad(), edited.trace() as tracer:
        with tracer.invoke(SHORT):
            short = edited.lm_head.output.save()
        with tracer.invoke(LONG):
            long = edited.lm_head.output.save()
    with raw_hooks(tiny.hf, {mlp: zero}):
        expected_short = tiny.logits(tiny.ids(SHORT))
        expected_long = tiny.logits(tiny.ids(LONG))
    n = tiny.ids(SHORT).shape[1]
    torch.testing.assert_close(short.value[:, -n:], expected_short, atol=ATOL, rtol=0)
    torch.testing.assert_close(long.value, expected_long, atol=ATOL, rtol=0)
    with torch.no_grad(), lm.trace(LONG):                     # the original is not edited
        plain = lm.lm_head.output.save()
    torch.testing.assert_close(plain.value, tiny.logits(tiny.ids(LONG)), atol=ATOL, rtol=0)


def test_edit_of_a_lazily_loaded_model_shares_its_weights(lm, tiny):
    assert not lm.dispatched
    with lm.edit() as edited:
        envoy(lm, MLP0[tiny.arch]).output[:] = 0
    assert lm.dispatched and edited._model is lm._model
    assert edited.tokenizer is lm.tokenizer


def test_generation_with_an_edit_at_every_step(lm, tiny):
    mlp = MLP0[tiny.arch]
    with lm.edit(inplace=True):
        envoy(lm, mlp).all().output[:] = 0
    with torch.no_grad(), lm.generate(MID, max_new_tokens=STEPS, do_sample=False):
        ids = lm.generator.output.save()
    expected = hf_generate(tiny, MID, {mlp: zero})
    assert torch.equal(ids.value, expected)
    assert not torch.equal(expected, hf_generate(tiny, MID, {}))
    lm.clear_edits()
    with torch.no_grad(), lm.generate(MID, max_new_tokens=STEPS, do_sample=False):
        ids = lm.generator.output.save()
    assert torch.equal(ids.value, hf_generate(tiny, MID, {}))


def test_generation_with_an_edit_of_the_first_call_only(lm, tiny):
    mlp = MLP0[tiny.arch]
    with lm.edit() as edited:
        envoy(lm, mlp).output[:] = 0                           # call 0: the prompt's forward pass
    calls = []

    def first_only(module, args, output):
        calls.append(1)
        return torch.zeros_like(output) if len(calls) == 1 else output

    with torch.no_grad(), edited.generate(LONG, max_new_tokens=STEPS, do_sample=False):
        ids = edited.generator.output.save()
    assert torch.equal(ids.value, hf_generate(tiny, LONG, {mlp: first_only}))


def test_an_edit_and_the_traces_own_edit_of_the_same_module(lm, tiny):
    layer = f"{tiny.layers_path}.1"
    with lm.edit() as edited:
        envoy(lm, layer).output[:, 0] = 0
    with torch.no_grad(), edited.trace(LONG):
        envoy(edited, layer).output = envoy(edited, layer).output * 2
        logits = edited.lm_head.output.save()

    def both(module, args, output):
        output = output.clone()
        output[:, 0] = 0                                       # the edit first
        return output * 2                                      # then the trace's own

    with raw_hooks(tiny.hf, {layer: both}):
        expected = tiny.logits(tiny.ids(LONG))
    torch.testing.assert_close(logits.value, expected, atol=ATOL, rtol=0)


# -- cache --------------------------------------------------------------------------------------------


def test_cache_of_every_decoder_layer_equals_raw_hooks_per_invoke(lm, tiny):
    layers = [f"{tiny.layers_path}.{i}" for i in range(2)]
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            short = tracer.cache(modules=[envoy(lm, p) for p in layers])
        with tracer.invoke(LONG):
            long = tracer.cache(modules=layers)
    ids, mask = left_pad([tiny.ids(SHORT), tiny.ids(LONG)], tiny.eos)
    seen = {}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with raw_hooks(tiny.hf, {p: capture(seen, p) for p in layers}):
        tiny.logits(ids, attention_mask=mask, position_ids=positions)
    n = tiny.ids(SHORT).shape[1]
    for path in layers:
        torch.testing.assert_close(short["model." + path].output[:, -n:], seen[path][:1, -n:],
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(long[path].output, seen[path][1:], atol=ATOL, rtol=0)


def test_cache_default_and_its_estimate_on_a_language_model(lm, tiny):
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(MID):
            first = tracer.cache()
        with tracer.invoke([SHORT, LONG]):
            second = tracer.cache(include_inputs=True, dtype=torch.float16)
        estimates = first.estimate(), second.estimate()
    ran = []                                                   # modules a plain run calls
    with raw_hooks(tiny.hf, {n: lambda m, a, o, n=n: ran.append(n) for n, _ in tiny.hf.named_modules()}):
        tiny.logits(tiny.ids(MID))
    names = [n for n, _ in tiny.hf.named_modules() if n in ran]
    assert len(names) < len(list(tiny.hf.named_modules()))     # containers (ModuleList) never run
    assert list(first) == ["model." + n if n else "model" for n in names]
    real_first = sum(nbytes(entry.output) for entry in first.values())
    real_second = sum(nbytes(entry.output) + nbytes(entry.inputs) for entry in second.values())
    assert estimates == (real_first, real_second)
    assert second[f"{tiny.layers_path}.0"].output.dtype == torch.float16
    args, kwargs = second["model"].inputs                     # ids are not cast to float16
    assert args == () and kwargs["input_ids"].dtype == torch.long and kwargs["input_ids"].shape[0] == 2
    assert hook_count(lm._model) == 0


def test_cache_estimate_of_a_generation_knows_the_first_step_only(lm):
    with torch.no_grad(), lm.generate(MID, max_new_tokens=STEPS, do_sample=False) as tracer:
        first = tracer.cache(modules=["lm_head"])               # call 0: the prompt's pass
        estimate = first.estimate()
    assert estimate == nbytes(first["lm_head"].output) > 0
    with pytest.raises(CacheError, match="cannot know the size of model.lm_head.*stopped early"):
        with lm.generate(MID, max_new_tokens=STEPS, do_sample=False) as tracer:
            with tracer.all():                                  # every step: unknown after step 0
                tracer.cache(modules=["lm_head"]).estimate()
    assert hook_count(lm._model) == 0
