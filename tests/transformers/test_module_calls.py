"""Ad-hoc module calls on tiny GPT-2 and Llama: the logit lens
``lm_head(final_norm(layer.output))`` equals the same modules called directly, and the ad-hoc
call is not a call of the hooked module.

Expected values come from plain Hugging Face runs with raw forward hooks that capture the
layer outputs, then direct calls of the final norm and ``lm_head``.
"""

import pytest
import torch

from nnsight_core import MissedCallError

from tests.helpers import LONG, MID, SHORT, capture, hook_free, raw_hooks

ATOL = 1e-5
FINAL_NORM = {"gpt2": "transformer.ln_f", "llama": "model.norm"}


def envoy(lm, path):
    for part in path.split("."):
        lm = lm[int(part)] if part.isdigit() else getattr(lm, part)
    return lm


def plain_lens(tiny, prompt):
    """The logit lens of every layer (and the real logits) for ``prompt`` alone."""
    seen = {}
    layers = [f"{tiny.layers_path}.{i}" for i in range(2)]
    with raw_hooks(tiny.hf, {path: capture(seen, path) for path in layers}):
        logits = tiny.logits(tiny.ids(prompt))
    norm = tiny.hf.get_submodule(FINAL_NORM[tiny.arch])
    with torch.no_grad():
        return [tiny.hf.lm_head(norm(seen[path])) for path in layers], logits


def test_the_logit_lens_equals_direct_calls(lm, tiny):
    expected, logits = plain_lens(tiny, LONG)
    norm = envoy(lm, FINAL_NORM[tiny.arch])
    with torch.no_grad(), lm.trace(LONG) as tracer:
        lens = [lm.lm_head(norm(layer.output)).save() for layer in envoy(lm, tiny.layers_path)]
        own = lm.lm_head.output.save()                    # still the model's own call
    for got, want in zip(lens, expected, strict=True):
        torch.testing.assert_close(got.value, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(own.value, logits, rtol=0, atol=ATOL)
    # The last layer's lens is the model's own prediction (the final norm is applied once).
    torch.testing.assert_close(lens[-1].value, logits, rtol=0, atol=ATOL)
    assert [n.target for n in tracer.graph.nodes if n.op == "call_module"] == \
        [FINAL_NORM[tiny.arch], "lm_head"] * 2
    assert hook_free(lm._model)


def test_ad_hoc_calls_are_not_counted_as_calls_of_the_module(lm, tiny):
    norm = envoy(lm, FINAL_NORM[tiny.arch])
    layer = envoy(lm, f"{tiny.layers_path}.0")
    with pytest.raises(MissedCallError, match=r"model\.lm_head\.output \(call 1, invoke 0\).*ran 1 time"):
        with torch.no_grad(), lm.trace(SHORT):
            lm.lm_head(norm(layer.output)).save()
            lm.lm_head.next().output.save()
    assert hook_free(lm._model)


def test_an_edit_of_lm_head_reaches_the_model_but_not_the_lens(lm, tiny):
    expected, _ = plain_lens(tiny, MID)
    norm = envoy(lm, FINAL_NORM[tiny.arch])
    with torch.no_grad(), lm.trace(MID):
        lm.lm_head.output[:] = 0
        lens = lm.lm_head(norm(envoy(lm, f"{tiny.layers_path}.0").output)).save()
        logits = lm.output.logits.save()
    torch.testing.assert_close(lens.value, expected[0], rtol=0, atol=ATOL)
    assert bool((logits.value == 0).all())


def test_each_invoke_gets_the_lens_of_its_own_tokens(lm, tiny):
    norm = envoy(lm, FINAL_NORM[tiny.arch])
    layer = envoy(lm, f"{tiny.layers_path}.0")
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            short = lm.lm_head(norm(layer.output.t[:])).save()
        with tracer.invoke(LONG):
            long = lm.lm_head(norm(layer.output.t[-1])).save()
    torch.testing.assert_close(short.value, plain_lens(tiny, SHORT)[0][0], rtol=0, atol=ATOL)
    torch.testing.assert_close(long.value, plain_lens(tiny, LONG)[0][0][:, -1], rtol=0, atol=ATOL)

