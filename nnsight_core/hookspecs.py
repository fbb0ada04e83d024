"""Hook specifications every adapter implements, in the order a trace calls them.

An adapter is a pluggy plugin registered under the entry-point group
``nnsight_core``. Each hook receives the model wrapper as ``model``; an adapter
returns ``None`` for wrappers that are not its own, so the next plugin is
asked. All hooks are ``firstresult``: the first non-``None`` answer wins.
``nnsight_backend`` is not an adapter's: a plugin that runs traces elsewhere
(on a server) implements it.
Plugins may also wrap any hook (``@hookimpl(wrapper=True)``), e.g. to time
``nnsight_execute``, without touching an adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import pluggy

if TYPE_CHECKING:
    import torch

    from .model import NNsightModel

__all__ = ["hookspec", "hookimpl", "PROJECT", "nnsight_load", "nnsight_prepare_inputs",
           "nnsight_batch_inputs", "nnsight_execute", "nnsight_backend"]

#: Name of the pluggy project and of the entry-point group adapters register under.
PROJECT = "nnsight_core"

#: Marks a function of this module as a hook specification.
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks an adapter's function as an implementation of a hook (``@hookimpl``, ``@hookimpl(trylast=True)``).
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- loading ---------------------------------------------------------------------

@hookspec(firstresult=True)
def nnsight_load(model: NNsightModel, model_key: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 meta: bool) -> Optional[torch.nn.Module]:
    """Build the module a wrapper stands for.

    Called by ``NNsightModel.__init__`` with ``meta=True`` when the wrapper is
    given a key (not a module) — build the skeleton on the meta device, reading
    no weights — and by ``dispatch_model()`` with ``meta=False`` to load real
    weights. ``args``/``kwargs`` are those given to the wrapper. First result
    wins; return ``None`` for wrappers that are not yours.
    """


# -- per trace -------------------------------------------------------------------

@hookspec(firstresult=True)
def nnsight_prepare_inputs(model: NNsightModel, inputs: Tuple[Any, ...],
                           kwargs: Dict[str, Any]) -> Optional[Tuple[Any, int]]:
    """Turn one invoke's raw inputs into model-ready inputs and count its rows.

    Called when an invoke opens, with the positional ``inputs`` and keyword
    ``kwargs`` given to ``invoke()`` (or ``trace()``'s inputs and
    ``invoker_args``). Return ``(prepared, batch_size)``: ``prepared`` is
    whatever ``nnsight_batch_inputs`` accepts, ``batch_size`` the number of
    batch rows (dimension 0) the invoke owns. First result wins; return
    ``None`` for wrappers that are not yours.
    """


@hookspec(firstresult=True)
def nnsight_batch_inputs(model: NNsightModel, prepared: List[Any],
                         batch_sizes: List[int]) -> Optional[Any]:
    """Combine several invokes' prepared inputs into the inputs of one forward pass.

    Called once when the trace's block exits, if it has two or more invokes
    (one invoke's prepared inputs are executed as they are), with the invokes'
    ``prepared`` values in order and their ``batch_sizes``; invoke ``i`` must
    own rows ``sum(batch_sizes[:i])`` to ``sum(batch_sizes[:i+1])`` of the
    result. First result wins; return ``None`` for wrappers that are not yours.
    """


@hookspec(firstresult=True)
def nnsight_execute(model: NNsightModel, batched: Any, kwargs: Dict[str, Any],
                    method: Optional[str]) -> Optional[Any]:
    """Run the model on the batched inputs and return its output.

    Called with the intervention graph interleaved (its hooks are in place).
    ``kwargs`` are the trace's extra keyword arguments; ``method`` names what
    to run: ``None`` for a forward pass, or the name the wrapper gave its
    Runner (``self.runner(..., method="generate")``).

    The scan (:mod:`nnsight_core.scan`) also calls it, to run the model on fake
    tensors under ``torch``'s ``FakeTensorMode``: ``batched`` then holds fake
    tensors, the model's weights are fake copies, and nothing is computed. An
    implementation must not rely on tensor values there (no ``.item()`` that
    decides what runs; it may raise, which ends the scan early) and must not
    cause side effects it would regret (writing files, counting calls): it can
    tell with :func:`nnsight_core.scan.is_scanning`, as a wrapper hook that
    times or logs real executions does.

    First result wins; return ``None`` for wrappers that are not yours (a
    model whose output is ``None`` therefore lets later plugins run too).
    """


# -- executing elsewhere ---------------------------------------------------------

@hookspec(firstresult=True)
def nnsight_backend(model: NNsightModel, name: str) -> Optional[Any]:
    """Give the backend that runs a trace somewhere other than this process.

    Called when a trace, generation or session is opened with ``remote=True``
    (``name`` is ``"remote"``) and no ``backend=`` was given. A backend is a
    callable ``backend(runner, keep)``: the Runner calls it when its block exits,
    after batching and the scan, instead of executing the graph here; it reads
    ``runner.graph``, ``runner.invokers`` (each invoke's ``inputs`` and
    ``kwargs``), ``runner.method``, ``runner.execution_kwargs`` and ``runner.model_wrapper``, fills
    ``runner.trace_state`` (``values``, ``ran``, ``skipped``; with ``keep`` every
    value, for a session) and returns what ``runner.output`` becomes: the model's
    output, or an :class:`~nnsight_core.errors.OutputNotReturnedError` that reading
    ``runner.output`` raises (its message saying how to get the output). First
    result wins; return ``None`` for names you do not serve.
    """
