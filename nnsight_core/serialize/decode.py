"""Reading a document back into a graph: :func:`from_json` and :func:`from_dict`.

The whole document is checked against the schema (:mod:`nnsight_core.serialize.schema`) and
its limits, field by field, before anything is built; every failure names the field.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from .._tree import map_structure
from ..errors import GraphFormatError
from ..graph import MODULE_VALUE_OPS, Graph
from .schema import (_DEVICE, _DOCUMENT_KEYS, _DTYPE_NAMES, _EXTERNAL_TENSOR_KEYS, _INT_RANGES, _NO_TARGET,
                     _NODE_KEYS, _NONFINITE, _TENSOR_KEYS, DTYPES, FORMAT, FUNCTIONS, MAX_DEPTH, MAX_DOCUMENT_CHARS, MAX_NODES,
                     MAX_TENSOR_DIMS, MAX_TENSOR_ELEMENTS, OPERATORS, SERIALISABLE_OPS, TENSOR_METHODS, VERSION,
                     _arguments_problem, _attribute_ok, _invoke_problem, _is_int, _iteration_problem, _kind,
                     _path_ok, _requirement_problem, _rows_problem, _scalar, _short)

__all__ = ["from_json", "from_dict"]


def from_json(text: Union[str, bytes, bytearray], device: Union[str, torch.device, None] = None) -> Graph:
    """Rebuild a graph from JSON text written by :func:`to_json`.

    The text is parsed as strict JSON (no ``NaN``, no duplicate keys), checked
    against the schema and the size limits, and only then turned into nodes.

    Args:
        text: The document.
        device: Where tensor constants are created (default: the CPU).

    Returns:
        A graph ready for :func:`run` (or ``model.interleave``).

    Raises:
        GraphFormatError: The text is not JSON, exceeds a limit, or is not a
            valid document; the message names the offending field.

    Example:
        >>> from nnsight_core.serialize import to_json
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> graph = from_json(to_json(tracer.graph))
        >>> [(node.op, node.saved) for node in graph.nodes]
        [('output', True)]
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise GraphFormatError(f"from_json takes the document's text (str or bytes), not "
                               f"{type(text).__name__}; use from_dict for a parsed document.")
    if len(text) > MAX_DOCUMENT_CHARS:
        raise GraphFormatError(f"the document has {len(text)} characters, more than "
                               f"MAX_DOCUMENT_CHARS = {MAX_DOCUMENT_CHARS}.")
    try:
        # JSON documents are UTF-8; json.loads would guess other codecs and import them.
        text = text.decode("utf-8") if not isinstance(text, str) else text
        document = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except GraphFormatError:  # from the hooks below: a NaN literal or a repeated key
        raise
    except RecursionError:
        raise GraphFormatError(f"the document nests JSON too deeply; values may nest at most "
                               f"MAX_DEPTH = {MAX_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise GraphFormatError(f"the document is not valid JSON: {error}") from None
    return from_dict(document, device=device)


def from_dict(document: Any, device: Union[str, torch.device, None] = None,
              tensors: Optional[Sequence[torch.Tensor]] = None) -> Graph:
    """Rebuild a graph from a parsed document (as :func:`to_dict` returns it).

    Args:
        document: The parsed JSON document.
        device: Where tensor constants are created (default: the CPU).
        tensors: The tensors that entries ``{"external": i}`` name (what ``to_dict(graph,
            tensors=...)`` collected, shipped as binary data); each must match its entry's
            dtype and shape, and is used by one entry only. Default: none.

    Returns:
        The graph (structure only, ready to run with ``model.run_graph`` or :func:`run`).

    Raises:
        GraphFormatError: The document breaks the schema or a limit.

    Example:
        >>> from nnsight_core.serialize import to_dict
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> graph = from_dict(to_dict(tracer.graph))
        >>> [(node.op, node.saved) for node in graph.nodes]
        [('output', True)]
    """
    return _Decoder(torch.device("cpu") if device is None else torch.device(device), tensors).document(document)


def _reject_constant(name: str) -> Any:
    raise GraphFormatError(f"the document contains the non-standard JSON constant {name}; write "
                           'non-finite numbers as {"float": "nan"} (or "inf", "-inf").')


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        repeated = sorted(k for k, n in counts.items() if n > 1)
        raise GraphFormatError(f"the document repeats the key(s) {repeated} in one object; each key "
                               "may appear once.")
    return result


class _Ref(NamedTuple):
    """A checked reference to an earlier node, a tensor entry or an iteration (``kind``)."""

    kind: str
    index: int


class _NodeSpec(NamedTuple):
    """One node, checked but not built: it holds :class:`_Ref` for nodes, tensors and iterations."""

    op: str
    target: Any
    invoke: Optional[int]
    args: tuple
    kwargs: dict
    iteration: Optional[int]  # the iteration it is a template of, as create_node will find
    saved: bool


class _Decoder:
    """Checks a whole document field by field, then builds its graph; every failure names the field.

    Nothing is built (no tensor, no node) until every field has passed.
    """

    def __init__(self, device: torch.device, external: Optional[Sequence[torch.Tensor]] = None) -> None:
        self.device = device
        self.external = list(external) if external is not None else []
        self.used: set = set()
        self.rows: List[Tuple[int, int]] = []
        self.requirements: List[Tuple[int, Dict[str, Any]]] = []
        self.iterations: List[List[Any]] = []
        # (values, dtype, shape), or (an external tensor, dtype, shape)
        self.tensors: List[Tuple[Any, torch.dtype, List[int]]] = []
        self.nodes: List[_NodeSpec] = []

    def fail(self, where: str, problem: str) -> GraphFormatError:
        if len(where) > 100:  # a deeply nested value: keep the start and the end of its path
            where = f"{where[:50]}...{where[-40:]}"
        return GraphFormatError(f"graph document, {where}: {problem}")

    def document(self, document: Any) -> Graph:
        if type(document) is not dict:
            raise self.fail("top level", f"expected a JSON object, got {_kind(document)}")
        self._keys(document, "top level", _DOCUMENT_KEYS, {"format", "version", "nodes"})
        if type(document["format"]) is not str or document["format"] != FORMAT:
            raise self.fail("format", f"expected {FORMAT!r}, got {_short(document['format'])}")
        if not _is_int(document["version"]) or document["version"] != VERSION:
            raise self.fail("version", f"this nnsight_core reads version {VERSION}, got "
                                       f"{_short(document['version'])}; write it with a matching version.")
        self._rows(document.get("rows", []))
        self._iterations(document.get("iterations", []))
        self._requirements(document.get("requirements", []))
        tensors = document.get("tensors", [])
        nodes = document["nodes"]
        if type(tensors) is not list:
            raise self.fail("tensors", f"expected a list, got {_kind(tensors)}")
        if type(nodes) is not list:
            raise self.fail("nodes", f"expected a list, got {_kind(nodes)}")
        if len(nodes) > MAX_NODES:
            raise self.fail("nodes", f"{len(nodes)} nodes, more than MAX_NODES = {MAX_NODES}")
        for k, entry in enumerate(tensors):
            self.tensors.append(self._tensor(entry, f"tensors[{k}]"))
        for i, entry in enumerate(nodes):
            self.nodes.append(self._node(entry, i))
        return self._build()

    def _build(self) -> Graph:
        tensors = [values.to(self.device) if isinstance(values, torch.Tensor)
                   else torch.tensor(values, dtype=dtype, device=self.device).reshape(shape)
                   for values, dtype, shape in self.tensors]
        graph = Graph()
        graph.rows = list(self.rows)
        graph.requirements = {invoke: dict(facts) for invoke, facts in self.requirements}
        iterations = [graph.iteration(*entry) for entry in self.iterations]

        def resolve(value: Any) -> Any:
            if type(value) is not _Ref:
                return value
            return {"node": graph.nodes, "tensor": tensors, "iteration": iterations}[value.kind][value.index]

        for spec in self.nodes:
            target = spec.target
            if spec.op in MODULE_VALUE_OPS:
                target = (target[0], resolve(target[1]))
            node = graph.create_node(spec.op, target, map_structure(spec.args, resolve),
                                     map_structure(spec.kwargs, resolve), invoke=spec.invoke)
            if spec.saved:
                graph.save(node, spec.invoke)
        return graph

    def _keys(self, entry: Dict[str, Any], where: str, allowed: frozenset, required: set) -> None:
        unknown = sorted(str(k) for k in entry if k not in allowed)
        if unknown:
            raise self.fail(where, f"unknown key(s) {unknown}; allowed are {sorted(allowed)}")
        missing = sorted(required - set(entry))
        if missing:
            raise self.fail(where, f"missing key(s) {missing}")

    def _iterations(self, iterations: Any) -> None:
        if type(iterations) is not list:
            raise self.fail("iterations", f"expected a list of [start, stop, step], got {_kind(iterations)}")
        for k, entry in enumerate(iterations):
            problem = _iteration_problem(entry)
            if problem is not None:
                raise self.fail(f"iterations[{k}]", problem)
            self.iterations.append(entry)

    def _requirements(self, requirements: Any) -> None:
        if type(requirements) is not list:
            raise self.fail("requirements", f"expected a list of [invoke, {{name: value}}] pairs, got "
                                            f"{_kind(requirements)}")
        for k, entry in enumerate(requirements):
            problem = _requirement_problem(entry, len(self.rows))
            if problem is not None:
                raise self.fail(f"requirements[{k}]", problem)
        self.requirements = [(invoke, facts) for invoke, facts in requirements]

    def _rows(self, rows: Any) -> None:
        if type(rows) is not list:
            raise self.fail("rows", f"expected a list of [start, stop] pairs, got {_kind(rows)}")
        problem = _rows_problem(rows, (list,))
        if problem is not None:
            raise self.fail(*problem)
        self.rows = [(start, stop) for start, stop in rows]

    # -- tensors ----------------------------------------------------------------------

    def _tensor(self, entry: Any, where: str) -> Tuple[Any, torch.dtype, List[int]]:
        if type(entry) is not dict:
            raise self.fail(where, f"expected an object with dtype, shape and data, got {_kind(entry)}")
        external = "external" in entry
        keys = _EXTERNAL_TENSOR_KEYS if external else _TENSOR_KEYS
        self._keys(entry, where, keys, set(keys))
        dtype = DTYPES.get(entry["dtype"]) if type(entry["dtype"]) is str else None
        if dtype is None:
            raise self.fail(f"{where}.dtype", f"expected one of {sorted(DTYPES)}, got {_short(entry['dtype'])}")
        shape = self._shape(entry["shape"], f"{where}.shape")
        if external:
            return self._external(entry["external"], dtype, shape, f"{where}.external"), dtype, shape
        numel = math.prod(shape)
        data = entry["data"]
        if type(data) is not list or len(data) != numel:
            got = f"{len(data)} values" if type(data) is list else _kind(data)
            raise self.fail(f"{where}.data", f"expected a flat list of {numel} values (the product of "
                                             f"the shape {shape}), got {got}")
        return self._elements(data, dtype, f"{where}.data"), dtype, shape

    def _external(self, index: Any, dtype: torch.dtype, shape: List[int], where: str) -> torch.Tensor:
        count = len(self.external)
        if not (_is_int(index) and 0 <= index < count):
            raise self.fail(where, f"expected an index into the {count} tensor(s) given beside the document "
                                   f"(from_dict(..., tensors=...)), got {_short(index)}")
        if index in self.used:
            raise self.fail(where, f"tensor {index} beside the document is named by two entries; each is one")
        tensor = self.external[index]
        if not (isinstance(tensor, torch.Tensor) and tensor.layout is torch.strided and tensor.dtype is dtype
                and list(tensor.shape) == shape):
            got = (f"a {tensor.dtype} tensor of shape {list(tensor.shape)}" if isinstance(tensor, torch.Tensor)
                   else _kind(tensor))
            raise self.fail(where, f"the entry declares a {_DTYPE_NAMES[dtype]} tensor of shape {shape}, tensor "
                                   f"{index} beside the document is {got}")
        self.used.add(index)
        return tensor

    def _shape(self, shape: Any, where: str) -> List[int]:
        if type(shape) is not list or len(shape) > MAX_TENSOR_DIMS:
            raise self.fail(where, f"expected a list of at most MAX_TENSOR_DIMS = {MAX_TENSOR_DIMS} "
                                   f"sizes, got {_short(shape)}")
        numel = 1
        for size in shape:
            if not _is_int(size) or not 0 <= size <= MAX_TENSOR_ELEMENTS:
                raise self.fail(where, f"sizes must be integers from 0 to MAX_TENSOR_ELEMENTS = "
                                       f"{MAX_TENSOR_ELEMENTS}, got {_short(size)}")
            numel *= size
        if numel > MAX_TENSOR_ELEMENTS:
            raise self.fail(where, f"{_short(shape)} has {numel} elements, more than "
                                   f"MAX_TENSOR_ELEMENTS = {MAX_TENSOR_ELEMENTS}")
        return shape

    def _elements(self, data: List[Any], dtype: torch.dtype, where: str) -> List[Any]:
        if dtype is torch.bool:
            if not all(type(v) is bool for v in data):
                raise self.fail(where, "a bool tensor holds only true and false")
            return data
        if dtype.is_floating_point:
            values = [_float_element(v) for v in data]
            if None in values:
                raise self.fail(where, 'a float tensor holds finite numbers and "nan", "inf", "-inf"; '
                                       f"got {_short(data[values.index(None)])}")
            return values
        low, high = _INT_RANGES[dtype]
        if not all(type(v) is int and low <= v <= high for v in data):
            raise self.fail(where, f"a {_DTYPE_NAMES[dtype]} tensor holds integers from {low} to {high}")
        return data

    # -- nodes ------------------------------------------------------------------------

    def _node(self, entry: Any, index: int) -> _NodeSpec:
        where = f"nodes[{index}]"
        if type(entry) is not dict:
            raise self.fail(where, f"expected an object, got {_kind(entry)}")
        self._keys(entry, where, _NODE_KEYS, {"op"})
        op = entry["op"]
        if type(op) is not str or op not in SERIALISABLE_OPS:
            why = ("it calls a Python function, which a document cannot name" if op == "apply"
                   else f"a document's ops are {sorted(SERIALISABLE_OPS)}")
            raise self.fail(f"{where}.op", f"unknown operation {_short(op)}: {why}")
        invoke = self._invoke(entry.get("invoke"), op, f"{where}.invoke")
        target = self._target(op, entry.get("target"), f"{where}.target")
        raw_args, raw_kwargs = entry.get("args", []), entry.get("kwargs", {})
        if type(raw_args) is not list:
            raise self.fail(f"{where}.args", f"expected a list, got {_kind(raw_args)}")
        if type(raw_kwargs) is not dict or not all(type(k) is str for k in raw_kwargs):
            raise self.fail(f"{where}.kwargs", f"expected an object (string keys), got {_kind(raw_kwargs)}")
        args = tuple(self._value(a, f"{where}.args[{k}]", 0, index) for k, a in enumerate(raw_args))
        kwargs = {k: self._value(v, f"{where}.kwargs.{k}", 0, index) for k, v in raw_kwargs.items()}
        problem = _arguments_problem(op, target, invoke, args, kwargs, self._facts, _is_tensor_ref)
        if problem is not None:
            raise self.fail(where + problem[0], problem[1])
        saved = entry.get("saved", False)
        if type(saved) is not bool:
            raise self.fail(f"{where}.saved", f"expected true or false, got {_kind(saved)}")
        return _NodeSpec(op, target, invoke, args, kwargs, self._template_of(op, target, args, kwargs, where),
                         saved)

    def _template_of(self, op: str, target: Any, args: tuple, kwargs: dict, where: str) -> Optional[int]:
        """The iteration a node will be a template of (as Graph.create_node decides), checked
        to be one: a node may not combine values of two iterations."""
        iteration = target[1].index if op in MODULE_VALUE_OPS and type(target[1]) is _Ref else None
        for ref in _node_refs((args, kwargs)):
            other = self.nodes[ref.index].iteration
            if other is not None and other != iteration:
                if iteration is not None:
                    raise self.fail(where, f"the node combines values of iterations[{iteration}] and "
                                           f"iterations[{other}]; a node belongs to one iteration")
                iteration = other
        return iteration

    def _facts(self, value: Any) -> Optional[Tuple[str, Any, Optional[int]]]:
        if type(value) is not _Ref or value.kind != "node":
            return None
        spec = self.nodes[value.index]
        return spec.op, spec.target, spec.invoke

    def _call(self, call: Any, where: str) -> Union[int, _Ref]:
        if _is_int(call) and call >= 0:
            return call
        if (type(call) is dict and list(call) == ["iteration"] and _is_int(call["iteration"])
                and 0 <= call["iteration"] < len(self.iterations)):
            return _Ref("iteration", call["iteration"])
        raise self.fail(where, f"a call is an index >= 0 or {{\"iteration\": k}} with k an index into "
                               f"iterations ({len(self.iterations)} of them), got {_short(call)}")

    def _invoke(self, invoke: Any, op: str, where: str) -> Optional[int]:
        problem = _invoke_problem(invoke, op, len(self.rows))
        if problem is not None:
            raise self.fail(where, problem)
        return invoke

    def _target(self, op: str, target: Any, where: str) -> Any:
        if op in MODULE_VALUE_OPS:
            if not (type(target) is list and len(target) == 2 and _path_ok(target[0])):
                raise self.fail(where, f"{op} takes [module path, call] (a dotted path of module names), "
                                       f"got {_short(target)}")
            return (target[0], self._call(target[1], f"{where}[1]"))
        if op == "operator":
            if type(target) is not str or target not in OPERATORS:
                raise self.fail(where, f"unknown operator {_short(target)}; allowed are {sorted(OPERATORS)}")
        elif op == "getattr":
            if not _attribute_ok(target):
                raise self.fail(where, f"{_short(target)} is not a public attribute name")
        elif op == "call_method":
            if type(target) is not str or target not in TENSOR_METHODS:
                raise self.fail(where, f"{_short(target)} is not in nnsight_core.serialize.TENSOR_METHODS")
        elif op == "call_function":
            if type(target) is not str or target not in FUNCTIONS:
                raise self.fail(where, f"{_short(target)} is not in nnsight_core.serialize.FUNCTIONS "
                                       "(e.g. 'torch.sum', 'torch.nn.functional.softmax')")
            return FUNCTIONS[target]
        elif op == "call_module":
            if not _path_ok(target):
                raise self.fail(where, f"expected a dotted module path, got {_short(target)}")
        elif op in _NO_TARGET and target is not None:
            raise self.fail(where, f"{op} takes no target, got {_short(target)}")
        return target

    # -- values ------------------------------------------------------------------------

    def _value(self, raw: Any, where: str, depth: int, index: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(where, f"values nest deeper than MAX_DEPTH = {MAX_DEPTH}")
        kind = type(raw)
        if raw is None or kind is bool or kind is int or kind is str:
            return raw
        if kind is float:
            if not math.isfinite(raw):
                raise self.fail(where, 'non-finite numbers are written {"float": "nan"} (or "inf", "-inf")')
            return raw
        if kind is not dict or len(raw) != 1:
            raise self.fail(where, "a value is a scalar, a string or an object with exactly one key out of "
                                   f"{sorted(_TAGS)}; got {_short(raw)}")
        (tag, payload), = raw.items()
        decode = _TAGS.get(tag) if type(tag) is str else None
        if decode is None:
            raise self.fail(where, f"unknown value kind {_short(tag)}; allowed are {sorted(_TAGS)}")
        return decode(self, payload, f"{where}.{tag}", depth, index)

    def _items(self, payload: Any, where: str, depth: int, index: int) -> List[Any]:
        if type(payload) is not list:
            raise self.fail(where, f"expected a list, got {_kind(payload)}")
        return [self._value(v, f"{where}[{k}]", depth + 1, index) for k, v in enumerate(payload)]

    def _node_ref(self, payload: Any, where: str, depth: int, index: int) -> _Ref:
        if not _is_int(payload) or not 0 <= payload < index:
            earlier = f"0 to {index - 1}" if index else "none: it is the first node"
            raise self.fail(where, f"a node may only refer to an earlier node ({earlier}), got "
                                   f"{_short(payload)}; references forward, to the node itself or out "
                                   "of range would make cycles or dangle")
        return _Ref("node", payload)

    def _tuple(self, payload: Any, where: str, depth: int, index: int) -> tuple:
        return tuple(self._items(payload, where, depth, index))

    def _dict(self, payload: Any, where: str, depth: int, index: int) -> dict:
        if type(payload) is not list:
            raise self.fail(where, f"expected a list of [key, value] pairs, got {_kind(payload)}")
        result = {}
        for k, pair in enumerate(payload):
            if not (type(pair) is list and len(pair) == 2 and _scalar(pair[0])):
                raise self.fail(f"{where}[{k}]", f"expected [key, value] with a scalar key, got {_short(pair)}")
            if pair[0] in result:
                raise self.fail(f"{where}[{k}]", f"the key {_short(pair[0])} appears twice")
            result[pair[0]] = self._value(pair[1], f"{where}[{k}][1]", depth + 1, index)
        return result

    def _slice(self, payload: Any, where: str, depth: int, index: int) -> slice:
        if type(payload) is not list or len(payload) != 3:
            raise self.fail(where, f"expected [start, stop, step], got {_short(payload)}")
        return slice(*self._items(payload, where, depth, index))

    def _ellipsis(self, payload: Any, where: str, depth: int, index: int) -> Any:
        if payload is not None:
            raise self.fail(where, f"expected null, got {_short(payload)}")
        return Ellipsis

    def _float(self, payload: Any, where: str, depth: int, index: int) -> float:
        if type(payload) is not str or payload not in _NONFINITE:
            raise self.fail(where, f'expected "nan", "inf" or "-inf", got {_short(payload)}')
        return _NONFINITE[payload]

    def _dtype(self, payload: Any, where: str, depth: int, index: int) -> torch.dtype:
        if type(payload) is not str or payload not in DTYPES:
            raise self.fail(where, f"expected one of {sorted(DTYPES)}, got {_short(payload)}")
        return DTYPES[payload]

    def _device(self, payload: Any, where: str, depth: int, index: int) -> torch.device:
        if type(payload) is not str or _DEVICE.fullmatch(payload) is None:
            raise self.fail(where, f"expected a device such as 'cpu' or 'cuda:0', got {_short(payload)}")
        return torch.device(payload)

    def _size(self, payload: Any, where: str, depth: int, index: int) -> torch.Size:
        if type(payload) is not list or len(payload) > MAX_TENSOR_DIMS or not all(
                _is_int(s) and s >= 0 for s in payload):
            raise self.fail(where, f"expected at most {MAX_TENSOR_DIMS} sizes >= 0, got {_short(payload)}")
        return torch.Size(payload)

    def _tensor_ref(self, payload: Any, where: str, depth: int, index: int) -> _Ref:
        if not _is_int(payload) or not 0 <= payload < len(self.tensors):
            raise self.fail(where, f"expected an index into tensors (0 to {len(self.tensors) - 1}), got "
                                   f"{_short(payload)}")
        return _Ref("tensor", payload)


_TAGS: Dict[str, Callable[..., Any]] = {
    "node": _Decoder._node_ref, "tuple": _Decoder._tuple, "list": _Decoder._items,
    "dict": _Decoder._dict, "slice": _Decoder._slice, "ellipsis": _Decoder._ellipsis,
    "float": _Decoder._float, "dtype": _Decoder._dtype, "device": _Decoder._device,
    "size": _Decoder._size, "tensor": _Decoder._tensor_ref,
}


def _is_tensor_ref(value: Any) -> bool:
    return type(value) is _Ref and value.kind == "tensor"


def _float_element(value: Any) -> Optional[float]:
    """A float tensor's element from its JSON form, or None if it has none."""
    kind = type(value)
    if kind is str:
        return _NONFINITE.get(value)
    if kind is int or (kind is float and math.isfinite(value)):
        return value
    return None


def _node_refs(value: Any) -> Iterator[_Ref]:
    """The node references inside checked arguments."""
    kind = type(value)
    if kind is _Ref:
        if value.kind == "node":
            yield value
    elif kind is tuple or kind is list:
        for item in value:
            yield from _node_refs(item)
    elif kind is dict:
        for item in value.values():
            yield from _node_refs(item)
    elif kind is slice:
        yield from _node_refs((value.start, value.stop, value.step))
