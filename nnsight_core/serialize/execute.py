"""Running a graph on a model: :func:`run`, under the guard of :mod:`nnsight_core.serialize.guard`."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from ..graph import Graph
from .guard import GuardedInterleaver, Limits

if TYPE_CHECKING:
    from ..model import NNsightModel

__all__ = ["run"]


def run(model: NNsightModel, graph: Graph, *inputs: Any, invokes: Optional[Sequence[Sequence[Any]]] = None,
        method: Optional[str] = None, limits: Optional[Limits] = None, **kwargs: Any) -> Dict[int, Any]:
    """Run a graph (e.g. one :func:`from_json` loaded) on ``model``, as its trace would have.

    It is :meth:`NNsightModel.run_graph <nnsight_core.model.NNsightModel.run_graph>`
    (each invoke's inputs prepared and batched by the model's adapter, the model
    run once with the graph interleaved, hooks only for this call) with a guard: the graph
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
        Each ``save`` node's index mapped to its value (the original trace's
        ``proxy.node.index`` finds a value again).

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
    return model.run_graph(graph, *inputs, invokes=invokes, method=method,
                           executor=partial(GuardedInterleaver, limits=limits), **kwargs)
