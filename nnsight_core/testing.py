"""The adapter conformance suite: one pytest class every adapter subclasses.

Example:
    >>> # tests/test_my_adapter.py
    >>> from nnsight_core.testing import AdapterConformance
    >>> from nnsight_torch import NNsight                 # your adapter's model class
    >>> class TestMyAdapter(AdapterConformance):
    ...     module_path = "0"
    ...     def make_model(self):
    ...         return NNsight(torch.nn.Sequential(torch.nn.Linear(5, 10)))
    ...     def make_inputs(self):
    ...         return [(torch.rand(1, 5),), (torch.rand(2, 5),)]
    >>> TestMyAdapter().test_save_equals_raw_hook()     # pytest runs every test_ method

Expected values come from plain PyTorch: a forward hook registered directly on
the module, around ``model.trace(*inputs, trace=False)`` (the adapter's own
input handling, without interleaving).

Override points:
    make_model: Return a fresh model wrapper (required).
    make_inputs: Return a list of at least two invokes' positional inputs (required).
    module_path: Dotted path of a submodule to read and edit (required).
    output_index: If the module returns a tuple, the index of its tensor (default None).
    final_tensor: Extract a tensor from the model's output (default: its first tensor).
    align: Make an invoke's value from a batched run comparable with its solo run
        (default: unchanged; a sequence model with left padding keeps the last tokens).
    atol: Tolerance when batched results are compared with solo runs.
    trace_kwargs: Keyword arguments given to every execution, plain or traced
        (default none; e.g. a fixed seed for a model that samples noise).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils import _pytree as pytree

__all__ = ["AdapterConformance", "hook_count"]


def hook_count(module: torch.nn.Module) -> int:
    """Hooks on ``module`` and all its submodules: forward, forward-pre and backward hooks,
    plus instance-level ``forward`` overrides (how the Interleaver hooks a module)."""
    total = 0
    for sub in module.modules():
        total += len(sub._forward_hooks) + len(sub._forward_pre_hooks) + len(sub._backward_hooks)
        total += len(getattr(sub, "_backward_pre_hooks", {})) + ("forward" in sub.__dict__)
    return total


class AdapterConformance:
    """Conformance tests for an adapter: save, edit, batching and hook clean-up."""

    module_path: str = ""
    output_index: Optional[int] = None
    atol: float = 1e-5
    #: Keyword arguments for every execution, traced or plain (e.g. a seed for a sampling model).
    trace_kwargs: Dict[str, Any] = {}

    # -- override points ---------------------------------------------------------

    def make_model(self) -> Any:
        raise NotImplementedError("return a fresh model wrapper from make_model()")

    def make_inputs(self) -> List[Tuple[Any, ...]]:
        raise NotImplementedError("return at least two invokes' positional inputs from make_inputs()")

    def final_tensor(self, output: Any) -> torch.Tensor:
        return next(leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor))

    def align(self, batched: torch.Tensor, solo: torch.Tensor) -> torch.Tensor:
        return batched

    # -- helpers -----------------------------------------------------------------

    def _envoy(self, model: Any) -> Any:
        envoy = model
        for part in self.module_path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _pick(self, value: Any) -> Any:
        return value if self.output_index is None else value[self.output_index]

    def _raw(self, model: Any, inputs: Tuple[Any, ...],
             edit: Optional[Callable[[torch.Tensor], None]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(module tensor, final tensor) from a plain forward hook, optionally editing in the hook."""
        seen = {}
        model.dispatch_model()  # a lazily loaded model swaps in its real module now, not later

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            tensor = self._pick(output)
            if edit is not None:
                tensor = tensor.clone()
                edit(tensor)
                if self.output_index is None:
                    output = tensor
                else:
                    output = tuple(tensor if i == self.output_index else v for i, v in enumerate(output))
            seen["value"] = tensor.detach().clone()
            return output

        handle = model._model.get_submodule(self.module_path).register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = model.trace(*inputs, trace=False, **self.trace_kwargs)
        finally:
            handle.remove()
        return seen["value"], self.final_tensor(out).detach().clone()

    # -- tests -------------------------------------------------------------------

    def test_save_equals_raw_hook(self) -> None:
        model = self.make_model()
        inputs = self.make_inputs()[0]
        expected, _ = self._raw(model, inputs)
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
            saved = self._pick(self._envoy(model).output).save()
        torch.testing.assert_close(saved.value, expected, rtol=0, atol=0)

    def test_empty_trace_equals_plain_forward(self) -> None:
        model = self.make_model()
        inputs = self.make_inputs()[0]
        _, expected = self._raw(model, inputs)
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs) as tracer:
            pass
        torch.testing.assert_close(self.final_tensor(tracer.output), expected, rtol=0, atol=0)

    def test_in_place_edit_equals_raw_hook(self) -> None:
        model = self.make_model()
        inputs = self.make_inputs()[0]

        def zero(t: torch.Tensor) -> None:
            t[..., 0] = 0

        expected_module, expected_final = self._raw(model, inputs, edit=zero)
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
            self._pick(self._envoy(model).output)[..., 0] = 0
            module = self._pick(self._envoy(model).output).save()
            final = model.output.save()
        torch.testing.assert_close(module.value, expected_module, rtol=0, atol=0)
        torch.testing.assert_close(self.final_tensor(final.value), expected_final, rtol=0, atol=0)

    def test_batched_invokes_equal_solo_runs(self) -> None:
        model = self.make_model()
        all_inputs = self.make_inputs()
        solo = [self._raw(model, inputs) for inputs in all_inputs]
        saved = []
        with torch.no_grad(), model.trace(**self.trace_kwargs) as tracer:
            for inputs in all_inputs:
                with tracer.invoke(*inputs):
                    saved.append(self._pick(self._envoy(model).output).save())
        for i, (proxy, (expected, _)) in enumerate(zip(saved, solo)):
            torch.testing.assert_close(self.align(proxy.value, expected), expected, atol=self.atol,
                                       rtol=0, msg=lambda m, i=i: f"invoke {i}: {m}")

    def test_edit_in_one_invoke_leaves_the_others(self) -> None:
        model = self.make_model()
        all_inputs = self.make_inputs()
        solo = [self._raw(model, inputs) for inputs in all_inputs]
        saved = []
        with torch.no_grad(), model.trace(**self.trace_kwargs) as tracer:
            for i, inputs in enumerate(all_inputs):
                with tracer.invoke(*inputs):
                    if i == 0:
                        self._pick(self._envoy(model).output)[:] = 0
                    saved.append(self._pick(self._envoy(model).output).save())
        assert bool((saved[0].value == 0).all())
        for i in range(1, len(all_inputs)):
            torch.testing.assert_close(self.align(saved[i].value, solo[i][0]), solo[i][0],
                                       atol=self.atol, rtol=0)

    def test_no_hook_left_after_success_or_error(self) -> None:
        model = self.make_model()
        inputs = self.make_inputs()[0]
        before = hook_count(model._model)
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
            self._envoy(model).output.save()
        assert hook_count(model._model) == before

        class Boom(Exception):
            pass

        try:
            with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
                self._envoy(model).output.save()
                raise Boom
        except Boom:
            pass
        assert hook_count(model._model) == before

        try:
            with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
                self._pick(self._envoy(model).output)[:] = torch.zeros(1, 2, 3, 4, 5, 6)
        except Exception:  # noqa: BLE001 - any error type: only the clean-up is under test
            pass
        assert hook_count(model._model) == before
        # The model still works and equals a plain run.
        _, expected = self._raw(model, inputs)
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs) as tracer:
            pass
        torch.testing.assert_close(self.final_tensor(tracer.output), expected, rtol=0, atol=0)
