"""Silent-failure catalogue: every way an intervention could be dropped without a sign is an error.

Each test makes an intervention that cannot take effect and checks that it raises, naming the
module, call or invoke, instead of returning results computed without it. Positive controls
check the same interventions where they can take effect, against raw PyTorch hooks.
"""

from __future__ import annotations

import pytest
import torch

from nnsight_core import (BatchError, EnvoyAttributeError, InputError, InvokeError, MissedCallError,
                          ProxyScopeError, TraceStateError, ValueNotSetError)
from nnsight_core.testing import hook_count
from nnsight_torch import NNsight

from .bad_inputs import Net, X
from tests.reliability.subjects import PROMPT, assert_clean, make_subject, snapshot

# -- a module that is never called --------------------------------------------------------------


@pytest.mark.parametrize("intervene", ["read", "in-place edit", "assignment", "input read", "input edit"])
def test_intervention_on_a_module_never_called_raises(intervene):
    model = NNsight(Net())
    with pytest.raises(MissedCallError, match=r"model\.spare\.(output|input) \(call 0, invoke 0\) was never "
                                              r"reached: model\.spare never ran"):
        with model.trace(X):
            if intervene == "read":
                model.spare.output.save()
            elif intervene == "in-place edit":
                model.spare.output[:] = 0
            elif intervene == "assignment":
                model.spare.output = torch.zeros(2, 8)
            elif intervene == "input read":
                model.spare.input.save()
            else:
                model.spare.input = torch.zeros(2, 8)
    assert hook_count(model._model) == 0


def test_generator_output_in_a_plain_trace_raises(checkpoints):
    subject = make_subject("llama", checkpoints)
    model = subject.make()
    with pytest.raises(MissedCallError,
                       match=r"model\.generator\.output \(call 0, invoke 0\) was never reached"):
        with model.trace(PROMPT):
            model.generator.output.save()


# -- a call index beyond the calls that happened ------------------------------------------------------


def test_call_index_beyond_the_calls_raises_for_reads_and_edits():
    model = NNsight(Net())
    for intervene in (lambda e: e.output.save(), lambda e: e.output.__setitem__(slice(None), 0)):
        with pytest.raises(MissedCallError,
                           match=r"model\.blocks\[0\]\.output \(call 2, invoke 0\) was never reached: "
                                 r"model\.blocks\[0\] ran 1 time\(s\), so its calls are 0-0"):
            with model.trace(X):
                intervene(model.blocks[0].next(2))


def test_generation_that_stops_early_raises_for_the_steps_that_never_came(checkpoints):
    """A generation that ends at EOS after one step: a step-3 intervention must not be dropped."""
    from transformers import AutoTokenizer

    subject = make_subject("gpt2", checkpoints)
    fresh = subject.fresh()
    tok = AutoTokenizer.from_pretrained(subject.make().model_key)
    prompt = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        first = int(fresh(**prompt).logits[0, -1].argmax())    # greedy step 1
    model = subject.make()
    with pytest.raises(MissedCallError,
                       match=r"model\.lm_head\.output \(call 2, invoke 0\) was never reached: "
                                              r"model\.lm_head ran 1 time"):
        with torch.no_grad(), model.generate(PROMPT, max_new_tokens=5, eos_token_id=first):
            model.lm_head.next(2).output[:] = 0
    # Control: without the early stop the same intervention takes effect.
    with torch.no_grad(), model.generate(PROMPT, max_new_tokens=3):
        model.lm_head.next(2).output[:] = 0
        edited = model.lm_head.output.save()
    assert bool((edited.value == 0).all())


# -- values of finished traces that were never saved ------------------------------------------------------


def test_unsaved_value_of_a_finished_trace_raises_when_read_or_used():
    model = NNsight(Net())
    with model.trace(X):
        hidden = model.layer2.output
        kept = model.layer1.output.save()
    with pytest.raises(ValueNotSetError, match=r"model\.layer2\.output \(call 0, invoke 0\).*not saved"):
        hidden.value
    with pytest.raises(ValueNotSetError, match=r"call \.save\(\) on it inside the trace"):
        with model.trace(X):
            model.layer1.output = hidden
    # Control: the saved one crosses traces.
    with torch.no_grad(), model.trace(X * 0):
        model.layer1.output = kept
        out = model.output.save()
    with torch.no_grad():
        torch.testing.assert_close(out.value, Net()(X), rtol=0, atol=0)


def test_unsaved_value_of_another_models_finished_trace_raises():
    model, other = NNsight(Net()), NNsight(Net())
    with model.trace(X):
        hidden = model.layer1.output
    with pytest.raises(ValueNotSetError, match=r"model\.layer1\.output"):
        with other.trace(X):
            other.layer1.output = hidden


# -- values of another model's trace --------------------------------------------------------------------


def test_proxy_of_another_models_open_trace_raises():
    model, other = NNsight(Net()), NNsight(Net())
    with pytest.raises(ProxyScopeError, match="belongs to another trace that is still being recorded"):
        with model.trace(X):
            hidden = model.layer1.output
            with other.trace(X):
                other.layer1.output = hidden * 2
    assert hook_count(model._model) == hook_count(other._model) == 0


def test_module_of_another_model_in_a_trace_raises():
    model, other = NNsight(Net()), NNsight(Net())
    with pytest.raises(TraceStateError, match=r"of the model that owns it"):
        with other.trace(X):
            model.layer1.output[:] = 0


# -- invokes with no rows -------------------------------------------------------------------------------


def test_invoke_with_zero_rows_raises(checkpoints):
    model = NNsight(Net())
    with pytest.raises(InvokeError, match=r"invoke 1 has 0 rows"):
        with model.trace() as tracer:
            with tracer.invoke(X):
                pass
            with tracer.invoke(X[:0]):
                model.layer1.output[:] = 0
    lm = make_subject("llama", checkpoints).make()
    with pytest.raises(InvokeError, match=r"invoke 0 has 0 rows"):
        with lm.trace(torch.zeros(0, 4, dtype=torch.long)):
            lm.lm_head.output.save()


# -- edits that would go to the module instead of the graph, and ignored arguments ------------------------


@pytest.mark.parametrize("target", ["envoy", "model", "runner"])
def test_misspelt_module_value_assignment_raises_and_leaves_the_module_unchanged(target):
    model = NNsight(Net())
    before = snapshot(model)
    with pytest.raises(EnvoyAttributeError, match=r"outptu.* instead of recording an edit"):
        with model.trace(X) as tracer:
            owner = {"envoy": model.layer1, "model": model, "runner": tracer}[target]
            owner.outptu = torch.zeros(2, 8)
    assert_clean(model, before)
    assert not hasattr(model._model.layer1, "outptu") and "outptu" not in vars(model)


def test_generation_arguments_given_to_a_trace_raise(checkpoints):
    model = make_subject("llama", checkpoints).make()
    with pytest.raises(InputError,
                       match=r"trace\(\) was given generate\(\) arguments \(do_sample, max_new_tokens\)"):
        with model.trace(PROMPT, max_new_tokens=3, do_sample=True):
            model.lm_head.output.save()


def test_keyword_argument_the_module_ignores_raises():
    model = NNsight(Net())
    with pytest.raises(InputError, match=r"Net\.forward\(\) takes no keyword argument 'mask'"):
        with model.trace(X, mask=torch.ones(2, 5)):
            pass


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_keyword_argument_a_language_models_kwargs_would_swallow_raises(checkpoints, arch):
    # Llama's forward takes **kwargs: Unpack[TransformersKwargs], GPT-2's an unannotated **kwargs.
    model = make_subject(arch, checkpoints).make()
    cls = type(model._model).__name__
    with pytest.raises(InputError, match=rf"{cls}\.forward\(\) takes no keyword argument 'foo'"):
        with model.trace(PROMPT, foo=1):
            model.lm_head.output.save()
    with pytest.raises(InputError, match=rf"{cls}\.generate\(\) takes no keyword argument 'foo'"):
        with model.generate(PROMPT, max_new_tokens=2, foo=1):
            model.lm_head.output.save()


# -- writes to values that are not part of the batch -------------------------------------------------------


class Positions(torch.nn.Module):
    """A table of position vectors shared by every row of the batch: its output is not batch-first."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(16, 4))

    def forward(self, length: int) -> torch.Tensor:
        return self.table[:length]


class Positional(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.positions = Positions()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:     # x: (batch, 5, 4)
        return self.proj(x + self.positions(x.shape[1]))


def _positional_inputs():
    return torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(2))


def test_edit_of_a_value_outside_the_batch_takes_effect_with_one_invoke():
    """Control: with one invoke, the whole shared value is the invoke's to edit."""
    x = _positional_inputs()
    model = NNsight(Positional())
    with torch.no_grad(), model.trace(x):
        model.positions.output[0] = 0
        out = model.output.save()
    plain = Positional()
    handle = plain.positions.register_forward_hook(lambda m, a, o: torch.cat([o[:1] * 0, o[1:]]))
    with torch.no_grad():
        expected = plain(x)
    handle.remove()
    torch.testing.assert_close(out.value, expected, rtol=0, atol=0)


def test_conflicting_edits_of_a_value_outside_the_batch_raise():
    x = _positional_inputs()
    model = NNsight(Positional())
    try:
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(x[:1]):
                model.positions.output[:] = 0
            with tracer.invoke(x[1:]):
                model.positions.output[:] = 1
    except BatchError as error:
        assert "model.positions.output" in str(error)
    else:
        raise AssertionError("invoke 0's edit of a value shared by all invokes was silently dropped")


def test_one_invokes_edit_of_a_value_outside_the_batch_raises():
    x = _positional_inputs()
    model = NNsight(Positional())
    try:
        with torch.no_grad(), model.trace() as tracer:
            with tracer.invoke(x[:1]):
                model.positions.output[:] = 0
            with tracer.invoke(x[1:]):
                untouched = model.output.save()
    except BatchError as error:
        assert "model.positions.output" in str(error)
    else:
        with torch.no_grad():
            leaked = not torch.allclose(untouched.value, Positional()(x[1:]))
        raise AssertionError(f"invoke 0's edit silently {'reached' if leaked else 'skipped'} invoke 1's rows")
