"""A graph as JSON and back: data only, no pickle, no code, no import paths.

:func:`to_json` writes a :class:`~nnsight_core.graph.Graph` as a JSON document
of the closed operation vocabulary (:data:`~nnsight_core.graph.OPS`, all of it
but ``apply``, which runs a Python function: :data:`~nnsight_core.serialize.schema.SERIALISABLE_OPS`) and
plain values; :func:`from_json` checks a whole document against the schema
(:mod:`nnsight_core.serialize.schema`) before it builds anything, and rebuilds
the graph. Every callable a document can name is looked up in a fixed table
built when this package is imported: the proxy's Python operators
(:data:`~nnsight_core.serialize.schema.OPERATORS`), tensor methods (:data:`~nnsight_core.serialize.schema.TENSOR_METHODS`) and functions of
``torch``, ``torch.Tensor`` and ``torch.nn.functional`` (:data:`~nnsight_core.serialize.schema.FUNCTIONS`).
Loading never imports a module, evaluates text or unpickles bytes. :func:`run`
executes a (loaded) graph on a model.

Example:
    >>> with model.trace(x) as tracer:
    ...     hidden = model.layer1.output.save()
    >>> graph = from_json(to_json(tracer.graph))
    >>> saved = run(model, graph, x)        # {saved node index: value}
    >>> torch.equal(saved[hidden.node.index], hidden.value)
    True

The package's modules: :mod:`~nnsight_core.serialize.schema` (the document
format, its limits and vocabulary tables), :mod:`~nnsight_core.serialize.encode`
(writing), :mod:`~nnsight_core.serialize.decode` (reading and validating),
:mod:`~nnsight_core.serialize.execute` (running) and
:mod:`~nnsight_core.serialize.guard` (what a running graph may reach, and its
resource limits).
"""

from __future__ import annotations

from ..graph import Graph
from .decode import from_dict, from_json
from .encode import to_dict, to_json
from .execute import run
from .guard import GuardedInterleaver, Limits
from .schema import (DTYPES, FORMAT, FUNCTIONS, MAX_DEPTH, MAX_DOCUMENT_CHARS, MAX_NODES, MAX_TENSOR_DIMS,
                     MAX_TENSOR_ELEMENTS, OPERATORS, SERIALISABLE_OPS, TENSOR_ATTRIBUTES, TENSOR_METHODS,
                     VERSION)

__all__ = [
    "FORMAT", "VERSION", "MAX_DOCUMENT_CHARS", "MAX_NODES", "MAX_DEPTH", "MAX_TENSOR_DIMS",
    "MAX_TENSOR_ELEMENTS", "SERIALISABLE_OPS", "OPERATORS", "TENSOR_METHODS", "TENSOR_ATTRIBUTES",
    "FUNCTIONS", "DTYPES", "to_dict", "to_json", "from_dict", "from_json", "run", "Limits",
    "GuardedInterleaver",
]

# The graph layer publishes this extension point; JSON is how this layer writes graphs.
Graph.extensions.update(to_json=to_json, from_json=from_json)
