"""A LanguageModel's graph round-trips through JSON and runs to the same results (tiny GPT-2).

Expected values come from the plain Hugging Face copy run on each prompt alone, with raw
``register_forward_hook`` hooks for the edits.
"""

import torch

from nnsight_core import Graph
from nnsight_core.serialize import run
from nnsight_core.testing import hook_count

from tests.helpers import LONG, SHORT, capture, raw_hooks
from .test_generate import hf_generate

ATOL = 1e-4


def test_a_loaded_gpt2_graph_runs_the_same(gpt2):
    from nnsight_transformers import LanguageModel

    lm = LanguageModel(gpt2.folder)
    with torch.no_grad(), lm.trace() as tracer:
        with tracer.invoke(SHORT):                          # shorter: left-padded in the batch
            lm.transformer.h[0].mlp.output[:, -1] = 0
            hidden = lm.transformer.h[0].output.t[-1].save()
            short = lm.lm_head.output.t[-1].save()
        with tracer.invoke(LONG):
            lm.transformer.h[1].output = lm.transformer.h[1].output * 2
            long = torch.softmax(lm.lm_head.output.t[-1], dim=-1).save()
        text = tracer.graph.to_json()

    seen = {}

    def zero_last(t):
        t[:, -1] = 0

    def double(t):
        t.mul_(2)

    with raw_hooks(gpt2.hf, {"transformer.h.0.mlp": capture(seen, "mlp", zero_last),
                             "transformer.h.0": capture(seen, "h0")}):
        short_logits = gpt2.logits(gpt2.ids(SHORT))[:, -1]
    with raw_hooks(gpt2.hf, {"transformer.h.1": capture(seen, "h1", double)}):
        long_probs = torch.softmax(gpt2.logits(gpt2.ids(LONG))[:, -1], dim=-1)
    expected = {"hidden": seen["h0"][:, -1], "short": short_logits, "long": long_probs}
    assert (short_logits - gpt2.logits(gpt2.ids(SHORT))[:, -1]).abs().max() > 1e-2  # the edit matters

    fresh = LanguageModel(gpt2.folder)
    with torch.no_grad():
        saved = run(fresh, Graph.from_json(text), invokes=[(SHORT,), (LONG,)])
    for name, proxy in {"hidden": hidden, "short": short, "long": long}.items():
        torch.testing.assert_close(saved[proxy.node.index], expected[name], rtol=0, atol=ATOL)
        torch.testing.assert_close(proxy.value, expected[name], rtol=0, atol=ATOL)
    assert hook_count(fresh._model) == 0


def test_a_loaded_generation_graph_runs_the_same(gpt2):
    from nnsight_transformers import LanguageModel

    lm = LanguageModel(gpt2.folder)
    with torch.no_grad(), lm.generate(LONG, max_new_tokens=3, do_sample=False) as tracer:
        first = lm.lm_head.output.t[-1].argmax(dim=-1).save()
        ids = lm.generator.output.save()
        text = tracer.graph.to_json()
    expected = hf_generate(gpt2, LONG, max_new_tokens=3)
    with torch.no_grad():
        saved = run(LanguageModel(gpt2.folder), Graph.from_json(text), LONG, method="generate",
                    max_new_tokens=3, do_sample=False)
    for proxy in (ids, first):
        assert torch.equal(saved[proxy.node.index], proxy.value)
    assert torch.equal(saved[ids.node.index], expected)
    assert torch.equal(saved[first.node.index], expected[:, gpt2.ids(LONG).shape[1]])
