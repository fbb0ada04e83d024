"""Edits inside a trace equal the same edits done with raw forward hooks on plain HF runs."""

import torch

from tests.helpers import LONG, MID, MLP0, SHORT, capture, raw_hooks

ATOL = 1e-4


def envoy(lm, path):
    for part in path.split("."):
        lm = lm[int(part)] if part.isdigit() else getattr(lm, part)
    return lm


def raw_run(tiny, prompt, hooks):
    """Logits of a plain HF run of ``prompt`` alone with raw hooks ``{path: fn}``."""
    with raw_hooks(tiny.hf, hooks):
        return tiny.logits(tiny.ids(prompt))


def edit_hook(fn):
    def hook(module, args, output):
        output = output.clone()
        fn(output)
        return output
    return hook


def zero_(t):
    t[:] = 0


def test_zero_mlp_output_in_place(lm, tiny):
    expected = raw_run(tiny, LONG, {MLP0[tiny.arch]: edit_hook(zero_)})
    with torch.no_grad(), lm.trace(LONG):
        envoy(lm, MLP0[tiny.arch]).output[:] = 0
        mlp = envoy(lm, MLP0[tiny.arch]).output.save()
        logits = lm.lm_head.output.save()
    assert bool((mlp.value == 0).all())
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=ATOL)
    assert (expected - tiny.logits(tiny.ids(LONG))).abs().max() > 1e-2  # the edit matters


def test_in_place_edit_with_grad_enabled(lm, tiny):
    # PITFALLS: in-place edits of a tensor autograd needs must neither fail nor reach weights.
    weights = {k: v.detach().clone() for k, v in tiny.hf.state_dict().items()}

    def half(t):
        t[..., :8] = 0

    expected = raw_run(tiny, MID, {MLP0[tiny.arch]: edit_hook(half)})
    with lm.trace(MID):
        envoy(lm, MLP0[tiny.arch]).output[..., :8] = 0
        logits = lm.lm_head.output.save()
    assert logits.value.requires_grad
    torch.testing.assert_close(logits.value.detach(), expected, rtol=0, atol=ATOL)
    for name, value in lm._model.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=f"{name} changed")


def test_zero_mlp_in_one_invoke_leaves_the_other(lm, tiny):
    expected = raw_run(tiny, SHORT, {MLP0[tiny.arch]: edit_hook(zero_)})
    plain_long = tiny.logits(tiny.ids(LONG))
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(LONG):
            long_logits = lm.lm_head.output.save()
        with tracer.invoke(SHORT):                      # shorter: left-padded
            envoy(lm, MLP0[tiny.arch]).output[:] = 0
            short_logits = lm.lm_head.output.save()
    n = expected.shape[1]
    torch.testing.assert_close(short_logits.value[:, -n:], expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(long_logits.value, plain_long, rtol=0, atol=ATOL)


def test_replace_layer_output_by_assignment(lm, tiny):
    layer = f"{tiny.layers_path}.0"

    def affine(t):
        t.mul_(2).add_(0.5)

    expected = raw_run(tiny, SHORT, {layer: edit_hook(affine)})
    plain_mid = tiny.logits(tiny.ids(MID))
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            envoy(lm, layer).output = envoy(lm, layer).output * 2 + 0.5
            logits = lm.lm_head.output.save()
        with tracer.invoke(MID):
            mid_logits = lm.lm_head.output.save()
    n = expected.shape[1]
    torch.testing.assert_close(logits.value[:, -n:], expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(mid_logits.value, plain_mid, rtol=0, atol=ATOL)
    assert (expected - tiny.logits(tiny.ids(SHORT))).abs().max() > 1e-2


def test_replace_lm_head_output_by_assignment(lm, tiny):
    with torch.no_grad(), lm.trace(MID) as tracer:
        lm.lm_head.output = lm.lm_head.output * 3
    torch.testing.assert_close(tracer.output.logits, tiny.logits(tiny.ids(MID)) * 3, rtol=0, atol=ATOL)


def patch_expected(tiny, source, target, layer, src_pos, dst_pos):
    """Raw hooks: the layer's hidden state of ``source`` at ``src_pos`` written into ``target``."""
    seen = {}
    raw_run(tiny, source, {layer: capture(seen, "h")})
    vector = seen["h"][:, src_pos]

    def put(t):
        t[:, dst_pos] = vector

    return raw_run(tiny, target, {layer: edit_hook(put)})


def test_patch_last_token_from_invoke_0_into_invoke_1(lm, tiny):
    layer = f"{tiny.layers_path}.0"
    expected = patch_expected(tiny, LONG, SHORT, layer, -1, -1)
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(LONG):
            vector = envoy(lm, layer).output[:, -1, :]
            long_logits = lm.lm_head.output.save()
        with tracer.invoke(SHORT):
            envoy(lm, layer).output[:, -1, :] = vector
            short_logits = lm.lm_head.output.save()
    n = expected.shape[1]
    torch.testing.assert_close(short_logits.value[:, -n:], expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(long_logits.value, tiny.logits(tiny.ids(LONG)), rtol=0, atol=ATOL)
    assert (expected - tiny.logits(tiny.ids(SHORT))).abs().max() > 1e-2


def test_patch_from_a_padded_invoke_by_token_index(lm, tiny):
    # Source is the shorter (left-padded) invoke: its t[1] goes to position t[3] of the longer one.
    layer = f"{tiny.layers_path}.1"
    expected = patch_expected(tiny, SHORT, LONG, layer, 1, 3)
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):
            vector = envoy(lm, layer).output.t[1]
        with tracer.invoke(LONG):
            envoy(lm, layer).output.t[3] = vector
            logits = lm.lm_head.output.save()
    torch.testing.assert_close(logits.value, expected, rtol=0, atol=ATOL)


def test_ad_hoc_lm_head_call_is_a_logit_lens(lm, tiny):
    layer = f"{tiny.layers_path}.0"
    seen = {}
    raw_run(tiny, MID, {layer: capture(seen, "h")})
    with torch.no_grad():
        expected = tiny.hf.lm_head(seen["h"])
    with torch.no_grad(), lm.trace(MID):
        lens = lm.lm_head(envoy(lm, layer).output).save()
    torch.testing.assert_close(lens.value, expected, rtol=0, atol=1e-5)
