"""`.t[i]` / `.token[i]` index an invoke's own tokens under left padding."""

import pytest
import torch

from nnsight_core import TokenIndexError, TraceStateError

from tests.helpers import LONG, SHORT, capture, raw_hooks


def layer0(lm, arch):
    return lm.transformer.h[0] if arch == "gpt2" else lm.model.layers[0]


def solo_hidden(tiny, prompt, edit=None):
    """(layer 0 output, logits) of a plain HF run of ``prompt`` alone, optionally edited by a raw hook."""
    seen = {}
    with raw_hooks(tiny.hf, {f"{tiny.layers_path}.0": capture(seen, "h", edit)}):
        logits = tiny.logits(tiny.ids(prompt))
    return seen["h"], logits


def test_token_indices_in_a_shorter_left_padded_invoke(lm, tiny):
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):                       # invoke 0: shorter, so left-padded
            out = layer0(lm, tiny.arch).output
            first = out.t[0].save()
            last = out.t[-1].save()
            second = out.token[1].save()
            middle = out.t[1:3].save()
            tail = out.t[-2:].save()
            whole = out.t[:].save()
            beyond = out.t[:100].save()
        with tracer.invoke(LONG):
            long_first = layer0(lm, tiny.arch).output.t[0].save()
    h, _ = solo_hidden(tiny, SHORT)
    n = h.shape[1]
    check = {"rtol": 0, "atol": 1e-5}
    torch.testing.assert_close(first.value, h[:, 0], **check)
    torch.testing.assert_close(last.value, h[:, -1], **check)
    torch.testing.assert_close(second.value, h[:, 1], **check)
    torch.testing.assert_close(middle.value, h[:, 1:3], **check)
    torch.testing.assert_close(tail.value, h[:, -2:], **check)
    torch.testing.assert_close(whole.value, h, **check)
    torch.testing.assert_close(beyond.value, h, **check)
    assert whole.value.shape[1] == n
    h_long, _ = solo_hidden(tiny, LONG)
    torch.testing.assert_close(long_first.value, h_long[:, 0], **check)


def test_token_index_on_logits_in_a_trace_with_inputs(lm, tiny):
    with torch.no_grad(), lm.trace(LONG):
        last = lm.lm_head.output.t[-1].save()
    torch.testing.assert_close(last.value, tiny.logits(tiny.ids(LONG))[:, -1], rtol=0, atol=1e-5)


def test_token_index_when_the_batch_was_a_list_of_prompts(lm, tiny):
    # Upstream #138: t[0] is the invoke's first token also for a list given directly.
    # For an invoke of several prompts, its tokens are those of its longest prompt.
    with torch.no_grad(), lm.trace([LONG, LONG]):
        first = lm.lm_head.output.t[0].save()
    expected = tiny.logits(tiny.ids(LONG))[:, 0]
    torch.testing.assert_close(first.value, torch.cat([expected, expected]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("index", [50, -50, 6])
def test_index_outside_the_invoke_raises_token_index_error(lm, tiny, index):
    n = tiny.ids(SHORT).shape[1]
    assert n == 6  # index 6 is just past the short invoke's last token
    with pytest.raises(TokenIndexError) as info, lm.trace() as tracer:
        with tracer.invoke(LONG):
            pass
        with tracer.invoke(SHORT):
            layer0(lm, tiny.arch).output.t[index].save()
    message = str(info.value)
    assert "invoke 1" in message and f"{n} token" in message, message
    assert str(index) in message
    # No stale state: the next trace works and equals plain HF.
    with torch.no_grad(), lm.trace(SHORT):
        logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, tiny.logits(tiny.ids(SHORT)), rtol=0, atol=1e-5)


def test_token_index_outside_a_trace_raises(lm, tiny):
    with torch.no_grad(), lm.trace(SHORT):
        saved = layer0(lm, tiny.arch).output.save()
    with pytest.raises(TraceStateError):
        saved.t[0]


def test_assignment_through_t_edits_only_that_position(lm, tiny):
    def zero_first(h):
        h[:, 0] = 0

    expected_h, expected_logits = solo_hidden(tiny, SHORT, zero_first)
    _, plain_long = solo_hidden(tiny, LONG)
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            layer0(lm, tiny.arch).output.t[0] = 0
            h = layer0(lm, tiny.arch).output.save()
            logits = lm.lm_head.output.save()
        with tracer.invoke(LONG):
            long_logits = lm.lm_head.output.save()
    n = expected_h.shape[1]
    torch.testing.assert_close(h.value[:, -n:], expected_h, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.value[:, -n:], expected_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(long_logits.value, plain_long, rtol=0, atol=1e-4)
    # The edit matters (it is not hidden by the tolerance).
    _, unedited = solo_hidden(tiny, SHORT)
    assert (unedited - expected_logits).abs().max() > 1e-2


def test_slice_assignment_through_t(lm, tiny):
    def double_tail(h):
        h[:, -2:] = h[:, -2:] * 2

    expected_h, expected_logits = solo_hidden(tiny, SHORT, double_tail)
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            out = layer0(lm, tiny.arch).output
            out.t[-2:] = out.t[-2:] * 2
            logits = lm.lm_head.output.save()
        with tracer.invoke(LONG):
            pass
    n = expected_h.shape[1]
    torch.testing.assert_close(logits.value[:, -n:], expected_logits, rtol=0, atol=1e-4)


def test_t_call_is_still_the_transpose(lm, tiny):
    with torch.no_grad(), lm.trace(SHORT):
        transposed = lm.lm_head.output[0].t().save()
    torch.testing.assert_close(transposed.value, tiny.logits(tiny.ids(SHORT))[0].t(), rtol=0, atol=1e-5)


# Slices of every kind: within, beyond either end, negative, empty, open, with steps.
# The short invoke has 6 tokens, so several of these select nothing of it.
SLICES = [slice(None), slice(1, 3), slice(-2, None), slice(None, 100), slice(7, 8), slice(6, None),
          slice(5, 20), slice(20, 30), slice(-20, -10), slice(None, -20), slice(-20, None),
          slice(-100, 2), slice(0, -7), slice(2, 1), slice(3, 3), slice(None, None, 2),
          slice(1, None, 3), slice(-4, -1, 2), slice(10, None, 2), slice(-1, None)]


@pytest.mark.parametrize("batched", [False, True], ids=["solo", "padded-batch"])
def test_t_slices_read_what_the_same_slice_of_the_invoke_alone_reads(lm, tiny, batched):
    # Expected: the unpadded solo run's tensor sliced with the same Python slice.
    plain = {prompt: solo_hidden(tiny, prompt)[0] for prompt in (SHORT, LONG)}
    assert plain[SHORT].shape[1] == 6
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):                       # left-padded when batched with LONG
            out = layer0(lm, tiny.arch).output
            short = [out.t[key].save() for key in SLICES]
        if batched:
            with tracer.invoke(LONG):
                out = layer0(lm, tiny.arch).output
                long = [out.t[key].save() for key in SLICES]
    for key, value in zip(SLICES, short):
        torch.testing.assert_close(value.value, plain[SHORT][:, key], rtol=0, atol=1e-5, msg=str(key))
    for key, value in zip(SLICES, long if batched else []):
        torch.testing.assert_close(value.value, plain[LONG][:, key], rtol=0, atol=1e-5, msg=str(key))


@pytest.mark.parametrize("batched", [False, True], ids=["solo", "padded-batch"])
@pytest.mark.parametrize("key", SLICES, ids=str)
def test_t_slice_assignment_writes_what_the_same_slice_of_the_invoke_alone_writes(lm, tiny, key, batched):
    def zero(h):
        h[:, key] = 0

    expected_h, expected_logits = solo_hidden(tiny, SHORT, zero)
    _, plain_long = solo_hidden(tiny, LONG)
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            layer0(lm, tiny.arch).output.t[key] = 0
            h = layer0(lm, tiny.arch).output.save()
            logits = lm.lm_head.output.save()
        if batched:
            with tracer.invoke(LONG):
                long_logits = lm.lm_head.output.save()
    n = expected_h.shape[1]
    torch.testing.assert_close(h.value[:, -n:], expected_h, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.value[:, -n:], expected_logits, rtol=0, atol=1e-4)
    if batched:
        torch.testing.assert_close(long_logits.value, plain_long, rtol=0, atol=1e-4)


@pytest.mark.parametrize("key", [slice(None, None, -1), slice(4, 1, -2), slice(None, None, 0)], ids=str)
def test_t_slice_without_a_positive_step_raises_token_index_error(lm, tiny, key):
    # Tensors refuse these too (torch: "step must be greater than zero").
    with pytest.raises(ValueError):
        torch.zeros(1, 6)[:, key]
    with pytest.raises(TokenIndexError) as info, lm.trace(SHORT):
        layer0(lm, tiny.arch).output.t[key].save()
    assert f"step {key.step}" in str(info.value) and "flip" in str(info.value)
