"""Graph and Node: the intervention program recorded inside ``model.trace(...)``.

The graph is data. Each :class:`Node` names its operation from the closed
vocabulary :data:`OPS`; its arguments are constants or other nodes. The
:class:`~nnsight_core.interleaver.Interleaver` runs a graph alongside the
model's forward pass: ``output`` and ``inputs`` nodes get their values from its
hooks, and every other node runs as ``getattr(interleaver, node.op)(node, args,
kwargs)``, so those ops are also the Interleaver's override points.
"""

from __future__ import annotations

import linecache
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from ._tree import map_structure

__all__ = ["Graph", "Node", "Iteration", "OPS", "MODULE_VALUE_OPS", "EMPTY", "display_path"]

#: The closed vocabulary of node operations, with what ``target`` and ``args`` hold.
OPS: Dict[str, str] = {
    "output": "An invoke's rows of a module's output at one call. target: (module path, call index); "
    "no args. The Interleaver's forward hook supplies the value.",
    "inputs": "An invoke's rows of what a module received at one call, as (args, kwargs). "
    "target: (module path, call index); no args. The forward pre-hook supplies the value.",
    "set_output": "Replace an invoke's rows of a module's output. target: (module path, call index); "
    "args: (the output node, new value).",
    "set_inputs": "Replace what a module receives. target: (module path, call index); "
    "args: (the inputs node, new (args, kwargs)).",
    "set_input": "Replace a module's first positional argument. target: (module path, call index); "
    "args: (the inputs node, new value).",
    "operator": "A Python operator. target: its name in the standard `operator` module ('add', 'neg', ...).",
    "getitem": "value[index]. args: (value, index).",
    "setitem": "value[index] = new, in place. args: (value, index, new).",
    "getattr": "An attribute of a value. target: attribute name; args: (value,).",
    "call_method": "A method call. target: method name; args: (self, *args).",
    "call_function": "A torch function (recorded through __torch_function__). target: the function.",
    "call_module": "An ad-hoc call of a submodule, not hooked. target: module path; args: call arguments.",
    "save": "Keep args[0]'s value after the trace. args: (value,).",
    "grad": "The gradient of args[0] (a tensor) in the first `backward` recorded after this node; "
    "a tensor hook supplies it while that backward pass runs. args: (value,).",
    "set_grad": "Replace a gradient while the backward pass runs (what flows on to earlier values). "
    "args: (the grad node, new gradient).",
    "backward": "Run autograd's backward pass from args[0] (tensor.backward). args: (tensor, *backward "
    "args); kwargs: backward's keywords (retain_graph=...).",
    "apply": "A Python function given by the user (tracer.apply, tracer.log), called on concrete "
    "values. target: the function; args/kwargs: its arguments.",
    "stop": "End the execution early (tracer.stop). args: the nodes that must run first; the model "
    "computes nothing after it.",
}

#: Ops whose value belongs to one module call; they run inside that module's hook.
MODULE_VALUE_OPS = frozenset({"output", "inputs", "set_output", "set_inputs", "set_input"})
_FED_OPS = frozenset({"output", "inputs"})
# Ops through which an in-place edit still reaches the value they were taken from.
_VIEW_OPS = frozenset({"getitem", "getattr", "save"})
_VIEW_METHODS = frozenset(
    {"view", "view_as", "reshape", "transpose", "permute", "select", "narrow", "unsqueeze",
     "squeeze", "flatten", "unflatten", "expand", "expand_as", "t", "T", "mT", "unbind",
     "split", "chunk", "diagonal", "movedim", "swapaxes", "as_strided", "__getitem__", "detach"}
)


class _Empty:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<empty>"


#: Sentinel for "no value", held by a node not yet run or whose value was freed.
EMPTY: Any = _Empty()


class Iteration:
    """A range of module calls that some nodes apply to: each call gets its own copy of them.

    ``tracer.iter[1:3]``, ``tracer.all()`` and ``envoy.all()`` record *template*
    nodes whose module values name an Iteration instead of one call. While the
    model runs, the first time a module of the iteration reaches a call ``k``
    in its range, the Interleaver copies the templates for ``k``: every module
    value the templates name is then call ``k`` of that module (generation
    step ``k``, denoising step ``k``). A saved template collects one value per
    call, in call order, as a list.

    Attributes:
        start: First call.
        stop: Call to stop before, or None for every call the model makes.
        step: Stride between calls.
        nodes: The template nodes, in recording order.
        modules: ``(event kind, module path)`` pairs the templates read or edit.
        instances: Call index to the nodes copied for it (during execution).
        seen: The calls that got copies in the last execution, in order.
    """

    __slots__ = ("start", "stop", "step", "nodes", "modules", "instances", "seen", "missed")

    def __init__(self, start: int = 0, stop: Optional[int] = None, step: int = 1) -> None:
        self.start, self.stop, self.step = start, stop, step
        self.nodes: List[Node] = []
        self.modules: set = set()
        self.instances: Dict[int, List[Node]] = {}
        self.seen: List[int] = []
        self.missed: List[str] = []

    def __contains__(self, call: int) -> bool:
        return (call >= self.start and (self.stop is None or call < self.stop)
                and (call - self.start) % self.step == 0)

    def expected(self) -> Optional[range]:
        """The calls the iteration must see, or None when it is open-ended."""
        return None if self.stop is None else range(self.start, self.stop, self.step)

    def __str__(self) -> str:
        if self.stop is None:
            every = "every call" if self.step == 1 else f"every {self.step}th call"
            return every if self.start == 0 else f"{every} from call {self.start}"
        calls = list(range(self.start, self.stop, self.step))
        return f"calls {', '.join(map(str, calls))}" if len(calls) != 1 else f"call {calls[0]}"

    __repr__ = __str__


def display_path(path: str) -> str:
    """``'transformer.h.0.mlp'`` -> ``'model.transformer.h[0].mlp'``."""
    if not path:
        return "model"
    return "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))


class Node:
    """One operation of the intervention program.

    Attributes:
        graph: The graph that owns the node.
        index: Position in ``graph.nodes``; execution of simultaneously ready
            nodes follows it, i.e. the order the user wrote them.
        op: Operation name, a key of :data:`OPS`.
        target: Operation-specific target (see :data:`OPS`).
        args: Positional arguments: constants, or nodes nested in tuples, lists,
            dicts and slices.
        kwargs: Keyword arguments, likewise.
        deps: The distinct nodes ``args``/``kwargs`` refer to.
        users: Nodes that take this node as an argument.
        invoke: Index of the invoke that recorded the node, or None.
        saved: Whether the value outlives the trace.
        where: ``(filename, line)`` of the user's code that recorded it.
        value: The computed value, or :data:`EMPTY`.
    """

    __slots__ = (
        "graph", "index", "op", "target", "args", "kwargs", "deps", "users", "invoke",
        "saved", "where", "value", "done", "mutated", "iteration", "cond", "skipped", "_pending",
        "_uses_left", "_flat",
    )

    def __init__(self, graph: Graph, index: int, op: str, target: Any, args: tuple,
                 kwargs: dict, deps: tuple, invoke: Optional[int], where: Optional[Tuple[str, int]],
                 flat: bool) -> None:
        self.graph = graph
        self.index = index
        self.op = op
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.deps = deps
        self.users: List[Node] = []
        self.invoke = invoke
        self.saved = op == "save"
        self.where = where
        self.value: Any = EMPTY
        self.done = False
        #: True when an in-place edit reaches this module value, which is then copied first.
        self.mutated = False
        #: The Iteration this node is a template of, or None for a node that runs once.
        self.iteration: Optional[Iteration] = None
        #: The condition node of the ``tracer.cond`` block that recorded it (it runs only if true).
        self.cond: Optional[Node] = None
        #: Set while running when the node's condition was false (or an argument was skipped).
        self.skipped = False
        self._pending = len(deps)
        self._uses_left = 0
        self._flat = flat

    @property
    def name(self) -> str:
        """Short label used in printed graphs, e.g. ``%3_add``."""
        label = self.target if self.op == "operator" else self.op
        return f"%{self.index}_{label}"

    def describe(self) -> str:
        """A one-line, user-facing description, e.g. ``model.layer1.output (call 0, invoke 1)``."""
        if self.op in MODULE_VALUE_OPS:
            path, call = self.target
            attr = {"set_output": "output", "set_inputs": "inputs", "set_input": "input"}.get(self.op, self.op)
            verb = "assignment to " if self.op.startswith("set_") else ""
            calls = call if type(call) is Iteration else f"call {call}"
            return f"{verb}{display_path(path)}.{attr} ({calls}, invoke {self.invoke})"
        label = f"node %{self.index} {self.op}"
        if self.op in ("operator", "getattr", "call_method", "call_module"):
            label += f"[{self.target}]"
        elif self.op == "call_function":
            label += f"[{getattr(self.target, '__name__', self.target)}]"
        source = self.args[0] if self.args else None
        for _ in range(8):
            if type(source) is not Node:
                break
            if source.op in MODULE_VALUE_OPS:
                return f"{label} of {source.describe()}"
            source = source.args[0] if source.args else None
        return label

    def source(self) -> str:
        """The user's line that recorded this node, as ``file:line: code``, or ''."""
        if self.where is None:
            return ""
        filename, line = self.where
        code = linecache.getline(filename, line).strip()
        return f"{filename}:{line}" + (f": `{code}`" if code else "")

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.describe()}>"


class Graph:
    """The ordered list of nodes one trace recorded, plus its batch layout.

    Example:
        >>> with model.trace(x) as tracer:
        ...     h = model.layer1.output.save()
        >>> print(tracer.graph)
        %0   model.layer1.output (call 0, invoke 0)
        %1   save(%0)   [saved]

    Attributes:
        nodes: All nodes in recording order.
        rows: ``(start, stop)`` batch rows of each invoke.
        batch_size: Rows in the batched forward pass.
        layouts: Other dimension-0 sizes the execution makes of the batch, as
            ``size -> (blocks, repeats)`` (see ``NNsightModel.batch_layout``).
        fed: ``(op, module path, call)`` to the ``output``/``inputs`` nodes fed by that hook event.
        edits: ``(op, module path, call)`` to nodes that must run inside that event.
        iterations: The :class:`Iteration` blocks whose template nodes run once per call.
        optional: Indices of nodes allowed not to run, e.g. the cache entries of modules
            that did not run (``tracer.cache()``).
        conds: Condition nodes of the ``tracer.cond`` blocks open while recording (innermost last).
        guarded: Whether any node is conditional (execution then checks conditions).
        gradients: The ``grad`` nodes, in recording order.
        recording: True while the user's code is still adding nodes.
    """

    def __init__(self) -> None:
        self.nodes: List[Node] = []
        self.rows: List[Tuple[int, int]] = []
        self.batch_size = 0
        self.layouts: Dict[int, Tuple[int, int]] = {}
        self.fed: Dict[Tuple[str, str, int], List[Node]] = {}
        self.edits: Dict[Tuple[str, str, int], List[Node]] = {}
        self.iterations: List[Iteration] = []
        self.optional: Set[int] = set()
        self.conds: List[Node] = []
        self.guarded = False
        self.gradients: List[Node] = []
        self.recording = True
        self._copies_from: Optional[int] = None  # index of the first node copied from a template

    def create_node(self, op: str, target: Any, args: tuple = (), kwargs: Optional[dict] = None,
                    invoke: Optional[int] = None, where: Optional[Tuple[str, int]] = None,
                    cond: Any = EMPTY) -> Node:
        """Append a node; ``args``/``kwargs`` may nest other nodes of this graph.

        ``cond`` is the condition node the new node runs under; by default the
        innermost open ``tracer.cond`` block's (module values fed by hooks are
        never conditional).
        """
        if op not in OPS:
            raise ValueError(f"unknown graph operation {op!r}; the vocabulary is {sorted(OPS)}")
        kwargs = kwargs or {}
        deps: Dict[int, Node] = {}
        flat = True
        for a in args:
            kind = type(a)
            if kind is Node:
                deps[a.index] = a
            elif kind in _CONTAINERS and _collect(a, deps):
                flat = False
        if kwargs and _collect(kwargs, deps):
            flat = False
        if cond is EMPTY:
            cond = self.conds[-1] if self.conds and op not in _FED_OPS else None
        if cond is not None:
            deps[cond.index] = cond
        node = Node(self, len(self.nodes), op, target, args if type(args) is tuple else tuple(args),
                    kwargs, tuple(deps.values()), invoke, where, flat)
        if cond is not None:
            node.cond = cond
            self.guarded = True
        for dep in node.deps:
            dep.users.append(node)
        self.nodes.append(node)
        if self.iterations and _template_of(node) is not None:
            return node  # registered when it is copied for a call (instantiate)
        if op in MODULE_VALUE_OPS:
            key = (_EVENT_KIND[op], target[0], target[1])
            (self.fed if op in _FED_OPS else self.edits).setdefault(key, []).append(node)
        elif op == "setitem" or (op == "call_method" and _is_inplace(target)):
            root = _mutation_root(args[0] if args else None)
            if root is not None:
                key = (_EVENT_KIND[root.op], root.target[0], root.target[1])
                self.edits.setdefault(key, []).append(node)
                if root.op in _FED_OPS:
                    root.mutated = True
        elif op == "grad":
            self.gradients.append(node)
            root = _mutation_root(args[0] if args else None)
            if root is not None and root.op in _FED_OPS:
                # Its gradient hook needs the invoke's own copy of the rows on the model's path.
                root.mutated = True
        return node

    def iteration(self, start: int = 0, stop: Optional[int] = None, step: int = 1) -> Iteration:
        """Add an :class:`Iteration` over calls ``start:stop:step`` (``stop=None``: every call)."""
        iteration = Iteration(start, stop, step)
        self.iterations.append(iteration)
        return iteration

    def instantiate(self, iteration: Iteration, call: int) -> List[Node]:
        """Copy ``iteration``'s template nodes for module call ``call``; return the copies.

        The copies are ordinary nodes (registered for their hook events) whose
        pending counts already account for arguments computed earlier.
        """
        if self._copies_from is None:
            self._copies_from = len(self.nodes)
        copies: Dict[int, Node] = {}
        created = []

        def bind(value: Any) -> Any:
            if type(value) is Node and value.iteration is iteration:
                return copies[value.index]
            return value

        for template in iteration.nodes:
            target = template.target
            if template.op in MODULE_VALUE_OPS and target[1] is iteration:
                target = (target[0], call)
            node = self.create_node(template.op, target, map_structure(template.args, bind),
                                    map_structure(template.kwargs, bind), template.invoke, template.where,
                                    cond=bind(template.cond))
            node.saved = template.saved
            copies[template.index] = node
            created.append(node)
        for node in created:
            node._uses_left = len(node.users)
            node._pending = sum(1 for dep in node.deps if not dep.done)
        iteration.instances[call] = created
        return created

    def drop_instances(self) -> None:
        """Collect saved templates' values (one per call) and remove every copied node."""
        for iteration in self.iterations:
            iteration.seen = sorted(iteration.instances)
            iteration.missed = []
            position = {t.index: i for i, t in enumerate(iteration.nodes)}
            for template in iteration.nodes:
                if template.saved:
                    template.value = [iteration.instances[k][position[template.index]].value
                                      for k in iteration.seen]
            for call in iteration.seen:
                for node in iteration.instances[call]:
                    if not node.done and node.op in _FED_OPS:
                        iteration.missed.append(node.describe())
            iteration.instances = {}
        recorded, self._copies_from = self._copies_from, None
        if recorded is None:
            return
        for node in self.nodes[recorded:]:
            for dep in node.deps:
                if dep.index < recorded:
                    dep.users.remove(node)
        del self.nodes[recorded:]
        for table in (self.fed, self.edits):
            for key in [k for k, nodes in table.items() if any(n.index >= recorded for n in nodes)]:
                kept = [n for n in table[key] if n.index < recorded]
                if kept:
                    table[key] = kept
                else:
                    del table[key]

    def rewrite_as_method_call(self, node: Node, args: tuple, kwargs: dict) -> Node:
        """Turn an unused ``getattr`` node into a ``call_method`` of that attribute."""
        obj = node.args[0]
        if self.nodes and self.nodes[-1] is node and not node.users:
            self.nodes.pop()
            for dep in node.deps:
                dep.users.remove(node)
        return self.create_node("call_method", node.target, (obj,) + tuple(args), kwargs,
                                invoke=node.invoke, where=node.where)

    def reset(self) -> List[int]:
        """Prepare every node for a (new) execution; return the indices of those ready at once.

        Ready at once are nodes with no node arguments, except ``output``/``inputs``
        nodes, whose values only a module's hook can supply. The list is sorted,
        hence a valid heap.
        """
        ready = []
        if self.guarded:
            for node in self.nodes:
                node.skipped = False
        if self.iterations:
            return self._reset_with_iterations()
        for node in self.nodes:
            node.value = EMPTY
            node.done = False
            node._pending = pending = len(node.deps)
            node._uses_left = len(node.users)
            if not pending and node.op not in _FED_OPS:
                ready.append(node.index)
        return ready

    def _reset_with_iterations(self) -> List[int]:
        ready = []
        for node in self.nodes:
            node.value = EMPTY
            node.done = False
            node._pending = pending = len(node.deps)
            # A value that templates use must outlive all their copies: never free it early.
            used_by_templates = any(user.iteration is not None for user in node.users)
            node._uses_left = _KEEP if used_by_templates else len(node.users)
            if node.iteration is None and not pending and node.op not in _FED_OPS:
                ready.append(node.index)
        for iteration in self.iterations:
            iteration.instances = {}
        return ready

    def release(self) -> None:
        """Drop every value but saved ones after execution; the structure stays printable."""
        self.recording = False
        for node in self.nodes:
            if not node.saved:
                node.value = EMPTY

    def modules(self) -> Iterator[Tuple[str, str]]:
        """Yield each distinct ``(event kind, module path)`` the graph needs a hook for."""
        seen = set()
        pairs = [(kind, path) for kind, path, _ in list(self.fed) + list(self.edits)]
        for iteration in self.iterations:
            pairs.extend(sorted(iteration.modules))
        for pair in pairs:
            if pair not in seen:
                seen.add(pair)
                yield pair

    def to_dot(self) -> str:
        """The graph as Graphviz DOT source (see :func:`nnsight_core.vis.to_dot`)."""
        from .vis import to_dot  # noqa: PLC0415 - vis imports this module

        return to_dot(self)

    def vis(self, path: Any = None, format: str = "svg") -> Any:
        """Draw the graph as SVG, PNG or PDF with Graphviz (see :func:`nnsight_core.vis.render`).

        Returns the image bytes, or writes ``path`` and returns it as a ``Path``.
        """
        from .vis import render  # noqa: PLC0415 - vis imports this module

        return render(self, path, format)

    def to_json(self, indent: Optional[int] = None) -> str:
        """The graph as JSON: data only, no pickle (see :func:`nnsight_core.serialize.to_json`)."""
        from .serialize import to_json  # noqa: PLC0415 - serialize imports this module

        return to_json(self, indent)

    @staticmethod
    def from_json(text: Any, device: Any = None) -> Graph:
        """Rebuild a graph from :meth:`to_json`'s text (see :func:`nnsight_core.serialize.from_json`)."""
        from .serialize import from_json  # noqa: PLC0415 - serialize imports this module

        return from_json(text, device)

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        lines = []
        for node in self.nodes:
            if node.op in MODULE_VALUE_OPS:
                body = node.describe()
                if node.args:
                    body += " <- " + ", ".join(_fmt(a) for a in node.args[1:])
            else:
                target = getattr(node.target, "__qualname__", node.target)
                parts = [_fmt(a) for a in node.args] + [f"{k}={_fmt(v)}" for k, v in node.kwargs.items()]
                body = f"{node.op}[{target}]({', '.join(parts)})" if target is not None else f"{node.op}({', '.join(parts)})"
            flag = "   [saved]" if node.saved else ""
            lines.append(f"%{node.index:<3} {body}{flag}")
        return "\n".join(lines) if lines else "<empty graph>"


# Which hook event (a module's inputs or its output) each module-value op belongs to.
_EVENT_KIND = {"output": "output", "set_output": "output",
               "inputs": "inputs", "set_inputs": "inputs", "set_input": "inputs"}
_CONTAINERS = frozenset({tuple, list, dict, slice})


# Uses-left count of a value that template nodes read: larger than any number of copies.
_KEEP = 1 << 40


def _template_of(node: Node) -> Optional[Iteration]:
    """Mark ``node`` as a template of the iteration it belongs to (if any) and return that iteration.

    A module value recorded for an Iteration is a template, and so is every node
    computed from a template.

    Raises:
        InvokeError: The node mixes templates of two different iterations.
    """
    iteration = None
    if node.op in MODULE_VALUE_OPS and type(node.target[1]) is Iteration:
        iteration = node.target[1]
    for dep in node.deps:
        if dep.iteration is not None and dep.iteration is not iteration:
            if iteration is not None:
                from .errors import InvokeError  # noqa: PLC0415 - errors is a leaf; keep graph import-light

                raise InvokeError(f"{node.describe()} combines values of two iterations ({iteration} "
                                  f"and {dep.iteration}); use one iteration block for values that "
                                  "belong together.")
            iteration = dep.iteration
    if iteration is not None:
        node.iteration = iteration
        iteration.nodes.append(node)
        if node.op in MODULE_VALUE_OPS and node.target[1] is iteration:
            iteration.modules.add((_EVENT_KIND[node.op], node.target[0]))
        # In-place edits of templates mark nothing here: their copies mark their own roots.
    return iteration


def _collect(value: Any, deps: Dict[int, Node]) -> bool:
    found = False
    kind = type(value)
    if kind is Node:
        deps[value.index] = value
        return True
    if kind is tuple or kind is list:
        for v in value:
            found |= _collect(v, deps)
    elif kind is dict:
        for v in value.values():
            found |= _collect(v, deps)
    elif kind is slice:
        for v in (value.start, value.stop, value.step):
            found |= _collect(v, deps)
    return found


def _is_inplace(method: str) -> bool:
    return method.endswith("_") and not method.startswith("__")


def _mutation_root(value: Any) -> Optional[Node]:
    """The module-value node an in-place edit of ``value`` would change, if any."""
    while type(value) is Node:
        if value.op in MODULE_VALUE_OPS:
            return value
        if value.op in _VIEW_OPS or (value.op == "call_method" and value.target in _VIEW_METHODS):
            value = value.args[0] if value.args else None
        else:
            return None
    return None


def _fmt(value: Any) -> str:
    if type(value) is Node:
        return f"%{value.index}"
    if type(value) in (tuple, list):
        inner = ", ".join(_fmt(v) for v in value)
        return f"({inner})" if type(value) is tuple else f"[{inner}]"
    if type(value) is slice:
        return ":".join("" if v is None else _fmt(v) for v in (value.start, value.stop, value.step)).rstrip(":") or ":"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"tensor{tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
