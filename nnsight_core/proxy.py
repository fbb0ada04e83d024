"""Proxy: the stand-in for a value that exists only while the model runs.

Inside a trace every operation on a proxy (operators, indexing, attribute
access, method calls, ``torch`` functions) records a node in the Runner's
graph and returns a new proxy. After the trace, a proxy whose value was saved
behaves like that value: it prints as it, and operations on it compute on it.

A proxy is thin, as torch.fx's is: it knows its node and the trace that
recorded it, and hands every decision to that trace (which node to record under
which condition, the shape the scan computed, the value the execution left).
The trace is the :class:`~nnsight_core.tracer.Runner`; this module only relies
on the attributes and methods of it that :class:`Proxy` documents, so it sits
below the tracer in the core's layers.
"""

from __future__ import annotations

import operator
import sys
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Optional, Sequence

import torch

from . import _state
from ._tree import map_structure
from .errors import (GradientError, ProxyCallError, ProxyControlFlowError, ProxyScopeError, TraceStateError,
                     ValueNotSetError)
from .graph import EMPTY, INDEX_TYPES, SCALAR_TYPES, Graph, Node, nodes_in

if TYPE_CHECKING:
    from .tracer import Runner

__all__ = ["Proxy", "InterventionProxy", "TraceState", "apply_op", "OPERATORS"]

_NUMBER_INSTEAD = ("`proxy.item()` (recorded: a proxy of the number) or `proxy.float()` / `proxy.long()` "
                   "(a proxy of the tensor)")
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and_", "or_",
           "xor", "lshift", "rshift")
_COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
_UNARY = ("neg", "pos", "abs", "invert")
#: The Python operators a proxy records (names in the ``operator`` module), with their number
#: of arguments: the one table of the ``operator`` op, read by serialization too.
OPERATORS = {**{name: 2 for name in _BINARY + _COMPARISONS}, **{name: 1 for name in _UNARY}}


def apply_op(op: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """Compute one value-level operation of the vocabulary on concrete values."""
    if op == "operator":
        return getattr(operator, target)(*args)
    if op == "getitem":
        return args[0][args[1]]
    if op == "setitem":
        args[0][args[1]] = args[2]
        return None
    if op == "getattr":
        return getattr(args[0], target)
    if op == "call_method":
        return getattr(args[0], target)(*args[1:], **kwargs)
    if op == "call_function":
        return target(*args, **kwargs)
    if op == "save":
        return args[0]
    if op == "apply":
        return target(*args, **kwargs)
    raise ValueError(f"operation {op!r} needs a running model; it cannot be computed on its own")


class TraceState:
    """What the proxies of one trace share: the Runner while it records, then what its execution left.

    Proxies keep this small object rather than the Runner, so a saved value
    outlives its trace without keeping the trace's inputs or output alive.

    Attributes:
        runner: The :class:`~nnsight_core.tracer.Runner` while its block records, then None.
        graph: The graph the Runner records into.
        invoke: While recording, the index of the open invoke, or None.
        conds: While recording, the condition nodes of the open ``tracer.cond`` blocks
            (innermost last).
        values: After the execution, node index to each saved value (inside a
            ``model.session()``, to every value until the session ends).
        skipped: After the execution, indices of the nodes a false ``tracer.cond`` skipped.
        ran: After the execution, node index to whether the node ran.
    """

    __slots__ = ("runner", "values", "skipped", "ran", "graph", "invoke", "conds")

    def __init__(self, runner: Runner, graph: Optional[Graph] = None,
                 conds: Optional[List[Node]] = None) -> None:
        self.runner: Optional[Runner] = runner
        self.values: Dict[int, Any] = {}
        self.skipped: FrozenSet[int] = frozenset()
        self.ran: Sequence[bool] = ()
        # While recording, what proxies record under, kept here so recording a node reads
        # attributes instead of calling the Runner: its graph, the open invoke's index and
        # the condition nodes of the open tracer.cond blocks (the Runner's own list).
        self.graph = graph
        self.invoke: Optional[int] = None
        self.conds: List[Node] = [] if conds is None else conds


class Proxy:
    """A value of the model's forward pass, recorded as a graph node.

    Example:
        >>> with model.trace(x):
        ...     h = (model.layer1.output * 2).save()
        >>> h.value.shape
        torch.Size([1, 10])

    Override points for adapters: subclass it (``InterventionProxy`` is the
    default ``proxy_class`` of a model wrapper) to add helpers such as token
    indexing; every operation builds new proxies of the same class.

    Args:
        node: The node the proxy stands for.
        state: The :class:`TraceState` of the trace that recorded it. While its
            Runner records, the proxy calls the Runner's ``condition()`` (the open
            ``tracer.cond`` block's node) and ``metadata(proxy, name)`` (``.shape``
            and friends); afterwards it reads the values the execution left.

    Attributes:
        node: The node the proxy stands for.
    """

    __slots__ = ("node", "_trace")

    def __init__(self, node: Node, state: TraceState) -> None:
        self.node = node
        self._trace = state

    #: Whether the class keeps this ``__init__`` (worked out per class): the recording hot path
    #: (``envoy.output``, ``.save()``) then fills the two slots itself, without a Python call.
    _plain_init = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plain_init = cls.__init__ is Proxy.__init__

    # -- recording ---------------------------------------------------------

    def _record(self, op: str, target: Any, args: tuple, kwargs: Optional[dict] = None) -> Any:
        return _record(type(self), op, target, args, kwargs or {})

    def save(self) -> Proxy:
        """Keep this value after the trace; returns the proxy to read it from: this proxy (its
        node is marked saved), or inside a ``tracer.cond`` block a new one, set only when the
        condition holds.

        Raises:
            TraceStateError: Outside a trace.
        """
        node, state = self.node, self._trace
        runner, runners = state.runner, _state.local.runners
        if runner is None or not runners or runners[-1] is not runner:
            raise TraceStateError(
                f".save() was called on {node.describe()} outside the trace that recorded it; "
                "call .save() inside the `with model.trace(...)` block."
            )
        conds = state.conds
        saving = state.graph.save(node, state.invoke, conds[-1] if conds else None)
        if saving is node:  # marked saved: this proxy reads the kept value
            return self
        cls = type(self)
        if not cls._plain_init:
            return cls(saving, state)
        proxy = new_proxy(cls)  # what __init__ does, without its call
        proxy.node = saving
        proxy._trace = state
        return proxy

    @property
    def value(self) -> Any:
        """The computed value.

        Raises:
            ValueNotSetError: While the trace is still being recorded, or when the
                value was not saved (or the trace failed before computing it).
        """
        value = self._trace.values.get(self.node.index, EMPTY)
        if value is not EMPTY:
            return value
        raise ValueNotSetError(_why_unset(self))

    def __getattr__(self, name: str) -> Any:
        # Protocol probes (copy, pickle, numpy, IPython display) must not become nodes.
        if name.startswith(("__", "_ipython_", "_repr_")):
            raise AttributeError(name)
        return self._record("getattr", name, (self,))

    def __getitem__(self, index: Any) -> Any:
        return _record(type(self), "getitem", None, (self, index), {})

    def __setitem__(self, index: Any, value: Any) -> None:
        _record(type(self), "setitem", None, (self, index, value), {})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        node, trace = self.node, self._trace
        runner = trace.runner
        if node.op == "getattr" and runner is not None:
            graph = node.graph
            if _state.current_runner() is not runner:
                raise ProxyScopeError(f"{node.describe()} was called outside the trace that recorded it.")
            args = map_structure(args, lambda v: _as_arg(v, graph))
            kwargs = map_structure(kwargs, lambda v: _as_arg(v, graph))
            return type(self)(graph.rewrite_as_method_call(node, args, kwargs, runner.condition()), trace)
        if runner is None and node.index in trace.values:
            return self.value(*args, **kwargs)
        raise ProxyCallError(f"{node.describe()} is not callable inside a trace; only methods of a value "
                        "(`proxy.sum(dim=1)`) and modules (`model.lm_head(h)`) can be called.")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        return _record(cls, "call_function", func, args, kwargs or {})

    # -- gradients -----------------------------------------------------------

    @property
    def grad(self) -> Any:
        """The gradient of this value in the next ``.backward()`` recorded in the trace.

        Readable (``.grad.save()``) and assignable (``h.grad = h.grad * 2`` replaces
        the gradient that flows on to earlier values). With several invokes, each
        gets its own rows. After the trace, a saved proxy's ``.grad`` is its
        tensor's ``.grad``.

        Example:
            >>> with model.trace(x):
            ...     h = model.layer1.output
            ...     g = h.grad.save()                     # read before .backward()
            ...     model.output.sum().backward()
            >>> g.value.shape                             # d(sum of outputs) / d(layer1 output)
            torch.Size([1, 10])

        Raises:
            GradientError: Gradients are disabled (``torch.no_grad()``), or no
                ``.backward()`` follows; while running, the value is not a tensor
                that requires grad.
            MissedCallError: The backward pass never reached the value.
        """
        if not self._recording_here():
            return self._record("getattr", "grad", (self,))
        _check_recordable(self.node, ".grad")
        return self._record("grad", None, (self,))

    @grad.setter
    def grad(self, value: Any) -> None:
        if not self._recording_here():
            self.value.grad = _as_value(value)
            return
        self._record("set_grad", None, (self.grad, value))

    def backward(self, *args: Any, **kwargs: Any) -> None:
        """Run the backward pass from this value while the model runs (``tensor.backward``).

        It delivers the ``.grad`` values read before it; arguments are
        ``tensor.backward``'s (``retain_graph=True`` for a second backward pass).

        Raises:
            GradientError: Gradients are disabled, or the value does not require grad.
        """
        if not self._recording_here():
            self._record("call_method", "backward", (self, *args), kwargs)
            return
        _check_recordable(self.node, ".backward()")
        self._record("backward", None, (self, *args), kwargs)

    def _recording_here(self) -> bool:
        """Whether this proxy's own trace is the one recording in this thread."""
        runner = self._trace.runner
        return runner is not None and _state.current_runner() is runner

    # -- metadata: known inside the trace, from the scan on fake tensors ------

    @property
    def shape(self) -> Any:
        """The value's shape; inside a trace, computed on fake tensors (see :mod:`nnsight_core.scan`).

        Example:
            >>> with model.trace(x):
            ...     h = model.layer1.output
            ...     model.layer1.output = torch.zeros(h.shape)   # a torch.Size, known now

        Raises:
            ScanError: The scan cannot know it (it depends on values, or the value has no shape).
        """
        return self._metadata("shape")

    @property
    def dtype(self) -> Any:
        """The value's dtype; inside a trace, from the scan (like :attr:`shape`)."""
        return self._metadata("dtype")

    @property
    def device(self) -> Any:
        """The value's device; inside a trace, from the scan (``cpu`` before a lazy model is dispatched)."""
        return self._metadata("device")

    @property
    def ndim(self) -> Any:
        """The value's number of dimensions; inside a trace, from the scan (like :attr:`shape`)."""
        return self._metadata("ndim")

    def _metadata(self, name: str) -> Any:
        """``shape``/``dtype``/``device``/``ndim``: the trace answers while recording (with the scan,
        or as a recorded attribute when it does not scan); afterwards, the saved value's."""
        runner = self._trace.runner
        if runner is None:
            return getattr(self.value, name)
        if _state.current_runner() is not runner:
            return self._record("getattr", name, (self,))
        return runner.metadata(self, name)

    # -- control flow: not available while recording ------------------------

    def __bool__(self) -> bool:
        return bool(self._concrete("if proxy: / bool(proxy)", "torch.where(condition, a, b)"))

    def __len__(self) -> int:
        return len(self._concrete("len(proxy)", "proxy.shape[0] (known inside the trace, from the scan), "
                                  "or len(saved.value) after the trace"))

    def __iter__(self):
        return iter(self._concrete("iterating over a proxy", "index it (`proxy[0]`, `proxy[:, i]`) or unbind it (`proxy.unbind(0)`)"))

    def __float__(self) -> float:
        return float(self._concrete("float(proxy)", _NUMBER_INSTEAD))

    def __int__(self) -> int:
        return int(self._concrete("int(proxy)", _NUMBER_INSTEAD))

    def __complex__(self) -> complex:
        return complex(self._concrete("complex(proxy)", _NUMBER_INSTEAD))

    def __index__(self) -> int:
        return operator.index(self._concrete("using a proxy as an integer (operator.index)",
                                             "it to index a proxy or tensor (`hidden[:, proxy]` is recorded), "
                                             "proxy.shape[...] for a size"))

    def _concrete(self, what: str, instead: str) -> Any:
        node = self.node
        if self._trace.runner is not None:
            raise ProxyControlFlowError(
                f"{what} on {node.describe()} is not possible inside a trace: its value does not "
                f"exist until the model runs. Use {instead}, or .save() it and use Python "
                "control flow after the `with` block."
            )
        return self.value

    # -- after the trace: print as the value --------------------------------

    def __repr__(self) -> str:
        node, trace = self.node, self._trace
        value = trace.values.get(node.index, EMPTY)
        if value is not EMPTY:
            return repr(value)
        state = "recording" if trace.runner is not None else "no value"
        return f"<{type(self).__name__} {node.name} {node.describe()} ({state})>"

    def __str__(self) -> str:
        value = self._trace.values.get(self.node.index, EMPTY)
        return str(value) if value is not EMPTY else repr(self)

    def __format__(self, spec: str) -> str:
        value = self._trace.values.get(self.node.index, EMPTY)
        return format(value, spec) if value is not EMPTY else repr(self)

    __hash__ = object.__hash__


#: Creates a proxy without calling ``__init__`` (the hot path then sets its two slots).
new_proxy = object.__new__


class InterventionProxy(Proxy):
    """The default ``proxy_class`` of model wrappers: a :class:`Proxy` for module values."""

    __slots__ = ()


def _install_operators() -> None:
    def binary(name: str):
        def method(self, other):
            return self._record("operator", name, (self, other))
        return method

    def reflected(name: str):
        def method(self, other):
            return self._record("operator", name, (other, self))
        return method

    def unary(name: str):
        def method(self):
            return self._record("operator", name, (self,))
        return method

    for name in _BINARY:
        dunder = name.rstrip("_")
        setattr(Proxy, f"__{dunder}__", binary(name))
        setattr(Proxy, f"__r{dunder}__", reflected(name))
    for name in _COMPARISONS:
        setattr(Proxy, f"__{name}__", binary(name))
    for name in _UNARY:
        setattr(Proxy, f"__{name}__", unary(name))


_install_operators()


_CONTAINERS = (tuple, list, dict, slice)


def _record(cls: type, op: str, target: Any, args: tuple, kwargs: dict) -> Any:
    runners = _state.local.runners
    if not runners:
        # No trace open: saved proxies act as their values.
        return apply_op(op, target, map_structure(args, _as_value), map_structure(kwargs, _as_value))
    state = runners[-1].trace_state
    graph = state.graph
    # One walk of the arguments: proxies become nodes and the nodes are collected as the
    # node's dependencies (what Graph.create_node would walk them again for).
    converted = []
    deps: Dict[int, Node] = {}
    flat = True
    for value in args:
        kind = type(value)
        if kind in _CONTAINERS:
            if kind is tuple and INDEX_TYPES.issuperset(map(type, value)):
                for item in value:
                    if type(item) is slice and not SCALAR_TYPES.issuperset(
                            (type(item.start), type(item.stop), type(item.step))):
                        break
                else:
                    converted.append(value)  # constants only (an index such as `[:, 0]`)
                    continue
            value = map_structure(value, lambda v: _as_arg(v, graph))
            for dep in nodes_in(value):
                deps[dep.index] = dep
                flat = False
        elif isinstance(value, Proxy):
            if value._trace.graph is graph:  # the proxy's trace records into `graph`
                value = value.node
                deps[value.index] = value
            else:
                value = _as_arg(value, graph)
        converted.append(value)
    if kwargs:
        kwargs = map_structure(kwargs, lambda v: _as_arg(v, graph))
        for dep in nodes_in(kwargs):
            deps[dep.index] = dep
            flat = False
    # The user's line, without a call when the frames above are known already (the usual case).
    frame, internal = sys._getframe(1), _state._internal_code
    while frame is not None and internal.get(frame.f_code):
        frame = frame.f_back
    if frame is not None and internal.get(frame.f_code) is False:
        where = (frame.f_code.co_filename, frame.f_lineno)
    else:
        where = _state.user_location(2)
    conds = state.conds
    node = graph.append_node(op, target, tuple(converted), kwargs, deps, flat, state.invoke, where,
                             conds[-1] if conds else None)
    return None if op == "setitem" else cls(node, state)


def _as_arg(value: Any, graph: Graph) -> Any:
    if not isinstance(value, Proxy):
        return value
    node = value.node
    if value._trace.graph is graph:  # the proxy's trace records into `graph` (what node.graph is)
        return node
    trace = value._trace
    found = trace.values.get(node.index, EMPTY)
    if found is not EMPTY:
        return found
    if trace.runner is not None:
        raise ProxyScopeError(
            f"{node.describe()} belongs to another trace that is still being recorded (another "
            "model's, or an outer trace). Save it there and use the saved value after that "
            "trace exits (inside a model.session(), its values are usable once it exits, saved or not)."
        )
    raise ValueNotSetError(_why_unset(value))


def _as_value(value: Any) -> Any:
    return value.value if isinstance(value, Proxy) else value


def _check_recordable(node: Node, what: str) -> None:
    """Raise while recording if gradients cannot exist for ``node``.

    Raises:
        GradientError: Autograd is disabled (``torch.no_grad()``,
            ``torch.inference_mode()``), or the node belongs to an iteration block.
    """
    if not torch.is_grad_enabled():
        raise GradientError(
            f"{what} on {node.describe()} needs autograd, but gradients are disabled here "
            "(torch.no_grad() or torch.inference_mode() is active): remove it around this trace, "
            "or wrap the trace in `with torch.enable_grad():`."
        )
    if node.iteration is not None:
        raise GradientError(
            f"{what} on {node.describe()}: gradients inside an iteration (tracer.iter[...], "
            "tracer.all(), envoy.all(), envoy.iter[...]) are not supported; address one call "
            "with envoy.next() instead."
        )


def _why_unset(proxy: Proxy) -> str:
    node, trace = proxy.node, proxy._trace
    what = node.describe()
    at = node.at()
    if trace.runner is not None:
        return (f"the value of {what}{at} does not exist yet: values exist only after the "
                "`with model.trace(...)` block exits. Call .save() on it inside the block and "
                "read .value after it.")
    if node.index in trace.skipped:
        return (f"{what}{at} did not run: the condition of its tracer.cond(...) block was false "
                "(or it used a value that did not run).")
    ran = trace.ran
    if node.index < len(ran) and ran[node.index]:
        return (f"the value of {what}{at} was freed after its last use because it was not "
                "saved (or when the model.session() that kept it ended); call .save() on it inside "
                "the trace, or run the traces that use it inside one `with model.session():` block.")
    return (f"the value of {what}{at} was never computed: the trace did not run to completion "
            "(see the exception it raised), or the value was not saved; call .save() on it inside "
            "the trace.")
