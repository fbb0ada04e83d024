"""The bad-input catalogue (tests/reliability/bad_inputs.py): every wrong usage raises its exact
exception class with a message that names what is wrong and the fix, and leaves the model as a
fresh one: no hook, no open trace, no changed state, and its next trace equals plain PyTorch."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict

import pytest
import torch

from nnsight_core import NNsightError

from .bad_inputs import BUILDERS, CASES, PROMPT, Case, Net, X
from tests.reliability.subjects import assert_clean, snapshot


def _check_nnsight(model: Any) -> None:
    """A trace's saved output equals a fresh ``Net`` called directly."""
    with torch.no_grad(), model.trace(X):
        out = model.output.save()
        hidden = model.blocks[0].output.save()
    fresh = Net()
    with torch.no_grad():
        torch.testing.assert_close(out.value, fresh(X), rtol=0, atol=0)
        torch.testing.assert_close(hidden.value, fresh.blocks[0](fresh.layer1(X)), rtol=0, atol=0)


def _check_language_model(model: Any) -> None:
    """A trace's logits equal a fresh plain Hugging Face model loaded from the same folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with torch.no_grad(), model.trace(PROMPT):
        logits = model.lm_head.output.save()
    fresh = AutoModelForCausalLM.from_pretrained(model.model_key).eval()
    ids = AutoTokenizer.from_pretrained(model.model_key)(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(logits.value, fresh(input_ids=ids).logits, rtol=0, atol=1e-5)


def _check_diffusion_model(model: Any) -> None:
    """A one-step trace's images equal a fresh plain pipeline loaded from the same folder."""
    from diffusers import DiffusionPipeline

    with torch.no_grad(), model.trace("a cat", seed=0, output_type="pt") as tracer:
        pass
    fresh = DiffusionPipeline.from_pretrained(model.model_key)
    fresh.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = fresh("a cat", generator=[torch.Generator().manual_seed(0)], num_inference_steps=1,
                         output_type="pt").images
    torch.testing.assert_close(tracer.output.images, expected, rtol=0, atol=0)


#: Adapter name -> check that a model still computes what a fresh one does.
CHECKS: Dict[str, Callable[[Any], None]] = {
    "NNsight": _check_nnsight,
    "LanguageModel": _check_language_model,
    "DiffusionModel": _check_diffusion_model,
}


def test_the_catalogue_is_large_and_covers_every_adapter():
    assert len(CASES) >= 30
    assert {c.adapter for c in CASES} == set(BUILDERS) == set(CHECKS)
    assert len({c.id for c in CASES}) == len(CASES)
    for c in CASES:
        assert issubclass(c.error, NNsightError), c.id
        assert c.mistake and c.run.__doc__ is None, c.id  # the docs show the mistake line, not a docstring


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_its_error_and_leaves_no_trace(case: Case):
    model = BUILDERS[case.adapter]()
    model.dispatch_model()
    before = snapshot(model)
    with pytest.raises(NNsightError) as info:
        case.run(model)
    assert type(info.value) is case.error, f"{case.id}: raised {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert re.search(case.match, message), f"{case.id}: message {message!r} does not match {case.match!r}"
    assert_clean(model, before)
    CHECKS[case.adapter](model)
    assert_clean(model, before)
