"""Several invokes of different lengths in one trace: each equals its prompt run alone."""

import torch

from tests.helpers import LONG, MID, SHORT, capture, left_pad, raw_hooks

PROMPTS = [SHORT, LONG, MID]


def test_invokes_of_different_lengths_equal_solo_runs(lm, tiny):
    saved = []
    with torch.no_grad(), lm.trace() as tracer:
        for prompt in PROMPTS:
            with tracer.invoke(prompt):
                saved.append(lm.lm_head.output.save())
    width = max(tiny.ids(p).shape[1] for p in PROMPTS)
    for i, (prompt, proxy) in enumerate(zip(PROMPTS, saved)):
        ids = tiny.ids(prompt)
        n = ids.shape[1]
        solo = tiny.logits(ids)
        got = proxy.value
        assert got.shape == (1, width, solo.shape[-1]), f"invoke {i} got rows of shape {got.shape}"
        torch.testing.assert_close(got[:, -1], solo[:, -1], rtol=0, atol=1e-4,
                                   msg=lambda m, i=i: f"invoke {i} last token: {m}")
        torch.testing.assert_close(got[:, width - n:], solo, rtol=0, atol=1e-4,
                                   msg=lambda m, i=i: f"invoke {i} real tokens: {m}")
    # The logits are of order 1, so the tolerance is meaningful.
    assert tiny.logits(tiny.ids(SHORT)).abs().max() > 0.5


def test_the_whole_output_rows_are_the_invokes_rows(lm, tiny):
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(LONG):
            pass
        with tracer.invoke(SHORT):
            pass
    logits = tracer.output.logits
    short = tiny.ids(SHORT)
    torch.testing.assert_close(logits[:1], tiny.logits(tiny.ids(LONG)), rtol=0, atol=1e-4)
    torch.testing.assert_close(logits[1:, -short.shape[1]:], tiny.logits(short), rtol=0, atol=1e-4)


def test_left_padded_gpt2_rows_get_positions_of_their_own_tokens(gpt2):
    """Raw hooks: GPT-2's position embedding sees 0..n-1 on the real tokens of a padded row, and
    layer 0's hidden state there equals a solo run (upstream #672)."""
    from nnsight_transformers import LanguageModel

    lm = LanguageModel(gpt2.folder)
    lm.dispatch_model()
    short, long = gpt2.ids(SHORT), gpt2.ids(LONG)
    n, width = short.shape[1], long.shape[1]

    seen = {}
    with raw_hooks(lm._model, {
        "transformer.wpe": lambda m, args, out: seen.__setitem__("positions", args[0].detach().clone()),
    }), torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            hidden = lm.transformer.h[0].output.save()
        with tracer.invoke(LONG):
            pass

    positions = seen["positions"].expand(2, width)
    assert positions[0, width - n:].tolist() == list(range(n))
    assert positions[1].tolist() == list(range(width))

    solo = {}
    with raw_hooks(gpt2.hf, {"transformer.h.0": capture(solo, "h0")}), torch.no_grad():
        gpt2.hf(input_ids=short)
    torch.testing.assert_close(hidden.value[:, width - n:], solo["h0"], rtol=0, atol=1e-5)

    # The check can fail: the same padded batch through plain HF without position ids
    # (what a naive adapter would do) gives a different hidden state.
    naive = {}
    ids, mask = left_pad([short, long], gpt2.eos)
    with raw_hooks(gpt2.hf, {"transformer.h.0": capture(naive, "h0")}), torch.no_grad():
        gpt2.hf(input_ids=ids, attention_mask=mask)
    assert (naive["h0"][:1, width - n:] - solo["h0"]).abs().max() > 1e-2


def test_batched_padding_without_positions_would_change_logits(tiny):
    # Sensitivity of the tests above: a left-padded batch without mask-derived positions is
    # wrong for GPT-2 (absolute positions), and without a mask wrong for both architectures.
    short, long = tiny.ids(SHORT), tiny.ids(LONG)
    ids, _ = left_pad([short, long], tiny.eos)
    n = short.shape[1]
    with torch.no_grad():
        unmasked = tiny.hf(input_ids=ids).logits
    assert (unmasked[:1, -n:] - tiny.logits(short)).abs().max() > 1e-2
