"""tracer.cond / apply / stop on tiny GPT-2 and Llama, during a forward pass and during generation."""

import torch

from tests.helpers import LONG, SHORT, raw_hooks

STEPS = 4


def layer(lm, tiny, i):
    """The envoy of decoder layer ``i`` (``lm.transformer.h[i]`` or ``lm.model.layers[i]``)."""
    envoy = lm
    for part in tiny.layers_path.split("."):
        envoy = getattr(envoy, part)
    return envoy[i]


def test_stop_after_the_first_layer_runs_nothing_later(lm, tiny):
    last = f"{tiny.layers_path}.1"
    ran = []
    handle = lm._model.get_submodule(last).register_forward_hook(lambda m, a, out: ran.append(1))
    try:
        with torch.no_grad(), lm.trace(LONG) as tracer:
            layer0 = layer(lm, tiny, 0)
            saved = layer0.output.save()
            tracer.stop()
    finally:
        handle.remove()
    assert ran == [] and tracer.output is None
    seen = {}
    with raw_hooks(tiny.hf, {f"{tiny.layers_path}.0": lambda m, a, out: seen.setdefault("h", out)}), torch.no_grad():
        tiny.hf(tiny.ids(LONG))
    torch.testing.assert_close(saved.value, seen["h"], rtol=0, atol=1e-5)


def test_apply_gives_a_logit_lens_equal_to_direct_calls(lm, tiny):
    with torch.no_grad(), lm.trace(SHORT) as tracer:
        layer0 = layer(lm, tiny, 0)
        top = tracer.apply(lambda h: h[0, -1].argmax().item(), lm.lm_head.output).save()
        probs = tracer.apply(torch.softmax, layer0.output[:, -1], dim=-1).save()
    seen = {}
    with raw_hooks(tiny.hf, {f"{tiny.layers_path}.0": lambda m, a, out: seen.setdefault("h", out)}), torch.no_grad():
        logits = tiny.hf(tiny.ids(SHORT)).logits
    assert top.value == int(logits[0, -1].argmax())
    torch.testing.assert_close(probs.value, torch.softmax(seen["h"][:, -1], -1), rtol=0, atol=1e-5)


def test_cond_during_generation_edits_only_the_steps_where_it_holds(lm, tiny):
    """Every step, force token 7 only if the current top token is not already 3."""
    token, banned = 7, 3

    def hook(module, args, output):
        output = output.clone()
        if output[0, -1].argmax() != banned:
            output[:, -1, token] = 1e4
        return output

    ids = tiny.ids(SHORT)
    with raw_hooks(tiny.hf, {"lm_head": hook}), torch.no_grad():
        expected = tiny.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=STEPS, pad_token_id=tiny.eos)
    with torch.no_grad(), lm.generate(SHORT, max_new_tokens=STEPS, do_sample=False) as tracer:
        with tracer.all():
            with tracer.cond(lm.lm_head.output[0, -1].argmax() != banned):
                lm.lm_head.output[:, -1, token] = 1e4
        generated = lm.generator.output.save()
    assert torch.equal(generated.value, expected)
