"""Scan on fake tensors with LanguageModel (tiny GPT-2 and Llama): shapes before dispatch, across
invokes and at generation step 0, and assignment checks before the model runs.

Expected shapes come from raw forward hooks on the plain Hugging Face copy (``tiny.hf``).
"""

import pytest
import torch

from nnsight_core import AssignmentError, InterventionError, ScanError
from nnsight_core.testing import hook_count

from tests.helpers import LONG, MID, SHORT, left_pad, raw_hooks


def layers(lm, tiny):
    return lm.transformer.h if tiny.arch == "gpt2" else lm.model.layers


def weights_on(lm):
    return {p.device.type for p in lm._model.parameters()}


def raw_shapes(tiny, ids, mask=None, method="forward", **kwargs):
    """Shapes of layer 0's and lm_head's outputs at each call, from raw hooks on the plain model."""
    seen = {"layer": [], "lm_head": []}
    hooks = {f"{tiny.layers_path}.0": lambda m, a, out: seen["layer"].append(
                 (out[0] if isinstance(out, tuple) else out).shape),
             "lm_head": lambda m, a, out: seen["lm_head"].append(out.shape)}
    mask = torch.ones_like(ids) if mask is None else mask
    with raw_hooks(tiny.hf, hooks), torch.no_grad():
        getattr(tiny.hf, method)(input_ids=ids, attention_mask=mask, **kwargs)
    return seen


def test_shapes_are_known_before_the_weights_load(lm, tiny):
    expected = raw_shapes(tiny, tiny.ids(LONG))
    assert not lm.dispatched and weights_on(lm) == {"meta"}
    with torch.no_grad(), lm.trace(LONG):
        hidden = layers(lm, tiny)[0].output
        logits = lm.lm_head.output
        shapes = (hidden.shape, logits.shape, hidden[:, -1].shape, logits.t[-1].shape,
                  (hidden @ torch.ones(32, 3)).shape)
        dtype, device = hidden.dtype, hidden.device
        assert not lm.dispatched and weights_on(lm) == {"meta"}  # the scan loaded nothing
        last = logits.t[-1].save()
    (layer,), (head,) = expected["layer"], expected["lm_head"]
    assert shapes == (layer, head, (layer[0], layer[2]), (head[0], head[2]), (*layer[:2], 3))
    assert (dtype, device) == (torch.float32, torch.device("cpu"))  # where dispatch puts the weights
    assert lm.dispatched and last.value.shape == (head[0], head[2])


def test_several_invokes_get_their_rows_of_the_padded_batch(lm, tiny):
    prompts = [SHORT, [LONG, MID]]
    ids, mask = left_pad([tiny.ids(SHORT), tiny.ids(LONG), tiny.ids(MID)], tiny.eos)
    (layer,), (head,) = raw_shapes(tiny, ids, mask).values()
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(prompts[0]):
            alone = lm.lm_head.output.shape          # the batch holds only this prompt so far
            first = lm.lm_head.output
        with tracer.invoke(prompts[1]):
            second = layers(lm, tiny)[0].output.shape
            padded = first.shape                      # now left-padded to the longest prompt
            saved = first.save()
    assert alone == (1, tiny.ids(SHORT).shape[1], head[2])
    assert padded == (1, *head[1:]) == saved.value.shape
    assert second == (2, *layer[1:])


def test_generation_step_zero_is_known_later_steps_are_not(lm, tiny):
    ids = tiny.ids(MID)
    expected = raw_shapes(tiny, ids, method="generate", max_new_tokens=3, do_sample=False,
                          pad_token_id=tiny.eos)
    with torch.no_grad(), lm.generate(MID, max_new_tokens=3, do_sample=False):
        assert layers(lm, tiny)[0].output.shape == expected["layer"][0]
        assert lm.lm_head.output.shape == expected["lm_head"][0]
        later = lm.lm_head.next().output
        with pytest.raises(ScanError, match=r"call 1.*generate\(\) does after its first step"):
            later.shape
        steps = later.save()
        out = lm.generator.output.save()
    assert steps.value.shape == expected["lm_head"][1]
    assert tuple(out.value.shape) == (1, ids.shape[1] + 3)
    assert hook_count(lm._model) == 0


def test_a_wrongly_shaped_assignment_fails_before_loading_or_running(lm, tiny):
    n = tiny.ids(LONG).shape[1]
    with pytest.raises(AssignmentError) as info:
        with torch.no_grad(), lm.trace(LONG):
            layers(lm, tiny)[1].output = torch.zeros(1, n + 1, 32)
    message = str(info.value)
    assert f"(1, {n + 1}, 32)" in message and f"(1, {n}, 32)" in message
    assert "test_scan.py:" in message and "before the model ran" in message
    assert not lm.dispatched and weights_on(lm) == {"meta"}


def test_patching_a_saved_token_passes_the_check_and_equals_raw_hooks(lm, tiny):
    with torch.no_grad(), lm.trace(MID):
        source = layers(lm, tiny)[0].output[:, -1].save()
    with torch.no_grad(), lm.trace(LONG):
        layers(lm, tiny)[0].output[:, -1] = source       # a constant: checked by the scan first
        logits = lm.lm_head.output.save()
    seen = {}

    def take(module, args, output):
        seen["source"] = (output[0] if isinstance(output, tuple) else output)[:, -1].clone()

    with raw_hooks(tiny.hf, {f"{tiny.layers_path}.0": take}), torch.no_grad():
        tiny.hf(input_ids=tiny.ids(MID))
    src = seen["source"]

    def put(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, -1] = src
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    with raw_hooks(tiny.hf, {f"{tiny.layers_path}.0": put}):
        expected = tiny.logits(tiny.ids(LONG))
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=1e-4)
    with pytest.raises(InterventionError, match="fails on fake tensors"):
        with torch.no_grad(), lm.trace(SHORT):
            layers(lm, tiny)[0].output[:, -1] = torch.zeros(1, 31)
