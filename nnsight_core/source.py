"""Source: the call sites inside a module's forward, as hook points (``envoy.source``).

A module's ``forward`` is parsed with Python's ``ast`` and every call expression
``f(a, k=b)`` in it becomes ``__nnsight_call__("f_0", f, a, k=b)``: a call of
the same callee with the same arguments through a dispatcher that, in an
execution that asked for that call site, runs the site's hook events (its
``inputs`` before the call, its ``output`` after). A call site is named
``<callee>_<k>``: the callee's last dotted name (``self.o_proj`` -> ``o_proj``,
``torch.matmul`` -> ``matmul``, ``F.softmax`` -> ``softmax``) and ``k``, its
0-based occurrence among the calls of that name, in source order.

In the graph a call site is a module path: ``"<module path>.source.<site>"``
(``"model.layers.0.self_attn.source.o_proj_0"``), and deeper for the call sites
of a plain function a call site calls (``"...source.attention_interface_0.source.softmax_0"``).
So the module-value ops (``output``, ``inputs``, ``set_*``, ``skip``), their per-call
counting (``.next()``, ``.all()``, ``tracer.iter``), batch rows and
serialisation work on call sites unchanged.

Costs and guarantees:

* The rewrite is compiled once per function (per code object) and cached; each
  execution only builds a function object around the cached code.
* The rewritten code keeps the original file name and line numbers, so
  tracebacks and errors point at the model's real source lines.
* Only a module whose call sites a graph names gets the rewritten forward, for
  that execution only (:class:`~nnsight_core.interleaver.Interleaver` restores
  it with its hooks). Every other module runs its original code object.
* Decorators of the forward (``functools.wraps`` wrappers such as transformers'
  ``deprecate_kwarg``) keep working: each wrapper is rebuilt around the rewritten
  function, never re-executed.
* Calls that read their caller's frame (``super()``, ``locals()``, ``vars()``,
  ``dir()``, ``globals()``, ``eval``, ``exec``, ``breakpoint()``, ``sys._getframe()``,
  ``inspect.currentframe()``) are left as they are and get no name.

This module plugs into the Interleaver through its ``inside`` extension point.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
import warnings
import weakref
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

import torch

from .errors import SourceError
from .graph import display_path
from .interleaver import Interleaver

__all__ = ["SOURCE", "Site", "Rewrite", "rewrite", "forward_of", "split_path", "check_path", "format_source",
           "last_callee", "install"]

#: The path part that separates a module path from the call sites inside its forward.
SOURCE = "source"
_MARKER = f".{SOURCE}."
_CALL = "__nnsight_call__"
_FACTORY = "__nnsight_source__"
# Calls that read their caller's frame: through the dispatcher they would read the wrong one.
_FRAME_READERS = frozenset({"super", "locals", "globals", "vars", "dir", "eval", "exec", "breakpoint"})
_FRAME_METHODS = frozenset({"_getframe", "currentframe"})  # sys._getframe(), inspect.currentframe()


class Site(NamedTuple):
    """One call site of a function's source.

    Attributes:
        name: ``<callee>_<k>``.
        line: Line number in the function's file.
        text: The callee as written (``self.o_proj``, ``torch.matmul``).
    """

    name: str
    line: int
    text: str


class Rewrite:
    """The rewritten form of one function: compiled once, cached per code object.

    Example:
        >>> rewrite(net.layer1.forward).names()           # torch.nn.Linear.forward: F.linear(...)
        ['linear_0']

    Attributes:
        function: The original (undecorated) function.
        sites: Its call sites, in source order.
        code: The code object of the rewritten function (free variable ``__nnsight_call__``
            plus the original's free variables).
        lines: The function's source lines, and the line number of the first.
    """

    def __init__(self, function: Any, sites: List[Site], code: Any, lines: Tuple[List[str], int]) -> None:
        self.function = function
        self.sites = sites
        self.code = code
        self.lines = lines
        self._by_name = {site.name: site for site in sites}

    def names(self) -> List[str]:
        """The call-site names, in source order."""
        return [site.name for site in self.sites]

    def site(self, name: str) -> Optional[Site]:
        """The call site called ``name``, or None."""
        return self._by_name.get(name)

    def build(self, function: Any, dispatch: Callable[..., Any]) -> Any:
        """A new function running the rewritten code with ``function``'s globals, defaults and
        closure, its calls going through ``dispatch(name, callee, *args, **kwargs)``."""
        cells = dict(zip(function.__code__.co_freevars, function.__closure__ or ()))
        cells[_CALL] = types.CellType(dispatch)
        closure = tuple(cells[name] for name in self.code.co_freevars)
        new = types.FunctionType(self.code, function.__globals__, function.__name__,
                                 function.__defaults__, closure)
        new.__kwdefaults__ = function.__kwdefaults__
        new.__qualname__ = function.__qualname__
        new.__module__ = function.__module__
        new.__doc__ = function.__doc__
        new.__dict__.update(function.__dict__)
        new.__wrapped__ = function
        return new


_CACHE: "weakref.WeakKeyDictionary[types.CodeType, Rewrite]" = weakref.WeakKeyDictionary()
# (code of the function holding a call site, site name) -> the plain function it called last,
# per module whose forward (or a function it calls) holds the site, and in any module.
_CALLEES: "weakref.WeakKeyDictionary[torch.nn.Module, Dict[Tuple[types.CodeType, str], Any]]" = (
    weakref.WeakKeyDictionary())
_LATEST: Dict[Tuple[types.CodeType, str], Any] = {}


def _innermost(function: Any) -> Tuple[List[Any], types.FunctionType]:
    """The chain of ``__wrapped__`` decorators around a function, and the function inside."""
    chain = []
    seen = set()
    while hasattr(function, "__wrapped__") and id(function) not in seen:
        seen.add(id(function))
        chain.append(function)
        function = function.__wrapped__
    if isinstance(function, types.MethodType):
        function = function.__func__
    return chain, function


def rewrite(function: Any) -> Rewrite:
    """The cached :class:`Rewrite` of ``function`` (a function, method or decorated function).

    Raises:
        SourceError: It is not a Python function, or its source cannot be read or parsed.
    """
    if isinstance(function, types.MethodType):
        function = function.__func__
    _, inner = _innermost(function)
    if not isinstance(inner, types.FunctionType):
        raise SourceError(f"{_label(inner)} is not a Python function (it is a "
                          f"{type(inner).__name__}), so it has no source to look inside; .source works on "
                          "modules whose forward, and functions, are written in Python.")
    code = inner.__code__
    cached = _CACHE.get(code)
    if cached is None:
        cached = _CACHE[code] = _compile(inner)
    return cached


def forward_of(module: torch.nn.Module, path: str) -> Any:
    """The function behind ``module.forward`` (its class's, possibly decorated).

    Raises:
        SourceError: The instance's forward was replaced by something that is not a method
            of the module (e.g. accelerate's device hooks).
    """
    forward = module.forward
    if isinstance(forward, types.MethodType) and forward.__self__ is module:
        return forward.__func__
    raise SourceError(
        f"{display_path(path)}.source: the forward of this {type(module).__name__} was replaced on the "
        f"instance by {forward!r} (e.g. by accelerate's device-map hooks), so its source is not the "
        "code that runs; .source needs the module's own forward method.")


def _compile(function: types.FunctionType) -> Rewrite:
    try:
        lines, first = inspect.getsourcelines(function)
    except (OSError, TypeError) as error:
        raise SourceError(f"the source of {_label(function)} cannot be read ({error}); .source needs "
                          "functions defined in a file.") from None
    text = "".join(lines)
    dedented = textwrap.dedent(text)
    indent = _indent(text, dedented)
    try:
        tree = ast.parse(dedented)
    except SyntaxError as error:
        raise SourceError(f"the source of {_label(function)} does not parse on its own ({error}).") from None
    definition = tree.body[0] if tree.body else None
    if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)) or \
            definition.name != function.__code__.co_name:
        raise SourceError(f"the source of {_label(function)} is not a def statement (a lambda or "
                          "generated function); .source needs a function written with def.")
    definition.decorator_list = []  # its decorators are rebuilt around it (see _rewire)
    ast.increment_lineno(tree, first - 1)
    for node in ast.walk(tree):  # columns as in the file, for tracebacks' markers
        if hasattr(node, "col_offset"):
            node.col_offset += indent
            if getattr(node, "end_col_offset", None) is not None:
                node.end_col_offset += indent
    _mangle(definition, function.__qualname__)
    calls = [node for statement in definition.body for node in ast.walk(statement)
             if isinstance(node, ast.Call) and not _reads_frame(node)]
    calls.sort(key=lambda c: (c.lineno, c.col_offset, c.end_lineno or 0, c.end_col_offset or 0))
    counts: Dict[str, int] = {}
    names: Dict[ast.Call, str] = {}
    sites = []
    for call in calls:
        callee = _callee(call.func)
        k = counts.get(callee, 0)
        counts[callee] = k + 1
        names[call] = f"{callee}_{k}"
        sites.append(Site(names[call], call.lineno, ast.unparse(call.func)))
    definition.body = [_Wrap(names).visit(statement) for statement in definition.body]
    # def __nnsight_source__(): <free variables> = None; def forward(...): ...; return forward
    # makes the rewritten function's free variables (the dispatcher and the original's) closure
    # cells that `Rewrite.build` fills in.
    free = [_CALL] + [name for name in function.__code__.co_freevars if name != _CALL]
    factory = ast.FunctionDef(
        name=_FACTORY, args=ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[],
                                          kw_defaults=[], kwarg=None, defaults=[]),
        body=[ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=ast.Constant(None))
              for name in free] + [definition, ast.Return(value=ast.Name(id=definition.name, ctx=ast.Load()))],
        decorator_list=[], returns=None, type_comment=None)
    module = ast.Module(body=[factory], type_ignores=[])
    _locate(factory, definition)
    ast.fix_missing_locations(module)
    compiled = compile(module, function.__code__.co_filename, "exec", dont_inherit=True,
                       flags=_future_flags(function))
    maker = _const(compiled, _FACTORY)
    code = _const(maker, function.__code__.co_name)
    code = code.replace(co_qualname=function.__code__.co_qualname) if hasattr(code, "co_qualname") else code
    return Rewrite(function, sites, code, (lines, first))


def _indent(text: str, dedented: str) -> int:
    for original, stripped in zip(text.splitlines(), dedented.splitlines()):
        if stripped.strip():
            return len(original) - len(stripped)
    return 0


def _future_flags(function: types.FunctionType) -> int:
    flags = 0
    feature = getattr(__import__("__future__"), "annotations")
    if function.__code__.co_flags & feature.compiler_flag:
        flags |= feature.compiler_flag
    return flags


def _const(code: types.CodeType, name: str) -> types.CodeType:
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    raise SourceError(f"internal: no code object {name!r} in the rewritten source")  # pragma: no cover


def _locate(factory: ast.FunctionDef, definition: ast.AST) -> None:
    for node in ast.walk(factory):
        if node is definition:
            continue
        if "lineno" in node._attributes and not hasattr(node, "lineno"):
            ast.copy_location(node, definition)
    ast.copy_location(factory, definition)


def _reads_frame(call: ast.Call) -> bool:
    func = call.func
    return ((isinstance(func, ast.Name) and func.id in _FRAME_READERS)
            or (isinstance(func, ast.Attribute) and func.attr in _FRAME_METHODS))


def _callee(func: ast.expr) -> str:
    """The name a call site is named after: the callee's last dotted name."""
    while True:
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
        if isinstance(func, (ast.Subscript, ast.Call)):
            func = func.value if isinstance(func, ast.Subscript) else func.func
            continue
        return "call"


class _Wrap(ast.NodeTransformer):
    """``f(*a, **k)`` -> ``__nnsight_call__("f_0", f, *a, **k)`` for every named call."""

    def __init__(self, names: Dict[ast.Call, str]) -> None:
        self.names = names

    def visit_Call(self, node: ast.Call) -> ast.AST:
        name = self.names.get(node)
        self.generic_visit(node)
        if name is None:
            return node
        dispatch = ast.Name(id=_CALL, ctx=ast.Load())
        label = ast.Constant(name)
        for new in (dispatch, label):
            ast.copy_location(new, node.func)
        wrapped = ast.Call(func=dispatch, args=[label, node.func] + node.args, keywords=node.keywords)
        return ast.copy_location(wrapped, node)


def _mangle(definition: ast.AST, qualname: str) -> None:
    """Apply the private-name mangling the class body did (``self.__x`` -> ``self._Cls__x``)."""
    parts = qualname.split(".")
    if len(parts) < 2 or parts[-2] == "<locals>":
        return
    owner = parts[-2].lstrip("_")
    if not owner:
        return

    def mangled(name: str) -> str:
        if name.startswith("__") and not name.endswith("__") and "." not in name:
            return f"_{owner}{name}"
        return name

    for node in ast.walk(definition):
        if isinstance(node, ast.Attribute):
            node.attr = mangled(node.attr)
        elif isinstance(node, ast.Name):
            node.id = mangled(node.id)
        elif isinstance(node, ast.arg):
            node.arg = mangled(node.arg)


def _label(function: Any) -> str:
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or repr(function)
    module = getattr(function, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else name


# -- building the rewritten function around its decorators ------------------------------------


def sourced(function: Any, dispatch: Callable[..., Any]) -> Any:
    """``function`` (possibly decorated) with its innermost function rewritten and its calls
    going through ``dispatch``; each ``functools.wraps`` decorator is rebuilt around it."""
    chain, inner = _innermost(function)
    new = rewrite(inner).build(inner, dispatch)
    old: Any = inner
    for wrapper in reversed(chain):
        rebuilt = _rewire(wrapper, old, new)
        if rebuilt is None:
            warnings.warn(f".source of {_label(inner)}: the decorator {_label(wrapper)} cannot be rebuilt "
                          "around the rewritten function (it does not hold the function in a closure), "
                          "so this execution runs the forward without it.", stacklevel=2)
            return new
        old, new = wrapper, rebuilt
    return new


def _rewire(wrapper: Any, old: Any, new: Any) -> Optional[types.FunctionType]:
    """A copy of the decorator function ``wrapper`` that calls ``new`` where it called ``old``."""
    if not isinstance(wrapper, types.FunctionType) or not wrapper.__closure__:
        return None
    cells, found = [], False
    for cell in wrapper.__closure__:
        try:
            value = cell.cell_contents
        except ValueError:
            value = None
        if value is old or (isinstance(value, types.MethodType) and value.__func__ is old):
            cells.append(types.CellType(new))
            found = True
        else:
            cells.append(cell)
    if not found:
        return None
    copy = types.FunctionType(wrapper.__code__, wrapper.__globals__, wrapper.__name__,
                              wrapper.__defaults__, tuple(cells))
    copy.__kwdefaults__ = wrapper.__kwdefaults__
    copy.__qualname__ = wrapper.__qualname__
    copy.__dict__.update(wrapper.__dict__)
    copy.__wrapped__ = new
    return copy


# -- paths -------------------------------------------------------------------------------------


def split_path(path: str) -> Tuple[str, Tuple[str, ...]]:
    """``"layers.0.attn.source.f_0.source.g_0"`` -> ``("layers.0.attn", ("f_0", "g_0"))``;
    a module path gives ``(path, ())``."""
    if _MARKER not in f".{path}.":
        return path, ()
    head, *sites = f".{path}".split(_MARKER)
    return head[1:], tuple(sites)


def check_path(module: torch.nn.Module, path: str) -> None:
    """Check, without running anything, that the call sites ``path`` names exist in ``module``'s forward.

    ``module`` is the module at the head of ``path`` (``"layers.0.attn.source.f_0.source.g_0"``
    -> ``layers.0.attn``). Each call site is looked up in the rewritten source; a deeper one
    in the function the call site before it calls, when the source says which (a global,
    closure or ``self.<attribute>`` name). A callee that only running tells (a local
    variable) is checked when it is called.

    Example:
        >>> check_path(net.layer1, "layer1.source.linear_0")
        >>> check_path(net.layer1, "layer1.source.nope_0")
        Traceback (most recent call last):
        ...
        nnsight_core.errors.SourceError: model.layer1.source.nope_0 does not exist: the forward of model.layer1 (torch.nn.modules.linear.Linear.forward) has the call sites linear_0. Print `.source` to see them.

    Raises:
        SourceError: A call site does not exist, calls a module, or a forward or function on
            the way has no Python source.
    """
    head, names = split_path(path)
    function: Any = forward_of(module, head)
    owner: Optional[torch.nn.Module] = module
    prefix = f"{head}.{SOURCE}" if head else SOURCE
    what = f"the forward of {display_path(head)}"
    for depth, name in enumerate(names):
        sites = _Sites(prefix)
        sites.wanted[name] = set()
        sites.check(rewrite(function), what)
        if depth + 1 == len(names):
            return
        callee = static_callee(function, name, owner)
        site = f"{prefix}.{name}"
        if callee is None:  # a local variable: what it calls is checked when it is called
            return
        if isinstance(callee, torch.nn.Module):
            raise SourceError(f"{display_path(site)}.source: this call site calls a module "
                              f"({type(callee).__name__}); look inside it through its own envoy's .source.")
        function, owner = callee, None
        what = f"{display_path(site)} calls {_label(rewrite(callee).function)}, which"
        prefix = f"{site}.{SOURCE}"


def last_callee(function: Any, name: str, module: Optional[torch.nn.Module] = None) -> Any:
    """The plain function call site ``name`` of ``function`` called in the latest execution that
    looked inside it in ``module`` (two models of one class can call different attention
    functions); for a module that has not run it yet, in any module; else None."""
    key = (rewrite(function).code, name)
    learned = _CALLEES.get(module) if module is not None else None
    if learned is not None and key in learned:
        return learned[key]
    return _LATEST.get(key)


def static_callee(function: Any, name: str, module: Optional[torch.nn.Module]) -> Any:
    """What call site ``name`` of ``function`` calls, when the source says so without running:
    a global or closure name, an attribute chain of one, or ``self.<attribute>`` of ``module``.
    None when only running it tells (a local variable)."""
    rewritten = rewrite(function)
    site = rewritten.site(name)
    if site is None:
        return None
    parts = site.text.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    inner = rewritten.function
    scope = dict(zip(inner.__code__.co_freevars, (c.cell_contents for c in inner.__closure__ or ())))
    if parts[0] == "self" and module is not None:
        value: Any = module
    elif parts[0] in inner.__code__.co_varnames:
        return None
    elif parts[0] in scope:
        value = scope[parts[0]]
    elif parts[0] in inner.__globals__:
        value = inner.__globals__[parts[0]]
    else:
        value = getattr(__import__("builtins"), parts[0], None)
    for part in parts[1:]:
        value = getattr(value, part, None)
    return value


# -- printing --------------------------------------------------------------------------------


def format_source(function: Any, title: str = "") -> str:
    """The function's source with each call site's name in the margin of its line.

    Example:
        >>> print(format_source(type(net.layer1).forward).splitlines()[-1])   # doctest: +ELLIPSIS
        linear_0 -> ...      return F.linear(input, self.weight, self.bias)
    """
    rewritten = rewrite(function)
    lines, first = rewritten.lines
    by_line: Dict[int, List[str]] = {}
    for site in rewritten.sites:
        by_line.setdefault(site.line, []).append(site.name)
    margins = {line: ", ".join(names) for line, names in by_line.items()}
    width = max((len(m) for m in margins.values()), default=0)
    out = [title] if title else []
    body = textwrap.dedent("".join(lines)).splitlines()
    for offset, text in enumerate(body):
        line = first + offset
        margin = margins.get(line, "")
        arrow = " ->" if margin else "   "
        out.append(f"{margin:>{width}}{arrow} {line:4d}  {text}".rstrip())
    return "\n".join(out)


# -- execution: the Interleaver's `inside` extension -----------------------------------------


class _Sites:
    """The requested call sites of one function in one execution: name -> what to do there."""

    __slots__ = ("prefix", "wanted", "inner")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # "<module path>.source" (or deeper)
        self.wanted: Dict[str, Set[str]] = {}  # site name -> event kinds
        self.inner: Dict[str, _Sites] = {}  # site name -> the callee's requested sites

    def add(self, names: Tuple[str, ...], kinds: Set[str]) -> None:
        sites = self
        for name in names[:-1]:
            sites.wanted.setdefault(name, set())
            sites = sites.inner.setdefault(name, _Sites(f"{sites.prefix}.{name}.{SOURCE}"))
        sites.wanted.setdefault(names[-1], set()).update(kinds)

    def check(self, rewritten: Rewrite, what: str) -> None:
        missing = [name for name in self.wanted if rewritten.site(name) is None]
        if missing:
            raise SourceError(f"{display_path(self.prefix)}.{missing[0]} does not exist: {what} "
                              f"({_label(rewritten.function)}) has the call sites "
                              f"{', '.join(rewritten.names()) or 'none'}. Print `.source` to see them.")

    def dispatcher(self, interleaver: Interleaver, code: types.CodeType,
                   module: torch.nn.Module) -> Callable[..., Any]:
        wanted, inner, prefix = self.wanted, self.inner, self.prefix
        skippable, wrap = interleaver.skippable, interleaver.wrap
        callees: Dict[Any, Any] = {}
        learned = _CALLEES.get(module)
        if learned is None:
            learned = _CALLEES[module] = {}

        def dispatch(name: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            kinds = wanted.get(name)
            if kinds is None:
                return fn(*args, **kwargs)
            if type(fn) is types.FunctionType:
                learned[(code, name)] = _LATEST[(code, name)] = fn
            path = f"{prefix}.{name}"
            sites = inner.get(name)
            if sites is not None:
                fn = sites.around(fn, interleaver, path, callees, module)
            return wrap(path, skippable(path, fn), "inputs" in kinds, "output" in kinds)(*args, **kwargs)

        return dispatch

    def around(self, fn: Any, interleaver: Interleaver, path: str, callees: Dict[Any, Any],
               module: torch.nn.Module) -> Any:
        """The callee ``fn`` of call site ``path`` with its own call sites hooked."""
        if isinstance(fn, torch.nn.Module):
            raise SourceError(f"{display_path(path)}.source: this call site calls a module "
                              f"({type(fn).__name__}); look inside it through its own envoy's .source.")
        target = fn.__func__ if isinstance(fn, types.MethodType) else fn
        built = callees.get(target)
        if built is None:
            rewritten = rewrite(target)
            self.check(rewritten, f"{display_path(path)} calls {_label(rewritten.function)}, which")
            built = callees[target] = sourced(target, self.dispatcher(interleaver, rewritten.code, module))
        return types.MethodType(built, fn.__self__) if isinstance(fn, types.MethodType) else built


def install(interleaver: Interleaver, inside: Dict[str, Set[str]]) -> None:
    """Give each module whose call sites the graph names its rewritten forward for this execution.

    Registered as ``Interleaver.inside["source"]``.

    Raises:
        SourceError: A forward (or function) cannot be rewritten, or has no such call site.
    """
    modules: Dict[str, _Sites] = {}
    for path, kinds in inside.items():
        head, names = split_path(path)
        modules.setdefault(head, _Sites(f"{head}.{SOURCE}" if head else SOURCE)).add(names, kinds)
    for head, sites in modules.items():
        module = interleaver.module(head)
        function = forward_of(module, head)
        rewritten = rewrite(function)
        sites.check(rewritten, f"the forward of {display_path(head)}")
        forward = sourced(function, sites.dispatcher(interleaver, rewritten.code, module))
        interleaver.replace_forward(module, types.MethodType(forward, module))


Interleaver.inside[SOURCE] = install
