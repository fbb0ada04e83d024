"""Interleaver: runs an intervention graph alongside a module's forward pass.

An Interleaver is one execution of a graph, as torch.fx's ``Interpreter`` is
one run of its graph: it owns all the state of that run (each node's value,
how many arguments it still waits for, how many users will still read it, the
batch rows each invoke owns, the copies of iteration templates), and the
:class:`~nnsight_core.graph.Graph` stays pure structure. So one graph can run
any number of times, also in several threads at once, each run with its own
Interleaver.

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
freed right after its last user ran unless it was saved (or the execution
keeps every value: ``keep=True``).
"""

from __future__ import annotations

import operator as _operator
import threading
from functools import partial
from heapq import heappop, heappush
from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import torch
from torch.utils import _pytree as pytree

from ._grad import DEFERRED, Gradients, run_backward
from ._tree import RowTable, clone, narrow, row_table, write_back
from .errors import (AssignmentError, BatchError, InterventionError, MissedCallError, NNsightError,
                     OutOfOrderEditError)
from .graph import (EMPTY, EVENT_KIND, FED_OPS, MODULE_VALUE_OPS, Graph, Iteration, Node, copy_node, display_path,
                    map_arg, register)

__all__ = ["Batch", "Interleaver", "StopExecution", "module_at"]

_UNCHANGED = object()

# Uses-left count of a value that template nodes read: larger than any number of copies.
_KEEP = 1 << 40

_deps = _operator.attrgetter("deps")
# Which events of a module a hook handles.
_INPUTS, _OUTPUT = 1, 2
_get_ident = threading.get_ident
# Operations simple enough for `_run` to compute in place, when a subclass leaves their
# methods as they are: saving every module output then costs no call per node.
_INLINE_OPS = ("save", "getitem", "setitem")


class StopExecution(BaseException):
    """Raised by a ``stop`` node to end the model's execution early (``tracer.stop()``).

    A ``BaseException``, so model code that catches ``Exception`` lets it
    through; the model wrapper's execution (as in
    :meth:`~nnsight_core.model.NNsightModel.interleave`) catches it.
    """


class Batch(NamedTuple):
    """How one execution's batch is shared among invokes.

    Example:
        >>> Batch.of([1, 2])              # invoke 0 owns row 0, invoke 1 rows 1-2
        Batch(rows=((0, 1), (1, 3)), size=3, layouts={})

    Attributes:
        rows: ``(start, stop)`` batch rows of each invoke, in order.
        size: Rows of the batched inputs.
        layouts: Other dimension-0 sizes the execution makes of the batch, as
            ``size -> (blocks, repeats)`` (see ``NNsightModel.batch_layout``).
    """

    rows: Tuple[Tuple[int, int], ...]
    size: int
    layouts: Dict[int, Tuple[int, int]]

    @classmethod
    def of(cls, sizes: Sequence[int], layouts: Optional[Dict[int, Tuple[int, int]]] = None) -> Batch:
        """The batch of invokes with ``sizes`` rows each, in order."""
        rows, stop = [], 0
        for size in sizes:
            rows.append((stop, stop + size))
            stop += size
        # tuple.__new__ is what the named tuple's own __new__ calls, without its Python frame.
        return tuple.__new__(cls, (tuple(rows), stop, dict(layouts or {})))

    def table(self) -> Optional[RowTable]:
        """Which rows each invoke owns per dimension-0 size; None when one invoke owns them all."""
        if len(self.rows) == 1 and self.rows[0] == (0, self.size):
            return None
        return row_table(self.rows, self.size, self.layouts)


def module_at(root: torch.nn.Module, attached: Dict[str, torch.nn.Module], path: str) -> Optional[torch.nn.Module]:
    """The module at dotted ``path`` below ``root`` (or below a module ``attached`` beside it,
    named by the path's first part), or None when there is none.

    The one lookup of module paths: executions, graph checks and envoys agree on what
    a path means.
    """
    module = root
    if not path:
        return module
    parts = path.split(".")
    if parts[0] in attached and parts[0] not in module._modules:
        module = attached[parts.pop(0)]
    for part in parts:  # what get_submodule does, without its per-step checks
        module = module._modules.get(part)
        if module is None:
            return None
    return module


class Interleaver:
    """One execution of ``graph`` interleaved with calls of ``root`` and its submodules.

    Example:
        >>> with model.trace(x) as tracer:
        ...     h = model.layer1.output.save()
        >>> graph = tracer.graph                    # structure only: it can run again
        >>> with Interleaver(graph, net) as interleaver:
        ...     out = net(x)
        >>> interleaver.check_complete()
        >>> torch.equal(interleaver.results()[0], net.layer1(x))   # the saved node's value
        True

    Args:
        graph: The graph to run.
        root: The wrapped module.
        attached: Modules attached beside it (reached by their top-level name).
        batch: How the batch is shared among the graph's invokes; None when a
            single invoke owns the whole batch.
        keep: Keep every node's value, not only saved ones (sessions, the scan).

    Attributes:
        graph: The graph being run.
        values: Node index to its value in this execution (:data:`~nnsight_core.graph.EMPTY`
            before it runs and after it is freed); copies of iteration templates
            have indices past the graph's nodes.
        done: Node index to whether it has run.
        skipped: Indices of the nodes a false ``tracer.cond`` condition skipped.

    Override points: one method per graph operation (``operator``, ``getitem``,
    ``setitem``, ``getattr``, ``call_method``, ``call_function``, ``call_module``,
    ``save``, ``apply``, ``stop``, ``set_output``, ``set_inputs``, ``set_input``,
    ``skip``, ``grad``, ``set_grad``, ``backward``), each called as ``method(node, args,
    kwargs)`` with concrete arguments, and :meth:`skipped_output`. A subclass that runs
    graphs differently (the scan on fake tensors, :class:`nnsight_core.scan.ScanInterleaver`)
    overrides them.

    Extension point for hook paths inside a module's forward (``inside``): a layer above
    registers, under a path part such as ``"source"``, a function ``install(interleaver,
    {path: {event kinds}})`` that hooks the paths holding ``.source.`` before the modules'
    own hooks are set, with :meth:`module`, :meth:`replace_forward` and :meth:`wrap`
    (:mod:`nnsight_core.source` does, for call sites inside a forward).
    """

    #: Path part -> the function that hooks the graph's paths holding ``.<part>.`` (see above).
    inside: ClassVar[Dict[str, Callable[[Interleaver, Dict[str, Set[str]]], None]]] = {}

    def __init__(self, graph: Graph, root: torch.nn.Module,
                 attached: Optional[Dict[str, torch.nn.Module]] = None, batch: Optional[Batch] = None,
                 keep: bool = False) -> None:
        self.graph = graph
        self.root = root
        self.attached = attached or {}
        self.keep = keep
        nodes = graph.nodes
        self.nodes: List[Node] = nodes  # copied before iteration copies are appended
        self.values: List[Any] = [EMPTY] * len(nodes)
        self.done: List[bool] = [False] * len(nodes)
        self.skipped: set = set()
        # map() rather than comprehensions: this runs for every trace, and is the hot path.
        self._users: List[List[Node]] = list(graph.users)  # copied on write by iteration copies
        self._pending: List[int] = list(map(len, map(_deps, nodes)))
        self._uses: List[int] = list(map(len, self._users))
        self._fed = graph.fed
        self._edits = graph.edits
        self._restore: List[Tuple[torch.nn.Module, Any]] = []
        # Module path -> invoke -> (skip node, value), set by `skip` nodes in the module's inputs event.
        self._skipped_by: Dict[str, Dict[int, Tuple[Node, Any]]] = {}
        self._skipping: Set[str] = set()  # the paths that skip nodes name
        self._calls: Dict[Tuple[str, str], int] = {}
        # The open hook events: (kind, path, call) -> invoke index to the value that replaces its rows.
        self._open: Dict[Tuple[str, str, int], Dict[Any, Any]] = {}
        self._ready: List[int] = []
        self._bypass = 0
        # Gradient hooks and which backward pass feeds each grad node (None: no grad node).
        self._grads = self._gradients() if graph.gradients else None
        self._thread = _get_ident()
        # Which rows each invoke owns; one invoke owning the whole batch needs no table.
        self._table = (None if batch is None or (len(batch.rows) == 1 and batch.rows[0] == (0, batch.size))
                       else batch.table())
        self._whole = self._table is None
        self._guarded = graph.guarded
        # Whether hook events may take the short way (see _event): a subclass that overrides
        # feed() or drain() sees every node go through them.
        self._plain = self._whole and not graph.guarded and not self._feeds
        # Iterations: (event kind, module path) -> the iterations whose templates that event
        # starts copying, and per iteration the copies made for each call.
        self._iterating: Dict[Tuple[str, str], List[Iteration]] = {}
        self._instances: Dict[Iteration, Dict[int, List[Node]]] = {}
        for iteration in graph.iterations:
            self._instances[iteration] = {}
            for pair in iteration.modules:
                self._iterating.setdefault(pair, []).append(iteration)

    # Hot-path shortcuts, worked out per class: the simple operations computed in place by
    # `_run`, and whether a hook must call `feed` (a subclass overrides it) or may do its work.
    _inline: frozenset = frozenset(_INLINE_OPS)
    _feeds = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass that overrides one of the simple operations gets it called as a method.
        cls._inline = frozenset(op for op in _INLINE_OPS if getattr(cls, op) is getattr(Interleaver, op))
        cls._feeds = cls.feed is not Interleaver.feed or cls.drain is not Interleaver.drain

    def _gradients(self) -> Optional[Gradients]:
        """The gradient state of this execution, or None when the graph reads no gradient
        (override point: an execution that runs no backward pass returns None)."""
        return Gradients(self.graph, self) if self.graph.gradients else None

    # -- hooks -------------------------------------------------------------

    def __enter__(self) -> Interleaver:
        graph = self.graph
        if graph.iterations:
            self._ready = self._start()
        else:  # what _start() does without iterations: the graph keeps these nodes (in order: a heap)
            self._ready = ready = []
            for node in graph.starts:
                ready.append(node.index)
        try:
            # Module path -> which events to hook (_INPUTS | _OUTPUT); plain loops: this runs per trace.
            wanted: Dict[str, int] = {}
            for keys in (graph.fed, graph.edits):
                for kind, path, _ in keys:
                    wanted[path] = wanted.get(path, 0) | (_OUTPUT if kind == "output" else _INPUTS)
            if graph.iterations:
                for kind, path in graph.modules():
                    wanted[path] = wanted.get(path, 0) | (_OUTPUT if kind == "output" else _INPUTS)
            skipping = self._skipping
            for node in graph.assignments:  # a loop, not a comprehension: no call per trace
                if node.op == "skip":
                    skipping.add(node.target[0])
            # Paths inside forwards (.source call sites) first: the modules' own hooks then wrap
            # what their installers put in place.
            if self.inside:
                every = f".{'..'.join(wanted)}."  # one test per part, not one per path, when none is inside
                for part, install in self.inside.items():
                    marker = f".{part}."
                    if marker not in every:
                        continue
                    inside: Dict[str, Set[str]] = {}
                    for path in list(wanted):
                        if marker in f".{path}.":
                            events = wanted.pop(path)
                            inside[path] = {kind for kind, bit in (("inputs", _INPUTS), ("output", _OUTPUT))
                                            if events & bit}
                    if inside:
                        install(self, inside)
            hooked, restore, root = self._hooked, self._restore, self.root
            for path, events in wanted.items():  # what wrap() does, without a call per module
                module = root
                if path:
                    for part in path.split("."):  # what module_at() does, without its call
                        module = module._modules.get(part)
                        if module is None:  # attached beside the model, or an error naming the path
                            module = self.module(path)
                            break
                if path in skipping:
                    self.replace_forward(module, self.skippable(path, module.forward))
                forward = module.forward
                hook = partial(hooked, forward, path, events & _INPUTS, events & _OUTPUT)
                hook.__wrapped__ = forward
                attributes = module.__dict__
                restore.append((module, attributes.get("forward")))
                attributes["forward"] = hook
            if self._ready:
                self.drain()
        except BaseException:
            self.remove_hooks()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._restore or self._grads is not None:
            self.remove_hooks()

    def _start(self) -> List[int]:
        """The indices of the nodes ready at once, sorted (hence a valid heap).

        Ready at once are nodes with no node arguments, except ``output``/``inputs``
        nodes, whose values only a module's hook can supply, and iteration templates,
        which only run as copies.
        """
        nodes = self.nodes
        if self.graph.iterations:
            uses, users = self._uses, self._users
            for node in nodes:
                # A value that templates use must outlive all their copies: never free it early.
                if any(user.iteration is not None for user in users[node.index]):
                    uses[node.index] = _KEEP
            return [node.index for node in nodes
                    if not node.deps and node.op not in FED_OPS and node.iteration is None]
        return [node.index for node in nodes if not node.deps and node.op not in FED_OPS]

    def remove_hooks(self) -> None:
        """Restore every hooked module's ``forward`` and remove gradient hooks (idempotent)."""
        if self._grads is not None:
            self._grads.remove_hooks()
        restore = self._restore
        while restore:
            module, previous = restore.pop()
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous

    def _hooked(self, forward: Any, path: str, inputs: bool, output: bool, *args: Any, **kwargs: Any) -> Any:
        """A hooked module's ``forward``: its events around the original ``forward``."""
        if self._bypass or _get_ident() != self._thread:
            return forward(*args, **kwargs)
        if inputs:
            new = self._event("inputs", path, (args, kwargs))
            if new is not _UNCHANGED:
                args, kwargs = new
        result = forward(*args, **kwargs)
        if output:
            new = self._event("output", path, result)
            if new is not _UNCHANGED:
                result = new
        return result

    def replace_forward(self, module: torch.nn.Module, forward: Callable[..., Any]) -> None:
        """Set ``forward`` as ``module``'s forward for this execution (restored by :meth:`remove_hooks`)."""
        self._restore.append((module, module.__dict__.get("forward")))
        module.__dict__["forward"] = forward

    def wrap(self, path: str, forward: Callable[..., Any], inputs: bool, output: bool) -> Callable[..., Any]:
        """``forward`` with the hook events of ``path`` around it: its ``inputs`` event before the
        call and its ``output`` event after (each counted per call); a call from another thread,
        or from an ad-hoc ``call_module`` node, passes straight through."""
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
        return hooked

    def skippable(self, path: str, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` that honours the ``skip`` nodes of ``path`` (``forward`` itself when the graph
        has none): they run in its inputs event (set up by :meth:`wrap` around this), just before
        the call."""
        if path not in self._skipping:
            return forward
        skips = self._skipped_by

        def skipping(*args: Any, **kwargs: Any) -> Any:
            chosen = skips.pop(path, None)
            if chosen is None:
                return forward(*args, **kwargs)
            return self.skipped_output(path, chosen, forward, args, kwargs)

        skipping.__wrapped__ = forward
        return skipping

    def skipped_output(self, path: str, chosen: Dict[int, Tuple[Node, Any]], forward: Callable[..., Any],
                       args: tuple, kwargs: dict) -> Any:
        """The output of a call of ``path`` that the invokes in ``chosen`` skip (invoke -> (skip
        node, value)).

        When one invoke owns the whole batch, ``forward`` is not called: its value is the
        output. Otherwise the forward runs on the whole batch and each skipping invoke's rows
        of its output are overwritten with its value: a batched module cannot run on a subset
        of the rows without changing the shapes the other invokes see. Override point: the
        scan always runs the forward (on fake tensors) to check the values' shapes.
        """
        if self._whole:
            return next(iter(chosen.values()))[1]
        return self._overwrite(path, chosen, forward(*args, **kwargs))

    def _overwrite(self, path: str, chosen: Dict[int, Tuple[Node, Any]], result: Any) -> Any:
        """``result`` with each skipping invoke's rows replaced by its value (shapes checked)."""
        replaced, narrowed = {}, {}
        for invoke, (node, value) in chosen.items():
            rows = result if self._whole else narrow(result, self._table, invoke)
            _check_assignment(node, rows, value)
            narrowed[invoke], replaced[invoke] = rows, value
        if self._whole:
            return next(iter(replaced.values()))
        call = self._calls.get(("inputs", path), 1) - 1
        return write_back(result, replaced, narrowed, self._table, f"{display_path(path)}.skip() (call {call})")

    def _event(self, kind: str, path: str, value: Any) -> Any:
        calls, pair = self._calls, (kind, path)
        call = calls.get(pair, 0)
        calls[pair] = call + 1
        key = (kind, path, call)
        if self._iterating:
            self._copy_templates(kind, path, call)
        fed = self._fed.get(key)
        edits = self._edits.get(key) if self._edits else None  # no lookup when nothing edits
        if edits is None and self._plain:
            # The common case: one invoke owns the batch, nothing edits this value and nothing
            # is conditional, so no rows to narrow or write back and no event to open for edits.
            if fed is None:
                return _UNCHANGED
            values, done, users, pending, ready = self.values, self.done, self._users, self._pending, self._ready
            new = _UNCHANGED
            for node in fed:
                index = node.index
                rows = value
                if node.mutated:  # a gradient reaches it: the invoke's own copy goes on
                    rows = new = value.clone() if isinstance(value, torch.Tensor) else clone(value)
                done[index] = True
                values[index] = rows
                for user in users[index]:
                    later = user.index
                    pending[later] -= 1
                    if not pending[later]:
                        heappush(ready, later)
            nodes = self.nodes
            while ready:
                self._run(nodes[heappop(ready)])
            return new
        if fed is None and edits is None:
            return _UNCHANGED
        narrowed: Dict[Any, Any] = {}  # invoke -> the rows it was given
        self._open[key] = replaced = {}  # invoke -> what replaces them (set_output & co. add to it)
        try:
            if self._feeds:  # a subclass's feed() and drain() see every node
                for node in fed or ():
                    self.feed(node, self._rows(node, value, narrowed, replaced))
                self.drain()
            else:  # what feed() and drain() do, without a call per node
                values, done, users, pending = self.values, self.done, self._users, self._pending
                ready = self._ready
                for node in fed or ():
                    invoke = node.invoke
                    rows = value if self._whole else narrow(value, self._table, invoke)
                    narrowed[invoke] = rows
                    if node.mutated:
                        rows = replaced[invoke] = rows.clone() if isinstance(rows, torch.Tensor) else clone(rows)
                    index = node.index
                    values[index] = rows
                    done[index] = True
                    for user in users[index]:
                        pending[user.index] -= 1
                        if pending[user.index] == 0:
                            heappush(ready, user.index)
                nodes = self.nodes
                while ready:
                    self._run(nodes[heappop(ready)])
        finally:
            del self._open[key]
        done = self.done
        for node in edits or ():
            if not done[node.index]:
                late = [d.describe() for d in node.deps if not done[d.index]]
                raise OutOfOrderEditError(
                    f"{node.describe()} (recorded at {node.source() or 'unknown'}) edits "
                    f"{display_path(path)}.{kind} (call {call}) but depends on "
                    f"{', '.join(late) or 'a value'} computed after that module ran. An edit can "
                    "only use values available when the module runs."
                )
        if not replaced:
            return _UNCHANGED
        if self._whole:
            return next(iter(replaced.values()))
        return write_back(value, replaced, narrowed, self._table, f"{display_path(path)}.{kind} (call {call})")

    def _rows(self, node: Node, value: Any, narrowed: Dict[Any, Any], replaced: Dict[Any, Any]) -> Any:
        """The rows of a hook's ``value`` that ``node``'s invoke owns (its own copy if it edits them)."""
        invoke = node.invoke
        rows = value if self._whole else narrow(value, self._table, invoke)
        narrowed[invoke] = rows
        if node.mutated:
            rows = replaced[invoke] = clone(rows)
        return rows

    # -- iterations: copies of template nodes, per call, owned by this execution -----------

    def _copy_templates(self, kind: str, path: str, call: int) -> None:
        """At the first event of call ``call`` of an iteration's modules, copy its templates for it."""
        for iteration in self._iterating.get((kind, path), ()):
            instances = self._instances[iteration]
            stop = iteration.stop  # `call in iteration`, without the call
            if (call >= iteration.start and (stop is None or call < stop)
                    and (call - iteration.start) % iteration.step == 0 and call not in instances):
                instances[call] = copies = self._instantiate(iteration, call)
                pending = self._pending
                for node in copies:
                    if not pending[node.index] and node.op not in FED_OPS:
                        heappush(self._ready, node.index)

    def _instantiate(self, iteration: Iteration, call: int) -> List[Node]:
        """Copy ``iteration``'s template nodes for module call ``call``; return the copies.

        The copies are nodes of this execution only (indices past the graph's),
        registered for their hook events in this execution's tables, with pending
        counts that account for arguments computed earlier.
        """
        if self.nodes is self.graph.nodes:  # first copies: the graph's tables stay untouched
            self.nodes = list(self.nodes)
            self._fed = {key: list(nodes) for key, nodes in self._fed.items()}
            self._edits = {key: list(nodes) for key, nodes in self._edits.items()}
        copies: Dict[int, Node] = {}

        def bind(node: Node) -> Node:
            return copies[node.index] if node.iteration is iteration else node

        # Runs for every call of the iteration's modules (every generation step): loops, not
        # comprehensions or helpers, so that a template costs one call (copy_node).
        nodes, all_users, recorded, graph_users = self.nodes, self._users, len(self.graph.nodes), self.graph.users
        fed, edits = self._fed, self._edits
        created = []
        for template in iteration.nodes:
            op, target = template.op, template.target
            if op in MODULE_VALUE_OPS and target[1] is iteration:
                target = (target[0], call)
            if template._flat:
                args = []
                for a in template.args:
                    args.append(copies[a.index] if type(a) is Node and a.iteration is iteration else a)
                args, kwargs = tuple(args), template.kwargs
            else:
                args, kwargs = map_arg(template.args, bind), map_arg(template.kwargs, bind)
            deps = []  # the template's deps, each bound: the same order a fresh scan gives
            for dep in template.deps:
                deps.append(copies[dep.index] if dep.iteration is iteration else dep)
            cond = template.cond
            if cond is not None and cond.iteration is iteration:
                cond = copies[cond.index]
            node = copy_node(template, len(nodes), target, args, kwargs, tuple(deps), cond)
            nodes.append(node)
            all_users.append([])
            for dep in deps:
                if dep.index < recorded:
                    users = all_users[dep.index]
                    if users is graph_users[dep.index]:  # copy on write: the graph's list stays as recorded
                        users = all_users[dep.index] = list(users)
                    users.append(node)
                else:
                    all_users[dep.index].append(node)
            if op in MODULE_VALUE_OPS:  # what register() does for module values
                key = (EVENT_KIND[op], target[0], target[1])
                table = fed if op in FED_OPS else edits
                if key in table:
                    table[key].append(node)
                else:
                    table[key] = [node]
            elif op == "setitem" or op == "call_method" or op == "grad":
                register(node, fed, edits)
            copies[template.index] = node
            created.append(node)
        values, done, uses, pending = self.values, self.done, self._uses, self._pending
        for node in created:
            values.append(EMPTY)
            done.append(False)
        for node in created:
            uses.append(len(all_users[node.index]))
            waiting = 0
            for dep in node.deps:
                if not done[dep.index]:
                    waiting += 1
            pending.append(waiting)
        return created

    # -- execution ------------------------------------------------------------

    def module(self, path: str) -> torch.nn.Module:
        """The module at ``path``: in the wrapped model, or one attached beside it.

        Raises:
            AttributeError: No module has that path (torch's ``get_submodule`` message).
        """
        module = module_at(self.root, self.attached, path)
        if module is None:
            return self.root.get_submodule(path)  # raises its own, precise error
        return module

    def feed(self, node: Node, value: Any) -> None:
        """Give ``node`` its value (from a hook) and queue the users it made ready."""
        index = node.index
        self.values[index] = value
        self.done[index] = True
        pending, ready = self._pending, self._ready
        for user in self._users[index]:
            pending[user.index] -= 1
            if pending[user.index] == 0:
                heappush(ready, user.index)

    def drain(self) -> None:
        """Run every queued node, and the nodes they make ready, in recording order."""
        ready, nodes = self._ready, self.nodes
        while ready:
            self._run(nodes[heappop(ready)])

    def feed_apart(self, node: Node, value: Any) -> None:
        """Feed ``node`` and run only what that makes ready; nodes queued before wait.

        A gradient hook uses it: inside autograd's backward pass only what the
        gradient makes ready may run (autograd records nothing there).
        """
        waiting, self._ready = self._ready, []
        try:
            self.feed(node, value)
            self.drain()
        finally:
            self._ready = waiting

    def _run(self, node: Node) -> None:
        if self._guarded and self._skips(node):
            self._skip(node)
            return
        values = self.values
        op = node.op
        if node._flat:
            args = []  # a loop, not a comprehension: no extra frame per node
            for a in node.args:
                args.append(values[a.index] if type(a) is Node else a)
            kwargs = node.kwargs
        else:
            args = map_arg(node.args, lambda n: values[n.index])
            kwargs = map_arg(node.kwargs, lambda n: values[n.index])
        try:
            if op in self._inline:  # what the op methods of the same name do
                if op == "save":
                    value = args[0]
                elif op == "getitem":
                    value = args[0][args[1]]
                else:
                    args[0][args[1]] = args[2]
                    value = None
            else:
                value = getattr(self, op)(node, tuple(args), kwargs)
        except NNsightError:
            raise
        except Exception as error:
            raise InterventionError(
                f"{node.describe()}{' at ' + node.source() if node.where else ''} failed while the model "
                f"ran: {type(error).__name__}: {error}"
            ) from error
        uses, keep = self._uses, self.keep  # what _release() does, without its call
        for dep in node.deps:
            dep_index = dep.index
            uses[dep_index] -= 1
            if uses[dep_index] == 0 and not dep.saved and not keep:
                values[dep_index] = EMPTY
        if value is DEFERRED:
            return  # a hook feeds the value later (a gradient, during its backward pass)
        index = node.index
        self.done[index] = True
        users = self._users[index]
        if users or node.saved or self.keep:
            values[index] = value
            pending, ready = self._pending, self._ready
            for user in users:
                pending[user.index] -= 1
                if pending[user.index] == 0:
                    heappush(ready, user.index)

    def _release(self, node: Node) -> None:
        """Count one use of each argument of ``node``; free the values no one will read again."""
        uses, values, keep = self._uses, self.values, self.keep
        for dep in node.deps:
            index = dep.index
            uses[index] -= 1
            if uses[index] == 0 and not dep.saved and not keep:
                values[index] = EMPTY

    def _skip(self, node: Node) -> None:
        """Mark ``node`` as not run (its condition is false); its users are skipped in turn."""
        self._release(node)
        index = node.index
        self.done[index] = True
        self.skipped.add(index)
        pending, ready = self._pending, self._ready
        for user in self._users[index]:
            pending[user.index] -= 1
            if pending[user.index] == 0:
                heappush(ready, user.index)

    def skip_with_users(self, node: Node) -> None:
        """Mark ``node`` and everything computed from it as skipped (not run, by a false condition)."""
        stack = [node]
        while stack:
            current = stack.pop()
            if not self.done[current.index]:
                self.done[current.index] = True
                self.skipped.add(current.index)
                stack.extend(self._users[current.index])

    def _skips(self, node: Node) -> bool:
        """Whether ``node`` must not run: its condition is false, or an argument was skipped."""
        skipped = self.skipped
        if skipped:
            for dep in node.deps:
                if dep.index in skipped:
                    return True
        cond = node.cond
        if cond is None:
            return False
        try:
            return not bool(self.values[cond.index])
        except Exception as error:  # noqa: BLE001 - reported with the condition's line
            raise InterventionError(
                f"the condition of tracer.cond ({cond.describe()}{', recorded at ' + cond.source() if cond.where else ''}) "
                f"is not a single true/false value: {type(error).__name__}: {error}. Reduce it to one "
                "element, e.g. `(h > 0).all()` or `h[0, 0] > 0`."
            ) from error

    # -- after the run ---------------------------------------------------------------

    def results(self) -> Dict[int, Any]:
        """The values this execution leaves, by node index of the graph: saved values (every
        value with ``keep=True``); a saved iteration template's value is the list of its
        copies' values, one per call, in call order."""
        values, keep = self.values, self.keep
        results = {}
        for node in self.graph.nodes if keep else self.graph.saves:  # loops: this runs for every trace
            if node.iteration is None:
                value = values[node.index]
                if value is not EMPTY:
                    results[node.index] = value
        for iteration, instances in self._instances.items():
            calls = sorted(instances)
            for position, template in enumerate(iteration.nodes):
                if template.saved or self.keep:
                    results[template.index] = [values[instances[call][position].index] for call in calls]
        return results

    def check_complete(self) -> None:
        """Raise if any node waited on a module call that never happened.

        Raises:
            MissedCallError: Naming the module, the call and how often it ran.
        """
        optional, done = self.graph.optional, self.done
        if False not in done:  # every node ran (the common case, found without a Python loop)
            if self._grads is not None:
                self._grads.check_complete()
            return
        for (kind, path, call), nodes in self.graph.fed.items():
            for node in nodes:
                if not done[node.index] and node.index not in optional:
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
            if not done[node.index] and node.iteration is None and node.index not in optional:
                raise MissedCallError(f"{node.describe()} never ran: one of its inputs was never computed")

    def _check_iteration(self, iteration: Iteration) -> None:
        if not iteration.modules:
            return
        instances = self._instances[iteration]
        seen = sorted(instances)
        for call in seen:
            for node in instances[call]:
                if not self.done[node.index] and node.op in FED_OPS:
                    raise MissedCallError(f"{node.describe()} was never reached, although the other "
                                          f"modules of its iteration ({iteration}) ran that call.")
        expected = iteration.expected()
        missing = ([] if seen else [iteration.start]) if expected is None else \
            [k for k in expected if k not in seen]
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
        return self._grads.register(node, args[0])

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
        self._event_of(node)[node.invoke] = args[1]
        return args[1]

    def set_inputs(self, node: Node, args: tuple, kwargs: dict) -> Any:
        new = args[1]
        if not (isinstance(new, (tuple, list)) and len(new) == 2 and isinstance(new[0], (tuple, list))
                and isinstance(new[1], dict)):
            raise BatchError(f"{node.describe()}: `.inputs` must be assigned an (args, kwargs) pair, "
                             f"e.g. `.inputs = ((x,), {{}})`; got {type(new).__name__}.")
        new = (tuple(new[0]), new[1])
        _check_assignment(node, args[0], new)
        self._event_of(node)[node.invoke] = new
        return new

    def set_input(self, node: Node, args: tuple, kwargs: dict) -> Any:
        (pos, kw), value = args
        if not pos:
            raise BatchError(f"{node.describe()}: the module received no positional argument "
                             "(only keywords); assign `.inputs = (args, kwargs)` instead.")
        _check_assignment(node, pos[0], value)
        new = ((value,) + tuple(pos[1:]), kw)
        self._event_of(node)[node.invoke] = new
        return new

    def skip(self, node: Node, args: tuple, kwargs: dict) -> Any:
        self._event_of(node)  # only inside the module's inputs event
        path = node.target[0]
        self._skipped_by.setdefault(path, {})[node.invoke] = (node, args[1])
        return args[1]

    def _event_of(self, node: Node) -> Dict[Any, Any]:
        """The replacements of the open hook event ``node`` edits (invoke -> new value)."""
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


_ASSIGNED = {"set_output": "output", "set_input": "input", "set_inputs": "inputs", "skip": "output"}


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
