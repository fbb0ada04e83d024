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

The suite covers saving, in-place editing, ``.input`` assignment, batched
invokes, ``.next()`` on a module that runs twice in one execution, ``.grad``
of a module's output, the scan's shapes (``proxy.shape`` inside the trace),
``.skip()``, a call site read through ``.source`` and hook clean-up after
success or error.

Expected values come from plain PyTorch: forward hooks (and forward pre-hooks,
``retain_grad()``) registered directly on the module, around
``model.trace(*inputs, trace=False)`` (the adapter's own input handling,
without interleaving).

Override points (class attributes and methods of a subclass):

``make_model()``
    Return a fresh model wrapper (required).
``make_inputs()``
    Return a list of at least two invokes' positional inputs (required).
``module_path``
    Dotted path of a submodule that runs once per execution, to read and edit
    (required). The ``.input`` test replaces its first positional argument, the
    ``.grad`` test reads the gradient of its output.
``output_index``
    If the module returns a tuple, the index of its tensor (default None).
``final_tensor(output)``
    Extract a tensor from the model's output (default: its first tensor).
``align(batched, solo)``
    Make an invoke's value from a batched run comparable with its solo run
    (default: unchanged; a sequence model with left padding keeps the last tokens).
``atol``
    Tolerance when batched results are compared with solo runs, and for gradients.
``trace_kwargs``
    Keyword arguments given to every execution, plain or traced (default none;
    e.g. a fixed seed for a model that samples noise).
``edit_input(value)``
    The new value of the module's first positional argument, computed from the
    old one with operations a proxy records (default: halved).
``repeated_module_path``
    Dotted path of a module that runs at least twice in one execution (a shared
    module, a generation or denoising step), for the ``.next()`` test;
    ``output_index`` applies to it too. Default None: set it, or opt out
    through ``not_applicable``.
``repeated_kwargs``
    Keyword arguments added to ``trace_kwargs`` in the ``.next()`` test, e.g.
    ``{"num_inference_steps": 2}`` (default none).
``grad_loss(output)``
    The scalar to differentiate in the ``.grad`` test, computed from the root
    module's output (``model.output``: a proxy in the trace, the real value in
    the plain run) with operations a proxy records (default:
    ``(output ** 2).sum()``, for a model whose root module returns a tensor).
``source_site``
    ``(module path, call site, submodule path)`` for the ``.source`` test: a
    call site of that module's forward (``"self_attn_0"``) and the dotted path
    of the submodule it calls at its first call, whose output a plain forward
    hook reads. Default None: the test is skipped.
``not_applicable``
    Tests that do not apply to the adapter, each with its reason, keyed by
    :data:`FEATURES` (``"input"``, ``"next"``, ``"grad"``, ``"scan"``, ``"skip"``); those
    tests are skipped with the reason (default none), e.g.
    ``{"grad": "the pipeline runs under torch.no_grad()"}``.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch.utils import _pytree as pytree

__all__ = ["AdapterConformance", "CallCounts", "call_counts", "hook_count"]

#: The keys ``AdapterConformance.not_applicable`` accepts: the tests an adapter may opt out of.
FEATURES = ("input", "next", "grad", "scan", "skip")


def hook_count(module: torch.nn.Module) -> int:
    """Hooks on ``module`` and all its submodules: forward, forward-pre and backward hooks,
    plus instance-level ``forward`` overrides (how the Interleaver hooks a module)."""
    total = 0
    for sub in module.modules():
        total += len(sub._forward_hooks) + len(sub._forward_pre_hooks) + len(sub._backward_hooks)
        total += len(getattr(sub, "_backward_pre_hooks", {})) + ("forward" in sub.__dict__)
    return total


class CallCounts(NamedTuple):
    """How many functions one run of some code called, counted by :func:`call_counts`.

    Attributes:
        python: Calls of Python functions (each frame entered: functions, methods,
            lambdas, and in Python < 3.12 comprehensions and generator expressions).
        c: Calls of built-in (C) functions and methods.
    """

    python: int
    c: int

    def __sub__(self, other: Tuple[int, int]) -> CallCounts:  # type: ignore[override]
        return CallCounts(self.python - other[0], self.c - other[1])


def call_counts(fn: Callable[[], Any], warmup: int = 2) -> CallCounts:
    """Count the Python and C function calls of one call of ``fn`` (with ``sys.setprofile``).

    A cost measure that does not depend on the machine: the same code on the same
    Python and torch versions makes the same calls, so a test can pin the cost of a
    hot path (the extra calls of a trace over the raw forward pass, of one more
    ``.save()``) where timings would be noise. ``fn`` runs ``warmup`` times first,
    so first-use work (caches, lazy imports) is not counted; the garbage collector
    is off while counting.

    Example:
        >>> raw = call_counts(lambda: net(x))
        >>> def traced():
        ...     with model.trace(x):
        ...         pass
        >>> extra = call_counts(traced) - raw     # what an empty trace adds
        >>> extra.python > 0
        True

    Returns:
        The :class:`CallCounts` of the counted call.
    """
    for _ in range(warmup):
        fn()
    counted = [0, 0]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            counted[0] += 1
        elif event == "c_call":
            counted[1] += 1

    enabled = gc.isenabled()
    gc.disable()
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(previous)
        if enabled:
            gc.enable()
    # The count includes the call of fn itself and the C call that stops the profiler.
    return CallCounts(counted[0] - 1, counted[1] - 1)


class AdapterConformance:
    """Conformance tests for an adapter: save, edit, inputs, batching, calls, gradients, shapes, clean-up.

    The override points are listed in the module documentation (:mod:`nnsight_core.testing`).
    """

    module_path: str = ""
    output_index: Optional[int] = None
    atol: float = 1e-5
    #: Keyword arguments for every execution, traced or plain (e.g. a seed for a sampling model).
    trace_kwargs: Dict[str, Any] = {}
    #: A module that runs at least twice in one execution, for the ``.next()`` test.
    repeated_module_path: Optional[str] = None
    #: Keyword arguments added to ``trace_kwargs`` in the ``.next()`` test.
    repeated_kwargs: Dict[str, Any] = {}
    #: (module path, call site of its forward, submodule path it calls) for the ``.source`` test.
    source_site: Optional[Tuple[str, str, str]] = None
    #: Tests that do not apply to the adapter (keys of :data:`FEATURES`), each with its reason.
    not_applicable: Dict[str, str] = {}

    # -- override points ---------------------------------------------------------

    def make_model(self) -> Any:
        raise NotImplementedError("return a fresh model wrapper from make_model()")

    def make_inputs(self) -> List[Tuple[Any, ...]]:
        raise NotImplementedError("return at least two invokes' positional inputs from make_inputs()")

    def final_tensor(self, output: Any) -> torch.Tensor:
        return next(leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor))

    def align(self, batched: torch.Tensor, solo: torch.Tensor) -> torch.Tensor:
        return batched

    def edit_input(self, value: Any) -> Any:
        return value * 0.5

    def grad_loss(self, output: Any) -> Any:
        return (output ** 2).sum()

    # -- helpers -----------------------------------------------------------------

    def _envoy(self, model: Any, path: Optional[str] = None) -> Any:
        envoy = model
        for part in (path or self.module_path).split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _applies(self, feature: str) -> None:
        """Skip the calling test when the adapter lists ``feature`` in ``not_applicable``."""
        unknown = sorted(set(self.not_applicable) - set(FEATURES))
        if unknown:
            raise ValueError(f"{type(self).__name__}.not_applicable has unknown key(s) {unknown}; "
                             f"the keys are {list(FEATURES)}.")
        reason = self.not_applicable.get(feature)
        if reason is not None:
            import pytest  # only a test run gets here; importing the module needs no pytest

            pytest.skip(f"{feature} does not apply to {type(self).__name__}: {reason}")

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

    def _raw_input(self, model: Any, inputs: Tuple[Any, ...]) -> Tuple[torch.Tensor, ...]:
        """(new first argument, module tensor, final tensor) with a pre-hook applying ``edit_input``."""
        seen = {}
        model.dispatch_model()
        module = model._model.get_submodule(self.module_path)

        def pre_hook(module: torch.nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            if not args:
                raise AssertionError(
                    f"{self.module_path} received no positional argument, and .input is the first "
                    f"positional argument: choose a module_path called with one, or opt out with "
                    f"not_applicable = {{'input': reason}}.")
            value = self.edit_input(args[0])
            seen["input"] = value.detach().clone()
            return (value, *args[1:])

        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            seen["value"] = self._pick(output).detach().clone()

        handles = [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(hook)]
        try:
            with torch.no_grad():
                out = model.trace(*inputs, trace=False, **self.trace_kwargs)
        finally:
            for handle in handles:
                handle.remove()
        return seen["input"], seen["value"], self.final_tensor(out).detach().clone()

    def _raw_calls(self, model: Any, inputs: Tuple[Any, ...], kwargs: Dict[str, Any],
                   edit_call: Optional[int] = None,
                   edit: Optional[Callable[[torch.Tensor], None]] = None) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """(the repeated module's tensor at every call, final tensor), editing call ``edit_call``."""
        seen: List[torch.Tensor] = []
        model.dispatch_model()

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            tensor = self._pick(output)
            if len(seen) == edit_call:
                tensor = tensor.clone()
                edit(tensor)
                output = tensor if self.output_index is None else tuple(
                    tensor if i == self.output_index else v for i, v in enumerate(output))
            seen.append(tensor.detach().clone())
            return output

        module = model._model.get_submodule(self.repeated_module_path)
        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = model.trace(*inputs, trace=False, **kwargs)
        finally:
            handle.remove()
        return seen, self.final_tensor(out).detach().clone()

    def _raw_grad(self, model: Any, inputs: Tuple[Any, ...]) -> torch.Tensor:
        """The gradient of ``grad_loss`` of the root module's output with respect to the module's output."""
        seen = {}
        model.dispatch_model()

        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            tensor = self._pick(output)
            if not tensor.requires_grad:
                raise AssertionError(
                    f"{self.module_path}'s output does not require grad in a plain run with autograd "
                    f"on; if the adapter's execution disables gradients, opt out with "
                    f"not_applicable = {{'grad': reason}}.")
            tensor.retain_grad()
            seen["value"] = tensor

        def root(module: torch.nn.Module, args: Any, output: Any) -> None:
            seen["root"] = output

        handles = [model._model.get_submodule(self.module_path).register_forward_hook(keep),
                   model._model.register_forward_hook(root)]
        try:
            with torch.enable_grad():
                model.trace(*inputs, trace=False, **self.trace_kwargs)
                self.grad_loss(seen["root"]).backward()
        finally:
            for handle in handles:
                handle.remove()
            model._model.zero_grad(set_to_none=True)
        assert seen["value"].grad is not None, f"grad_loss does not depend on {self.module_path}'s output"
        return seen["value"].grad.detach().clone()

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

    def test_input_assignment_equals_raw_pre_hook(self) -> None:
        self._applies("input")
        model = self.make_model()
        inputs = self.make_inputs()[0]
        expected_input, expected_module, expected_final = self._raw_input(model, inputs)
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
            envoy = self._envoy(model)
            envoy.input = self.edit_input(envoy.input)
            received = envoy.input.save()                      # after the assignment: the new value
            module = self._pick(envoy.output).save()
            final = model.output.save()
        torch.testing.assert_close(received.value, expected_input, rtol=0, atol=0)
        torch.testing.assert_close(module.value, expected_module, rtol=0, atol=0)
        torch.testing.assert_close(self.final_tensor(final.value), expected_final, rtol=0, atol=0)

    def test_next_addresses_each_call(self) -> None:
        self._applies("next")
        if self.repeated_module_path is None:
            raise AssertionError(
                f"{type(self).__name__}: set repeated_module_path to a module that runs at least twice "
                f"in one execution (with repeated_kwargs if it needs some), or opt out with "
                f"not_applicable = {{'next': reason}}.")
        model = self.make_model()
        inputs = self.make_inputs()[0]
        kwargs = {**self.trace_kwargs, **self.repeated_kwargs}

        def zero(t: torch.Tensor) -> None:
            t[..., 0] = 0

        calls, _ = self._raw_calls(model, inputs, kwargs)
        assert len(calls) >= 2, (f"{self.repeated_module_path} ran {len(calls)} time(s) in one execution; "
                                 f"repeated_module_path must name a module that runs at least twice")
        edited, expected_final = self._raw_calls(model, inputs, kwargs, edit_call=1, edit=zero)
        with torch.no_grad(), model.trace(*inputs, **kwargs):
            envoy = self._envoy(model, self.repeated_module_path)
            first = self._pick(envoy.output).save()
            envoy = envoy.next()                               # call 1 from here on
            self._pick(envoy.output)[..., 0] = 0
            second = self._pick(envoy.output).save()
            final = model.output.save()
        torch.testing.assert_close(first.value, calls[0], rtol=0, atol=0)
        torch.testing.assert_close(second.value, edited[1], rtol=0, atol=0)
        torch.testing.assert_close(self.final_tensor(final.value), expected_final, rtol=0, atol=0)

    def test_grad_of_module_output_equals_autograd(self) -> None:
        self._applies("grad")
        model = self.make_model()
        inputs = self.make_inputs()[0]
        expected = self._raw_grad(model, inputs)
        before = hook_count(model._model)
        try:
            with torch.enable_grad(), model.trace(*inputs, **self.trace_kwargs):
                grad = self._pick(self._envoy(model).output).grad.save()
                self.grad_loss(model.output).backward()
        finally:
            model._model.zero_grad(set_to_none=True)
        torch.testing.assert_close(grad.value, expected, rtol=0, atol=self.atol)
        assert hook_count(model._model) == before

    def test_scan_shape_equals_saved_shape(self) -> None:
        self._applies("scan")
        inputs = self.make_inputs()[0]
        expected, _ = self._raw(self.make_model(), inputs)
        model = self.make_model()                              # fresh: a lazy model scans before loading
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
            value = self._pick(self._envoy(model).output)
            shape = value.shape                                # known inside the trace, from the scan
            saved = value.save()
        assert isinstance(shape, torch.Size), f"proxy.shape inside the trace is {shape!r}, not a torch.Size"
        assert shape == saved.value.shape == expected.shape

    def test_skip_equals_raw_hook_replacement(self) -> None:
        self._applies("skip")
        model = self.make_model()
        inputs = self.make_inputs()[0]
        model.dispatch_model()
        module = model._model.get_submodule(self.module_path)
        seen: Dict[str, Any] = {}

        def zeroed(module: torch.nn.Module, args: Any, output: Any) -> None:
            seen["value"] = pytree.tree_map(
                lambda leaf: torch.zeros_like(leaf) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
                else leaf, output)

        handle = module.register_forward_hook(zeroed)
        try:
            with torch.no_grad():
                model.trace(*inputs, trace=False, **self.trace_kwargs)
        finally:
            handle.remove()
        value = seen["value"]

        def run(traced: bool) -> Tuple[List[str], torch.Tensor]:
            """(submodule calls, final tensor) with the module's forward skipped, by the library
            or (expected) by replacing its forward on the instance."""
            calls: List[str] = []
            handles = [sub.register_forward_pre_hook(lambda m, a, name=name: calls.append(name))
                       for name, sub in module.named_modules() if name]
            try:
                with torch.no_grad():
                    if traced:  # no scan: it would run the forward on fake tensors to check `value`
                        with model.trace(*inputs, scan=False, **self.trace_kwargs):
                            self._envoy(model).skip(value)
                            final = model.output.save()
                        return calls, self.final_tensor(final.value)
                    module.forward = lambda *args, **kwargs: value
                    return calls, self.final_tensor(model.trace(*inputs, trace=False, **self.trace_kwargs))
            finally:
                module.__dict__.pop("forward", None)
                for handle in handles:
                    handle.remove()

        expected_calls, expected = run(traced=False)
        # One invoke owns the whole batch: the forward does not run (its submodules run only
        # where the model calls them from outside it).
        calls, final = run(traced=True)
        assert sorted(calls) == sorted(expected_calls), (
            f"{self.module_path} was skipped, but its submodules ran {sorted(calls)} instead of "
            f"{sorted(expected_calls)}")
        torch.testing.assert_close(final, expected, rtol=0, atol=0)

    def test_source_call_site_equals_raw_hook(self) -> None:
        if self.source_site is None:
            import pytest

            pytest.skip(f"{type(self).__name__} sets no source_site for the .source test")
        path, site, child = self.source_site
        model = self.make_model()
        inputs = self.make_inputs()[0]
        model.dispatch_model()
        seen: List[Any] = []
        handle = model._model.get_submodule(child).register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            with torch.no_grad():
                expected = self.final_tensor(model.trace(*inputs, trace=False, **self.trace_kwargs)).clone()
        finally:
            handle.remove()
        before = hook_count(model._model)
        with torch.no_grad(), model.trace(*inputs, **self.trace_kwargs):
            envoy = self._envoy(model, path) if path else model
            saved = getattr(envoy.source, site).output.save()
            final = model.output.save()
        ours, theirs = pytree.tree_leaves(saved.value), pytree.tree_leaves(seen[0])
        assert len(ours) == len(theirs)
        for mine, raw in zip(ours, theirs):
            if isinstance(raw, torch.Tensor):
                torch.testing.assert_close(mine, raw, rtol=0, atol=0)
        torch.testing.assert_close(self.final_tensor(final.value), expected, rtol=0, atol=0)
        assert hook_count(model._model) == before

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
