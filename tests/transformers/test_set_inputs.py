"""Setting a decoder layer's inputs on tiny GPT-2 and Llama, alone and with several left-padded
invokes that each replace only their own rows.

Expected values come from plain Hugging Face runs of each prompt alone, with raw forward
pre-hooks that replace the layer's first argument.
"""

import pytest
import torch

from nnsight_core import BatchError

from tests.helpers import LONG, MID, SHORT, hook_free

ATOL = 1e-5
EMBEDDING = {"gpt2": "transformer.wte", "llama": "model.embed_tokens"}


def envoy(lm, path):
    for part in path.split("."):
        lm = lm[int(part)] if part.isdigit() else getattr(lm, part)
    return lm


def skipping_layer_0(tiny, prompt):
    """Logits of ``prompt`` alone when layer 1 receives layer 0's input (layer 0 is skipped)."""
    seen = {}

    def keep(module, args):
        seen["h"] = args[0]

    def replace(module, args):
        return (seen["h"],) + tuple(args[1:])

    handles = [tiny.layer(0).register_forward_pre_hook(keep),
               tiny.layer(1).register_forward_pre_hook(replace)]
    try:
        return tiny.logits(tiny.ids(prompt))
    finally:
        for handle in handles:
            handle.remove()


def test_a_layer_receives_its_hidden_state_first_and_keywords_after(lm, tiny):
    layer = envoy(lm, f"{tiny.layers_path}.1")
    seen = {}

    def keep(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    handle = tiny.layer(1).register_forward_pre_hook(keep, with_kwargs=True)
    tiny.logits(tiny.ids(LONG))
    handle.remove()
    with torch.no_grad(), lm.trace(LONG):
        first = layer.input.save()
        both = layer.inputs.save()
    args, kwargs = both.value
    torch.testing.assert_close(first.value, seen["args"][0], rtol=0, atol=ATOL)
    assert len(args) == len(seen["args"]) and set(kwargs) == set(seen["kwargs"])


@pytest.mark.parametrize("spelling", ["input", "inputs"])
def test_assigning_a_layers_input_skips_the_layer_before(lm, tiny, spelling):
    expected = skipping_layer_0(tiny, LONG)
    first, second = envoy(lm, f"{tiny.layers_path}.0"), envoy(lm, f"{tiny.layers_path}.1")
    with torch.no_grad(), lm.trace(LONG):
        if spelling == "input":
            second.input = first.input
        else:
            second.inputs = first.inputs           # every argument layer 0 received
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=ATOL)
    assert not torch.allclose(expected, tiny.logits(tiny.ids(LONG)), atol=ATOL)
    assert hook_free(lm._model)


def test_several_invokes_each_replace_only_their_rows(lm, tiny):
    first, second = envoy(lm, f"{tiny.layers_path}.0"), envoy(lm, f"{tiny.layers_path}.1")
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            second.input = first.input
            short = lm.lm_head.output.t[:].save()
        with tracer.invoke(LONG):
            long = lm.lm_head.output.save()
        with tracer.invoke(MID):
            second.input = second.input * 0.5
            mid = lm.lm_head.output.t[-1].save()
    torch.testing.assert_close(short.value, skipping_layer_0(tiny, SHORT), rtol=0, atol=ATOL)
    torch.testing.assert_close(long.value, tiny.logits(tiny.ids(LONG)), rtol=0, atol=ATOL)

    def halve(module, args):
        return (args[0] * 0.5,) + tuple(args[1:])

    handle = tiny.layer(1).register_forward_pre_hook(halve)
    try:
        expected_mid = tiny.logits(tiny.ids(MID))[:, -1]
    finally:
        handle.remove()
    torch.testing.assert_close(mid.value, expected_mid, rtol=0, atol=ATOL)


def test_replacing_the_token_ids_an_embedding_receives(lm, tiny):
    ids = tiny.ids(LONG)
    other = ids.flip(1)                            # same length, other tokens
    with torch.no_grad(), lm.trace(LONG):
        envoy(lm, EMBEDDING[tiny.arch]).input = other
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, tiny.logits(other), rtol=0, atol=ATOL)


def test_an_input_of_the_wrong_length_names_the_invoke_and_the_shape(lm, tiny):
    layer = envoy(lm, f"{tiny.layers_path}.1")
    with pytest.raises(BatchError, match=r"input.*invoke 0 owns 1 row\(s\)"):
        with torch.no_grad(), lm.trace() as tracer:
            with tracer.invoke(SHORT):
                layer.input = torch.zeros(2, 3, 32)
            with tracer.invoke(LONG):
                pass
    assert hook_free(lm._model)
    with torch.no_grad(), lm.trace(LONG):
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, tiny.logits(tiny.ids(LONG)), rtol=0, atol=ATOL)
