"""Running a graph on a model: :func:`run`, under the guard of :mod:`nnsight_core.serialize.guard`."""

from __future__ import annotations

from functools import partial
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..errors import EnvoyAttributeError, InvokeError
from ..graph import EMPTY, MODULE_VALUE_OPS, Graph, display_path
from .guard import GuardedInterleaver, Limits

if TYPE_CHECKING:
    from ..model import NNsightModel

__all__ = ["run"]


def run(model: NNsightModel, graph: Graph, *inputs: Any, invokes: Optional[Sequence[Sequence[Any]]] = None,
        method: Optional[str] = None, limits: Optional[Limits] = None, **kwargs: Any) -> Dict[int, Any]:
    """Run a graph (e.g. one :func:`from_json` loaded) on ``model``, as its trace would have.

    Each invoke's inputs are prepared and batched by the model's adapter, the
    graph's rows are set from them, and the model runs once with the graph
    interleaved (hooks only for this call, removed also on error). The graph
    runs under a :class:`~nnsight_core.serialize.guard.GuardedInterleaver`: it
    reaches only the values it is given (no parameters, no autograd internals),
    never writes into the model's weights, and stays within ``limits``.

    Args:
        model: A model wrapper with the module tree the graph was recorded on.
        graph: The graph to run.
        *inputs: The inputs of a graph with one invoke (as for ``model.trace(*inputs)``).
        invokes: For a graph of several invokes: one sequence of inputs per invoke,
            in order (as for ``tracer.invoke(*inputs)``).
        method: The wrapped module's method to run instead of ``forward`` (``"generate"``).
        limits: The run's resource bounds (default: a :class:`~nnsight_core.serialize.guard.Limits` of defaults).
        **kwargs: Passed to the model call, as ``model.trace``'s keyword arguments.

    Returns:
        The saved values: each ``save`` node's index mapped to its value (the
        original trace's ``proxy.node.index`` finds a value again).

    Raises:
        InvokeError: ``inputs`` and ``invokes`` both or neither given, or their
            number differs from the graph's invokes.
        EnvoyAttributeError: The graph names a module the model does not have.
        GraphAccessError: A node reaches for an attribute, method or object a loaded
            graph may not touch, or would write into the model's weights.
        GraphLimitError: A node would exceed ``limits``; refused before it runs
            where its size can be computed from its arguments.

    Example:
        >>> from nnsight_core.serialize import from_json, to_json
        >>> x1, x2 = torch.rand(1, 5), torch.rand(2, 5)
        >>> with model.trace() as tracer:
        ...     with tracer.invoke(x1):
        ...         a = model.layer1.output.save()
        ...     with tracer.invoke(x2):
        ...         b = model.layer1.output.save()
        >>> graph = from_json(to_json(tracer.graph))
        >>> saved = run(model, graph, invokes=[(x1,), (x2,)])
        >>> [value.shape for value in saved.values()]
        [torch.Size([1, 10]), torch.Size([2, 10])]
    """
    groups = _invoke_groups(graph, inputs, invokes)
    _check_modules(model, graph)
    prepared, sizes = [], []
    for k, group in enumerate(groups):
        value, size = model._prepare_inputs(tuple(group), {}, k)
        prepared.append(value)
        sizes.append(size)
    stops = list(accumulate(sizes))
    graph.rows = [(stop - size, stop) for stop, size in zip(stops, sizes, strict=True)]
    graph.batch_size = sum(sizes)
    batched = model._batch_graph(graph, prepared, sizes, kwargs, method)
    try:
        model.interleave(model._execute, graph, batched, method=method,
                         interleaver_class=partial(GuardedInterleaver, limits=limits), **kwargs)
        return {node.index: node.value for node in graph.nodes if node.saved and node.value is not EMPTY}
    finally:
        graph.release()


def _invoke_groups(graph: Graph, inputs: Tuple[Any, ...], invokes: Optional[Sequence[Sequence[Any]]]
                   ) -> List[Sequence[Any]]:
    expected = len(graph.rows)
    if (not inputs) == (invokes is None):
        raise InvokeError(f"run() takes the inputs of a one-invoke graph as arguments, or "
                          f"invokes=[inputs of invoke 0, ...]; give exactly one of them "
                          f"(this graph has {expected} invoke(s)).")
    groups = [inputs] if invokes is None else [tuple(g) if isinstance(g, (tuple, list)) else (g,)
                                               for g in invokes]
    if len(groups) != expected:
        raise InvokeError(f"the graph was recorded with {expected} invoke(s) but run() got inputs for "
                          f"{len(groups)}; pass invokes=[...] with one entry per invoke.")
    return groups


def _check_modules(model: NNsightModel, graph: Graph) -> None:
    for node in graph.nodes:
        if node.op in MODULE_VALUE_OPS:
            path = node.target[0]
        elif node.op == "call_module":
            path = node.target
        else:
            continue
        if not _has_module(model, path):
            raise EnvoyAttributeError(
                f"{node.describe()} (node %{node.index}) needs {display_path(path)}, which this "
                f"{type(model).__name__} does not have: run the graph on a model with the module "
                "tree it was recorded on.")


def _has_module(model: NNsightModel, path: str) -> bool:
    """Whether ``path`` names a module of the wrapped model (or one attached beside it), looked
    up as the Interleaver does: through the module tree only."""
    module = model._model
    parts = path.split(".") if path else []
    if parts and parts[0] in model._attached and parts[0] not in module._modules:
        module = model._attached[parts.pop(0)]
    for part in parts:
        module = module._modules.get(part)
        if module is None:
            return False
    return True
