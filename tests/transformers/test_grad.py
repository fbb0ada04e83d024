"""Gradients inside a trace on tiny GPT-2 and Llama: ``.grad`` of hidden states (read, assign)
and ``.backward()``, alone and with several left-padded invokes.

Expected values come from plain Hugging Face runs of each prompt alone, with raw forward hooks
that call ``retain_grad()`` (or register a tensor hook returning a new gradient).
"""

import pytest
import torch

from nnsight_core import GradientError

from tests.helpers import LONG, MID, SHORT, hook_free

ATOL = 1e-5
EMBEDDING = {"gpt2": "transformer.wte", "llama": "model.embed_tokens"}


def envoy(lm, path):
    for part in path.split("."):
        lm = lm[int(part)] if part.isdigit() else getattr(lm, part)
    return lm


def last_token_loss(logits):
    return logits[:, -1].sum()


def plain_grads(tiny, prompt, paths, loss=last_token_loss, edits=None):
    """Gradients of ``loss(logits)`` with respect to the outputs of ``paths``, for ``prompt`` alone.

    ``edits`` maps a path to a tensor hook applied to that module's output gradient.
    """
    seen, handles = {}, []
    edits = edits or {}
    for path in dict.fromkeys([*paths, *edits]):
        def keep(module, args, output, path=path):
            output.retain_grad()
            if path in edits:
                output.register_hook(edits[path])
            seen[path] = output
        handles.append(tiny.hf.get_submodule(path).register_forward_hook(keep))
    try:
        loss(tiny.hf(input_ids=tiny.ids(prompt)).logits).backward()
    finally:
        for handle in handles:
            handle.remove()
        tiny.hf.zero_grad(set_to_none=True)
    return {path: seen[path].grad for path in paths}


def test_grad_of_the_embedding_output_equals_autograd(lm, tiny):
    # A decoder layer's and lm_head's output gradients are checked by the conformance suite.
    path = EMBEDDING[tiny.arch]
    expected = plain_grads(tiny, LONG, [path])
    with lm.trace(LONG):
        embedded = envoy(lm, path).output.grad.save()
        last_token_loss(lm.lm_head.output).backward()
    torch.testing.assert_close(embedded.value, expected[path], rtol=0, atol=ATOL)
    assert hook_free(lm._model)


def test_grad_of_logits_and_of_a_token_position(lm, tiny):
    layer = f"{tiny.layers_path}.1"
    expected = plain_grads(tiny, MID, [layer, "lm_head"], loss=lambda logits: (logits ** 2).mean())
    with lm.trace(MID):
        logits = lm.output.logits
        logits_grad = logits.grad.save()
        second_token = envoy(lm, layer).output.t[1].grad.save()     # a view: that view of the gradient
        (logits ** 2).mean().backward()
    torch.testing.assert_close(logits_grad.value, expected["lm_head"], rtol=0, atol=ATOL)
    torch.testing.assert_close(second_token.value, expected[layer][:, 1], rtol=0, atol=ATOL)


def test_several_invokes_each_get_their_own_rows(lm, tiny):
    layer = f"{tiny.layers_path}.0"
    with lm.trace() as tracer:
        with tracer.invoke(SHORT):
            short = envoy(lm, layer).output.grad.save()
            loss = last_token_loss(lm.lm_head.output)
        with tracer.invoke(LONG):
            long = envoy(lm, layer).output.grad.save()
            (loss + last_token_loss(lm.lm_head.output)).backward()
    alone_short = plain_grads(tiny, SHORT, [layer])[layer]
    alone_long = plain_grads(tiny, LONG, [layer])[layer]
    tokens = alone_short.shape[1]
    assert short.value.shape[1] > tokens                             # SHORT was left-padded
    torch.testing.assert_close(short.value[:, -tokens:], alone_short, rtol=0, atol=ATOL)
    assert bool((short.value[:, :-tokens] == 0).all())               # padding gets no gradient
    torch.testing.assert_close(long.value, alone_long, rtol=0, atol=ATOL)


def test_assigning_grad_changes_what_flows_to_earlier_layers(lm, tiny):
    layer, embedding = f"{tiny.layers_path}.1", EMBEDDING[tiny.arch]

    def double_last_token(grad):
        grad = grad.clone()
        grad[:, -1] *= 2
        return grad

    expected = plain_grads(tiny, LONG, [layer, embedding], edits={layer: double_last_token})
    unedited = plain_grads(tiny, LONG, [embedding])[embedding]
    with lm.trace(LONG):
        hidden = envoy(lm, layer).output
        hidden.t[-1].grad = hidden.t[-1].grad * 2
        embedded = envoy(lm, embedding).output.grad.save()
        last_token_loss(lm.lm_head.output).backward()
    torch.testing.assert_close(embedded.value, expected[embedding], rtol=0, atol=ATOL)
    assert not torch.allclose(embedded.value, unedited, atol=ATOL)


def test_one_invoke_edits_its_gradient_the_other_is_untouched(lm, tiny):
    layer, embedding = f"{tiny.layers_path}.0", EMBEDDING[tiny.arch]
    with lm.trace() as tracer:
        with tracer.invoke(MID):
            hidden = envoy(lm, layer).output
            hidden.grad = hidden.grad * 0
            zeroed = envoy(lm, embedding).output.grad.save()
            loss = last_token_loss(lm.lm_head.output)
        with tracer.invoke(LONG):
            kept = envoy(lm, embedding).output.grad.save()
            (loss + last_token_loss(lm.lm_head.output)).backward()
    alone_long = plain_grads(tiny, LONG, [embedding])[embedding]
    torch.testing.assert_close(kept.value, alone_long, rtol=0, atol=ATOL)
    # Everything before layer 0 gets its gradient through layer 0's output: now zero.
    zero = plain_grads(tiny, MID, [embedding], edits={layer: torch.zeros_like})[embedding]
    assert bool((zero == 0).all()) and bool((zeroed.value == 0).all())


def test_no_grad_around_a_language_model_trace_raises(lm, tiny):
    with pytest.raises(GradientError, match="torch.no_grad"):
        with torch.no_grad(), lm.trace(SHORT):
            lm.lm_head.output.grad.save()
            lm.lm_head.output.sum().backward()
    with torch.no_grad(), lm.trace(SHORT):
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, tiny.logits(tiny.ids(SHORT)), rtol=0, atol=ATOL)
    assert hook_free(lm._model)
