"""What a graph run by :func:`~nnsight_core.serialize.run` may reach, and how much it may compute.

A document holds only names from closed tables, but running it still runs
someone else's operations on your model. :class:`GuardedInterleaver` is the
:class:`~nnsight_core.interleaver.Interleaver` that :func:`~nnsight_core.serialize.run`
executes graphs with; it checks every operation against the value it is applied
to, which is known only while the model runs:

* ``getattr`` reads only the attributes the value's type allows
  (:func:`allowed_attributes`): :data:`~nnsight_core.serialize.schema.TENSOR_ATTRIBUTES`
  on a tensor, the declared fields of a model-output object (a dataclass that is a
  mapping, as transformers' ``ModelOutput`` and diffusers' ``BaseOutput`` are, or a named tuple
  such as ``torch.return_types.max``), nothing on anything else;
* ``call_method`` calls only :data:`~nnsight_core.serialize.schema.TENSOR_METHODS`,
  and only on a tensor;
* ``getitem`` and ``setitem`` index only tensors, tuples, lists and mappings;
  ``operator`` combines only tensors, numbers, strings and tuples or lists;
* no operation writes into storage the model's parameters or buffers own: an
  in-place method or function (``zero_``, ``copy_``, ``out=``, ``inplace=True``),
  a ``setitem``, or an assignment of such a tensor as a module value;
* what an edit hands the model (an assigned module or call-site value, a ``skip``
  value, an item stored into a list or dict the model reads) is data (tensors,
  numbers, booleans, None, dtypes, devices, sizes, in tuples, lists and dicts) or a
  part of the value it replaces: an object read at one hook point (a function, a
  module, a config, a string) never reaches another, where the model's code would
  call or use it;
* every operation stays within the run's :class:`Limits`: the size of each
  tensor it creates is predicted before it runs (on the ``meta`` device: no
  memory, no compute) and checked after, and the run's totals are counted.

A refusal raises :class:`~nnsight_core.errors.GraphAccessError` or
:class:`~nnsight_core.errors.GraphLimitError`, naming the node; the model's
hooks are removed as after any error.

Example:
    >>> from nnsight_core.serialize import from_json, run, to_json
    >>> with model.trace(x) as tracer:
    ...     total = model.layer1.output.sum().save()
    >>> graph = from_json(to_json(tracer.graph))
    >>> saved = run(model, graph, x, limits=Limits(max_elements_per_tensor=1_000))
    >>> allowed_attributes(torch.zeros(1)) == TENSOR_ATTRIBUTES
    True

Override points: the op methods of :class:`~nnsight_core.interleaver.Interleaver`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import operator as _operator
from collections.abc import Mapping, MutableMapping
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set

import torch

from ..errors import GraphAccessError, GraphLimitError
from ..graph import Node
from ..interleaver import Batch, Interleaver
from .schema import _FUNCTION_NAMES, FUNCTIONS, TENSOR_ATTRIBUTES, TENSOR_METHODS

__all__ = ["Limits", "GuardedInterleaver", "allowed_attributes"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """The resources one :func:`~nnsight_core.serialize.run` of a graph may use.

    Only what the graph's own nodes compute is counted: the model's forward
    pass, and the module values it hands to the graph, are not. An element is
    one value of a tensor (or one item of a Python list, tuple or string a node
    creates); work is counted in element operations: an operation costs the
    elements it reads and creates, a contraction (``matmul``, ``einsum``,
    ``conv2d``, ``linear``, ...) its multiply-adds, a ``call_module`` about its
    rows times the module's parameters.

    Example:
        >>> limits = Limits(max_elements_per_tensor=2**20, max_work=2**30)
        >>> limits.max_ops
        1048576

    Attributes:
        max_elements_per_tensor: Most elements of one tensor (or sequence) a node creates.
        max_total_elements: Most elements of all the tensors the run's nodes create, added up
            (also those freed again).
        max_work: Most element operations of all the run's nodes, added up.
        max_ops: Most node executions (a node inside ``tracer.iter`` runs once per call).
    """

    max_elements_per_tensor: int = 2**28
    max_total_elements: int = 2**32
    max_work: int = 2**38
    max_ops: int = 2**20

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                raise GraphLimitError(f"Limits.{field.name} must be an integer >= 1, got {value!r}.")


def allowed_attributes(value: Any) -> FrozenSet[str]:
    """The attribute names a loaded graph's ``getattr`` may read on ``value``.

    Args:
        value: Any value a node produced.

    Returns:
        :data:`~nnsight_core.serialize.schema.TENSOR_ATTRIBUTES` for a tensor; the
        fields of a model output (a dataclass that is also a mapping, as transformers'
        ``ModelOutput`` and diffusers' ``BaseOutput`` are) or of a named tuple; else
        nothing. Other dataclasses (transformers' configs are dataclasses) are opaque.

    Example:
        >>> sorted(allowed_attributes(torch.zeros(2).max(dim=0)))
        ['indices', 'values']
        >>> allowed_attributes(torch.nn.Linear(2, 2))
        frozenset()
    """
    if isinstance(value, torch.Tensor):
        return TENSOR_ATTRIBUTES
    if isinstance(value, Mapping) and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return frozenset(field.name for field in dataclasses.fields(value))
    if isinstance(value, tuple):
        fields = getattr(type(value), "_fields", None) or getattr(type(value), "__match_args__", None)
        if fields and all(type(name) is str for name in fields):
            return frozenset(fields)
    return frozenset()


# Types a getitem or setitem may index, and operator operands (beyond tensors).
_INDEXABLE = (torch.Tensor, tuple, list, str, Mapping)
_ASSIGNABLE = (torch.Tensor, list, MutableMapping)
_OPERANDS = (torch.Tensor, bool, int, float, complex, str, tuple, list, type(None))
# In-place dunders (`tensor += x` recorded through __torch_function__).
_INPLACE_DUNDERS = frozenset({
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
    "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__setitem__"})
# Results whose size depends on tensor values: without a size the meta device can compute,
# they are refused rather than run unbounded.
_DATA_SIZED = frozenset({"repeat_interleave", "one_hot", "arange", "linspace", "zeros", "ones", "empty",
                         "full", "rand", "randn", "randint", "normal", "eye", "new_zeros", "new_ones",
                         "new_empty", "new_full", "new_tensor", "expand", "repeat", "tile", "broadcast_to",
                         "interpolate", "pad", "multinomial"})
# Functions that create a tensor from sizes alone: their dry run is told device="meta".
_CREATION = frozenset({"arange", "empty", "eye", "full", "linspace", "normal", "ones", "rand", "randint",
                       "randn", "tensor", "zeros"})
_MATMULS = frozenset({"matmul", "mm", "bmm", "dot", "addmm", "baddbmm", "linear", "__matmul__",
                      "__rmatmul__"})
_CONVOLUTIONS = frozenset({"conv1d", "conv2d"})
# Python ints a node may compute, in bits (`2 ** 10**9` would take memory and time).
_MAX_INT_BITS = 4096
# How deep and how far result structures are searched for tensors.
_MAX_WALK_DEPTH = 4
_MAX_WALK_ITEMS = 4096


class GuardedInterleaver(Interleaver):
    """The Interleaver of :func:`~nnsight_core.serialize.run`: a loaded graph may reach only its values.

    Example:
        >>> from nnsight_core.serialize import from_json, to_json
        >>> with model.trace(x) as tracer:
        ...     total = model.layer1.output.sum().save()
        >>> graph = from_json(to_json(tracer.graph))
        >>> with GuardedInterleaver(graph, net, limits=Limits()) as interleaver:
        ...     out = net(x)
        >>> interleaver.ops                       # the sum (saved)
        1

    Attributes:
        limits: The run's :class:`Limits`.
        ops: Node executions so far.
        elements: Elements of the tensors the nodes created so far.
        work: Element operations so far.

    Override points: the op methods of :class:`~nnsight_core.interleaver.Interleaver`.
    """

    def __init__(self, graph: Any, root: torch.nn.Module, attached: Optional[Dict[str, torch.nn.Module]] = None,
                 batch: Optional[Batch] = None, keep: bool = False, *, limits: Optional[Limits] = None) -> None:
        super().__init__(graph, root, attached, batch, keep)
        self.limits = limits if limits is not None else Limits()
        self.ops = self.elements = self.work = 0
        # The storage of every parameter and buffer: a graph may read it, never write it.
        # (One flat walk over the modules' own tables: `parameters()` and `buffers()` walk the
        # tree twice through nested generators, a millisecond per run on a 30-layer model.)
        self._protected: Set[int] = set()
        stack, seen = [root, *(attached or {}).values()], set()
        while stack:
            owner = stack.pop()
            if id(owner) in seen:
                continue
            seen.add(id(owner))
            stack.extend(owner._modules.values())
            for tensor in (*owner._parameters.values(), *owner._buffers.values()):
                if tensor is not None and (key := _storage(tensor)) is not None:
                    self._protected.add(key)
        self._module_sizes: Dict[str, int] = {}

    # -- reading values -----------------------------------------------------------------

    def getattr(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        allowed = allowed_attributes(args[0])
        if node.target not in allowed:
            what = (f"only {', '.join(sorted(allowed))}" if allowed else "no attributes")
            raise GraphAccessError(
                f"{_label(node)} reads the attribute {node.target!r} of a {_type_name(args[0])}, which a "
                f"loaded graph may not reach: on that type it may read {what}. Tensors allow "
                "nnsight_core.serialize.schema.TENSOR_ATTRIBUTES and model outputs their fields; "
                "index the value instead (e.g. output[0]) or compute it after the run.")
        return super().getattr(node, args, kwargs)

    def getitem(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        self._check_indexable(node, args[0], "index")
        if isinstance(args[0], torch.Tensor) and _advanced(args[1]):
            return self._computed(node, "__getitem__", lambda a, k: a[0][a[1]], args, kwargs)
        return super().getitem(node, args, kwargs)

    # -- computing ---------------------------------------------------------------------

    def operator(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        for value in args:
            if not isinstance(value, _OPERANDS):
                raise GraphAccessError(
                    f"{_label(node)} applies the operator {node.target!r} to a {_type_name(value)}; a loaded "
                    "graph's operators take tensors, numbers, strings, tuples and lists only.")
        self._check_python(node, args)
        function = getattr(_operator, node.target)
        return self._computed(node, node.target, lambda a, k: function(*a), args, kwargs)

    def call_method(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        name = node.target
        if not isinstance(args[0], torch.Tensor) or name not in TENSOR_METHODS:
            problem = (f"{name!r} is not in nnsight_core.serialize.schema.TENSOR_METHODS"
                       if name not in TENSOR_METHODS else "a loaded graph calls methods on tensors only")
            raise GraphAccessError(f"{_label(node)} calls the method {name!r} on a {_type_name(args[0])}: "
                                   f"{problem}. Call it after the run.")
        self._check_writes(node, name, None, args, kwargs)
        return self._computed(node, name, lambda a, k: getattr(a[0], name)(*a[1:], **k), args, kwargs)

    def call_function(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        function = node.target
        try:
            qualified = _FUNCTION_NAMES.get(function)
        except TypeError:  # unhashable: not in the table either
            qualified = None
        if qualified is None or FUNCTIONS.get(qualified) is not function:
            raise GraphAccessError(
                f"{_label(node)} calls {getattr(function, '__qualname__', type(function).__name__)}, which "
                "is not in nnsight_core.serialize.schema.FUNCTIONS; run() calls listed functions only.")
        name = qualified.rsplit(".", 1)[1]
        self._check_writes(node, name, function, args, kwargs)
        return self._computed(node, name, lambda a, k: function(*a, **k), args, kwargs)

    def call_module(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        rows = sum(_rows(t) for t in _tensors((args, kwargs)))
        self._spend(node, rows * self._module_size(node.target), "its module call")
        value = super().call_module(node, args, kwargs)
        self._account(node, value, (args, kwargs))
        return value

    def save(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        return super().save(node, args, kwargs)

    def apply(self, node: Node, args: tuple, kwargs: dict) -> Any:
        raise GraphAccessError(f"{_label(node)} calls a Python function (tracer.apply); run() executes "
                               "only the serialisable vocabulary (nnsight_core.serialize.SERIALISABLE_OPS).")

    # -- writing -----------------------------------------------------------------------

    def setitem(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._count(node)
        self._check_indexable(node, args[0], "assign into", _ASSIGNABLE)
        self._check_protected(node, list(_tensors(args[0])), "assigns into")
        if not isinstance(args[0], torch.Tensor):  # a list or mapping the model will read again
            self._check_foreign(node, args[2], args[0], "stores")
        if isinstance(args[0], torch.Tensor):
            self._spend(node, args[0].numel() + sum(t.numel() for t in _tensors(args[2])), "the assignment")
        return super().setitem(node, args, kwargs)

    def set_output(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._check_assigned(node, args)
        return super().set_output(node, args, kwargs)

    def set_inputs(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._check_assigned(node, args)
        return super().set_inputs(node, args, kwargs)

    def set_input(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._check_assigned(node, args)
        return super().set_input(node, args, kwargs)

    def skip(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._check_assigned(node, args)
        return super().skip(node, args, kwargs)

    # -- checks ------------------------------------------------------------------------

    def _count(self, node: Node) -> None:
        self.ops += 1
        if self.ops > self.limits.max_ops:
            raise GraphLimitError(f"{_label(node)} would be node execution {self.ops} of this run, more than "
                                  f"Limits.max_ops = {self.limits.max_ops}; split the work into several runs "
                                  "or raise the limit (run(..., limits=Limits(max_ops=...))).")

    def _check_indexable(self, node: Node, value: Any, verb: str, kinds: tuple = ()) -> None:
        kinds = kinds or _INDEXABLE
        if not isinstance(value, kinds):
            allowed = ", ".join(_type_name(k) if k is torch.Tensor else k.__name__ for k in kinds)
            raise GraphAccessError(
                f"{_label(node)} tries to {verb} a {_type_name(value)}; a loaded graph may {verb} only "
                f"values of these types: {allowed} (a model output is a Mapping).")

    def _check_writes(self, node: Node, name: str, function: Optional[Callable[..., Any]], args: tuple,
                      kwargs: dict) -> None:
        """Refuse an in-place call whose target shares storage with the model's weights."""
        written: List[torch.Tensor] = []
        if (name.endswith("_") and not name.startswith("__")) or name in _INPLACE_DUNDERS:
            written.extend(_tensors(args[:1]))
        if "out" in kwargs:
            written.extend(_tensors(kwargs["out"]))
        if function is not None and _inplace(function, args, kwargs):
            written.extend(_tensors(args[:1]))
        self._check_protected(node, written, "writes in place into")

    def _check_assigned(self, node: Node, args: tuple) -> None:
        """An assigned module value must not hand the model its own weights to edit (other than
        those the module received anyway), nor objects the hook point did not hand out."""
        original = {id(t) for t in _tensors(args[0])}
        self._check_protected(node, [t for t in _tensors(args[1]) if id(t) not in original], "assigns")
        self._check_foreign(node, args[1], args[0], "assigns")

    def _check_foreign(self, node: Node, value: Any, original: Any, verb: str) -> None:
        """What a graph hands the model is data, or a part of the value it replaces.

        The model's code uses what it is given: a function where it calls one, an object whose
        methods it calls. So an edit may bring in tensors, numbers, booleans, None, dtypes,
        devices and sizes (in tuples, lists and dicts, or model outputs); anything else (a
        string, a function, a module, a config) must be a part of the value it replaces (a
        cache object passed through): an object read at one hook point never reaches another.
        """
        foreign = _foreign(value, original)
        if foreign is not None:
            raise GraphAccessError(
                f"{_label(node)} {verb} a {_type_name(foreign)} that this hook point did not hand out; a "
                "loaded graph may give the model tensors, numbers, booleans, None, dtypes, devices and "
                "sizes (in tuples, lists, dicts), and other objects only where they were already (pass "
                "the value it replaces through). Edit tensors instead.")

    def _check_protected(self, node: Node, tensors: List[torch.Tensor], verb: str) -> None:
        for tensor in tensors:
            if _storage(tensor) in self._protected:
                raise GraphAccessError(
                    f"{_label(node)} {verb} a tensor of shape {tuple(tensor.shape)} that shares storage "
                    "with a parameter or buffer of the model; a loaded graph may read the model's "
                    "weights but never change them. Clone the value first (.clone()).")

    def _check_python(self, node: Node, args: tuple) -> None:
        """Bound what Python operators make of ints and sequences before they run."""
        name = node.target
        if len(args) != 2:
            return
        a, b = args
        if type(a) is int and type(b) is int and name in ("pow", "lshift", "mul"):
            bits = {"pow": a.bit_length() * max(b, 0), "lshift": a.bit_length() + max(b, 0),
                    "mul": a.bit_length() + b.bit_length()}[name]
            if bits > _MAX_INT_BITS:
                raise GraphLimitError(f"{_label(node)} would compute an integer of about {bits} bits, more "
                                      f"than the {_MAX_INT_BITS} bits a loaded graph's integers may have.")
            return
        length = None
        if name == "mul" and isinstance(a, (str, tuple, list)) and type(b) is int:
            length = len(a) * max(b, 0)
        elif name == "mul" and isinstance(b, (str, tuple, list)) and type(a) is int:
            length = len(b) * max(a, 0)
        elif name == "add" and isinstance(a, (str, tuple, list)) and isinstance(b, (str, tuple, list)):
            length = len(a) + len(b)
        if length is not None:
            self._check_size(node, length, f"a sequence of {length} items")
            self._spend(node, length, "building that sequence")

    # -- limits ------------------------------------------------------------------------

    def _computed(self, node: Node, name: str, compute: Callable[[tuple, dict], Any], args: tuple,
                  kwargs: dict) -> Any:
        """Run ``compute(args, kwargs)`` within the limits: its size and work predicted on the meta
        device before it runs, what it created counted after."""
        inputs = list(_tensors((args, kwargs)))
        read = sum(t.numel() for t in inputs)
        if name == "tolist":  # one Python object per element
            self._check_size(node, read, f"a list of {read} Python numbers")
            self._account_elements(node, read)
        if inputs or name in _CREATION:
            predicted = _predict(compute, name, args, kwargs)
            if predicted is None:
                if name in _DATA_SIZED:
                    raise GraphLimitError(
                        f"{_label(node)} makes a result whose size depends on tensor values, so it "
                        "cannot be bounded before it runs; give its sizes as numbers (e.g. num_classes= "
                        "for one_hot, output_size= for repeat_interleave).")
                self._spend(node, read, "reading its arguments")
            else:
                sizes, work = predicted
                for size in sizes:
                    self._check_size(node, size, f"a tensor of {size} elements")
                if self.elements + sum(sizes) > self.limits.max_total_elements:
                    raise self._total_error(node, sum(sizes))
                self._spend(node, read + sum(sizes) + work, "computing it")
        value = compute(args, kwargs)
        self._account(node, value, (args, kwargs))
        return value

    def _account(self, node: Node, value: Any, inputs: Any) -> None:
        """Count (and bound) what ``value`` holds that its inputs did not: new tensors, new sequences."""
        known = {key for t in _tensors(inputs) if (key := _storage(t)) is not None}
        created = 0
        for tensor in _tensors(value):
            key = _storage(tensor)
            if key is None or key not in known:
                known.add(key)
                self._check_size(node, tensor.numel(), f"a tensor of shape {tuple(tensor.shape)}")
                created += tensor.numel()
        if isinstance(value, (str, tuple, list)) and not any(value is v for v in _shallow(inputs)):
            created += len(value)
        self._account_elements(node, created)

    def _account_elements(self, node: Node, count: int) -> None:
        if self.elements + count > self.limits.max_total_elements:
            raise self._total_error(node, count)
        self.elements += count

    def _total_error(self, node: Node, count: int) -> GraphLimitError:
        return GraphLimitError(
            f"{_label(node)} would create {count} more elements after {self.elements} this run, more than "
            f"Limits.max_total_elements = {self.limits.max_total_elements}; save less, or raise the limit "
            "(run(..., limits=Limits(max_total_elements=...))).")

    def _check_size(self, node: Node, size: int, what: str) -> None:
        if size > self.limits.max_elements_per_tensor:
            raise GraphLimitError(
                f"{_label(node)} would create {what}, more than Limits.max_elements_per_tensor = "
                f"{self.limits.max_elements_per_tensor}; a loaded graph refuses it before allocating. "
                "Work on smaller pieces, or raise the limit (run(..., limits=Limits(...))).")

    def _spend(self, node: Node, work: int, what: str) -> None:
        if self.work + work > self.limits.max_work:
            raise GraphLimitError(
                f"{_label(node)} would cost about {work} element operations ({what}) after {self.work} this "
                f"run, more than Limits.max_work = {self.limits.max_work}; refused before it runs. Use "
                "smaller tensors, or raise the limit (run(..., limits=Limits(max_work=...))).")
        self.work += work

    def _module_size(self, path: str) -> int:
        size = self._module_sizes.get(path)
        if size is None:
            size = self._module_sizes[path] = max(1, sum(p.numel() for p in self.module(path).parameters()))
        return size


# -- helpers -----------------------------------------------------------------------------


def _label(node: Node) -> str:
    return node.describe()  # "node %3 call_method[sum] of model.layer1.output (call 0, invoke 0)"


def _type_name(value: Any) -> str:
    kind = value if isinstance(value, type) else type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _storage(tensor: torch.Tensor) -> Optional[int]:
    """An id of the memory ``tensor`` views: equal for views of one storage (also on meta)."""
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, TypeError):  # sparse and other storage-less tensors
        return None


def _tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors inside ``value`` (tuples, lists, mappings, dataclass fields), searched
    to a bounded depth and breadth."""
    if isinstance(value, torch.Tensor):
        yield value
        return
    if depth >= _MAX_WALK_DEPTH:
        return
    if isinstance(value, (tuple, list)):
        items = value
    elif isinstance(value, Mapping):
        items = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    elif isinstance(value, slice):
        items = (value.start, value.stop, value.step)
    else:
        return
    for item in items[:_MAX_WALK_ITEMS]:
        yield from _tensors(item, depth + 1)


# Leaves an edit may bring in; anything else must be a part of the value it replaces.
_DATA = (bool, int, float, complex, type(None), torch.dtype, torch.device, torch.Size, slice, type(Ellipsis))


def _parts(value: Any, ids: Set[int], strings: Set[str], depth: int = 0) -> None:
    """Collect the ids of ``value`` and everything inside it (and its strings), bounded as
    :func:`_tensors` is."""
    ids.add(id(value))
    if type(value) is str:
        strings.add(value)
    if depth >= _MAX_WALK_DEPTH or isinstance(value, torch.Tensor):
        return
    if isinstance(value, (tuple, list)):
        items: Any = value
    elif isinstance(value, Mapping):
        items = [*value.keys(), *value.values()]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    else:
        return
    for item in items[:_MAX_WALK_ITEMS]:
        _parts(item, ids, strings, depth + 1)


def _foreign(value: Any, original: Any) -> Any:
    """The first part of ``value`` that is neither data nor a part of ``original``, or None.

    Containers the graph builds (tuples, lists, dicts) and model outputs (dataclasses that are
    mappings) are searched; every other object must be one ``original`` holds.
    """
    ids: Set[int] = set()
    strings: Set[str] = set()
    _parts(original, ids, strings)
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if id(item) in ids or isinstance(item, torch.Tensor) or type(item) in _DATA:
            continue
        kind = type(item)
        if kind is str:
            if item in strings:
                continue
            return item
        if depth >= _MAX_WALK_DEPTH:
            return item
        if kind is tuple or kind is list or (isinstance(item, tuple) and kind.__module__ == "torch.return_types"):
            stack.extend((v, depth + 1) for v in item)
        elif kind is dict or (isinstance(item, dict) and dataclasses.is_dataclass(item)):
            stack.extend((v, depth + 1) for pair in item.items() for v in pair)
        else:
            return item
    return None


def _any_tensor(value: Any) -> bool:
    return next(_tensors(value), None) is not None


def _shallow(value: Any) -> Iterator[Any]:
    """``value`` and the items of the (args, kwargs) structure it is, two levels deep."""
    yield value
    for part in (value if isinstance(value, (tuple, list)) else ()):
        yield part
        yield from (part.values() if isinstance(part, dict) else part if isinstance(part, (tuple, list)) else ())


def _rows(tensor: torch.Tensor) -> int:
    """How many vectors a module call processes for ``tensor``: its elements over its last
    dimension for float inputs (hidden states), every element for integer ones (token ids)."""
    if tensor.is_floating_point() and tensor.dim():
        return tensor.numel() // max(tensor.shape[-1], 1)
    return tensor.numel()


def _advanced(index: Any) -> bool:
    """Whether an index makes a copy (tensors or lists inside it) rather than a view."""
    if isinstance(index, (torch.Tensor, list)):
        return True
    return isinstance(index, tuple) and any(isinstance(i, (torch.Tensor, list)) for i in index)


_SIGNATURES: Dict[Any, Optional[inspect.Signature]] = {}


def _inplace(function: Callable[..., Any], args: tuple, kwargs: dict) -> bool:
    """Whether a call passes ``inplace=True`` (also positionally, as ``F.relu(x, True)``)."""
    if kwargs.get("inplace"):
        return True
    if function not in _SIGNATURES:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # builtins without a signature take no `inplace`
            signature = None
        _SIGNATURES[function] = signature if signature and "inplace" in signature.parameters else None
    signature = _SIGNATURES[function]
    if signature is None:
        return False
    try:
        return bool(signature.bind_partial(*args, **kwargs).arguments.get("inplace"))
    except TypeError:  # the call itself will fail with the real error
        return False


def _meta(value: Any, scalars: bool) -> Any:
    """``value`` with every tensor replaced by an empty one of its shape, dtype and strides on
    the meta device (with ``scalars``: one-element tensors by their Python number)."""
    if isinstance(value, torch.Tensor):
        if scalars and value.numel() == 1 and value.dim() == 0:
            return value.item()
        if value.layout is not torch.strided:
            raise TypeError("only strided tensors have a meta twin")
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return type(value)(_meta(v, scalars) for v in value)
    if type(value) is dict:
        return {k: _meta(v, scalars) for k, v in value.items()}
    if type(value) is slice:
        return slice(_meta(value.start, scalars), _meta(value.stop, scalars), _meta(value.step, scalars))
    return value


def _predict(compute: Callable[[tuple, dict], Any], name: str, args: tuple, kwargs: dict):
    """Run ``compute`` on meta twins of its arguments: the element counts of the tensors it
    would create, and the multiply-adds of a contraction; None when the meta device cannot
    tell (the size depends on values, or the operation needs data)."""
    for scalars in (False, True):
        try:
            meta_args, meta_kwargs = _meta(args, scalars), _meta(kwargs, scalars)
            if "device" in meta_kwargs or (name in _CREATION and not _any_tensor((args, kwargs))):
                meta_kwargs["device"] = "meta"  # a factory's dry run never allocates for real
            with torch.no_grad():
                result = compute(meta_args, meta_kwargs)
        except Exception:  # noqa: BLE001 - any failure means: not predictable on meta
            continue
        inputs = list(_tensors((meta_args, meta_kwargs)))
        known = {_storage(t) for t in inputs}
        sizes = []
        for tensor in _tensors(result):
            if tensor.device.type != "meta":  # only a meta result tells a size without memory
                return None
            if _storage(tensor) not in known:
                sizes.append(tensor.numel())
        return sizes, _contraction(name, inputs, list(_tensors(result)), meta_args)
    return None


def _contraction(name: str, inputs: List[torch.Tensor], outputs: List[torch.Tensor], args: Any) -> int:
    """Multiply-adds of a contraction beyond its result's elements (0 for other operations)."""
    out = sum(t.numel() for t in outputs)
    if name in _MATMULS:
        return out * max((t.shape[-1] for t in inputs if t.dim()), default=1)
    if name in _CONVOLUTIONS and len(inputs) >= 2:
        return out * math.prod(inputs[1].shape[1:])
    if name == "scaled_dot_product_attention" and len(inputs) >= 3:
        query, key, value = inputs[:3]
        return query.numel() * key.shape[-2] + out * value.shape[-2]
    if name == "einsum" and args and type(args[0]) is str:
        return _einsum_work(args[0], inputs, out)
    return 0


def _einsum_work(equation: str, operands: List[torch.Tensor], out: int) -> int:
    """The loop count of an einsum: the product of the sizes of its distinct indices."""
    sizes: Dict[str, int] = {}
    ellipsis = 1
    for term, tensor in zip(equation.split("->")[0].split(","), operands):
        term = term.strip()
        if "..." in term:
            before, after = term.split("...")
            covered = tensor.dim() - len(before) - len(after)
            ellipsis = max(ellipsis, math.prod(tensor.shape[len(before):len(before) + max(covered, 0)]))
            dims = list(zip(before, tensor.shape)) + list(zip(after, tensor.shape[tensor.dim() - len(after):]))
        else:
            dims = list(zip(term, tensor.shape))
        for letter, size in dims:
            sizes[letter] = max(sizes.get(letter, 1), size)
    return max(out, ellipsis * math.prod(sizes.values()))
