"""`.source` inside attention and `.skip()` of decoder layers, on tiny GPT-2 and Llama.

Expected values come from a plain eager copy of the model with raw forward hooks.
"""

import pytest
import torch

from nnsight_core.testing import hook_count

from tests.helpers import LONG, SHORT, raw_hooks

STEPS = 3
#: Per architecture: the attention module of layer 0, and its output projection's call site and module.
ATTN = {"gpt2": "transformer.h.0.attn", "llama": "model.layers.0.self_attn"}
PROJ = {"gpt2": ("c_proj_0", "c_proj"), "llama": ("o_proj_0", "o_proj")}


def envoy(model, path):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


@pytest.fixture
def eager(tiny):
    """A LanguageModel and a plain copy, both with eager attention (it returns the pattern)."""
    from transformers import AutoModelForCausalLM

    from nnsight_transformers import LanguageModel

    hf = AutoModelForCausalLM.from_pretrained(tiny.folder, attn_implementation="eager").eval()
    lm = LanguageModel(tiny.folder, attn_implementation="eager")
    # What attention_interface_0 calls is a local variable: envoys learn it from an execution of
    # this module (before one, from the latest in the process, which may have been sdpa).
    with torch.no_grad(), lm.trace(SHORT):
        envoy(lm, ATTN[tiny.arch]).source.attention_interface_0.output.save()
    return lm, hf


def raw_pattern(tiny, hf, prompt):
    seen = {}
    ids = tiny.ids(prompt)
    with raw_hooks(hf, {ATTN[tiny.arch]: lambda m, a, out: seen.update(w=out[1])}), torch.no_grad():
        logits = hf(input_ids=ids).logits
    return seen["w"], logits


def test_softmax_inside_the_attention_function_equals_the_eager_pattern(tiny, eager):
    lm, hf = eager
    with torch.no_grad(), lm.trace(LONG):
        site = envoy(lm, ATTN[tiny.arch]).source.attention_interface_0
        pattern = site.source.softmax_0.output.save()
        weights = site.output[1].save()
        logits = lm.lm_head.output.save()
    expected, plain = raw_pattern(tiny, hf, LONG)
    torch.testing.assert_close(pattern.value, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights.value, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits.value, plain, rtol=0, atol=1e-5)  # looking changed nothing
    assert hook_count(lm._model) == 0
    text = str(envoy(lm, ATTN[tiny.arch]).source.attention_interface_0.source)
    assert "softmax_0" in text and "eager_attention_forward" in text


def test_each_model_resolves_its_own_attention_function(tiny):
    # attention_interface is a local variable: what it calls is learned from an execution. Two
    # models of one class, eager and sdpa, in one process: each envoy shows its own model's callee,
    # whichever ran last.
    from nnsight_transformers import LanguageModel

    models = {impl: LanguageModel(tiny.folder, attn_implementation=impl) for impl in ("eager", "sdpa")}
    for model in models.values():
        with torch.no_grad(), model.trace(SHORT):
            envoy(model, ATTN[tiny.arch]).source.attention_interface_0.output.save()
    for impl, function in (("eager", "eager_attention_forward"), ("sdpa", "sdpa_attention_forward")):
        text = str(envoy(models[impl], ATTN[tiny.arch]).source.attention_interface_0.source)
        assert function in text, (impl, text.splitlines()[0])
    expected, _ = raw_pattern(tiny, _eager_copy(tiny), LONG)
    with torch.no_grad(), models["eager"].trace(LONG):
        site = envoy(models["eager"], ATTN[tiny.arch]).source.attention_interface_0.source.softmax_0
        pattern = site.output.save()
    torch.testing.assert_close(pattern.value, expected, rtol=0, atol=1e-6)


def _eager_copy(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny.folder, attn_implementation="eager").eval()


def test_editing_the_pattern_equals_a_raw_edit(tiny, eager):
    lm, hf = eager
    with torch.no_grad(), lm.trace(LONG):
        site = envoy(lm, ATTN[tiny.arch]).source.attention_interface_0.source.softmax_0
        site.output[:, 0] = 0                      # silence head 0 of layer 0
        logits = lm.lm_head.output.save()
    # The raw edit: torch's softmax, while layer 0's attention runs, zeroes head 0 of its result.
    module = hf.get_submodule(ATTN[tiny.arch])
    original = torch.nn.functional.softmax

    def softmax(*args, **kwargs):
        out = original(*args, **kwargs)
        out[:, 0] = 0
        return out

    handles = [module.register_forward_pre_hook(lambda m, a: setattr(torch.nn.functional, "softmax", softmax)),
               module.register_forward_hook(lambda m, a, o: setattr(torch.nn.functional, "softmax", original))]
    try:
        with torch.no_grad():
            expected = hf(input_ids=tiny.ids(LONG)).logits
    finally:
        torch.nn.functional.softmax = original
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=1e-5)


def test_call_site_rows_per_invoke_equal_solo_runs(tiny, eager):
    lm, hf = eager
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            short = envoy(lm, ATTN[tiny.arch]).source.attention_interface_0.source.softmax_0.output.save()
        with tracer.invoke(LONG):
            long = envoy(lm, ATTN[tiny.arch]).source.attention_interface_0.source.softmax_0.output.save()
    n, width = tiny.ids(SHORT).shape[1], tiny.ids(LONG).shape[1]
    assert short.value.shape[0] == long.value.shape[0] == 1
    torch.testing.assert_close(long.value, raw_pattern(tiny, hf, LONG)[0], rtol=0, atol=1e-5)
    pad = width - n  # the short prompt is left-padded: its real queries and keys are the last n
    torch.testing.assert_close(short.value[..., pad:, pad:], raw_pattern(tiny, hf, SHORT)[0], rtol=0, atol=1e-5)


def test_a_call_site_per_generation_step_equals_raw_hooks(tiny, lm):
    site, module = PROJ[tiny.arch]
    with torch.no_grad(), lm.generate(LONG, max_new_tokens=STEPS, do_sample=False):
        steps = getattr(envoy(lm, ATTN[tiny.arch]).source, site).all().output.save()
        second = getattr(envoy(lm, ATTN[tiny.arch]).source, site).next().output.save()
        ids = lm.generator.output.save()
    seen = []
    ids_in = tiny.ids(LONG)
    with raw_hooks(tiny.hf, {f"{ATTN[tiny.arch]}.{module}": lambda m, a, out: seen.append(out)}), torch.no_grad():
        expected_ids = tiny.hf.generate(input_ids=ids_in, attention_mask=torch.ones_like(ids_in),
                                        do_sample=False, max_new_tokens=STEPS, pad_token_id=tiny.eos)
    assert torch.equal(ids.value, expected_ids)
    assert len(steps.value) == len(seen) == STEPS
    for ours, raw in zip(steps.value, seen):
        torch.testing.assert_close(ours, raw, rtol=0, atol=1e-5)
    torch.testing.assert_close(second.value, seen[1], rtol=0, atol=1e-5)


def test_skipping_a_decoder_layer_equals_replacing_it_by_the_identity(tiny, lm):
    layers = {"gpt2": "transformer.h", "llama": "model.layers"}[tiny.arch]
    lm.dispatch_model()
    calls = []
    attn = lm._model.get_submodule(f"{layers}.1.{ATTN[tiny.arch].rsplit('.', 1)[1]}")
    handle = attn.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with torch.no_grad(), lm.trace(LONG):
            layer = envoy(lm, f"{layers}.1")
            layer.skip(layer.input)
            logits = lm.lm_head.output.save()
    finally:
        handle.remove()
    assert not calls  # one invoke owns the batch: the layer's forward (and its attention) never ran
    with raw_hooks(tiny.hf, {f"{layers}.1": lambda m, a, out: a[0]}), torch.no_grad():
        expected = tiny.hf(input_ids=tiny.ids(LONG)).logits
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=1e-5)
    assert hook_count(lm._model) == 0


def test_skipping_one_generation_step(tiny, lm):
    layers = {"gpt2": "transformer.h", "llama": "model.layers"}[tiny.arch]
    with torch.no_grad(), lm.generate(LONG, max_new_tokens=STEPS, do_sample=False):
        layer = envoy(lm, f"{layers}.1").next()          # step 1 only
        layer.skip(layer.input)
        ids = lm.generator.output.save()
    # The raw equivalent: the layer's forward replaced on the instance, so at step 1 it does not
    # run at all (nor update its KV cache), as a skipped module.
    layer = tiny.hf.get_submodule(f"{layers}.1")
    original = layer.forward
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        return args[0] if len(calls) == 2 else original(*args, **kwargs)

    ids_in = tiny.ids(LONG)
    layer.forward = forward
    try:
        with torch.no_grad():
            expected = tiny.hf.generate(input_ids=ids_in, attention_mask=torch.ones_like(ids_in),
                                        do_sample=False, max_new_tokens=STEPS, pad_token_id=tiny.eos)
    finally:
        del layer.forward
    assert torch.equal(ids.value, expected)
