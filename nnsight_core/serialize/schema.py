"""The document format of :mod:`nnsight_core.serialize`: its schema, limits and vocabulary tables.

A document holds the closed operation vocabulary (:data:`~nnsight_core.graph.OPS`,
all of it but ``apply``, which runs a Python function: :data:`SERIALISABLE_OPS`)
and plain values. Every callable a document can name is looked up in a fixed
table built when this module is imported: the proxy's Python operators
(:data:`OPERATORS`), tensor methods (:data:`TENSOR_METHODS`) and functions of
``torch``, ``torch.Tensor`` and ``torch.nn.functional`` (:data:`FUNCTIONS`).
The writer (:mod:`~nnsight_core.serialize.encode`) and the reader
(:mod:`~nnsight_core.serialize.decode`) share the checks defined here.

The document (version 2)::

    {"format": "nnsight_core.graph", "version": 2,
     "rows": [[0, 1], [1, 3]],            # each invoke's (start, stop) batch rows
     "iterations": [[1, null, 1]],        # [start, stop, step] of tracer.iter / .all() blocks
     "requirements": [[1, {"tokens": 7}]],  # optional: what an invoke's inputs must be
     "tensors": [{"dtype": "float32", "shape": [2], "data": [0.5, "nan"]}],
     "nodes": [                           # in recording order; "%i" is nodes[i]
        {"op": "output", "target": ["layer1", 0], "invoke": 0, "saved": true},
        {"op": "operator", "target": "mul", "args": [{"node": 0}, 2], "invoke": 0},
        {"op": "call_function", "target": "torch.cat",
         "args": [{"list": [{"node": 1}, {"tensor": 0}]}], "kwargs": {"dim": -1}},
        {"op": "save", "args": [{"node": 2}], "invoke": 0}]}

A node has ``op`` and, where not empty, ``target``, ``args`` (a list),
``kwargs`` (an object), ``invoke`` (an invoke index, or absent) and ``saved``
(``true`` when ``.save()`` kept the node's value, which a run then returns; a
``save`` node, the conditional save of its argument, is saved without it). Targets:
``[module path, call]`` for ``output``, ``inputs``, ``set_output``,
``set_inputs``, ``set_input`` and ``skip`` (the path of a call site inside a
forward, ``"<module path>.source.<call site>"``, counts as a module path), where the call is an index or
``{"iteration": k}`` (entry ``k`` of ``iterations``: the node is a template
run at each call of that range); a name of :data:`OPERATORS` for
``operator``; an attribute name for ``getattr``; a name of
:data:`TENSOR_METHODS` for ``call_method``; a key of :data:`FUNCTIONS`
(``"torch.sum"``, ``"torch.Tensor.add"``, ``"torch.nn.functional.softmax"``)
for ``call_function``; a module path for ``call_module``; none otherwise
(``getitem``, ``setitem``, ``save``, ``grad``, ``set_grad``, ``backward``,
``stop``). A graph with a ``tracer.cond`` block cannot be written either: its
condition is an ``apply`` of ``bool``. The first argument of ``getitem``,
``setitem``, ``getattr``, ``call_method``, ``save``, ``grad`` and ``backward`` is
the node it acts on; ``getitem``, ``getattr`` and ``call_method`` may act on a
tensor constant ``{"tensor": k}`` instead (in a session, a value of an earlier
trace is a constant of the later one: ``hidden[:, -1]``, ``hidden.sum()``).

``requirements`` (optional) lists, per invoke, facts about its inputs that the
recorded values depend on, as ``[invoke, {name: scalar}]`` (the graph's
``requirements``): ``LanguageModel``'s ``.t[0]`` is stored as a position counted
from the end of the prompt it was recorded on, so the graph records
``{"tokens": n}`` and running it on a prompt of another length raises an
``InputError`` instead of reading another token.

A value is ``null``, ``true``/``false``, a finite number or a string, or an
object with exactly one of these keys: ``{"node": i}`` (an earlier node),
``{"tuple": [...]}``, ``{"list": [...]}``, ``{"dict": [[key, value], ...]}``
(keys are plain scalars), ``{"slice": [start, stop, step]}``,
``{"ellipsis": null}``, ``{"float": "nan" | "inf" | "-inf"}``,
``{"dtype": "float32"}`` (a name of :data:`DTYPES`), ``{"device": "cuda:0"}``,
``{"size": [2, 3]}`` (a ``torch.Size``) or ``{"tensor": k}`` (entry ``k`` of
``tensors``). A tensor entry holds its dtype, its shape and its values
flattened in row-major order (non-finite floats as the strings ``"nan"``,
``"inf"``, ``"-inf"``), or, in place of its values, ``"external": i``: tensor ``i``
of a list given beside the document (``to_dict(graph, tensors=[])`` /
``from_dict(document, tensors=...)``; binary data that travels next to the JSON, as
``nnsight-remote`` sends it in safetensors), checked against the declared dtype and
shape. A tensor object used by several nodes is stored once
and is one shared object again after loading, so in-place edits of it keep
their meaning. Tensors are stored by value: a ``Parameter`` becomes a plain
tensor, and a tensor on another device is loaded on the CPU (or on
``device=``).

What a document may not do is bounded by :data:`MAX_DOCUMENT_CHARS`,
:data:`MAX_NODES`, :data:`MAX_DEPTH`, :data:`MAX_TENSOR_DIMS` and
:data:`MAX_TENSOR_ELEMENTS`; :func:`~nnsight_core.serialize.to_json` refuses a
graph that :func:`~nnsight_core.serialize.from_json` would refuse. A node's
source location is not stored.

What a loaded graph may reach is decided when it runs, by the value each node
gets (:mod:`nnsight_core.serialize.guard`, used by
:func:`~nnsight_core.serialize.run`): a ``getattr`` node reads
:data:`TENSOR_ATTRIBUTES` of a tensor, the declared fields of a model output (a
dataclass such as ``ModelOutput`` / ``BaseOutput``, or a named tuple such as
``torch.return_types.max``) and nothing of any other object; a ``call_method``
node calls a name of :data:`TENSOR_METHODS` on a tensor only; ``getitem`` /
``setitem`` index tensors, tuples, lists and mappings; ``operator`` takes
tensors, numbers, strings, tuples and lists. No node writes into storage of the
model's parameters or buffers, and every node stays within the run's
:class:`~nnsight_core.serialize.guard.Limits`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..graph import MODULE_VALUE_OPS, display_path
from ..proxy import OPERATORS as _PROXY_OPERATORS

__all__ = [
    "FORMAT", "VERSION", "MAX_DOCUMENT_CHARS", "MAX_NODES", "MAX_DEPTH", "MAX_TENSOR_DIMS",
    "MAX_TENSOR_ELEMENTS", "SERIALISABLE_OPS", "OPERATORS", "TENSOR_METHODS", "TENSOR_ATTRIBUTES",
    "FUNCTIONS", "DTYPES",
]

#: The ``format`` field of every document.
FORMAT = "nnsight_core.graph"
#: The schema version this module writes and reads.
VERSION = 2
#: Longest document text :func:`~nnsight_core.serialize.from_json` parses, in characters.
MAX_DOCUMENT_CHARS = 64 * 2**20
#: Most nodes a document may hold.
MAX_NODES = 65_536
#: Deepest nesting of values (tuples in lists in dicts ...) inside one argument.
MAX_DEPTH = 32
#: Most dimensions of a tensor constant.
MAX_TENSOR_DIMS = 16
#: Most elements of one tensor constant (and largest size of any of its dimensions).
MAX_TENSOR_ELEMENTS = 2**20

#: Python operators a node may name, with their number of arguments: the proxy's operator table.
OPERATORS: Dict[str, int] = _PROXY_OPERATORS

#: Tensor methods a ``call_method`` node may name (run only on a tensor). Excluded on purpose:
#: methods that take a callable (``apply_``, ``map_``, ``register_hook``), ``type``, which
#: imports a class named by a string, and methods that hand out the tensor's memory or process
#: state as other objects (``numpy``, ``storage``, ``untyped_storage``, ``data_ptr``,
#: ``__reduce__``): a loaded graph holds tensors and plain values only.
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
    new_full new_ones new_tensor new_zeros nonzero norm normal_ numel outer permute pow pow_
    prod reciprocal relu relu_ remainder repeat repeat_interleave requires_grad_ reshape reshape_as
    retain_grad roll round rsqrt scatter scatter_ scatter_add scatter_add_ select sigmoid sigmoid_
    sign sin sinh size softmax sort split sqrt sqrt_ square squeeze squeeze_ std sub sub_ sum
    swapaxes t t_ tan tanh tanh_ tile to tolist topk transpose transpose_ tril triu true_divide
    trunc type_as unbind unflatten uniform_ unique unsqueeze unsqueeze_ var view view_as where zero_
""".split() if hasattr(torch.Tensor, name))

#: Tensor attributes a ``getattr`` node may read on a tensor when the graph runs under
#: :func:`~nnsight_core.serialize.run`; a model output (a dataclass or named tuple) allows its
#: fields, any other value nothing (see :func:`~nnsight_core.serialize.guard.allowed_attributes`).
#: Never reachable: ``data``, ``grad_fn``, ``_base`` and every other attribute that leads from a
#: value to autograd's graph, the model's parameters or other objects.
TENSOR_ATTRIBUTES = frozenset({
    "shape", "dtype", "device", "ndim", "T", "mT", "H", "mH", "real", "imag", "grad", "is_cuda",
    "requires_grad",
})

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
_NODE_KEYS = frozenset({"op", "target", "args", "kwargs", "invoke", "saved"})
_DOCUMENT_KEYS = frozenset({"format", "version", "rows", "iterations", "requirements", "tensors", "nodes"})
_TENSOR_KEYS = frozenset({"dtype", "shape", "data"})
_EXTERNAL_TENSOR_KEYS = frozenset({"dtype", "shape", "external"})
#: The ops a document can hold: all of OPS but ``apply``, whose target is a Python function
#: given by the user. An op added to OPS is refused until it is added here (and tested).
SERIALISABLE_OPS = frozenset({
    "output", "inputs", "set_output", "set_inputs", "set_input", "operator", "getitem", "setitem",
    "getattr", "call_method", "call_function", "call_module", "save", "grad", "set_grad", "backward",
    "stop", "skip",
})
# What the first argument of an edit must be: a node of these ops (for module values: of the
# same module value, call and invoke).
_FAMILY = {"set_output": frozenset({"output", "set_output"}),
           "set_inputs": frozenset({"inputs", "set_inputs", "set_input"}),
           "set_input": frozenset({"inputs", "set_inputs", "set_input"}),
           "skip": frozenset({"inputs", "set_inputs", "set_input"}),
           "set_grad": frozenset({"grad", "set_grad"})}
# Ops whose first argument is always the node they act on.
_ON_NODE = frozenset({"getitem", "setitem", "getattr", "call_method", "save", "grad", "backward"})
# Of those, the ops that may also act on a tensor constant (a value of an earlier trace of a session,
# which the later trace's graph holds as data): indexing it, reading its allowed attributes and
# calling tensor methods on it, under the same guard as any node's value.
_ON_TENSOR = frozenset({"getitem", "getattr", "call_method"})
_NO_TARGET = frozenset({"getitem", "setitem", "save", "grad", "set_grad", "backward", "stop"})
_ARITY = {"output": 0, "inputs": 0, "set_output": 2, "set_inputs": 2, "set_input": 2, "skip": 2,
          "getitem": 2, "setitem": 3, "getattr": 1, "save": 1, "grad": 1, "set_grad": 2}

Document = Dict[str, Any]


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
                       facts: Callable[[Any], Optional[Tuple[str, Any, Optional[int]]]],
                       is_tensor: Callable[[Any], bool]) -> Optional[Tuple[str, str]]:
    """What is wrong with a node's arguments, as (field suffix, problem), or None.

    ``facts(arg)`` is ``(op, target, invoke)`` of the node an argument refers to,
    or None when it is not a node reference; ``is_tensor(arg)`` says whether it is a
    tensor constant. Recorded graphs always pass; the checks keep a document from
    making a node its op cannot run on (wrong arity, an edit of another module value).
    """
    arity = OPERATORS[target] if op == "operator" else _ARITY.get(op)
    if arity is not None and (len(args) != arity or kwargs):
        return (".args", (f"{op} takes exactly {arity} argument(s) and no keywords, got {len(args)} "
                          f"and {len(kwargs)}"))
    first = facts(args[0]) if args else None
    if op in _ON_NODE and first is None:
        if op in _ON_TENSOR:
            if args and is_tensor(args[0]):
                return None
            return (".args[0]", f'{op} acts on a node or a tensor constant: expected {{"node": i}} or '
                                '{"tensor": k}')
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


def _requirement_problem(entry: Any, invokes: int) -> Optional[str]:
    """What is wrong with a requirement's ``[invoke, {name: value}]``, or None."""
    if not (type(entry) is list and len(entry) == 2):
        return f"expected [invoke, {{name: value}}], got {_short(entry)}"
    invoke, facts = entry
    if not (_is_int(invoke) and 0 <= invoke < invokes):
        return f"expected an invoke index from 0 to {invokes - 1}, got {_short(invoke)}"
    if not (type(facts) is dict and facts and all(type(k) is str and _IDENTIFIER.fullmatch(k) and _scalar(v)
                                                  for k, v in facts.items())):
        return f"expected an object of names to scalar values, got {_short(facts)}"
    return None


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

