"""A graph as JSON and back: data only, no pickle, no code, no import paths.

:func:`to_json` writes a :class:`~nnsight_core.graph.Graph` as a JSON document
of the closed operation vocabulary (:data:`~nnsight_core.graph.OPS`, all of it
but ``apply``, which runs a Python function: :data:`SERIALISABLE_OPS`) and
plain values; :func:`from_json` checks a whole document against the schema
below before it builds anything, and rebuilds the graph. Every callable a document can name is
looked up in a fixed table built when this module is imported: the proxy's
Python operators (:data:`OPERATORS`), tensor methods (:data:`TENSOR_METHODS`)
and functions of ``torch``, ``torch.Tensor`` and ``torch.nn.functional``
(:data:`FUNCTIONS`). Loading never imports a module, evaluates text or
unpickles bytes. :func:`run` executes a (loaded) graph on a model.

Example:
    >>> with model.trace(x) as tracer:
    ...     hidden = model.layer1.output.save()
    >>> text = tracer.graph.to_json()
    >>> graph = Graph.from_json(text)
    >>> saved = run(model, graph, x)        # {save node index: value}
    >>> torch.equal(saved[hidden.node.index], hidden.value)
    True

The document (version 1)::

    {"format": "nnsight_core.graph", "version": 1,
     "rows": [[0, 1], [1, 3]],            # each invoke's (start, stop) batch rows
     "iterations": [[1, null, 1]],        # [start, stop, step] of tracer.iter / .all() blocks
     "tensors": [{"dtype": "float32", "shape": [2], "data": [0.5, "nan"]}],
     "nodes": [                           # in recording order; "%i" is nodes[i]
        {"op": "output", "target": ["layer1", 0], "invoke": 0},
        {"op": "operator", "target": "mul", "args": [{"node": 0}, 2], "invoke": 0},
        {"op": "call_function", "target": "torch.cat",
         "args": [{"list": [{"node": 1}, {"tensor": 0}]}], "kwargs": {"dim": -1}},
        {"op": "save", "args": [{"node": 2}], "invoke": 0}]}

A node has ``op`` and, where not empty, ``target``, ``args`` (a list),
``kwargs`` (an object) and ``invoke`` (an invoke index, or absent). Targets:
``[module path, call]`` for ``output``, ``inputs``, ``set_output``,
``set_inputs`` and ``set_input``, where the call is an index or
``{"iteration": k}`` (entry ``k`` of ``iterations``: the node is a template
run at each call of that range); a name of :data:`OPERATORS` for
``operator``; an attribute name for ``getattr``; a name of
:data:`TENSOR_METHODS` for ``call_method``; a key of :data:`FUNCTIONS`
(``"torch.sum"``, ``"torch.Tensor.add"``, ``"torch.nn.functional.softmax"``)
for ``call_function``; a module path for ``call_module``; none otherwise
(``getitem``, ``setitem``, ``save``, ``grad``, ``set_grad``, ``backward``,
``stop``). A graph with a ``tracer.cond`` block cannot be written either: its
condition is an ``apply`` of ``bool``.

A value is ``null``, ``true``/``false``, a finite number or a string, or an
object with exactly one of these keys: ``{"node": i}`` (an earlier node),
``{"tuple": [...]}``, ``{"list": [...]}``, ``{"dict": [[key, value], ...]}``
(keys are plain scalars), ``{"slice": [start, stop, step]}``,
``{"ellipsis": null}``, ``{"float": "nan" | "inf" | "-inf"}``,
``{"dtype": "float32"}`` (a name of :data:`DTYPES`), ``{"device": "cuda:0"}``,
``{"size": [2, 3]}`` (a ``torch.Size``) or ``{"tensor": k}`` (entry ``k`` of
``tensors``). A tensor entry holds its dtype, its shape and its values
flattened in row-major order (non-finite floats as the strings ``"nan"``,
``"inf"``, ``"-inf"``). A tensor object used by several nodes is stored once
and is one shared object again after loading, so in-place edits of it keep
their meaning. Tensors are stored by value: a ``Parameter`` becomes a plain
tensor, and a tensor on another device is loaded on the CPU (or on
``device=``).

What a document may not do is bounded by :data:`MAX_DOCUMENT_CHARS`,
:data:`MAX_NODES`, :data:`MAX_DEPTH`, :data:`MAX_TENSOR_DIMS` and
:data:`MAX_TENSOR_ELEMENTS`; :func:`to_json` refuses a graph that
:func:`from_json` would refuse. A node's source location is not stored.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from itertools import accumulate
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple,
                    Union)

import torch

from ._tree import map_structure
from .errors import EnvoyAttributeError, GraphFormatError, InvokeError
from .graph import EMPTY, MODULE_VALUE_OPS, Graph, Iteration, Node, display_path
from .proxy import OPERATORS

if TYPE_CHECKING:
    from .model import NNsightModel

__all__ = [
    "FORMAT", "VERSION", "MAX_DOCUMENT_CHARS", "MAX_NODES", "MAX_DEPTH", "MAX_TENSOR_DIMS",
    "MAX_TENSOR_ELEMENTS", "SERIALISABLE_OPS", "OPERATORS", "TENSOR_METHODS", "FUNCTIONS", "DTYPES",
    "to_dict", "to_json", "from_dict", "from_json", "run",
]

#: The ``format`` field of every document.
FORMAT = "nnsight_core.graph"
#: The schema version this module writes and reads.
VERSION = 1
#: Longest document text :func:`from_json` parses, in characters.
MAX_DOCUMENT_CHARS = 64 * 2**20
#: Most nodes a document may hold.
MAX_NODES = 65_536
#: Deepest nesting of values (tuples in lists in dicts ...) inside one argument.
MAX_DEPTH = 32
#: Most dimensions of a tensor constant.
MAX_TENSOR_DIMS = 16
#: Most elements of one tensor constant (and largest size of any of its dimensions).
MAX_TENSOR_ELEMENTS = 2**20

# OPERATORS (imported from nnsight_core.proxy): the Python operators a node may name, with
# their number of arguments: the proxy's own operator table.

#: Tensor methods a ``call_method`` node may name. Excluded on purpose: methods that take
#: a callable (``apply_``, ``map_``, ``register_hook``) and ``type``, which imports a class
#: named by a string.
TENSOR_METHODS = frozenset(name for name in """
    abs abs_ absolute acos add add_ addmm all allclose amax amin any argmax argmin argsort asin atan
    backward baddbmm bfloat16 bmm bool byte ceil char chunk clamp clamp_ clamp_max clamp_min clip
    clone contiguous copy_ cos cosh count_nonzero cpu cuda cummax cummin cumprod cumsum detach
    detach_ diag diagonal diff dim div div_ dot double eq equal erf exp exp_ expand expand_as
    fill_ fill_diagonal_ flatten flip float float_power floor floor_divide fmod gather ge gt half
    index_add index_add_ index_copy index_copy_ index_fill index_fill_ index_put index_put_
    index_select int isclose isfinite isinf isnan item kthvalue le lerp lerp_ log log10 log1p log2
    log_ log_softmax logical_and logical_not logical_or logical_xor logsumexp long lt masked_fill
    masked_fill_ masked_scatter masked_scatter_ masked_select matmul max maximum mean median min
    minimum mm movedim mul mul_ multinomial nan_to_num nanmean nansum narrow ne neg neg_ new_empty
    new_full new_ones new_tensor new_zeros nonzero norm normal_ numel numpy outer permute pow pow_
    prod reciprocal relu relu_ remainder repeat repeat_interleave requires_grad_ reshape reshape_as
    retain_grad roll round rsqrt scatter scatter_ scatter_add scatter_add_ select sigmoid sigmoid_
    sign sin sinh size softmax sort split sqrt sqrt_ square squeeze squeeze_ std sub sub_ sum
    swapaxes t t_ tan tanh tanh_ tile to tolist topk transpose transpose_ tril triu true_divide
    trunc type_as unbind unflatten uniform_ unique unsqueeze unsqueeze_ var view view_as where zero_
""".split() if hasattr(torch.Tensor, name))

# Tensor dunders that __torch_function__ records for `tensor <op> proxy`, `tensor[i] = proxy`, ...
_TENSOR_DUNDERS = """
    __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
    __rtruediv__ __itruediv__ __div__ __rdiv__ __floordiv__ __rfloordiv__ __ifloordiv__ __mod__
    __rmod__ __pow__ __rpow__ __ipow__ __matmul__ __rmatmul__ __and__ __rand__ __iand__ __or__
    __ror__ __ior__ __xor__ __rxor__ __ixor__ __lshift__ __rlshift__ __rshift__ __rrshift__
    __neg__ __pos__ __abs__ __invert__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __getitem__
    __setitem__
""".split()

_TORCH_FUNCTIONS = """
    abs add addmm all allclose amax amin any arange argmax argmin argsort baddbmm bmm broadcast_to
    cat ceil chunk clamp clip clone concat concatenate cos cosine_similarity count_nonzero cumprod
    cumsum detach diag diagonal diff dist div dot einsum empty empty_like eq equal erf exp eye
    flatten flip floor full full_like gather ge gt hstack index_select isclose isfinite isinf isnan
    kthvalue le lerp linspace log log10 log1p log2 log_softmax logical_and logical_not logical_or
    logical_xor logsumexp lt masked_fill masked_select matmul max maximum mean median min minimum
    mm movedim mul multiply nan_to_num nanmean nansum narrow ne neg nonzero norm normal ones
    ones_like outer permute pow prod rand rand_like randint randn randn_like reciprocal relu
    remainder repeat_interleave reshape roll round rsqrt scatter scatter_add select sigmoid sign
    sin softmax sort split sqrt square squeeze stack std sub subtract sum swapaxes t tanh tensor
    tile topk transpose tril triu true_divide trunc unbind unflatten unique unsqueeze var vstack
    where zeros zeros_like
""".split()

_FUNCTIONAL_FUNCTIONS = """
    avg_pool1d avg_pool2d binary_cross_entropy binary_cross_entropy_with_logits conv1d conv2d
    cosine_similarity cross_entropy dropout elu embedding gelu glu group_norm hardtanh interpolate
    kl_div l1_loss layer_norm leaky_relu linear log_softmax logsigmoid max_pool1d max_pool2d mish
    mse_loss nll_loss normalize one_hot pad pairwise_distance relu relu6 rms_norm
    scaled_dot_product_attention sigmoid silu smooth_l1_loss softmax softplus tanh
""".split()


def _function_table() -> Dict[str, Callable[..., Any]]:
    tables = (("torch", torch, _TORCH_FUNCTIONS),
              ("torch.Tensor", torch.Tensor, sorted(TENSOR_METHODS) + _TENSOR_DUNDERS),
              ("torch.nn.functional", torch.nn.functional, _FUNCTIONAL_FUNCTIONS))
    table = {}
    for prefix, namespace, names in tables:
        for name in names:
            function = getattr(namespace, name, None)
            if callable(function):
                table[f"{prefix}.{name}"] = function
    return table


#: Functions a ``call_function`` node may name, by qualified name: a closed table built
#: from explicit name lists over ``torch``, ``torch.Tensor`` and ``torch.nn.functional``.
FUNCTIONS: Dict[str, Callable[..., Any]] = _function_table()
# Function object to its name; the first name of an alias wins.
_FUNCTION_NAMES: Dict[Any, str] = {function: name for name, function in reversed(list(FUNCTIONS.items()))}

#: Tensor dtypes a document may name.
DTYPES: Dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_INT_RANGES = {dtype: (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
               for dtype in DTYPES.values() if not dtype.is_floating_point and dtype is not torch.bool}

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|meta)(:[0-9]{1,4})?")
_PATH_PART = re.compile(r"[A-Za-z0-9_\-]+")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Attributes that reach frames and code objects; no graph needs them.
_DENIED_ATTRIBUTES = frozenset({
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "gi_frame", "gi_code", "cr_frame",
    "cr_code", "ag_frame", "ag_code", "tb_frame", "tb_next", "func_globals", "func_code", "mro",
})
_NODE_KEYS = frozenset({"op", "target", "args", "kwargs", "invoke"})
_DOCUMENT_KEYS = frozenset({"format", "version", "rows", "iterations", "tensors", "nodes"})
_TENSOR_KEYS = frozenset({"dtype", "shape", "data"})
#: The ops a document can hold: all of OPS but ``apply``, whose target is a Python function
#: given by the user. An op added to OPS is refused until it is added here (and tested).
SERIALISABLE_OPS = frozenset({
    "output", "inputs", "set_output", "set_inputs", "set_input", "operator", "getitem", "setitem",
    "getattr", "call_method", "call_function", "call_module", "save", "grad", "set_grad", "backward",
    "stop",
})
# What the first argument of an edit must be: a node of these ops (for module values: of the
# same module value, call and invoke).
_FAMILY = {"set_output": frozenset({"output", "set_output"}),
           "set_inputs": frozenset({"inputs", "set_inputs", "set_input"}),
           "set_input": frozenset({"inputs", "set_inputs", "set_input"}),
           "set_grad": frozenset({"grad", "set_grad"})}
# Ops whose first argument is always the node they act on.
_ON_NODE = frozenset({"getitem", "setitem", "getattr", "call_method", "save", "grad", "backward"})
_NO_TARGET = frozenset({"getitem", "setitem", "save", "grad", "set_grad", "backward", "stop"})
_ARITY = {"output": 0, "inputs": 0, "set_output": 2, "set_inputs": 2, "set_input": 2,
          "getitem": 2, "setitem": 3, "getattr": 1, "save": 1, "grad": 1, "set_grad": 2}

Document = Dict[str, Any]


# -- writing ------------------------------------------------------------------------


def to_dict(graph: Graph) -> Document:
    """The graph as a JSON-ready document (see the module docstring for the schema).

    Args:
        graph: A recorded graph (``tracer.graph``), during or after its trace, or a loaded one.

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
        {'op': 'output', 'target': ['layer1', 0], 'invoke': 0}
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
    encoder = _Encoder(len(graph.rows), graph.iterations)
    nodes = [encoder.node(node) for node in graph.nodes]
    return {"format": FORMAT, "version": VERSION, "rows": [list(r) for r in graph.rows],
            "iterations": iterations, "tensors": encoder.tensors, "nodes": nodes}


def to_json(graph: Graph, indent: Optional[int] = None) -> str:
    """The graph as JSON text (strict JSON: no ``NaN`` literals).

    Args:
        graph: A recorded or loaded graph.
        indent: Passed to :func:`json.dumps` for readable output.

    Returns:
        The document as a string.

    Raises:
        GraphFormatError: As :func:`to_dict`, or the text exceeds :data:`MAX_DOCUMENT_CHARS`.

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

    def __init__(self, invokes: int, iterations: List[Iteration]) -> None:
        self.invokes = invokes
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
        return entry

    def _check_structure(self, node: Node) -> None:
        problem = _invoke_problem(node.invoke, node.op, self.invokes)
        if problem is not None:
            raise self._fail(f"invoke: {problem}")
        arguments = _arguments_problem(node.op, node.target, node.invoke, node.args, node.kwargs,
                                       _node_facts)
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
        data = tensor.detach().cpu().reshape(-1).tolist()
        if tensor.dtype.is_floating_point:
            data = [v if math.isfinite(v) else repr(v) for v in data]
        index = len(self.tensors)
        self.tensors.append({"dtype": dtype, "shape": list(tensor.shape), "data": data})
        self._tensor_index[id(tensor)] = index
        self._keep.append(tensor)
        return index


# -- reading ------------------------------------------------------------------------


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
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> graph = from_json(to_json(tracer.graph))
        >>> [node.op for node in graph.nodes]
        ['output', 'save']
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


def from_dict(document: Any, device: Union[str, torch.device, None] = None) -> Graph:
    """Rebuild a graph from a parsed document (as :func:`to_dict` returns it).

    Args:
        document: The parsed JSON document.
        device: Where tensor constants are created (default: the CPU).

    Returns:
        The graph, with ``recording`` off and every node unexecuted.

    Raises:
        GraphFormatError: The document breaks the schema or a limit.

    Example:
        >>> with model.trace(x) as tracer:
        ...     hidden = model.layer1.output.save()
        >>> graph = from_dict(to_dict(tracer.graph))
        >>> [node.op for node in graph.nodes]
        ['output', 'save']
    """
    return _Decoder(torch.device("cpu") if device is None else torch.device(device)).document(document)


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


def _node_facts(value: Any) -> Optional[Tuple[str, Any, Optional[int]]]:
    return (value.op, value.target, value.invoke) if type(value) is Node else None


def _attribute_ok(name: Any) -> bool:
    return type(name) is str and _IDENTIFIER.fullmatch(name) is not None and name not in _DENIED_ATTRIBUTES


def _path_ok(path: Any) -> bool:
    return type(path) is str and len(path) <= 1000 and (
        path == "" or all(_PATH_PART.fullmatch(p) and not p.startswith("__") for p in path.split(".")))


def _is_int(value: Any) -> bool:
    return type(value) is int


def _rows_problem(rows: Any, pair_types: Tuple[type, ...]) -> Optional[Tuple[str, str]]:
    """What is wrong with the invokes' batch rows, as (field, problem), or None."""
    cursor = 0
    for k, pair in enumerate(rows):
        if not (type(pair) in pair_types and len(pair) == 2 and all(map(_is_int, pair))
                and pair[0] == cursor and pair[1] > pair[0]):
            return (f"rows[{k}]", (f"expected [{cursor}, stop] with stop > {cursor} (invokes own "
                                   f"consecutive rows from 0), got {_short(pair)}"))
        cursor = pair[1]
    return None


def _invoke_problem(invoke: Any, op: str, invokes: int) -> Optional[str]:
    if invoke is None and op not in MODULE_VALUE_OPS:
        return None
    if _is_int(invoke) and 0 <= invoke < invokes:
        return None
    if not invokes:
        return f"the rows declare no invoke, so no node can belong to one; got invoke {_short(invoke)}"
    return (f"expected an invoke index from 0 to {invokes - 1} (rows has {invokes} invoke(s))"
            f"{'' if op in MODULE_VALUE_OPS else ' or no invoke'}, got {_short(invoke)}")


def _arguments_problem(op: str, target: Any, invoke: Optional[int], args: tuple, kwargs: dict,
                       facts: Callable[[Any], Optional[Tuple[str, Any, Optional[int]]]]
                       ) -> Optional[Tuple[str, str]]:
    """What is wrong with a node's arguments, as (field suffix, problem), or None.

    ``facts(arg)`` is ``(op, target, invoke)`` of the node an argument refers to,
    or None when it is not a node reference. Recorded graphs always pass; the
    checks keep a document from making a node its op cannot run on (wrong
    arity, an edit of another module value).
    """
    arity = OPERATORS[target] if op == "operator" else _ARITY.get(op)
    if arity is not None and (len(args) != arity or kwargs):
        return (".args", (f"{op} takes exactly {arity} argument(s) and no keywords, got {len(args)} "
                          f"and {len(kwargs)}"))
    first = facts(args[0]) if args else None
    if op in _ON_NODE and first is None:
        return (".args[0]", f'{op} acts on a node: expected {{"node": i}}')
    if op in _FAMILY and (first is None or first[0] not in _FAMILY[op]
                          or (op in MODULE_VALUE_OPS and first[1:] != (target, invoke))):
        edited = (f"the module value it assigns ({display_path(target[0])}, invoke {invoke})"
                  if op in MODULE_VALUE_OPS else "the gradient it replaces")
        return (".args[0]", f"{op} replaces a value: expected a reference to a node of {edited}")
    return None


def _iteration_problem(entry: Any) -> Optional[str]:
    """What is wrong with an iteration's ``[start, stop, step]``, or None."""
    if not (type(entry) is list and len(entry) == 3):
        return f"expected [start, stop, step], got {_short(entry)}"
    start, stop, step = entry
    if not (_is_int(start) and start >= 0 and _is_int(step) and step >= 1
            and (stop is None or (_is_int(stop) and stop > start))):
        return (f"expected integers start >= 0, step >= 1 and stop > start (or null for every "
                f"call), got {_short(entry)}")
    return None


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


class _Decoder:
    """Checks a whole document field by field, then builds its graph; every failure names the field.

    Nothing is built (no tensor, no node) until every field has passed.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: List[Tuple[int, int]] = []
        self.iterations: List[List[Any]] = []
        self.tensors: List[Tuple[List[Any], torch.dtype, List[int]]] = []
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
        tensors = [torch.tensor(values, dtype=dtype, device=self.device).reshape(shape)
                   for values, dtype, shape in self.tensors]
        graph = Graph()
        graph.rows = list(self.rows)
        graph.batch_size = self.rows[-1][1] if self.rows else 0
        iterations = [graph.iteration(*entry) for entry in self.iterations]

        def resolve(value: Any) -> Any:
            if type(value) is not _Ref:
                return value
            return {"node": graph.nodes, "tensor": tensors, "iteration": iterations}[value.kind][value.index]

        for spec in self.nodes:
            target = spec.target
            if spec.op in MODULE_VALUE_OPS:
                target = (target[0], resolve(target[1]))
            graph.create_node(spec.op, target, map_structure(spec.args, resolve),
                              map_structure(spec.kwargs, resolve), invoke=spec.invoke)
        graph.recording = False
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

    def _rows(self, rows: Any) -> None:
        if type(rows) is not list:
            raise self.fail("rows", f"expected a list of [start, stop] pairs, got {_kind(rows)}")
        problem = _rows_problem(rows, (list,))
        if problem is not None:
            raise self.fail(*problem)
        self.rows = [(start, stop) for start, stop in rows]

    # -- tensors ----------------------------------------------------------------------

    def _tensor(self, entry: Any, where: str) -> Tuple[List[Any], torch.dtype, List[int]]:
        if type(entry) is not dict:
            raise self.fail(where, f"expected an object with dtype, shape and data, got {_kind(entry)}")
        self._keys(entry, where, _TENSOR_KEYS, set(_TENSOR_KEYS))
        dtype = DTYPES.get(entry["dtype"]) if type(entry["dtype"]) is str else None
        if dtype is None:
            raise self.fail(f"{where}.dtype", f"expected one of {sorted(DTYPES)}, got {_short(entry['dtype'])}")
        shape = self._shape(entry["shape"], f"{where}.shape")
        numel = math.prod(shape)
        data = entry["data"]
        if type(data) is not list or len(data) != numel:
            got = f"{len(data)} values" if type(data) is list else _kind(data)
            raise self.fail(f"{where}.data", f"expected a flat list of {numel} values (the product of "
                                             f"the shape {shape}), got {got}")
        return self._elements(data, dtype, f"{where}.data"), dtype, shape

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
        problem = _arguments_problem(op, target, invoke, args, kwargs, self._facts)
        if problem is not None:
            raise self.fail(where + problem[0], problem[1])
        return _NodeSpec(op, target, invoke, args, kwargs, self._template_of(op, target, args, kwargs, where))

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


def _scalar(value: Any) -> bool:
    kind = type(value)
    return value is None or kind in (bool, int, str) or (kind is float and math.isfinite(value))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


# -- running ------------------------------------------------------------------------


def run(model: NNsightModel, graph: Graph, *inputs: Any, invokes: Optional[Sequence[Sequence[Any]]] = None,
        method: Optional[str] = None, **kwargs: Any) -> Dict[int, Any]:
    """Run a graph (e.g. one :func:`from_json` loaded) on ``model``, as its trace would have.

    Each invoke's inputs are prepared and batched by the model's adapter, the
    graph's rows are set from them, and the model runs once with the graph
    interleaved (hooks only for this call, removed also on error).

    Args:
        model: A model wrapper with the module tree the graph was recorded on.
        graph: The graph to run.
        *inputs: The inputs of a graph with one invoke (as for ``model.trace(*inputs)``).
        invokes: For a graph of several invokes: one sequence of inputs per invoke,
            in order (as for ``tracer.invoke(*inputs)``).
        method: The wrapped module's method to run instead of ``forward`` (``"generate"``).
        **kwargs: Passed to the model call, as ``model.trace``'s keyword arguments.

    Returns:
        The saved values: each ``save`` node's index mapped to its value (the
        original trace's ``proxy.node.index`` finds a value again).

    Raises:
        InvokeError: ``inputs`` and ``invokes`` both or neither given, or their
            number differs from the graph's invokes.
        EnvoyAttributeError: The graph names a module the model does not have.

    Example:
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
    return model.run_graph(graph, *inputs, invokes=invokes, method=method, **kwargs)


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


Graph.extensions.update(to_json=to_json, from_json=from_json)
