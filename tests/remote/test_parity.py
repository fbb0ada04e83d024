"""The same traces run locally and on the server give the same results, as the same types.

Each case is one function of (model, trace options); it runs on a local wrapper and on a
fresh lazily loaded client wrapper with ``backend=RemoteBackend(...)``, and the saved
values are compared. The client wrapper is never dispatched: no weights on the client.
"""

from __future__ import annotations

import pytest
import torch
from nnsight_core import OutputNotReturnedError
from nnsight_diffusers import DiffusionModel
from nnsight_torch import NNsight
from nnsight_transformers import LanguageModel
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

from nnsight_remote.testing import mlp

from tests.helpers import LONG, MID, SHORT, look_inside_attention

pytestmark = pytest.mark.filterwarnings("ignore:the server could not send back")


def assert_same(local, remote):
    """Equal values of equal types, recursively (tensors to float tolerance)."""
    assert type(local) is type(remote), (type(local), type(remote))
    if isinstance(local, torch.Tensor):
        assert local.shape == remote.shape and local.dtype == remote.dtype
        torch.testing.assert_close(remote, local.detach().cpu())
    elif isinstance(local, (tuple, list)):
        assert len(local) == len(remote)
        for a, b in zip(local, remote):
            assert_same(a, b)
    elif isinstance(local, dict):
        assert list(local) == list(remote)
        for key in local:
            assert_same(local[key], remote[key])
    else:
        assert local == remote


def both(make, case, backend):
    """``case(model, **options)`` run locally and remotely; returns (local, remote, client model)."""
    local = case(make(), backend=None)
    client = make()
    remote = case(client, backend=backend)
    return local, remote, client


# -- NNsight ------------------------------------------------------------------------------------


def mlp_saves_and_edits(model, backend):
    x = torch.arange(10, dtype=torch.float32).reshape(2, 5) / 10
    with model.trace(x, backend=backend):
        hidden = model.layer1.output.save()
        model.sigma1.output[:, :3] = 0
        shape = model.layer2.output.shape
        out = model.output.save()
    return hidden.value, out.value, shape


def mlp_two_invokes(model, backend):
    x1, x2 = torch.ones(1, 5), torch.full((2, 5), 0.5)
    with model.trace(backend=backend) as tracer:
        with tracer.invoke(x1):
            a = model.layer1.output.save()
        with tracer.invoke(x2):
            model.layer1.output[:] = a.expand(2, 10)
            b = model.output.save()
            top = model.layer1.output.max(dim=-1).save()
    return a.value, b.value, top.value


def mlp_gradients(model, backend):
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
    with model.trace(x, backend=backend):
        hidden = model.layer1.output
        grad = hidden.grad.save()
        model.output.sum().backward()
    return grad.value


def mlp_cache(model, backend):
    with model.trace(torch.ones(1, 5), backend=backend) as tracer:
        cache = tracer.cache(modules=[model.layer1, model.layer2])
    return {key: cache[key].output for key in cache}


@pytest.mark.parametrize("case", [mlp_saves_and_edits, mlp_two_invokes, mlp_gradients, mlp_cache])
def test_nnsight_parity(server, case):
    local, remote, _ = both(lambda: NNsight(mlp()), case, server.backend("mlp"))
    assert_same(local, remote)


def test_a_session_uses_earlier_values(server):
    def case(model, backend):
        with model.session(backend=backend):
            with model.trace(torch.ones(1, 5)):
                hidden = model.layer1.output               # not saved: the session keeps it
            with model.trace(torch.zeros(1, 5)):
                model.layer1.output = hidden * 2
                out = model.output.save()
        return out.value

    local, remote, _ = both(lambda: NNsight(mlp()), case, server.backend("mlp"))
    assert_same(local, remote)


# -- LanguageModel ------------------------------------------------------------------------------


def lm_patching_across_invokes(model, backend):
    with model.trace(backend=backend) as tracer:
        with tracer.invoke(LONG):
            clean = model.transformer.h[1].output[0].t[-1].save()
            logits_clean = model.lm_head.output.t[-1].save()
        with tracer.invoke(SHORT):
            model.transformer.h[1].output[0].t[-1] = clean
            patched = model.lm_head.output.t[-1].save()
            first = model.transformer.h[0].output[0].t[0].save()
    return clean.value, logits_clean.value, patched.value, first.value


def lm_model_output(model, backend):
    with model.trace(MID, backend=backend):
        out = model.output.save()
    return out.value


def lm_generate_all(model, backend):
    with model.generate(LONG, max_new_tokens=4, backend=backend) as tracer:
        with tracer.all():
            logits = model.lm_head.output[:, -1].save()
        with tracer.iter[1:3]:
            model.transformer.h[0].output[0][:] = 0
        ids = model.generator.output.save()
    return logits.value, ids.value


def lm_gradients(model, backend):
    with model.trace(SHORT, backend=backend):
        hidden = model.transformer.h[0].output[0]
        grad = hidden.grad.save()
        model.lm_head.output[:, -1].sum().backward()
    return grad.value


def lm_cache(model, backend):
    with model.trace(MID, backend=backend) as tracer:
        cache = tracer.cache(modules=[model.transformer.h[0], model.transformer.h[1]])
    return {key: cache[key].output[0] for key in cache}


@pytest.mark.parametrize("case", [lm_patching_across_invokes, lm_generate_all, lm_gradients, lm_cache])
def test_language_model_parity(server, case):
    local, remote, client = both(lambda: LanguageModel(server.gpt2), case, server.backend(server.gpt2))
    assert_same(local, remote)
    assert not client.dispatched, "the client loaded weights"


def test_a_model_output_comes_back_as_its_class(server):
    local, remote, _ = both(lambda: LanguageModel(server.gpt2), lm_model_output, server.backend(server.gpt2))
    assert type(remote) is CausalLMOutputWithCrossAttentions
    torch.testing.assert_close(remote.logits, local.logits)


def test_tracer_output_after_a_remote_trace_says_to_save_model_output(server):
    model, backend = NNsight(mlp()), server.backend("mlp")
    with model.trace(torch.ones(1, 5), backend=backend) as tracer:
        out = model.output.save()
    with pytest.raises(OutputNotReturnedError, match=r"out = model.output.save\(\)"):
        tracer.output
    torch.testing.assert_close(out.value, mlp()(torch.ones(1, 5)))
    stats = backend.last                                  # what the request cost
    assert stats.request_bytes > 0 and stats.response_bytes >= 2 * 4
    assert 0 < stats.server_seconds < stats.seconds


def test_remote_true_reads_the_environment(server, monkeypatch):
    monkeypatch.setenv("NNSIGHT_REMOTE_URL", server.url)
    monkeypatch.setenv("NNSIGHT_API_KEY", server.key)
    model = LanguageModel(server.gpt2)
    with model.trace(SHORT, remote=True):
        logits = model.lm_head.output.save()
    local = LanguageModel(server.gpt2)
    with local.trace(SHORT):
        expected = local.lm_head.output.save()
    torch.testing.assert_close(logits.value, expected.value)
    # A value of an earlier trace is a tensor constant in the later graph: indexed, called and
    # passed to functions as a value of this trace is.
    with model.session(remote=True):                     # every trace of the block runs remotely
        with model.trace(SHORT):
            hidden = model.lm_head.input                   # (1, tokens, hidden)
        with model.trace(MID):
            model.lm_head.input[:, -1] = hidden[:, -1] + torch.select(hidden, 1, 0) * hidden.mean()
            patched = model.lm_head.output.save()
    with local.session():
        with local.trace(SHORT):
            hidden = local.lm_head.input
        with local.trace(MID):
            local.lm_head.input[:, -1] = hidden[:, -1] + torch.select(hidden, 1, 0) * hidden.mean()
            expected = local.lm_head.output.save()
    torch.testing.assert_close(patched.value, expected.value)
    assert not model.dispatched


# -- inside forwards, skipping, names ------------------------------------------------------------


def llama_source(model, backend):
    with model.trace(MID, backend=backend):
        attn = model.model.layers[0].self_attn
        query = attn.source.q_proj_0.output.save()
        rotated = attn.source.apply_rotary_pos_emb_0.output[0].save()
        attn.source.o_proj_0.input = attn.source.o_proj_0.input * 0.5      # an edit inside the forward
        scores = attn.source.attention_interface_0.source.scaled_dot_product_attention_0.output.save()
        logits = model.lm_head.output.save()
    return query.value, rotated.value, scores.value, logits.value


def llama_skip(model, backend):
    with model.trace(backend=backend) as tracer:
        with tracer.invoke(LONG):
            model.model.layers[1].skip(model.model.layers[0].output)
            skipped = model.lm_head.output.t[-1].save()
        with tracer.invoke(SHORT):                                         # runs layer 1
            ran = model.lm_head.output.t[-1].save()
    return skipped.value, ran.value


def llama_standard_names(model, backend):
    with model.trace(MID, backend=backend):
        attn = model.layers[0].attn.output[0].save()
        model.layers[1].mlp.output[:] = 0
        final = model.ln_final.output.save()
        logits = model.lm_head.output.save()
    return attn.value, final.value, logits.value


@pytest.mark.parametrize("case", [llama_source, llama_skip, llama_standard_names])
def test_source_skip_and_names_parity(server, case):
    look_inside_attention(LanguageModel(server.llama))        # the nested .source path needs its callee
    local, remote, client = both(lambda: LanguageModel(server.llama), case, server.backend(server.llama))
    assert_same(local, remote)
    assert not client.dispatched


def test_a_rename_alias_travels_as_the_real_path(server):
    def case(model, backend):
        with model.trace(torch.ones(2, 5), backend=backend) as tracer:
            model.first.output[:, 0] = 1
            out = model.output.save()
        return out.value, [node.target for node in tracer.graph.nodes if node.op in ("output", "set_output")]

    (local, local_paths), (remote, remote_paths), _ = both(lambda: NNsight(mlp(), rename={"layer1": "first"}),
                                                           case, server.backend("mlp"))
    assert_same(local, remote)
    assert ("layer1", 0) in remote_paths and not any("first" in path for path, _ in remote_paths)


# -- DiffusionModel -----------------------------------------------------------------------------


def sd_edit_one_step(model, backend):
    with torch.no_grad(), model.generate("a photo of a cat", seed=0, num_inference_steps=2, output_type="pt",
                                         backend=backend):
        model.unet.next()                                   # step 1
        model.unet.output[0][:, 1] = 0
        steps = model.unet.all().output[0].save()
        images = model.output.save()
    return steps.value, images.value.images


def test_diffusion_parity(server):
    local, remote, client = both(lambda: DiffusionModel(server.sd), sd_edit_one_step, server.backend(server.sd))
    assert_same(local, remote)
    assert not client.dispatched
