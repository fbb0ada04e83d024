"""A LanguageModel's graph round-trips through JSON and runs to the same results (tiny GPT-2).

Expected values come from the plain Hugging Face copy run on each prompt alone, with raw
``register_forward_hook`` hooks for the edits.
"""

import pytest
import torch

from nnsight_core import Graph, GraphAccessError
from nnsight_core.serialize import from_dict, run
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


# -- what a loaded graph may reach on a language model -----------------------------------------


def _document(*nodes):
    return {"format": "nnsight_core.graph", "version": 2, "rows": [[0, 1]], "nodes": list(nodes)}


def _run_refused(gpt2, document, match):
    """``document`` is refused on a fresh LanguageModel, which keeps its weights and no hook."""
    from nnsight_transformers import LanguageModel

    lm = LanguageModel(gpt2.folder)
    lm.dispatch_model()
    before = {name: value.clone() for name, value in lm._model.state_dict().items()}
    with pytest.raises(GraphAccessError, match=match):
        run(lm, from_dict(document), SHORT)
    assert hook_count(lm._model) == 0
    for name, value in lm._model.state_dict().items():
        assert torch.equal(value, before[name]), name
    with torch.no_grad(), lm.trace(SHORT):
        logits = lm.output.logits.save()
    torch.testing.assert_close(logits.value, gpt2.logits(gpt2.ids(SHORT)), rtol=0, atol=ATOL)


ROOT = {"op": "output", "target": ["", 0], "invoke": 0}
LAYER_INPUTS = {"op": "inputs", "target": ["transformer.h.0", 0], "invoke": 0}


def _get(i, name):
    return {"op": "getattr", "target": name, "args": [{"node": i}]}


def _item(i, key):
    return {"op": "getitem", "args": [{"node": i}, key]}


@pytest.mark.parametrize("nodes, match", [
    ([ROOT, _get(0, "cache"), _get(1, "layers")], r"reads the attribute 'layers' of a transformers\..*Cache"),
    ([ROOT, _get(0, "cache"), _get(1, "key_cache")], r"attribute 'key_cache' of a .*Cache.*no attributes"),
    ([ROOT, _get(0, "cache"), {"op": "call_method", "target": "to", "args": [{"node": 1}, "cpu"]}],
     r"calls the method 'to' on a .*Cache: a loaded graph calls methods on tensors only"),
    ([ROOT, _get(0, "cache"), _item(1, 0)], r"tries to index a .*Cache"),
    ([ROOT, _get(0, "config")], r"attribute 'config' of a .*CausalLMOutput.*may read only .*cache, .*logits"),
    ([ROOT, _get(0, "logits"), _get(1, "grad_fn")], r"attribute 'grad_fn' of a torch\.Tensor"),
    ([LAYER_INPUTS, _item(0, 0), _item(1, 1), _get(2, "layers")], r"attribute 'layers' of a .*Cache"),
    ([LAYER_INPUTS, _item(0, 0), _item(1, 1), {"op": "call_method", "target": "numel", "args": [{"node": 2}]}],
     r"calls the method 'numel' on a .*Cache"),
], ids=["cache layers", "cache key_cache", "cache method", "cache index", "output config", "logits grad_fn",
        "layer kwargs cache", "layer kwargs cache method"])
def test_a_loaded_graph_cannot_reach_past_its_values(gpt2, nodes, match):
    _run_refused(gpt2, _document(*nodes, {"op": "save", "args": [{"node": len(nodes) - 1}]}), match)


def test_a_loaded_graph_reads_model_output_fields(gpt2):
    from nnsight_transformers import LanguageModel

    document = _document(ROOT, _get(0, "logits"), {"op": "save", "args": [{"node": 1}]}, _item(0, "logits"),
                         _item(3, {"tuple": [{"slice": [None, None, None]}, -1]}),
                         {"op": "save", "args": [{"node": 4}]}, _get(1, "shape"), {"op": "save", "args": [{"node": 6}]})
    with torch.no_grad():
        saved = run(LanguageModel(gpt2.folder), from_dict(document), SHORT)
    expected = gpt2.logits(gpt2.ids(SHORT))
    torch.testing.assert_close(saved[2], expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(saved[5], expected[:, -1], rtol=0, atol=ATOL)
    assert saved[7] == expected.shape


# -- token indices stay relative to the invoke they were recorded for (issue: .t[0] in JSON) ------


def _first_token_hidden(gpt2, ids):
    seen = {}
    with raw_hooks(gpt2.hf, {"transformer.h.0": capture(seen, "h0")}):
        gpt2.logits(ids)
    return seen["h0"][:, 0]


@pytest.mark.parametrize("through_json", [False, True])
def test_a_positive_token_index_runs_only_on_prompts_of_its_length(gpt2, through_json):
    from nnsight_core import InputError
    from nnsight_transformers import LanguageModel

    lm = LanguageModel(gpt2.folder)
    with torch.no_grad(), lm.trace(SHORT) as tracer:
        first = lm.transformer.h[0].output.t[0].save()
    graph = Graph.from_json(tracer.graph.to_json()) if through_json else tracer.graph
    assert graph.requirements == {0: {"tokens": gpt2.ids(SHORT).shape[1]}}

    same_length = gpt2.ids(SHORT).clone()               # other tokens, as many as SHORT has
    same_length[0, :2] = same_length[0, :2].flip(0) + 1
    with torch.no_grad():
        saved = lm.run_graph(graph, same_length[0])
    expected = _first_token_hidden(gpt2, same_length)
    torch.testing.assert_close(saved[first.node.index], expected, rtol=0, atol=ATOL)
    assert not torch.allclose(expected, first.value, atol=1e-3)  # another prompt: another value

    assert gpt2.ids(LONG).shape[1] != gpt2.ids(SHORT).shape[1]
    with pytest.raises(InputError, match=r"invoke 0 .* recorded on a prompt of \d+ token\(s\), but this prompt has"):
        with torch.no_grad():
            lm.run_graph(graph, LONG)
    assert hook_count(lm._model) == 0


def test_a_token_slice_records_its_length_and_a_negative_index_does_not(gpt2):
    from nnsight_transformers import LanguageModel

    lm = LanguageModel(gpt2.folder)
    with torch.no_grad(), lm.trace(SHORT) as tracer:
        lm.transformer.h[0].output.t[1:3].save()
    assert tracer.graph.requirements == {0: {"tokens": gpt2.ids(SHORT).shape[1]}}

    with torch.no_grad(), lm.trace(SHORT) as tracer:
        last = lm.lm_head.output.t[-1].save()
    assert tracer.graph.requirements == {}
    graph = Graph.from_json(tracer.graph.to_json())
    with torch.no_grad():                                # another length: -1 is still the last token
        saved = lm.run_graph(graph, LONG)
    torch.testing.assert_close(saved[last.node.index], gpt2.logits(gpt2.ids(LONG))[:, -1], rtol=0, atol=ATOL)


def test_requirements_are_checked_in_the_document():
    from nnsight_core import GraphFormatError

    document = {"format": "nnsight_core.graph", "version": 2, "rows": [[0, 1]],
                "nodes": [{"op": "output", "target": ["transformer", 0], "invoke": 0}]}
    for bad in ([[1, {"tokens": 3}]], [[0, {}]], [[0, {"tokens": [3]}]], {"0": 3}, [[0, {"__x": 1}]]):
        with pytest.raises(GraphFormatError, match="requirements"):
            from_dict({**document, "requirements": bad})
    assert from_dict({**document, "requirements": [[0, {"tokens": 3}]]}).requirements == {0: {"tokens": 3}}


def test_a_plain_wrapper_refuses_requirements_it_cannot_check():
    from nnsight_core import InputError
    from nnsight_torch import NNsight

    from tests.helpers import make_net

    model = NNsight(make_net())
    with model.trace(torch.rand(1, 5)) as tracer:
        model.layer1.output.save()
    tracer.graph.require(0, "tokens", 4)
    with pytest.raises(InputError, match="cannot check"):
        model.run_graph(tracer.graph, torch.rand(1, 5))
