"""Writing a graph as a document: :func:`to_dict` and :func:`to_json` (the schema is in
:mod:`nnsight_core.serialize.schema`).

Every node is checked as it is written, so a graph that :func:`~nnsight_core.serialize.from_json`
would refuse is refused here already, naming the node.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import GraphFormatError
from ..graph import MODULE_VALUE_OPS, Graph, Iteration, Node
from .schema import (_DEVICE, _DTYPE_NAMES, _FUNCTION_NAMES, _NO_TARGET, DTYPES, FORMAT, MAX_DEPTH,
                     MAX_DOCUMENT_CHARS, MAX_NODES, MAX_TENSOR_DIMS, MAX_TENSOR_ELEMENTS, OPERATORS,
                     SERIALISABLE_OPS, TENSOR_METHODS, VERSION, Document, _arguments_problem, _attribute_ok,
                     _invoke_problem, _is_int, _iteration_problem, _path_ok, _requirement_problem,
                     _rows_problem)

__all__ = ["to_dict", "to_json"]


def to_dict(graph: Graph, tensors: Optional[List[torch.Tensor]] = None) -> Document:
    """The graph as a JSON-ready document (see the module docstring for the schema).

    Args:
        graph: A recorded graph (``tracer.graph``), during or after its trace, or a loaded one.
        tensors: Where to put the tensor constants instead of the document: each is appended
            (detached) and its entry written ``{"dtype", "shape", "external": i}``, its index in
            the list; the caller ships them as binary data (``nnsight-remote`` does, as
            safetensors) and gives them to :func:`from_dict` again. Default: their values are
            written into the document.

    Returns:
        A dict of plain JSON values.

    Raises:
        GraphFormatError: The graph holds something outside the vocabulary: a
            function, method or value with no place in the schema (a lambda or
            user function, a numpy array, a module object), or exceeds a limit.

    Example:
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> to_dict(tracer.graph)["nodes"][0]
        {'op': 'output', 'target': ['layer1', 0], 'invoke': 0, 'saved': True}
    """
    if len(graph.nodes) > MAX_NODES:
        raise GraphFormatError(f"the graph has {len(graph.nodes)} nodes, more than MAX_NODES = "
                               f"{MAX_NODES}; split the work into several traces.")
    problem = _rows_problem(graph.rows, (tuple, list))
    if problem is not None:
        raise GraphFormatError(f"cannot serialise the graph's {problem[0]}: {problem[1]}")
    iterations = [[it.start, it.stop, it.step] for it in graph.iterations]
    for k, entry in enumerate(iterations):
        problem = _iteration_problem(entry)
        if problem is not None:
            raise GraphFormatError(f"cannot serialise the graph's iterations[{k}]: {problem}")
    requirements = [[invoke, dict(facts)] for invoke, facts in sorted(graph.requirements.items())]
    for k, entry in enumerate(requirements):
        problem = _requirement_problem(entry, len(graph.rows))
        if problem is not None:
            raise GraphFormatError(f"cannot serialise the graph's requirements[{k}]: {problem}")
    encoder = _Encoder(len(graph.rows), graph.iterations, tensors)
    nodes = [encoder.node(node) for node in graph.nodes]
    document = {"format": FORMAT, "version": VERSION, "rows": [list(r) for r in graph.rows],
                "iterations": iterations, "tensors": encoder.tensors, "nodes": nodes}
    if requirements:
        document["requirements"] = requirements
    return document


def to_json(graph: Graph, indent: Optional[int] = None) -> str:
    """The graph as JSON text (strict JSON: no ``NaN`` literals).

    Args:
        graph: A recorded or loaded graph.
        indent: Passed to :func:`json.dumps` for readable output.

    Returns:
        The document as a string.

    Raises:
        GraphFormatError: As :func:`to_dict`, or the text exceeds :data:`~nnsight_core.serialize.schema.MAX_DOCUMENT_CHARS`.

    Example:
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> text = to_json(tracer.graph, indent=1)
        >>> json.loads(text)["format"]
        'nnsight_core.graph'
    """
    text = json.dumps(to_dict(graph), indent=indent, allow_nan=False)
    if len(text) > MAX_DOCUMENT_CHARS:
        raise GraphFormatError(f"the graph's JSON has {len(text)} characters, more than "
                               f"MAX_DOCUMENT_CHARS = {MAX_DOCUMENT_CHARS}; its tensor constants are "
                               "too large: save them separately and pass them as inputs.")
    return text


class _Encoder:
    """Encodes one graph's nodes, collecting its tensor constants (each object once)."""

    def __init__(self, invokes: int, iterations: List[Iteration], external: Optional[List[torch.Tensor]] = None) -> None:
        self.invokes = invokes
        self.external = external
        self._iteration_index = {id(it): k for k, it in enumerate(iterations)}
        self.tensors: List[Dict[str, Any]] = []
        self._tensor_index: Dict[int, int] = {}
        self._keep: List[torch.Tensor] = []  # keeps ids unique while encoding
        self._node: Optional[Node] = None

    def node(self, node: Node) -> Dict[str, Any]:
        self._node = node
        if node.op not in SERIALISABLE_OPS:
            raise self._fail(
                "it calls a Python function given to the trace (tracer.apply, tracer.log, "
                "tracer.cond), which a document cannot hold: a graph that runs user code cannot "
                "be serialised. Compute the value after the trace instead." if node.op == "apply"
                else f"the op {node.op!r} is not in nnsight_core.serialize.SERIALISABLE_OPS.")
        if node.cond is not None:
            raise self._fail("it runs under a tracer.cond(...) condition, which documents cannot hold.")
        entry: Dict[str, Any] = {"op": node.op}
        target = self._target(node)
        self._check_structure(node)
        if target is not None:
            entry["target"] = target
        if node.args:
            entry["args"] = [self.value(a, 0) for a in node.args]
        if node.kwargs:
            entry["kwargs"] = {self._key(k): self.value(v, 0) for k, v in node.kwargs.items()}
        if node.invoke is not None:
            entry["invoke"] = node.invoke
        if node.saved and node.op != "save":
            entry["saved"] = True
        return entry

    def _check_structure(self, node: Node) -> None:
        problem = _invoke_problem(node.invoke, node.op, self.invokes)
        if problem is not None:
            raise self._fail(f"invoke: {problem}")
        arguments = _arguments_problem(node.op, node.target, node.invoke, node.args, node.kwargs,
                                       _node_facts, _is_tensor)
        if arguments is not None:
            raise self._fail(arguments[1])

    def _fail(self, problem: str) -> GraphFormatError:
        node = self._node
        return GraphFormatError(f"cannot serialise node %{node.index} ({node.describe()}): {problem}")

    def _target(self, node: Node) -> Any:
        op, target = node.op, node.target
        if op in MODULE_VALUE_OPS or op == "call_module":
            path = target[0] if op in MODULE_VALUE_OPS else target
            if not _path_ok(path):
                raise self._fail(f"the module path {path!r} has a name outside letters, digits, '_' "
                                 "and '-' (or a dunder name), which documents cannot hold.")
            return [path, self._call(target[1])] if op in MODULE_VALUE_OPS else target
        if op == "call_function":
            try:
                name = _FUNCTION_NAMES.get(target)
            except TypeError:  # an unhashable callable cannot be in the table
                name = None
            if name is None:
                label = getattr(target, "__qualname__", None) or type(target).__name__
                raise self._fail(
                    f"the function {label} is not in nnsight_core.serialize.FUNCTIONS, the explicit "
                    "list of torch, torch.Tensor and torch.nn.functional functions a document may "
                    "name. A graph that calls anything else, such as user code (a lambda or your "
                    "own function), cannot be serialised: use a listed function, or compute it "
                    "after the trace.")
            return name
        if op == "call_method" and target not in TENSOR_METHODS:
            raise self._fail(f"the method {target!r} is not in nnsight_core.serialize.TENSOR_METHODS; "
                             "use a listed tensor method, or call it after the trace.")
        if op == "getattr" and not _attribute_ok(target):
            raise self._fail(f"the attribute {target!r} is private or introspective; only public "
                             "attributes can be serialised.")
        if op == "operator" and target not in OPERATORS:
            raise self._fail(f"the operator {target!r} is not in nnsight_core.serialize.OPERATORS")
        if op in _NO_TARGET and target is not None:
            raise self._fail(f"{op} takes no target, got {target!r}")
        return target

    def _call(self, call: Any) -> Any:
        if type(call) is not Iteration:
            if not (_is_int(call) and call >= 0):
                raise self._fail(f"its call {call!r} is not an index >= 0 or an iteration")
            return call
        index = self._iteration_index.get(id(call))
        if index is None:
            raise self._fail(f"its iteration ({call}) is not one of the graph's iterations")
        return {"iteration": index}

    def _key(self, key: Any) -> str:
        if type(key) is not str:
            raise self._fail(f"keyword {key!r} is not a string")
        return key

    def value(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self._fail(f"an argument nests containers deeper than MAX_DEPTH = {MAX_DEPTH}")
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if kind is Node:
            return {"node": value.index}
        if kind is tuple or kind is list:
            return {kind.__name__: [self.value(v, depth + 1) for v in value]}
        if kind is dict:
            return {"dict": [[self._scalar_key(k), self.value(v, depth + 1)] for k, v in value.items()]}
        if kind is slice:
            return {"slice": [self.value(v, depth + 1) for v in (value.start, value.stop, value.step)]}
        if value is Ellipsis:
            return {"ellipsis": None}
        if kind is torch.dtype:
            return {"dtype": self._dtype(value)}
        if kind is torch.device:
            if _DEVICE.fullmatch(str(value)) is None:
                raise self._fail(f"device {value} is not a cpu, cuda, mps, xpu, hpu or meta device")
            return {"device": str(value)}
        if kind is torch.Size:
            if len(value) > MAX_TENSOR_DIMS:
                raise self._fail(f"a torch.Size of {len(value)} dimensions exceeds MAX_TENSOR_DIMS = "
                                 f"{MAX_TENSOR_DIMS}")
            return {"size": list(value)}
        if isinstance(value, torch.Tensor):
            return {"tensor": self._tensor(value)}
        if callable(value):
            raise self._fail(f"an argument is a callable ({getattr(value, '__qualname__', kind.__name__)}). "
                             "A graph that passes user code (a lambda or function) cannot be serialised.")
        raise self._fail(f"an argument of type {kind.__module__}.{kind.__qualname__} has no JSON form; "
                         "use Python scalars, strings, tuples, lists, dicts, slices, torch dtypes, "
                         "devices or tensors (convert numpy values with torch.as_tensor or float()).")

    def _scalar_key(self, key: Any) -> Any:
        if key is None or type(key) in (bool, int, str) or (type(key) is float and math.isfinite(key)):
            return key
        raise self._fail(f"a dict key of type {type(key).__name__} has no JSON form; use str, int, "
                         "float, bool or None keys")

    def _dtype(self, dtype: torch.dtype) -> str:
        name = _DTYPE_NAMES.get(dtype)
        if name is None:
            raise self._fail(f"dtype {dtype} is not one of {sorted(DTYPES)}")
        return name

    def _tensor(self, tensor: torch.Tensor) -> int:
        index = self._tensor_index.get(id(tensor))
        if index is not None:
            return index
        if tensor.layout is not torch.strided or tensor.device.type == "meta":
            raise self._fail(f"a tensor constant on {tensor.device} with layout {tensor.layout} holds no "
                             "plain values; use a dense tensor with real values")
        dtype = self._dtype(tensor.dtype)
        if (tensor.dim() > MAX_TENSOR_DIMS or tensor.numel() > MAX_TENSOR_ELEMENTS
                or max(tensor.shape, default=0) > MAX_TENSOR_ELEMENTS):
            raise self._fail(f"a tensor constant of shape {tuple(tensor.shape)} exceeds MAX_TENSOR_DIMS = "
                             f"{MAX_TENSOR_DIMS} or MAX_TENSOR_ELEMENTS = {MAX_TENSOR_ELEMENTS}; pass "
                             "large tensors as inputs instead of constants")
        index = len(self.tensors)
        if self.external is not None:
            self.tensors.append({"dtype": dtype, "shape": list(tensor.shape), "external": len(self.external)})
            self.external.append(tensor.detach())
        else:
            data = tensor.detach().cpu().reshape(-1).tolist()
            if tensor.dtype.is_floating_point:
                data = [v if math.isfinite(v) else repr(v) for v in data]
            self.tensors.append({"dtype": dtype, "shape": list(tensor.shape), "data": data})
        self._tensor_index[id(tensor)] = index
        self._keep.append(tensor)
        return index


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _node_facts(value: Any) -> Optional[Tuple[str, Any, Optional[int]]]:
    return (value.op, value.target, value.invoke) if type(value) is Node else None
