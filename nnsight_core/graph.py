"""Graph and Node: the intervention program recorded inside ``model.trace(...)``.

The graph is data, and only data. Each :class:`Node` names its operation from
the closed vocabulary :data:`OPS`; its arguments are constants or other nodes.
Nothing here holds the state of a run: the
:class:`~nnsight_core.interleaver.Interleaver` that executes a graph keeps the
values, readiness counts and batch rows of that one execution (as torch.fx's
``Interpreter`` keeps its ``env``), so one graph can run several times, also
concurrently. While the model runs, ``output`` and ``inputs`` nodes get their
values from the Interleaver's hooks, and every other node runs as
``getattr(interleaver, node.op)(node, args, kwargs)``, so those ops are also
the Interleaver's override points.

Higher layers add ways to write a graph through ``Graph.extensions``
(``nnsight_core.serialize`` adds JSON, ``nnsight_core.vis`` adds pictures).
"""

from __future__ import annotations

import linecache
import weakref
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Set, Tuple

from ._tree import map_structure
from .errors import InvokeError

__all__ = ["Graph", "Node", "Iteration", "OPS", "MODULE_VALUE_OPS", "FED_OPS", "EVENT_KIND", "EMPTY",
           "display_path", "format_value", "dependencies", "make_node", "copy_node", "register", "map_arg",
           "nodes_in", "format_location"]

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
    "skip": "Do not run a module's forward for an invoke's rows at one call: its output there is "
    "args[1] (envoy.skip(value)). target: (module path, call index); args: (the inputs node, value). "
    "Runs in the module's inputs event; when the invoke owns the whole batch the forward is not "
    "called, otherwise it runs and the invoke's rows of its output are overwritten.",
    "operator": "A Python operator. target: its name in the standard `operator` module ('add', 'neg', ...).",
    "getitem": "value[index]. args: (value, index).",
    "setitem": "value[index] = new, in place. args: (value, index, new).",
    "getattr": "An attribute of a value. target: attribute name; args: (value,).",
    "call_method": "A method call. target: method name; args: (self, *args).",
    "call_function": "A torch function (recorded through __torch_function__). target: the function.",
    "call_module": "An ad-hoc call of a submodule, not hooked. target: module path; args: call arguments.",
    "save": "Keep args[0]'s value after the trace if the condition the node runs under holds "
    "(`.save()` inside a `tracer.cond` block; elsewhere `.save()` marks the saved node itself: "
    "`Node.saved`). args: (value,).",
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
MODULE_VALUE_OPS = frozenset({"output", "inputs", "set_output", "set_inputs", "set_input", "skip"})
#: The module-value ops whose value a hook supplies (the others replace a module value).
FED_OPS = frozenset({"output", "inputs"})
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


#: Sentinel for "no value": a node not yet run, or whose value was freed.
EMPTY: Any = _Empty()


class Iteration:
    """A range of module calls that some nodes apply to: each call gets its own copy of them.

    ``tracer.iter[1:3]``, ``tracer.all()`` and ``envoy.all()`` record *template*
    nodes whose module values name an Iteration instead of one call. While the
    model runs, the first time a module of the iteration reaches a call ``k``
    in its range, the Interleaver copies the templates for ``k`` (the copies
    belong to that execution, not to the graph): every module value the
    templates name is then call ``k`` of that module (generation step ``k``,
    denoising step ``k``). A saved template collects one value per call, in
    call order, as a list.

    Attributes:
        start: First call.
        stop: Call to stop before, or None for every call the model makes.
        step: Stride between calls.
        nodes: The template nodes, in recording order.
        modules: ``(event kind, module path)`` pairs the templates read or edit.
    """

    __slots__ = ("start", "stop", "step", "nodes", "modules")

    def __init__(self, start: int = 0, stop: Optional[int] = None, step: int = 1) -> None:
        self.start, self.stop, self.step = start, stop, step
        self.nodes: List[Node] = []
        self.modules: set = set()

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


def format_location(where: Optional[Tuple[str, int]]) -> str:
    """``(filename, line)`` as ``file:line: `code```, the line's source quoted when readable; or ''."""
    if where is None:
        return ""
    filename, line = where
    code = linecache.getline(filename, line).strip()
    return f"{filename}:{line}" + (f": `{code}`" if code else "")


def map_arg(value: Any, fn: Callable[[Node], Any]) -> Any:
    """Apply ``fn`` to every :class:`Node` inside nested arguments (tuple, list, dict, slice);
    other leaves stay as they are."""
    return map_structure(value, lambda leaf: fn(leaf) if type(leaf) is Node else leaf)


def dependencies(args: tuple, kwargs: dict) -> Tuple[Dict[int, Node], bool]:
    """The distinct nodes inside ``args`` and ``kwargs`` (index to node, in order), and whether
    none of them is nested inside a container (a node's ``_flat``: execution then reads its
    arguments without walking them)."""
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
    return deps, flat


def nodes_in(value: Any) -> List[Node]:
    """The distinct nodes inside nested arguments (tuple, list, dict, slice), in order."""
    found: Dict[int, Node] = {}
    _collect(value, found)
    return list(found.values())


def display_path(path: str) -> str:
    """``'transformer.h.0.mlp'`` -> ``'model.transformer.h[0].mlp'``."""
    if not path:
        return "model"
    return "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))


class Node:
    """One operation of the intervention program (structure only: no run state).

    A node refers to earlier nodes only (its arguments, its condition) and to its graph
    weakly, and its graph keeps the ``users`` lists: so a graph is free of reference
    cycles (without iterations) and is freed as soon as nothing uses it, without waiting
    for Python's cycle collector, which would otherwise run every trace or two and walk
    every node of every graph.

    Attributes:
        graph: The graph that owns the node (None once that graph is gone).
        index: Position in ``graph.nodes``; execution of simultaneously ready
            nodes follows it, i.e. the order the user wrote them.
        op: Operation name, a key of :data:`OPS`.
        target: Operation-specific target (see :data:`OPS`).
        args: Positional arguments: constants, or nodes nested in tuples, lists,
            dicts and slices.
        kwargs: Keyword arguments, likewise.
        deps: The distinct nodes ``args``/``kwargs`` refer to.
        users: Nodes of the graph that take this node as an argument (kept by the graph,
            in its ``users``; an execution's copies of iteration templates have none here).
        invoke: Index of the invoke that recorded the node, or None.
        saved: Whether the value outlives the trace (set by ``.save()``, see
            :meth:`Graph.save`; a ``save`` node is always saved).
        where: ``(filename, line)`` of the user's code that recorded it.
        mutated: Whether an in-place edit (or a gradient) reaches this module value,
            which each execution then copies before handing it out.
        iteration: The :class:`Iteration` this node is a template of, or None.
        cond: The condition node of the ``tracer.cond`` block that recorded it, or None.
    """

    __slots__ = (
        "_graph", "index", "op", "target", "args", "kwargs", "deps", "invoke",
        "saved", "where", "mutated", "iteration", "cond", "_flat",
    )

    def __init__(self, graph: Graph, index: int, op: str, target: Any, args: tuple,
                 kwargs: dict, deps: tuple, invoke: Optional[int], where: Optional[Tuple[str, int]],
                 flat: bool) -> None:
        self._graph = graph._ref  # a weak reference: see the class docstring
        self.index = index
        self.op = op
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.deps = deps
        self.invoke = invoke
        self.saved = op == "save"
        self.where = where
        self.mutated = False
        self.iteration: Optional[Iteration] = None
        self.cond: Optional[Node] = None
        # True when no argument nests a node inside a container (the fast path of execution).
        self._flat = flat

    @property
    def graph(self) -> Optional[Graph]:
        """The graph that owns the node (None once nothing uses that graph any more)."""
        return self._graph()

    @property
    def users(self) -> List[Node]:
        """The nodes of the graph that take this node as an argument, in recording order."""
        graph = self._graph()
        if graph is None or self.index >= len(graph.users) or graph.nodes[self.index] is not self:
            return []  # a copy an execution made of an iteration template, or a node of a gone graph
        return graph.users[self.index]

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
            if self.op == "skip":
                return f"{display_path(path)}.skip() ({calls}, invoke {self.invoke})"
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
        return format_location(self.where)

    def at(self) -> str:
        """`` (recorded at file:line: code)`` for messages, or '' when the line is unknown."""
        where = format_location(self.where)
        return f" (recorded at {where})" if where else ""

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.describe()}>"


class Graph:
    """The ordered list of nodes one trace recorded: pure structure, reusable across executions.

    Example:
        >>> with model.trace(x) as tracer:
        ...     h = model.layer1.output.save()
        >>> print(tracer.graph)
        %0   model.layer1.output (call 0, invoke 0)   [saved]

    Attributes:
        nodes: All nodes in recording order.
        users: Per node (by index), the nodes that take it as an argument (``node.users``).
        rows: ``(start, stop)`` batch rows each invoke had when it was recorded (their
            number is the graph's number of invokes; an execution takes its rows from
            the inputs it is given).
        fed: ``(op, module path, call)`` to the ``output``/``inputs`` nodes fed by that hook event.
        edits: ``(op, module path, call)`` to nodes that must run inside that event.
        iterations: The :class:`Iteration` blocks whose template nodes run once per call.
        optional: Indices of nodes allowed not to run, e.g. the cache entries of modules
            that did not run (``tracer.cache()``).
        guarded: Whether any node is conditional (execution then checks conditions).
        gradients: The ``grad`` nodes, in recording order.
        starts: The nodes an execution can run at once: no node arguments, no module value.
        saves: The saved nodes (``.save()``'s: the values an execution leaves), in the order
            they were saved.
        assignments: The nodes that replace a value or edit one in place (``set_output``,
            ``set_inputs``, ``set_input``, ``skip``, ``setitem``, in-place method calls), in
            recording order.
        requirements: Invoke index to facts about its inputs that recorded values depend
            on, ``{name: value}`` (e.g. ``{"tokens": 7}`` when ``.t[0]`` became a position
            counted from the end of 7 tokens); see :meth:`require`.
        extensions: Class attribute, the extension point for ways of writing a graph:
            name to function, registered by the layers that implement them
            (``"to_json"``/``"from_json"`` by :mod:`nnsight_core.serialize`,
            ``"to_dot"``/``"vis"`` by :mod:`nnsight_core.vis`).
    """

    extensions: ClassVar[Dict[str, Callable[..., Any]]] = {}

    def __init__(self) -> None:
        self.nodes: List[Node] = []
        self.users: List[List[Node]] = []
        self._ref = weakref.ref(self)  # what each node keeps of its graph (Node.graph)
        self.rows: List[Tuple[int, int]] = []
        self.fed: Dict[Tuple[str, str, int], List[Node]] = {}
        self.edits: Dict[Tuple[str, str, int], List[Node]] = {}
        self.iterations: List[Iteration] = []
        self.optional: Set[int] = set()
        self.guarded = False
        self.gradients: List[Node] = []
        self.requirements: Dict[int, Dict[str, Any]] = {}
        # Indexes that executions and checks read instead of walking every node of every trace.
        self.starts: List[Node] = []
        self.saves: List[Node] = []
        self.assignments: List[Node] = []

    def create_node(self, op: str, target: Any, args: tuple = (), kwargs: Optional[dict] = None,
                    invoke: Optional[int] = None, where: Optional[Tuple[str, int]] = None,
                    cond: Optional[Node] = None) -> Node:
        """Append a node; ``args``/``kwargs`` may nest other nodes of this graph.

        ``cond`` is the condition node the new node runs under (the innermost
        open ``tracer.cond`` block's); module values fed by hooks are never
        conditional.

        Raises:
            ValueError: ``op`` is not in :data:`OPS`.
        """
        if op not in OPS:
            raise ValueError(f"unknown graph operation {op!r}; the vocabulary is {sorted(OPS)}")
        kwargs = kwargs or {}
        if type(args) is not tuple:
            args = tuple(args)
        deps, flat = dependencies(args, kwargs)
        return self.append_node(op, target, args, kwargs, deps, flat, invoke, where, cond)

    def append_node(self, op: str, target: Any, args: tuple, kwargs: dict, deps: Dict[int, Node], flat: bool,
                    invoke: Optional[int], where: Optional[Tuple[str, int]], cond: Optional[Node]) -> Node:
        """Append a node whose arguments the caller has already walked: what :meth:`create_node`
        does after finding ``deps`` (index to node, every node inside ``args``/``kwargs``) and
        ``flat`` (whether no node is nested inside a container) with :func:`dependencies`.

        The recording hot path (:class:`~nnsight_core.proxy.Proxy` operations) finds both while
        it turns proxies into nodes, so each recorded operation walks its arguments once.
        ``op`` must be a key of :data:`OPS` and ``deps`` a dict the node may keep (``cond`` is
        added to it).
        """
        # What Node.__init__ and register() do, written out: recording is the hot path of a
        # trace, and this keeps each recorded node to this one call.
        if op in FED_OPS:
            cond = None
        elif cond is not None:
            deps[cond.index] = cond
            self.guarded = True
        node = _new_node(Node)  # every slot is set below (a test checks that none is missed)
        node._graph = self._ref
        node.index = len(self.nodes)
        node.op = op
        node.target = target
        node.args = args
        node.kwargs = kwargs
        node.deps = deps = tuple(deps.values())
        node.invoke = invoke
        node.saved = op == "save"
        node.where = where
        node.mutated = False
        node.iteration = None
        node.cond = cond
        node._flat = flat
        users = self.users
        for dep in deps:
            users[dep.index].append(node)
        users.append([])
        self.nodes.append(node)
        if not deps and op not in FED_OPS:
            self.starts.append(node)
        if op in _INDEXED_OPS:
            if op == "save":
                self.saves.append(node)
            elif op != "call_method" or _is_inplace(target):
                self.assignments.append(node)
        if self.iterations and _template_of(node) is not None:
            return node  # each execution registers its copies for their call (see register)
        if op in MODULE_VALUE_OPS:
            key = (EVENT_KIND[op], target[0], target[1])
            table = self.fed if op in FED_OPS else self.edits
            nodes = table.get(key)
            if nodes is None:
                table[key] = [node]
            else:
                nodes.append(node)
        elif op in _REGISTERED_OPS:
            register(node, self.fed, self.edits)
            if op == "grad":
                self.gradients.append(node)
        return node

    def create_module_value(self, key: Tuple[str, str, Any], invoke: Optional[int],
                            where: Optional[Tuple[str, int]]) -> Node:
        """Append the ``output`` or ``inputs`` node ``key`` = ``(op, module path, call)`` (the call an
        index or an :class:`Iteration`): what ``create_node(op, (path, call), invoke=...,
        where=...)`` does, for the commonest node of all (every ``envoy.output``), with nothing
        to inspect; ``key`` becomes the node's key in ``fed``."""
        op, path, call = key
        node = _new_node(Node)  # every slot is set below (a test checks that none is missed)
        node._graph = self._ref
        node.index = len(self.nodes)
        node.op = op
        node.target = (path, call)
        node.args = ()
        node.kwargs = {}
        node.deps = ()
        node.invoke = invoke
        node.saved = False
        node.where = where
        node.mutated = False
        node.iteration = None
        node.cond = None
        node._flat = True
        self.users.append([])
        self.nodes.append(node)
        if type(call) is Iteration:
            _template_of(node)  # each execution registers its copies for their call
            return node
        nodes = self.fed.get(key)  # EVENT_KIND of a fed op is the op itself
        if nodes is None:
            self.fed[key] = [node]
        else:
            nodes.append(node)
        return node

    def save(self, node: Node, invoke: Optional[int], cond: Optional[Node] = None) -> Node:
        """Keep ``node``'s value after the trace; return the node whose value is kept.

        Without a condition that is ``node`` itself, marked ``saved`` and listed in
        ``saves``: saving records nothing (``.save()`` is the commonest record of all, and
        a node of its own would cost a record and a run). Under a condition (``cond``, the
        innermost open ``tracer.cond`` block's node) it is a new ``save`` node of ``node``,
        which runs only when the condition holds; it is recorded at ``node``'s line (saving
        cannot fail). ``invoke`` is the invoke that saves.
        """
        if cond is None:
            if not node.saved:
                node.saved = True
                self.saves.append(node)
            return node
        # Conditional saves are rare: the general append (it adds the condition to the deps).
        return self.append_node("save", None, (node,), {}, {node.index: node}, True, invoke, node.where, cond)

    def require(self, invoke: int, name: str, value: Any) -> None:
        """Record that what invoke ``invoke`` recorded holds only for inputs whose ``name`` is ``value``.

        An adapter calls it when it turns something relative to the inputs into a
        constant of the graph (``LanguageModel``'s ``.t[0]`` becomes a position counted
        from the end, right only for prompts of the same length). Running the graph
        again (``model.run_graph``, a graph loaded from JSON) checks each invoke's new
        inputs against its requirements (``NNsightModel.check_requirements``).
        """
        self.requirements.setdefault(invoke, {})[name] = value

    def iteration(self, start: int = 0, stop: Optional[int] = None, step: int = 1) -> Iteration:
        """Add an :class:`Iteration` over calls ``start:stop:step`` (``stop=None``: every call)."""
        iteration = Iteration(start, stop, step)
        self.iterations.append(iteration)
        return iteration

    def rewrite_as_method_call(self, node: Node, args: tuple, kwargs: dict, cond: Optional[Node] = None) -> Node:
        """Turn an unused ``getattr`` node into a ``call_method`` of that attribute."""
        obj = node.args[0]
        if self.nodes and self.nodes[-1] is node and not self.users[node.index] and not node.saved:
            self.nodes.pop()
            self.users.pop()
            for dep in node.deps:
                self.users[dep.index].remove(node)
        return self.create_node("call_method", node.target, (obj,) + tuple(args), kwargs,
                                invoke=node.invoke, where=node.where, cond=cond)

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

    # -- ways of writing the graph, added by higher layers (see `extensions`) -------------

    def to_dot(self) -> str:
        """The graph as Graphviz DOT source (see :func:`nnsight_core.vis.to_dot`)."""
        return _extension("to_dot")(self)

    def vis(self, path: Any = None, format: str = "svg") -> Any:
        """Draw the graph as SVG, PNG or PDF with Graphviz (see :func:`nnsight_core.vis.render`).

        Returns the image bytes, or writes ``path`` and returns it as a ``Path``.
        """
        return _extension("vis")(self, path, format)

    def to_json(self, indent: Optional[int] = None) -> str:
        """The graph as JSON: data only, no pickle (see :func:`nnsight_core.serialize.to_json`)."""
        return _extension("to_json")(self, indent)

    @staticmethod
    def from_json(text: Any, device: Any = None) -> Graph:
        """Rebuild a graph from :meth:`to_json`'s text (see :func:`nnsight_core.serialize.from_json`)."""
        return _extension("from_json")(text, device)

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        lines = []
        for node in self.nodes:
            if node.op in MODULE_VALUE_OPS:
                body = node.describe()
                if node.args:
                    body += " <- " + ", ".join(format_value(a) for a in node.args[1:])
            else:
                target = getattr(node.target, "__qualname__", node.target)
                parts = [format_value(a) for a in node.args] + [f"{k}={format_value(v)}" for k, v in node.kwargs.items()]
                body = f"{node.op}[{target}]({', '.join(parts)})" if target is not None else f"{node.op}({', '.join(parts)})"
            flag = "   [saved]" if node.saved else ""
            lines.append(f"%{node.index:<3} {body}{flag}")
        return "\n".join(lines) if lines else "<empty graph>"


def _extension(name: str) -> Callable[..., Any]:
    function = Graph.extensions.get(name)
    if function is None:  # only when a layer above was never imported (nnsight_core imports all)
        raise NotImplementedError(f"Graph.{name} is provided by a layer above nnsight_core.graph that is "
                                  "not loaded: import nnsight_core.")
    return function


def make_node(graph: Graph, index: int, op: str, target: Any, args: tuple, kwargs: Optional[dict],
              invoke: Optional[int], where: Optional[Tuple[str, int]], cond: Optional[Node]) -> Node:
    """A node of ``graph`` at ``index`` with its ``deps`` worked out; neither appended to the
    graph nor linked into its arguments' ``users`` (the caller does what fits).

    Raises:
        ValueError: ``op`` is not in :data:`OPS`.
    """
    if op not in OPS:
        raise ValueError(f"unknown graph operation {op!r}; the vocabulary is {sorted(OPS)}")
    kwargs = kwargs or {}
    deps, flat = dependencies(args, kwargs)
    if cond is not None:
        deps[cond.index] = cond
    node = Node(graph, index, op, target, args if type(args) is tuple else tuple(args),
                kwargs, tuple(deps.values()), invoke, where, flat)
    node.cond = cond
    return node


def copy_node(template: Node, index: int, target: Any, args: tuple, kwargs: dict, deps: tuple,
              cond: Optional[Node]) -> Node:
    """A copy of ``template`` at ``index`` with its own target, arguments, ``deps`` and condition,
    saved if the template is; neither appended to a graph, nor linked into its arguments'
    ``users``, nor registered (an execution copying iteration templates does what fits).
    One call per copy, as it is made for every call of an iteration's modules."""
    node = _new_node(Node)  # every slot is set below (a test checks that none is missed)
    node._graph = template._graph
    node.index = index
    node.op = template.op
    node.target = target
    node.args = args
    node.kwargs = kwargs
    node.deps = deps
    node.invoke = template.invoke
    node.saved = template.saved
    node.where = template.where
    node.mutated = False
    node.iteration = None
    node.cond = cond
    node._flat = template._flat
    return node


def register(node: Node, fed: Dict[Tuple[str, str, int], List[Node]],
             edits: Dict[Tuple[str, str, int], List[Node]]) -> None:
    """File ``node`` under the hook event it runs in (``fed`` for module values the hook
    supplies, ``edits`` for nodes that change a module value), and mark the module value an
    in-place edit or a gradient reaches as ``mutated``."""
    op = node.op
    if op in MODULE_VALUE_OPS:
        key = (EVENT_KIND[op], node.target[0], node.target[1])
        (fed if op in FED_OPS else edits).setdefault(key, []).append(node)
    elif op == "setitem" or (op == "call_method" and _is_inplace(node.target)):
        # What _mutation_root() does, written out (once per recorded edit).
        root = node.args[0] if node.args else None
        while type(root) is Node and root.op not in MODULE_VALUE_OPS:
            if root.op in _VIEW_OPS or (root.op == "call_method" and root.target in _VIEW_METHODS):
                root = root.args[0] if root.args else None
            else:
                root = None
        if type(root) is not Node:
            root = None
        if root is not None:
            key = (EVENT_KIND[root.op], root.target[0], root.target[1])
            edits.setdefault(key, []).append(node)
            if root.op in FED_OPS:
                root.mutated = True
    elif op == "grad":
        root = _mutation_root(node.args[0] if node.args else None)
        if root is not None and root.op in FED_OPS:
            # Its gradient hook needs the invoke's own copy of the rows on the model's path.
            root.mutated = True


#: Which hook event (a module's inputs or its output) each module-value op belongs to.
EVENT_KIND = {"output": "output", "set_output": "output",
               "inputs": "inputs", "set_inputs": "inputs", "set_input": "inputs", "skip": "inputs"}
_CONTAINERS = frozenset({tuple, list, dict, slice})
#: Types of constants that hold no node or proxy, and those an index tuple of constants is made of
#: (recording checks an argument against them before walking it).
SCALAR_TYPES = frozenset({int, float, bool, str, type(None), type(Ellipsis)})
INDEX_TYPES = SCALAR_TYPES | {slice}
# Ops other than module values that register() may file under a hook event.
_REGISTERED_OPS = frozenset({"setitem", "call_method", "grad"})
# Ops that Graph.saves or Graph.assignments may hold.
_INDEXED_OPS = frozenset({"save", "set_output", "set_inputs", "set_input", "skip", "setitem", "call_method"})
_new_node = object.__new__



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
                raise InvokeError(f"{node.describe()} combines values of two iterations ({iteration} "
                                  f"and {dep.iteration}); use one iteration block for values that "
                                  "belong together.")
            iteration = dep.iteration
    if iteration is not None:
        node.iteration = iteration
        iteration.nodes.append(node)
        if node.op in MODULE_VALUE_OPS and node.target[1] is iteration:
            iteration.modules.add((EVENT_KIND[node.op], node.target[0]))
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


def format_value(value: Any) -> str:
    if type(value) is Node:
        return f"%{value.index}"
    if type(value) in (tuple, list):
        inner = ", ".join(format_value(v) for v in value)
        return f"({inner})" if type(value) is tuple else f"[{inner}]"
    if type(value) is slice:
        return ":".join("" if v is None else format_value(v) for v in (value.start, value.stop, value.step)).rstrip(":") or ":"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"tensor{tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
