"""Proxy: the stand-in for a value that exists only while the model runs.

Inside a trace every operation on a proxy (operators, indexing, attribute
access, method calls, ``torch`` functions) records a node in the Runner's
graph and returns a new proxy. After the trace, a proxy whose value was saved
behaves like that value: it prints as it, and operations on it compute on it.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

from . import _state
from ._grad import check_recordable
from ._tree import map_structure
from .errors import ProxyCallError, ProxyControlFlowError, ProxyScopeError, TraceStateError, ValueNotSetError
from .graph import EMPTY, Graph, Node
from .scan import metadata

__all__ = ["Proxy", "InterventionProxy", "apply_op"]

_NUMBER_INSTEAD = ("`proxy.item()` (recorded: a proxy of the number) or `proxy.float()` / `proxy.long()` "
                   "(a proxy of the tensor)")
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and_", "or_",
           "xor", "lshift", "rshift")
_COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
_UNARY = ("neg", "pos", "abs", "invert")


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
    """

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    # -- recording ---------------------------------------------------------

    def _record(self, op: str, target: Any, args: tuple, kwargs: Optional[dict] = None) -> Any:
        return _record(type(self), op, target, args, kwargs or {})

    def save(self) -> Proxy:
        """Keep this value after the trace; returns the proxy to read it from.

        Raises:
            TraceStateError: Outside a trace.
        """
        node = self.node
        runner = _state.current_runner()
        if runner is None or runner._graph is not node.graph:
            raise TraceStateError(
                f".save() was called on {node.describe()} outside the trace that recorded it; "
                "call .save() inside the `with model.trace(...)` block."
            )
        # Saving never fails at run time, so it reuses the location of what it saves.
        return type(self)(node.graph.create_node("save", None, (node,), invoke=runner._invoke_index(),
                                                 where=node.where))

    @property
    def value(self) -> Any:
        """The computed value.

        Raises:
            ValueNotSetError: While the trace is still being recorded, or when the
                value was not saved (or the trace failed before computing it).
        """
        node = self.node
        if node.value is not EMPTY:
            return node.value
        raise ValueNotSetError(_why_unset(node))

    def __getattr__(self, name: str) -> Any:
        # Protocol probes (copy, pickle, numpy, IPython display) must not become nodes.
        if name.startswith(("__", "_ipython_", "_repr_")):
            raise AttributeError(name)
        return self._record("getattr", name, (self,))

    def __getitem__(self, index: Any) -> Any:
        return self._record("getitem", None, (self, index))

    def __setitem__(self, index: Any, value: Any) -> None:
        self._record("setitem", None, (self, index, value))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        node = self.node
        if node.op == "getattr" and node.graph.recording:
            graph = node.graph
            runner = _state.current_runner()
            if runner is None or runner._graph is not graph:
                raise ProxyScopeError(f"{node.describe()} was called outside the trace that recorded it.")
            args = map_structure(args, lambda v: _as_arg(v, graph))
            kwargs = map_structure(kwargs, lambda v: _as_arg(v, graph))
            return type(self)(graph.rewrite_as_method_call(node, args, kwargs))
        if node.value is not EMPTY and not node.graph.recording:
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
        check_recordable(self.node, ".grad")
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
        check_recordable(self.node, ".backward()")
        self._record("backward", None, (self, *args), kwargs)

    def _recording_here(self) -> bool:
        """Whether this proxy's own trace is the one recording in this thread."""
        runner = _state.current_runner()
        return runner is not None and runner._graph is self.node.graph and self.node.graph.recording

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
        return metadata(self, "shape")

    @property
    def dtype(self) -> Any:
        """The value's dtype; inside a trace, from the scan (like :attr:`shape`)."""
        return metadata(self, "dtype")

    @property
    def device(self) -> Any:
        """The value's device; inside a trace, from the scan (``cpu`` before a lazy model is dispatched)."""
        return metadata(self, "device")

    @property
    def ndim(self) -> Any:
        """The value's number of dimensions; inside a trace, from the scan (like :attr:`shape`)."""
        return metadata(self, "ndim")

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
        if node.graph.recording:
            raise ProxyControlFlowError(
                f"{what} on {node.describe()} is not possible inside a trace: its value does not "
                f"exist until the model runs. Use {instead}, or .save() it and use Python "
                "control flow after the `with` block."
            )
        return self.value

    # -- after the trace: print as the value --------------------------------

    def __repr__(self) -> str:
        node = self.node
        if node.value is not EMPTY:
            return repr(node.value)
        state = "recording" if node.graph.recording else "no value"
        return f"<{type(self).__name__} {node.name} {node.describe()} ({state})>"

    def __str__(self) -> str:
        return str(self.node.value) if self.node.value is not EMPTY else repr(self)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec) if self.node.value is not EMPTY else repr(self)

    __hash__ = object.__hash__


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
    runner = _state.current_runner()
    if runner is None:
        # No trace open: saved proxies act as their values.
        return apply_op(op, target, map_structure(args, _as_value), map_structure(kwargs, _as_value))
    graph = runner._graph
    converted = []
    for value in args:
        kind = type(value)
        if kind in _CONTAINERS:
            value = map_structure(value, lambda v: _as_arg(v, graph))
        elif isinstance(value, Proxy):
            value = value.node if value.node.graph is graph else _as_arg(value, graph)
        converted.append(value)
    args = tuple(converted)
    if kwargs:
        kwargs = map_structure(kwargs, lambda v: _as_arg(v, graph))
    node = graph.create_node(op, target, args, kwargs, invoke=runner._invoke_index(),
                             where=_state.user_location())
    return None if op == "setitem" else cls(node)


def _as_arg(value: Any, graph: Graph) -> Any:
    if not isinstance(value, Proxy):
        return value
    node = value.node
    if node.graph is graph:
        return node
    if node.value is not EMPTY:
        return node.value
    if node.graph.recording:
        raise ProxyScopeError(
            f"{node.describe()} belongs to another trace that is still being recorded (another "
            "model's, or an outer trace). Save it there and use the saved value after that "
            "trace exits (inside a model.session(), its values are usable once it exits, saved or not)."
        )
    raise ValueNotSetError(_why_unset(node))


def _as_value(value: Any) -> Any:
    return value.value if isinstance(value, Proxy) else value


def _why_unset(node: Node) -> str:
    what = node.describe()
    where = node.source()
    at = f" (recorded at {where})" if where else ""
    if node.graph.recording:
        return (f"the value of {what}{at} does not exist yet: values exist only after the "
                "`with model.trace(...)` block exits. Call .save() on it inside the block and "
                "read .value after it.")
    if node.skipped:
        return (f"{what}{at} did not run: the condition of its tracer.cond(...) block was false "
                "(or it used a value that did not run).")
    if node.done:
        return (f"the value of {what}{at} was freed after its last use because it was not "
                "saved (or when the model.session() that kept it ended); call .save() on it inside "
                "the trace, or run the traces that use it inside one `with model.session():` block.")
    return (f"the value of {what}{at} was never computed: the trace did not run to completion "
            "(see the exception it raised), or the value was not saved; call .save() on it inside "
            "the trace.")
