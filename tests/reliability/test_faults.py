"""Fault injection: after an exception anywhere in a trace, the model is exactly as before.

Each fault runs on every subject (NNsight, LanguageModel GPT-2, LanguageModel Llama) with a graph
that hooks several modules. Afterwards: no hook of any kind on any module (forward, forward-pre,
backward, instance ``forward``, global hooks), no module attribute added, no parameter changed,
no trace left open, the execution lock free; saved values computed before the fault are kept;
and the next trace gives exactly what a fresh model gives.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import pytest
import torch

from nnsight_core import BatchError, InputError, InterventionError, ValueNotSetError

from tests.reliability.subjects import Subject, _envoy, assert_clean, make_subject, snapshot, tripwire


class UserBug(Exception):
    """An exception the user's own code raises."""


def _record(model: Any, subject: Subject) -> Dict[str, Any]:
    """Record a save and an in-place edit of the probed module and a save of the model output."""
    envoy = _envoy(model, subject.probe_path)
    saved = envoy.output.clone().save()
    envoy.output[..., 0] = 0
    return {"probe": saved, "final": model.output.save()}


def fault_in_user_code(model: Any, subject: Subject) -> Tuple[BaseException, Dict[str, Any]]:
    error = UserBug("raised by the user's code inside the with block")
    with pytest.raises(UserBug) as info, torch.no_grad(), model.trace(subject.inputs):
        saved = _record(model, subject)
        raise error
    assert info.value is error
    return info.value, saved


def keyboard_interrupt_in_user_code(model: Any, subject: Subject) -> Tuple[BaseException, Dict[str, Any]]:
    with pytest.raises(KeyboardInterrupt) as info, torch.no_grad(), model.trace(subject.inputs):
        saved = _record(model, subject)
        raise KeyboardInterrupt
    return info.value, saved


def _fault_in_forward(error: BaseException, scanned: bool = False) -> Callable[[Any, Subject], Any]:
    """The module at the subject's trip path raises ``error`` inside its forward: in the real
    run, or (``scanned``) in the scan on fake tensors that asking for a ``.shape`` starts."""
    def inject(model: Any, subject: Subject) -> Tuple[BaseException, Dict[str, Any]]:
        with tripwire(model._model, subject.trip_path, error):
            with pytest.raises(type(error)) as info, torch.no_grad(), model.trace(subject.inputs):
                saved = _record(model, subject)
                # The module that raises is hooked too: its input is read, its output edited.
                trip = _envoy(model, subject.trip_path)
                saved["trip_input"] = trip.input.save()
                trip.output[..., 0] = 1
                if scanned:
                    trip.output.shape    # scans now, inside the block
        assert info.value is error
        return info.value, saved
    return inject


def _fault_in_intervention(scan: bool) -> Callable[[Any, Subject], Any]:
    """A shape mismatch in a recorded operation: found by the scan that asking for its ``.shape``
    starts, or (``scan=False``) when the model runs."""
    def inject(model: Any, subject: Subject) -> Tuple[BaseException, Dict[str, Any]]:
        with pytest.raises(InterventionError) as info, torch.no_grad(), \
                model.trace(subject.inputs, scan=scan):
            saved = _record(model, subject)
            product = (_envoy(model, subject.trip_path).output @ torch.ones(3, 3)).save()
            if scan:
                product.shape
        assert isinstance(info.value.__cause__, RuntimeError)
        return info.value, saved
    return inject


def keyboard_interrupt_in_intervention(model: Any, subject: Subject) -> Tuple[BaseException, Dict[str, Any]]:
    def interrupt(value: float) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info, torch.no_grad(), model.trace(subject.inputs):
        saved = _record(model, subject)
        _envoy(model, subject.trip_path).output.apply_(interrupt)   # runs a Python callback per element
    return info.value, saved


def fault_in_input_preparation(model: Any, subject: Subject) -> Tuple[BaseException, Dict[str, Any]]:
    with pytest.raises(InputError) as info, torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(subject.inputs):
            saved = _record(model, subject)
        with tracer.invoke(object()):      # no adapter can prepare this
            pass
    return info.value, saved


FAULTS = {
    "user_code": fault_in_user_code,
    "keyboard_interrupt_user_code": keyboard_interrupt_in_user_code,
    "module_forward": _fault_in_forward(RuntimeError("raised inside a module's forward")),
    "keyboard_interrupt_module_forward": _fault_in_forward(KeyboardInterrupt()),
    "keyboard_interrupt_during_scan": _fault_in_forward(KeyboardInterrupt(), scanned=True),
    "intervention_shape_mismatch": _fault_in_intervention(scan=False),
    "intervention_shape_mismatch_found_by_scan": _fault_in_intervention(scan=True),
    "keyboard_interrupt_intervention": keyboard_interrupt_in_intervention,
    "input_preparation": fault_in_input_preparation,
}

#: Faults raised while the model runs, after the probed module (which runs first) was saved.
_AFTER_PROBE_RAN = {"module_forward", "keyboard_interrupt_module_forward", "intervention_shape_mismatch",
                    "keyboard_interrupt_intervention"}


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_leaves_the_model_as_a_fresh_one(subject: Subject, fault: str):
    model = subject.make()
    model.dispatch_model()
    subject.assert_probe_matches_fresh(model)        # warm: every lazy attribute exists now
    before = snapshot(model)
    if subject.seeded:
        torch.manual_seed(0)       # the same starting noise as the expected run

    _, saved = FAULTS[fault](model, subject)

    assert_clean(model, before)
    expected = subject.expected()
    if fault in _AFTER_PROBE_RAN:
        # A saved value computed before the fault is kept; the final output never came.
        torch.testing.assert_close(saved["probe"].value, expected["module"], rtol=0, atol=subject.atol)
    else:
        with pytest.raises(ValueNotSetError, match="never computed"):
            saved["probe"].value
    with pytest.raises(ValueNotSetError, match="never computed"):
        saved["final"].value
    subject.assert_probe_matches_fresh(model)
    assert_clean(model, before)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("error", [RuntimeError("raised in generation step 2"), KeyboardInterrupt()],
                         ids=["error", "keyboard_interrupt"])
def test_fault_in_the_middle_of_generation(checkpoints, arch: str, error: BaseException):
    subject = make_subject(arch, checkpoints)
    model = subject.make()
    model.dispatch_model()
    subject.assert_probe_matches_fresh(model)
    before = snapshot(model)
    lm_head = model.lm_head
    with tripwire(model._model, subject.trip_path, error, after=1):   # its call in step 2 of 3
        with pytest.raises(type(error)), torch.no_grad(), model.generate(subject.inputs, max_new_tokens=3):
            first = lm_head.output.save()
            lm_head.next().output[:] = 0
            third = lm_head.next().output.save()
            ids = model.generator.output.save()
    assert_clean(model, before)
    assert first.value.shape[0] == 1                  # step 1 ran and was kept
    for proxy in (third, ids):
        with pytest.raises(ValueNotSetError, match="never computed"):
            proxy.value
    subject.assert_probe_matches_fresh(model)
    # Generation works again and equals plain Hugging Face generation.
    with torch.no_grad(), model.generate(subject.inputs, max_new_tokens=3):
        ids = model.generator.output.save()
    fresh = subject.fresh()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.model_key)
    prompt = tok(subject.inputs, return_tensors="pt")
    with torch.no_grad():
        expected = fresh.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert torch.equal(ids.value, expected)
    assert_clean(model, before)


def test_fault_in_batching_leaves_the_model_as_a_fresh_one(checkpoints):
    """Invokes that cannot be batched fail when the block exits, after both recorded nodes.

    (LanguageModel prepares every invoke into the same structure, so only NNsight can fail here.)
    """
    subject = make_subject("nnsight", checkpoints)
    model = subject.make()
    before = snapshot(model)
    with pytest.raises(BatchError), torch.no_grad(), model.trace() as tracer:
        with tracer.invoke(subject.inputs):
            saved = _record(model, subject)
        with tracer.invoke(subject.inputs, subject.inputs):
            _envoy(model, subject.probe_path).output.save()
    assert_clean(model, before)
    with pytest.raises(ValueNotSetError, match="never computed"):
        saved["probe"].value
    subject.assert_probe_matches_fresh(model)
    assert_clean(model, before)


def test_error_inside_execution_setup_leaves_no_hook(subject: Subject):
    """An error raised by the adapter's execute hook, after the Interleaver hooked the model."""
    model = subject.make()
    model.dispatch_model()
    before = snapshot(model)
    bad = {"nnsight": {"scale": 2.0}, "diffusion": {"seed": 0, "generator": torch.Generator()}}.get(
        subject.name, {"max_new_tokens": 2})
    with pytest.raises(InputError), torch.no_grad(), model.trace(subject.inputs, **bad):
        _record(model, subject)
    assert_clean(model, before)
    subject.assert_probe_matches_fresh(model)
