"""Interleaver: runs an intervention graph alongside a module's forward pass.

For the duration of one execution it hooks exactly the modules the graph
touches, counts each module's calls, hands every invoke only its own batch
rows, runs the nodes that became ready, and writes edits back to those rows
only. Leaving the ``with`` block removes every hook, also on error.

The hook is a wrapper set as the module instance's ``forward`` (restored
afterwards), not a ``register_forward_hook``: a registered hook moves every
call of the module onto torch's slow path, which costs several times more than
a plain function call. The wrapper sees what ``forward`` receives (after any
forward pre-hooks of the module) and what it returns (before any forward hooks
of the module), and exposes the original signature through ``__wrapped__``.

Node execution is data-driven: a node runs as soon as all its arguments
exist; nodes that become ready together run in recording order. Each value is
freed right after its last user ran unless it was saved.
"""

from __future__ import annotations

import operator as _operator
import threading
from heapq import heappop, heappush
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils import _pytree as pytree

from ._grad import DEFERRED, Gradients, run_backward
from ._tree import clone, narrow, row_table, write_back
from .errors import (AssignmentError, BatchError, InterventionError, MissedCallError, NNsightError,
                     OutOfOrderEditError)
from .graph import EMPTY, Graph, Iteration, Node, display_path

__all__ = ["Interleaver", "StopExecution"]

_UNCHANGED = object()


class StopExecution(BaseException):
    """Raised by a ``stop`` node to end the model's execution early (``tracer.stop()``).

    A ``BaseException``, so model code that catches ``Exception`` lets it
    through; :meth:`NNsightModel.interleave` catches it.
    """


class _Event:
    """One hook call of one module: what each invoke received and what it replaced."""

    __slots__ = ("narrowed", "replaced")

    def __init__(self) -> None:
        self.narrowed: Dict[Any, Any] = {}
        self.replaced: Dict[Any, Any] = {}


class Interleaver:
    """Context manager that interleaves ``graph`` with calls of ``root`` and its submodules.

    Example:
        >>> from nnsight_core import Graph
        >>> with model.trace(x) as tracer:
        ...     h = model.layer1.output.save()
        >>> graph = Graph.from_json(tracer.graph.to_json())   # a copy not yet run
        >>> with Interleaver(graph, net) as interleaver:       # what model.trace does
        ...     out = net(x)
        >>> interleaver.check_complete()
        >>> torch.equal(graph.nodes[1].value, net.layer1(x))   # the save node's value
        True

    Override points: one method per graph operation (``operator``, ``getitem``,
    ``setitem``, ``getattr``, ``call_method``, ``call_function``,
    ``call_module``, ``save``, ``set_output``, ``set_inputs``, ``set_input``, ``grad``,
    ``set_grad``, ``backward``),
    each called as ``method(node, args, kwargs)`` with concrete arguments.
    """

    def __init__(self, graph: Graph, root: torch.nn.Module,
                 attached: Optional[Dict[str, torch.nn.Module]] = None) -> None:
        self.graph = graph
        self.root = root
        self.attached = attached or {}
        self._restore: List[Tuple[torch.nn.Module, Any]] = []
        self._calls: Dict[Tuple[str, str], int] = {}
        self._open: Dict[Tuple[str, str, int], _Event] = {}
        self._ready: List[int] = []
        self._bypass = 0
        # Gradient hooks and which backward pass feeds each grad node (None: no grad node).
        self._grads = Gradients(graph) if graph.gradients else None
        self._thread = threading.get_ident()
        batch = graph.batch_size
        self._whole = len(graph.rows) == 1 and graph.rows[0] == (0, batch)
        # Which rows each invoke owns; one invoke owning the whole batch needs no table.
        self._table = None if self._whole else row_table(graph.rows, batch, graph.layouts)
        self._guarded = graph.guarded
        # (event kind, module path) -> the iterations whose templates that event starts copying.
        self._iterating: Dict[Tuple[str, str], List[Iteration]] = {}
        for iteration in graph.iterations:
            for pair in iteration.modules:
                self._iterating.setdefault(pair, []).append(iteration)

    # -- hooks -------------------------------------------------------------

    def __enter__(self) -> Interleaver:
        graph = self.graph
        self._ready = graph.reset()
        try:
            kinds: Dict[str, set] = {}
            for kind, path in graph.modules():
                kinds.setdefault(path, set()).add(kind)
            for path, wanted in kinds.items():
                self._hook(path, "inputs" in wanted, "output" in wanted)
            self._drain()
        except BaseException:
            self.remove_hooks()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove_hooks()
        if self.graph.iterations:
            self.graph.drop_instances()

    def remove_hooks(self) -> None:
        """Restore every hooked module's ``forward`` and remove gradient hooks (idempotent)."""
        if self._grads is not None:
            self._grads.remove_hooks()
        while self._restore:
            module, previous = self._restore.pop()
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous

    def _hook(self, path: str, inputs: bool, output: bool) -> None:
        module = self.module(path)
        forward = module.forward
        event = self._event
        thread = self._thread

        def hooked(*args: Any, **kwargs: Any) -> Any:
            if self._bypass or threading.get_ident() != thread:
                return forward(*args, **kwargs)
            if inputs:
                new = event("inputs", path, (args, kwargs))
                if new is not _UNCHANGED:
                    args, kwargs = new
            result = forward(*args, **kwargs)
            if output:
                new = event("output", path, result)
                if new is not _UNCHANGED:
                    result = new
            return result

        hooked.__wrapped__ = forward  # inspect.signature() reports the real forward
        self._restore.append((module, module.__dict__.get("forward")))
        module.__dict__["forward"] = hooked

    def _event(self, kind: str, path: str, value: Any) -> Any:
        calls = self._calls
        call = calls.get((kind, path), 0)
        calls[(kind, path)] = call + 1
        key = (kind, path, call)
        if self._iterating:
            self._copy_templates(kind, path, call)
        fed = self.graph.fed.get(key)
        edits = self.graph.edits.get(key)
        if fed is None and edits is None:
            return _UNCHANGED
        event = _Event()
        self._open[key] = event
        try:
            for node in fed or ():
                invoke = node.invoke
                rows = value if self._whole else narrow(value, self._table, invoke)
                event.narrowed[invoke] = rows
                if node.mutated:
                    rows = clone(rows)
                    event.replaced[invoke] = rows
                self._feed(node, rows)
            self._drain()
        finally:
            del self._open[key]
        for node in edits or ():
            if not node.done:
                late = [d.describe() for d in node.deps if not d.done]
                raise OutOfOrderEditError(
                    f"{node.describe()} (recorded at {node.source() or 'unknown'}) edits "
                    f"{display_path(path)}.{kind} (call {call}) but depends on "
                    f"{', '.join(late) or 'a value'} computed after that module ran. An edit can "
                    "only use values available when the module runs."
                )
        if not event.replaced:
            return _UNCHANGED
        if self._whole:
            return next(iter(event.replaced.values()))
        return write_back(value, event.replaced, event.narrowed, self._table,
                          f"{display_path(path)}.{kind} (call {call})")

    def _copy_templates(self, kind: str, path: str, call: int) -> None:
        """At the first event of call ``call`` of an iteration's modules, copy its templates for it."""
        for iteration in self._iterating.get((kind, path), ()):
            if call in iteration and call not in iteration.instances:
                for node in self.graph.instantiate(iteration, call):
                    if not node._pending and node.op not in ("output", "inputs"):
                        heappush(self._ready, node.index)

    # -- execution ------------------------------------------------------------

    def module(self, path: str) -> torch.nn.Module:
        """The module at ``path``: in the wrapped model, or one attached beside it."""
        module = self.root
        if not path:
            return module
        parts = path.split(".")
        if parts[0] in self.attached and parts[0] not in module._modules:
            module = self.attached[parts.pop(0)]
        try:
            for part in parts:  # what get_submodule does, without its per-step checks
                module = module._modules[part]
        except KeyError:
            return self.root.get_submodule(path)  # raises its own, precise error
        return module

    def _feed(self, node: Node, value: Any) -> None:
        node.value = value
        node.done = True
        for user in node.users:
            user._pending -= 1
            if user._pending == 0:
                heappush(self._ready, user.index)

    def _drain(self) -> None:
        ready, nodes = self._ready, self.graph.nodes
        while ready:
            self._run(nodes[heappop(ready)])

    def _run(self, node: Node) -> None:
        if self._guarded and self._skips(node):
            self._skip(node)
            return
        if node._flat:
            args = tuple([a.value if type(a) is Node else a for a in node.args])
            kwargs = node.kwargs
        else:
            args = _resolve(node.args)
            kwargs = _resolve(node.kwargs)
        try:
            value = getattr(self, node.op)(node, args, kwargs)
        except NNsightError:
            raise
        except Exception as error:
            at = node.source()
            raise InterventionError(
                f"{node.describe()}{' at ' + at if at else ''} failed while the model ran: "
                f"{type(error).__name__}: {error}"
            ) from error
        for dep in node.deps:
            dep._uses_left -= 1
            if dep._uses_left == 0 and not dep.saved:
                dep.value = EMPTY
        if value is DEFERRED:
            return  # a hook feeds the value later (a gradient, during its backward pass)
        node.done = True
        if node.users or node.saved:
            node.value = value
            for user in node.users:
                user._pending -= 1
                if user._pending == 0:
                    heappush(self._ready, user.index)

    def _skip(self, node: Node) -> None:
        """Mark ``node`` as not run (its condition is false); its users are skipped in turn."""
        for dep in node.deps:
            dep._uses_left -= 1
            if dep._uses_left == 0 and not dep.saved:
                dep.value = EMPTY
        node.done = node.skipped = True
        for user in node.users:
            user._pending -= 1
            if user._pending == 0:
                heappush(self._ready, user.index)

    def _skips(self, node: Node) -> bool:
        """Whether ``node`` must not run: its condition is false, or an argument was skipped."""
        for dep in node.deps:
            if dep.skipped:
                return True
        cond = node.cond
        if cond is None:
            return False
        try:
            return not bool(cond.value)
        except Exception as error:  # noqa: BLE001 - reported with the condition's line
            at = cond.source()
            raise InterventionError(
                f"the condition of tracer.cond ({cond.describe()}{', recorded at ' + at if at else ''}) "
                f"is not a single true/false value: {type(error).__name__}: {error}. Reduce it to one "
                "element, e.g. `(h > 0).all()` or `h[0, 0] > 0`."
            ) from error

    def check_complete(self) -> None:
        """Raise if any node waited on a module call that never happened.

        Raises:
            MissedCallError: Naming the module, the call and how often it ran.
        """
        optional = self.graph.optional
        for (kind, path, call), nodes in self.graph.fed.items():
            for node in nodes:
                if not node.done and node.index not in optional:
                    ran = self._calls.get((kind, path), 0)
                    attr = "output" if kind == "output" else "input"
                    if ran == 0:
                        detail = f"{display_path(path)} never ran during this forward pass"
                    else:
                        detail = (f"{display_path(path)} ran {ran} time(s), so its calls are "
                                  f"0-{ran - 1}")
                    raise MissedCallError(
                        f"{display_path(path)}.{attr} (call {call}, invoke {node.invoke}) was never "
                        f"reached: {detail}. Check the module path and how many times .next() "
                        "was called for it."
                    )
        for iteration in self.graph.iterations:
            self._check_iteration(iteration)
        if self._grads is not None:
            self._grads.check_complete()
        for node in self.graph.nodes:
            if not node.done and node.iteration is None and node.index not in optional:
                raise MissedCallError(f"{node.describe()} never ran: one of its inputs was never computed")

    def _check_iteration(self, iteration: Iteration) -> None:
        if not iteration.modules:
            return
        if iteration.missed:
            raise MissedCallError(f"{iteration.missed[0]} was never reached, although the other modules "
                                  f"of its iteration ({iteration}) ran that call.")
        expected = iteration.expected()
        missing = ([] if iteration.seen else [iteration.start]) if expected is None else \
            [k for k in expected if k not in iteration.seen]
        if not missing:
            return
        kind, path = sorted(iteration.modules)[0]
        ran = self._calls.get((kind, path), 0)
        attr = "output" if kind == "output" else "input"
        raise MissedCallError(
            f"{display_path(path)}.{attr} ({iteration}) never reached call {missing[0]}: "
            f"{display_path(path)} ran {ran} time(s), so its calls are "
            f"{'none' if not ran else f'0-{ran - 1}'}. Narrow the range of tracer.iter[...] to the "
            "steps the model runs (e.g. max_new_tokens or num_inference_steps)."
        )

    # -- operations (one per op of the vocabulary) ------------------------------

    def operator(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return getattr(_operator, node.target)(*args)

    def getitem(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return args[0][args[1]]

    def setitem(self, node: Node, args: tuple, kwargs: dict) -> None:
        args[0][args[1]] = args[2]

    def getattr(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return getattr(args[0], node.target)

    def call_method(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return getattr(args[0], node.target)(*args[1:], **kwargs)

    def call_function(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return node.target(*args, **kwargs)

    def save(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return args[0]

    def apply(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return node.target(*args, **kwargs)

    def stop(self, node: Node, args: tuple, kwargs: dict) -> Any:
        raise StopExecution(node)

    def grad(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return self._grads.register(self, node, args[0])

    def set_grad(self, node: Node, args: tuple, kwargs: dict) -> Any:
        return self._grads.assign(node, node.args[0], args[0], args[1])

    def backward(self, node: Node, args: tuple, kwargs: dict) -> None:
        run_backward(node, args, kwargs, self._grads)

    def call_module(self, node: Node, args: tuple, kwargs: dict) -> Any:
        module = self.module(node.target)
        self._bypass += 1
        try:
            return module(*args, **kwargs)
        finally:
            self._bypass -= 1

    def set_output(self, node: Node, args: tuple, kwargs: dict) -> Any:
        _check_assignment(node, args[0], args[1])
        self._event_of(node).replaced[node.invoke] = args[1]
        return args[1]

    def set_inputs(self, node: Node, args: tuple, kwargs: dict) -> Any:
        new = args[1]
        if not (isinstance(new, (tuple, list)) and len(new) == 2 and isinstance(new[0], (tuple, list))
                and isinstance(new[1], dict)):
            raise BatchError(f"{node.describe()}: `.inputs` must be assigned an (args, kwargs) pair, "
                             f"e.g. `.inputs = ((x,), {{}})`; got {type(new).__name__}.")
        new = (tuple(new[0]), new[1])
        _check_assignment(node, args[0], new)
        self._event_of(node).replaced[node.invoke] = new
        return new

    def set_input(self, node: Node, args: tuple, kwargs: dict) -> Any:
        (pos, kw), value = args
        if not pos:
            raise BatchError(f"{node.describe()}: the module received no positional argument "
                             "(only keywords); assign `.inputs = (args, kwargs)` instead.")
        _check_assignment(node, pos[0], value)
        new = ((value,) + tuple(pos[1:]), kw)
        self._event_of(node).replaced[node.invoke] = new
        return new

    def _event_of(self, node: Node) -> _Event:
        kind = "inputs" if node.op != "set_output" else "output"
        event = self._open.get((kind,) + tuple(node.target))
        if event is None:
            raise OutOfOrderEditError(f"{node.describe()} ran after its module had finished")
        return event


def _check_assignment(node: Node, old: Any, new: Any) -> None:
    """Raise unless ``new`` can stand in for ``old``: every tensor of ``old`` replaced by a
    tensor of its shape, dtype and device (or left as it is).

    A value of another structure is not compared here; where several invokes share the
    batch, writing it back into the invoke's rows checks it.

    Raises:
        BatchError: A tensor's dimension 0 (the invoke's rows) differs.
        AssignmentError: A tensor is replaced by a non-tensor, or by a tensor of another
            shape, dtype or device.
    """
    if isinstance(old, torch.Tensor):
        pairs = [(old, new)]
    else:
        old_leaves, old_spec = pytree.tree_flatten(old)
        new_leaves, new_spec = pytree.tree_flatten(new)
        if old_spec != new_spec:
            return
        pairs = list(zip(old_leaves, new_leaves))
    for position, (before, after) in enumerate(pairs):
        if not isinstance(before, torch.Tensor) or after is before:
            continue
        problem = _mismatch(before, after, _ASSIGNED[node.op])
        if problem is None:
            continue
        what = node.describe() + (f", element {position}" if len(pairs) > 1 else "")
        at = node.source()
        where = f"{what}{' at ' + at if at else ''}"
        shape = tuple(before.shape)
        if problem == "rows":
            raise BatchError(f"{where}: invoke {node.invoke} owns {shape[0]} row(s) of the batch but "
                             f"assigned a value of shape {tuple(after.shape)}; give it shape {shape}.")
        raise AssignmentError(f"{where}: {problem}")


_ASSIGNED = {"set_output": "output", "set_input": "input", "set_inputs": "inputs"}


def _mismatch(before: torch.Tensor, after: Any, attr: str) -> Optional[str]:
    """What keeps ``after`` from replacing the tensor ``before`` ('rows' for dimension 0), or None."""
    shape = tuple(before.shape)
    if not isinstance(after, torch.Tensor):
        return (f"a value of type {type(after).__name__} was assigned where the module has a tensor "
                f"of shape {shape}; assign a tensor of that shape, or fill the value in place "
                f"instead (`.{attr}[:] = value`).")
    if after.shape != before.shape:
        if before.dim() and (not after.dim() or after.shape[0] != before.shape[0]):
            return "rows"
        return (f"the assigned tensor has shape {tuple(after.shape)} but the value it replaces has "
                f"shape {shape}; give it shape {shape}.")
    if after.dtype != before.dtype:
        return (f"the assigned tensor has dtype {after.dtype} but the value it replaces has "
                f"{before.dtype}; cast it with `.to({before.dtype})`.")
    if after.device != before.device:
        return (f"the assigned tensor is on device {after.device} but the value it replaces is on "
                f"{before.device}; move it with `.to('{before.device}')`.")
    return None


def _resolve(value: Any) -> Any:
    kind = type(value)
    if kind is Node:
        return value.value
    if kind is tuple or kind is list:
        return kind(_resolve(v) for v in value)
    if kind is dict:
        return {k: _resolve(v) for k, v in value.items()}
    if kind is slice:
        return slice(_resolve(value.start), _resolve(value.stop), _resolve(value.step))
    return value
