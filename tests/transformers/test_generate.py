"""`model.generate(...)` equals plain `hf.generate(...)`; `.next()` addresses one generation step."""

import pytest
import torch

from nnsight_core import MissedCallError
from nnsight_core.testing import hook_count

from tests.helpers import LONG, MID, SHORT, raw_hooks

STEPS = 5


def hf_generate(tiny, prompt, hooks=None, **kwargs):
    ids = tiny.ids(prompt)
    kwargs.setdefault("max_new_tokens", STEPS)
    with raw_hooks(tiny.hf, hooks or {}), torch.no_grad():
        return tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                pad_token_id=tiny.eos, **kwargs)


def test_plain_generation_is_not_degenerate(tiny):
    # Greedy continuations differ between prompts, so the comparisons below mean something.
    outs = [hf_generate(tiny, p)[0, -STEPS:].tolist() for p in (SHORT, LONG, MID)]
    assert len({tuple(o) for o in outs}) == 3, outs
    assert all(len(o) == STEPS for o in outs)


def test_generate_equals_plain_generate(lm, tiny):
    with torch.no_grad(), lm.generate(LONG, max_new_tokens=STEPS, do_sample=False):
        ids = lm.generator.output.save()
    expected = hf_generate(tiny, LONG)
    assert ids.value.shape == expected.shape == (1, tiny.ids(LONG).shape[1] + STEPS)
    assert torch.equal(ids.value, expected)


def test_generate_two_invokes_of_different_lengths_equal_solo_runs(lm, tiny):
    with torch.no_grad(), lm.generate(max_new_tokens=STEPS, do_sample=False) as tracer:
        with tracer.invoke(SHORT):
            short = lm.generator.output.save()
        with tracer.invoke(LONG):
            long = lm.generator.output.save()
    width = tiny.ids(LONG).shape[1]
    n = tiny.ids(SHORT).shape[1]
    assert short.value.shape == long.value.shape == (1, width + STEPS)
    # The shorter invoke's row is left-padded with the pad (= eos) token; strip it.
    assert short.value[0, :width - n].tolist() == [tiny.eos] * (width - n)
    assert torch.equal(short.value[:, width - n:], hf_generate(tiny, SHORT))
    assert torch.equal(long.value, hf_generate(tiny, LONG))
    assert torch.equal(tracer.output, torch.cat([short.value, long.value]))


def test_generate_with_a_list_of_prompts_in_one_invoke(lm, tiny):
    with torch.no_grad(), lm.generate([MID, SHORT], max_new_tokens=STEPS, do_sample=False):
        ids = lm.generator.output.save()
    width = tiny.ids(MID).shape[1]
    n = tiny.ids(SHORT).shape[1]
    assert torch.equal(ids.value[:1], hf_generate(tiny, MID))
    assert torch.equal(ids.value[1:, width - n:], hf_generate(tiny, SHORT))


def forced_step_hook(step, token, calls):
    """Raw lm_head hook: on its ``step``-th call, make ``token`` win at the last position."""
    def hook(module, args, output):
        calls.append(output.shape)
        if len(calls) - 1 == step:
            output = output.clone()
            output[:, -1, token] = 1e4
        return output
    return hook


def test_intervention_at_one_step_with_next(lm, tiny):
    plain = hf_generate(tiny, MID)[0, -STEPS:].tolist()
    token = next(t for t in range(10, 300) if t not in plain)
    calls = []
    expected = hf_generate(tiny, MID, {"lm_head": forced_step_hook(2, token, calls)})
    assert len(calls) == STEPS  # one lm_head call per generated token

    with torch.no_grad(), lm.generate(MID, max_new_tokens=STEPS, do_sample=False):
        lm.lm_head.next().next().output[:, -1, token] = 1e4
        ids = lm.generator.output.save()
    new = ids.value[0, -STEPS:].tolist()
    assert new[:2] == plain[:2], "steps 0-1 must equal plain generation"
    assert new[2] == token, "step 2 must be the forced token"
    assert torch.equal(ids.value, expected)


def test_intervention_at_one_step_of_one_invoke(lm, tiny):
    # Two invokes of different lengths; only invoke 1 is forced, at step 1; cursors are per invoke.
    plain = hf_generate(tiny, LONG)[0, -STEPS:].tolist()
    token = next(t for t in range(10, 300) if t not in plain)
    expected_long = hf_generate(tiny, LONG, {"lm_head": forced_step_hook(1, token, [])})
    seen = []
    expected_short = hf_generate(tiny, SHORT, {"lm_head": lambda m, a, out: seen.append(out.clone())})
    with torch.no_grad(), lm.generate(max_new_tokens=STEPS, do_sample=False) as tracer:
        with tracer.invoke(SHORT):
            short_step0 = lm.lm_head.output.save()
            short = lm.generator.output.save()
        with tracer.invoke(LONG):
            lm.lm_head.next().output[:, -1, token] = 1e4
            long = lm.generator.output.save()
    n = tiny.ids(SHORT).shape[1]
    assert torch.equal(long.value, expected_long)
    assert long.value[0, -STEPS + 1].item() == token
    assert torch.equal(short.value[:, -(n + STEPS):], expected_short)
    torch.testing.assert_close(short_step0.value, seen[0], rtol=0, atol=1e-4)


def test_save_one_step_logits(lm, tiny):
    seen = []
    hf_generate(tiny, SHORT, {"lm_head": lambda m, a, out: seen.append(out.detach().clone())})
    with torch.no_grad(), lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False):
        step0 = lm.lm_head.output.save()
        step3 = lm.lm_head.next(3).output.save()
    torch.testing.assert_close(step0.value, seen[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(step3.value, seen[3], rtol=0, atol=1e-5)


def test_step_beyond_max_new_tokens_raises_missed_call(lm, tiny):
    with pytest.raises(MissedCallError) as info, torch.no_grad(), \
            lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False):
        lm.lm_head.next(STEPS).output.save()
    message = str(info.value)
    assert "lm_head" in message and f"call {STEPS}" in message, message
    assert hook_count(lm._model) == 0
    # The model still generates correctly afterwards.
    with torch.no_grad(), lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False):
        ids = lm.generator.output.save()
    assert torch.equal(ids.value, hf_generate(tiny, SHORT))


def test_step_after_an_early_eos_raises_missed_call(lm, tiny):
    # PITFALLS: a generation that stops early must not silently drop a later step's intervention.
    calls = []
    expected = hf_generate(tiny, SHORT, {"lm_head": forced_step_hook(1, tiny.eos, calls)})
    assert len(calls) == 2 and expected[0, -1].item() == tiny.eos  # plain HF stops after step 1
    with pytest.raises(MissedCallError, match="lm_head"), torch.no_grad(), \
            lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False):
        lm.lm_head.next().output[:, -1, tiny.eos] = 1e4
        lm.lm_head.next(2).output.save()
    with torch.no_grad(), lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False):
        lm.lm_head.next().output[:, -1, tiny.eos] = 1e4
        ids = lm.generator.output.save()
    assert torch.equal(ids.value, expected)


def test_no_hook_left_after_generate(lm, tiny):
    with torch.no_grad(), lm.generate(SHORT, max_new_tokens=2, do_sample=False):
        lm.lm_head.output.save()
        lm.lm_head.next().output.save()
    assert hook_count(lm._model) == 0
    assert hook_count(lm._attached["generator"]) == 0


def test_intervention_at_every_step_with_all(lm, tiny):
    token = 7
    expected = hf_generate(tiny, SHORT, {"lm_head": forced_every_step_hook(token)})
    with torch.no_grad(), lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False):
        lm.lm_head.all().output[:, -1, token] = 1e4
        ids = lm.generator.output.save()
    assert torch.equal(ids.value, expected)
    assert ids.value[0, -STEPS:].tolist() == [token] * STEPS


def forced_every_step_hook(token):
    def hook(module, args, output):
        output = output.clone()
        output[:, -1, token] = 1e4
        return output
    return hook


def test_all_saves_every_steps_logits(lm, tiny):
    seen = []
    expected = hf_generate(tiny, MID, {"lm_head": lambda m, a, out: seen.append(out[:, -1].clone())})
    with torch.no_grad(), lm.generate(MID, max_new_tokens=STEPS, do_sample=False):
        logits = lm.lm_head.all().output.t[-1].save()
        ids = lm.generator.output.save()
    assert torch.equal(ids.value, expected)
    assert len(logits.value) == len(seen) == STEPS
    for got, want in zip(logits.value, seen):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_an_iteration_block_edits_only_its_steps(lm, tiny):
    token = 7
    calls = []

    def forced_at_steps_1_and_2(module, args, output):
        calls.append(None)
        if len(calls) - 1 in (1, 2):
            output = output.clone()
            output[:, -1, token] = 1e4
        return output

    expected = hf_generate(tiny, SHORT, {"lm_head": forced_at_steps_1_and_2})
    with torch.no_grad(), lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False) as tracer:
        with tracer.iter[1:3]:
            lm.lm_head.output[:, -1, token] = 1e4
        ids = lm.generator.output.save()
    assert torch.equal(ids.value, expected)
    assert ids.value[0, -STEPS:].tolist()[1:3] == [token, token]


def test_a_step_beyond_max_new_tokens_raises_naming_module_and_step(lm):
    with pytest.raises(MissedCallError, match=r"model\.lm_head\.output \(calls 3, 4, 5, 6\) never reached "
                                              r"call 5: model\.lm_head ran 5 time"):
        with torch.no_grad(), lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False) as tracer:
            with tracer.iter[3:7]:
                lm.lm_head.output.save()
    assert hook_count(lm._model) == 0
