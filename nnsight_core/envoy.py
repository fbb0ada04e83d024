"""Envoy: the stand-in for one module of the wrapped model.

Envoys mirror the module tree. Outside a trace they reach the module's
children and attributes; inside a trace ``.output``, ``.input`` and
``.inputs`` are proxies for the values of the module's current call, and
assigning them records an edit.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple, Union

import torch

from . import _state
from .errors import EnvoyAttributeError, InvokeError, ModuleIndexError, SourceError, TraceStateError
from .graph import display_path
from .proxy import Proxy, _record, new_proxy
from .source import SOURCE, format_source, forward_of, last_callee, rewrite, static_callee

if TYPE_CHECKING:
    from .model import NNsightModel
    from .tracer import Invoker

__all__ = ["Envoy", "SourceEnvoy", "CallSite"]


class Envoy:
    """Access to one module's inputs and outputs inside a trace.

    Example:
        >>> with model.trace(x):
        ...     model.layer1.output[:, 0] = 0          # edit in place
        ...     out = model.layer2.input.save()        # first positional argument
        >>> out.value[:, 0].tolist()                   # sigmoid(0)
        [0.5]

    A child whose name collides with an envoy attribute (``output``, ``input``,
    ``inputs``, ``next``, ``all``, ``iter``, ``skip``, ``source``) is reached with
    ``envoy["output"]``.
    """

    def __init__(self, module: torch.nn.Module, path: str, model: NNsightModel) -> None:
        d = self.__dict__
        d["_module"] = module
        d["_path"] = path
        d["_wrapper"] = model
        d["_children"] = {}

    # -- tree ------------------------------------------------------------------

    def _child(self, name: str) -> Envoy:
        child = self._children.get(name)
        if child is None:
            path = f"{self._path}.{name}" if self._path else name
            module = self._module._modules.get(name)
            if module is None:  # a module the wrapper attached beside the model
                module = self._wrapper._attached[name]
            child = Envoy(module, path, self._wrapper)
            self._children[name] = child
            if not hasattr(type(self), name):
                # Later `envoy.name` lookups find the child without __getattr__.
                self.__dict__[name] = child
        return child

    def _descend(self, path: str) -> Envoy:
        """The envoy at ``path``, dotted and relative to this one (where an alias leads)."""
        envoy = self
        for name in path.split("."):
            envoy = envoy._child(name)
        return envoy

    def _aliases_here(self) -> str:
        """``"; aliases: attn (self_attn), ..."`` for the aliases usable on this envoy, for messages."""
        here = self._wrapper._aliases.at(self._path, self._module)
        return "; aliases: " + ", ".join(f"{a} ({r})" for a, r in here.items()) if here else ""

    def _rebind(self, module: torch.nn.Module) -> None:
        self.__dict__["_module"] = module
        for name, child in list(self._children.items()):
            if name in module._modules:
                child._rebind(module._modules[name])
            elif self._path or name not in self._wrapper._attached:
                del self._children[name]
                self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        module = self.__dict__["_module"]
        if name in module._modules or (not self._path and name in self._wrapper._attached):
            return self._child(name)
        aliases = self._wrapper._aliases
        real = aliases.resolve(self._path, module, name) if aliases else None
        if real is not None:
            return self._descend(real)
        try:
            return getattr(module, name)
        except AttributeError:
            pass
        children = ", ".join(module._modules) or "none"
        raise EnvoyAttributeError(
            f"{display_path(self._path)}.{name} does not exist: {aliases.shown(self._path)} "
            f"({type(module).__name__}) has no child module or attribute {name!r}; its children "
            f"are: {children}{self._aliases_here()}."
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            self._refuse_new_attribute_in_trace(name)
            setattr(self._module, name, value)
            self._children.pop(name, None)
            self.__dict__.pop(name, None)

    def __getitem__(self, key: Union[int, slice, str]) -> Union[Envoy, List[Envoy]]:
        names = list(self._module._modules)
        if isinstance(key, str):
            if key not in self._module._modules:
                real = self._wrapper._aliases.resolve(self._path, self._module, key)
                if real is not None:
                    return self._descend(real)
                raise EnvoyAttributeError(f"{self._wrapper._aliases.shown(self._path)} has no child {key!r}; "
                                          f"its children are: {', '.join(names) or 'none'}"
                                          f"{self._aliases_here()}.")
            return self._child(key)
        if isinstance(key, slice):
            return [self._child(n) for n in names[key]]
        try:
            index = int(key)
        except TypeError:
            raise TypeError(f"{display_path(self._path)}[...] takes an int, a slice or a child "
                            f"name, not {type(key).__name__}") from None
        if not -len(names) <= index < len(names):
            last = f" (0-{len(names) - 1})" if names else ""
            raise ModuleIndexError(
                f"{display_path(self._path)}[{index}] does not exist: "
                f"{self._wrapper._aliases.shown(self._path)} has {len(names)} modules{last}."
            )
        return self._child(names[index])

    def __iter__(self) -> Iterator[Envoy]:
        return (self._child(n) for n in list(self._module._modules))

    def __len__(self) -> int:
        return len(self._module._modules)

    def __bool__(self) -> bool:
        return True

    def __dir__(self) -> List[str]:
        aliases = self._wrapper._aliases.at(self._path, self._module)
        return sorted(set(super().__dir__()) | set(self._module._modules) | set(aliases))

    def __repr__(self) -> str:
        return repr(self._module)

    # -- module values inside a trace -------------------------------------------

    def _value(self, kind: str = "output", invoker: Optional[Invoker] = None) -> Proxy:
        """The proxy of this module's ``kind`` value (``output``/``inputs``) at its current call.

        The hot path of recording: the ``output`` property is this function (``kind``'s
        default), ``inputs`` is it through a ``partial``, so reading ``envoy.output`` is one
        Python call plus the node and proxy it records.
        """
        if invoker is None:
            runners = _state.local.runners
            runner = runners[-1] if runners else None
            if runner is None or runner._model is not self._wrapper or runner._invoker is None:
                invoker = self._invoker(kind)  # raises, naming what is wrong
            else:
                invoker = runner._invoker
        path = self._path
        if type(self) is Envoy:  # what _call() does, without its call
            block = invoker._block
            call = invoker._cursors.get(path, 0) if block is None else block
        else:
            call = self._call(invoker)
        key = (kind, path, call)
        proxy = invoker._current.get(key)
        if proxy is None:
            # The user's line, without a call when the frames above are known already (usually).
            frame, internal = sys._getframe(1), _state._internal_code
            known = internal.get(frame.f_code)
            while known:
                frame = frame.f_back
                known = None if frame is None else internal.get(frame.f_code)
            where = (frame.f_code.co_filename, frame.f_lineno) if known is False else _state.user_location()
            runner = invoker._runner
            state = runner.trace_state
            node = state.graph.create_module_value(key, invoker.index, where)
            cls = runner._model.proxy_class
            if cls._plain_init:  # what Proxy.__init__ does, without its call
                proxy = new_proxy(cls)
                proxy.node = node
                proxy._trace = state
            else:
                proxy = cls(node, state)
            invoker._current[key] = proxy
        return proxy

    output = property(_value,
                      doc="The module's output at its current call (readable, assignable, editable in place).")

    @output.setter
    def output(self, value: Any) -> None:
        self._assign("output", "set_output", value)

    inputs = property(partial(_value, kind="inputs"),
                      doc="What the module received at its current call, as ``(args, kwargs)``.")

    @inputs.setter
    def inputs(self, value: Any) -> None:
        self._assign("inputs", "set_inputs", value)

    @property
    def input(self) -> Proxy:
        """The module's first positional argument at its current call."""
        return self._value("inputs")[0][0]

    @input.setter
    def input(self, value: Any) -> None:
        self._assign("inputs", "set_input", value)

    def next(self, steps: int = 1) -> Envoy:
        """Move this envoy to the module's next call (for the current invoke) and return it.

        Example:
            >>> class Twice(torch.nn.Module):                   # calls `shared` twice per forward
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.shared = torch.nn.Linear(5, 5)
            ...     def forward(self, x):
            ...         return self.shared(self.shared(x))
            >>> twice = Twice()
            >>> model = NNsight(twice)
            >>> with model.trace(x):
            ...     first = model.shared.output.save()
            ...     second = model.shared.next().output.save()
            >>> torch.allclose(second.value, twice.shared(first.value))
            True
        """
        runners = _state.local.runners  # the open invoke, found without a call (a step's hot path)
        runner = runners[-1] if runners else None
        invoker = runner._invoker if runner is not None and runner._model is self._wrapper else None
        if invoker is None:
            invoker = self._invoker("next()")  # raises, naming what is wrong
        if invoker._block is not None:
            raise InvokeError(f"{display_path(self._path)}.next() inside an iteration block: every "
                              f"module there is at the block's calls ({invoker._block}); move .next() "
                              "before or after the block.")
        invoker._cursors[self._path] = invoker._cursors.get(self._path, 0) + steps
        return self

    def all(self) -> Envoy:
        """This module at every call: what you do with its values applies to each call.

        Generation and denoising steps are calls, so this targets every step.
        A saved value becomes a list with one entry per call.

        Example:
            >>> # model: a LanguageModel (nnsight_transformers), prompt: a str
            >>> with model.generate(prompt, max_new_tokens=3):
            ...     model.lm_head.all().output[:, -1, 7] = 1e4      # force token 7 at every step
            ...     logits = model.lm_head.all().output.save()       # a list of 3 tensors
            ...     ids = model.generator.output.save()
            >>> len(logits), ids.value[0, -3:].tolist()
            (3, [7, 7, 7])
        """
        return self.iter[:]

    @property
    def iter(self) -> _CallIndexer:
        """``envoy.iter[1:3]``: this module at calls 1 and 2 (any ``int`` or ``slice`` of calls).

        Like :meth:`all`, for a range of calls; ``envoy.iter[2]`` is call 2 only.
        """
        return _CallIndexer(self)

    def skip(self, value: Any) -> None:
        """Do not run the module's forward for this invoke at its current call: its output is ``value``.

        When the invoke owns the whole batch, the forward is not called at all. With
        several invokes, the forward runs on the whole batch and this invoke's rows of
        its output are overwritten with ``value`` (a batched module cannot run on some
        rows only without changing the shapes the other invokes see). ``value`` is
        checked against the output's shape by the scan (a tensor constant) or when it
        is written into the rows.

        Example:
            >>> with model.trace(x):
            ...     model.sigma1.skip(model.sigma1.input)       # sigma1 becomes the identity
            ...     seen = model.layer2.input.save()
            >>> torch.equal(seen.value, net.layer1(x))
            True
        """
        invoker = self._invoker("skip()")
        inputs = self._value("inputs", invoker)
        invoker._set_node("skip", self._path, self._call(invoker), inputs, value)

    @property
    def source(self) -> SourceEnvoy:
        """The call sites inside this module's forward, each an envoy-like :class:`CallSite`.

        Call sites are named ``<callee>_<k>``: the callee's last dotted name and its
        0-based occurrence in the source. ``print(envoy.source)`` shows the forward with
        each line's call sites in the margin. Only modules asked for ``.source`` inside
        a trace run a rewritten forward, and only during that trace's execution.

        Example:
            >>> with model.trace(x):
            ...     pre = model.layer1.source.linear_0.output.save()   # F.linear(...) in Linear.forward
            >>> torch.equal(pre.value, net.layer1(x))
            True
        """
        return SourceEnvoy(self, forward_of(self._module, self._path),
                           f"{self._path}.{SOURCE}" if self._path else SOURCE, self._module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        runner = _state.current_runner()
        if runner is None or runner._model is not self._wrapper:
            return self._module(*args, **kwargs)
        return _record(self._wrapper.proxy_class, "call_module", self._path, args, kwargs)

    # -- helpers ---------------------------------------------------------------

    def _refuse_new_attribute_in_trace(self, name: str) -> None:
        """Inside a trace of the model, ``envoy.name = value`` for a name the module does not
        have is a misspelt module value (``.outptu``): it would change the module and drop the edit.

        Raises:
            EnvoyAttributeError: Naming the module, the attribute and what to assign instead.
        """
        runner = _state.current_runner()
        if runner is None or runner._model is not self._wrapper or hasattr(self._module, name):
            return
        path = display_path(self._path)
        raise EnvoyAttributeError(
            f"{path}.{name} = ... inside a trace would give the {type(self._module).__name__} module "
            f"a new attribute {name!r} instead of recording an edit: assign {path}.output, "
            f"{path}.input or {path}.inputs, or set new module attributes outside the trace."
        )

    def _invoker(self, what: str) -> Invoker:
        runner = _state.current_runner()
        if runner is None or runner._model is not self._wrapper:
            raise TraceStateError(
                f"{display_path(self._path)}.{what} is only available inside "
                "`with model.trace(...)` of the model that owns it."
            )
        invoker = runner._invoker
        if invoker is None:
            raise InvokeError(
                f"{display_path(self._path)}.{what} was used outside an invoke: inside "
                "`with model.trace() as tracer:` with no inputs, put it inside a "
                "`with tracer.invoke(inputs):` block."
            )
        return invoker

    def _call(self, invoker: Invoker) -> Any:
        """The call this envoy's values belong to: its cursor, or the open iteration block."""
        block = invoker._block
        return invoker._cursors.get(self._path, 0) if block is None else block

    def _assign(self, kind: str, op: str, value: Any) -> None:
        invoker = self._invoker(kind)
        current = self._value(kind, invoker)
        key = (kind, self._path, self._call(invoker))
        invoker._current[key] = invoker._set_node(op, key[1], key[2], current, value)


class _CallsEnvoy(Envoy):
    """An envoy whose values are those of a range of calls (``envoy.all()``, ``envoy.iter[...]``)."""

    def __init__(self, envoy: Envoy, calls: Tuple[int, Optional[int], int]) -> None:
        super().__init__(envoy._module, envoy._path, envoy._wrapper)
        self.__dict__["_calls"] = calls

    def _call(self, invoker: Invoker) -> Any:
        return invoker._iteration(*self._calls)

    def next(self, steps: int = 1) -> Envoy:
        raise InvokeError(f"{display_path(self._path)}.all()/.iter[...] already addresses several "
                          "calls; .next() moves a single-call envoy: use it on the envoy itself.")


class _CallIndexer:
    """``envoy.iter[calls]``: the envoy at those calls."""

    def __init__(self, envoy: Envoy) -> None:
        self._envoy = envoy

    def __getitem__(self, calls: Union[int, slice]) -> Envoy:
        return _CallsEnvoy(self._envoy, call_range(calls, display_path(self._envoy._path) + ".iter"))


def call_range(calls: Union[int, slice], where: str) -> Tuple[int, Optional[int], int]:
    """``(start, stop, step)`` of a call index or slice (``stop`` None: every later call).

    Raises:
        InvokeError: A negative index or step, or something that is not an int or slice.
    """
    if isinstance(calls, int) and not isinstance(calls, bool):
        start, stop, step = calls, calls + 1, 1
    elif isinstance(calls, slice):
        start, stop = calls.start or 0, calls.stop
        step = 1 if calls.step is None else calls.step
    else:
        raise InvokeError(f"{where}[...] takes a call index or a slice of calls (e.g. [1:3] or [:]), "
                          f"not {type(calls).__name__}.")
    bad = [v for v in (start, stop, step) if v is not None and (not isinstance(v, int) or v < 0)]
    if bad or step == 0:
        raise InvokeError(f"{where}[{calls}]: calls are counted from 0 as the model makes them, so "
                          "give non-negative ints and a positive step (negative indices cannot be "
                          "known before the model has run).")
    return start, stop, step


class SourceEnvoy:
    """The call sites inside one function (a module's forward, or what a call site calls).

    Example:
        >>> print(model.layer1.source)                    # doctest: +ELLIPSIS
        model.layer1.source: torch.nn.modules.linear.Linear.forward
        ...
        linear_0 -> ...      return F.linear(input, self.weight, self.bias)
        >>> model.layer1.source.linear_0                  # doctest: +ELLIPSIS
        <call site model.layer1.source.linear_0: F.linear (line ...)>

    Attribute access gives a :class:`CallSite`; ``print()`` shows the source with
    each line's call-site names in the margin.
    """

    def __init__(self, owner: Envoy, function: Any, prefix: str, module: Optional[torch.nn.Module]) -> None:
        d = self.__dict__
        d["_owner"] = owner
        d["_function"] = function  # None: only known once the model ran the call site
        d["_prefix"] = prefix
        d["_self"] = module

    def __getattr__(self, name: str) -> CallSite:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        function = self._function
        if function is not None and rewrite(function).site(name) is None:
            names = rewrite(function).names()
            raise EnvoyAttributeError(
                f"{display_path(self._prefix)}.{name} does not exist: {_label(function)} has the call "
                f"sites {', '.join(names) or '(none)'}; print({display_path(self._prefix)}) shows each "
                "on its line.")
        return CallSite(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise EnvoyAttributeError(f"{display_path(self._prefix)}.{name} = ...: assign a call site's "
                                  f"value instead, e.g. {display_path(self._prefix)}.{name}.output = ...")

    def __dir__(self) -> List[str]:
        return [] if self._function is None else rewrite(self._function).names()

    def __repr__(self) -> str:
        if self._function is None:
            return (f"{display_path(self._prefix)}: what this call site calls is a local variable, known "
                    "once the model has run it in a trace that looks inside it (save its .output once).")
        return format_source(self._function, f"{display_path(self._prefix)}: {_label(self._function)}")


class CallSite(Envoy):
    """One call site inside a forward: ``.input``, ``.inputs``, ``.output``, ``.next()``,
    ``.all()``, ``.iter``, ``.skip()`` as for a module, and ``.source`` of the function it calls.

    Example:
        >>> with model.trace(x):
        ...     model.layer1.source.linear_0.output[:] = 0      # edit inside the forward
        ...     seen = model.sigma1.input.save()
        >>> seen.value.abs().sum().item()
        0.0
    """

    def __init__(self, parent: SourceEnvoy, name: str) -> None:
        owner = parent._owner
        super().__init__(owner._module, f"{parent._prefix}.{name}", owner._wrapper)
        self.__dict__["_parent"] = parent
        self.__dict__["_name"] = name

    @property
    def source(self) -> SourceEnvoy:
        """The call sites inside the plain function this call site calls.

        What it calls is read from the source when it is a global, closure or module
        attribute name; when it is a local variable (transformers' ``attention_interface``),
        from the latest execution that looked inside this forward in this module (in any
        module, while this one has not run it).
        """
        parent, name = self._parent, self._name
        function = parent._function
        callee = None
        if function is not None:
            callee = last_callee(function, name, self._module) or static_callee(function, name, parent._self)
        if isinstance(callee, torch.nn.Module):
            raise SourceError(f"{display_path(self._path)}.source: this call site calls a module "
                              f"({type(callee).__name__}); look inside it through its own envoy's .source.")
        return SourceEnvoy(self, callee, f"{self._path}.{SOURCE}", getattr(callee, "__self__", None))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise EnvoyAttributeError(f"{display_path(self._path)}.{name} does not exist: a call site has "
                                  ".input, .inputs, .output, .next(), .all(), .iter, .skip() and .source.")

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            raise EnvoyAttributeError(f"{display_path(self._path)}.{name} = ...: a call site's values are "
                                      ".output, .input and .inputs.")

    def __getitem__(self, key: Any) -> Any:
        raise TypeError(f"{display_path(self._path)} is a call site, not a module list")

    def __iter__(self) -> Iterator[Envoy]:
        raise TypeError(f"{display_path(self._path)} is a call site, not a module list")

    def __len__(self) -> int:
        raise TypeError(f"{display_path(self._path)} is a call site, not a module list")

    def __dir__(self) -> List[str]:
        return ["all", "input", "inputs", "iter", "next", "output", "skip", "source"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{display_path(self._path)} is a call site; call the module or function it "
                        "calls directly instead.")

    def __repr__(self) -> str:
        function = self._parent._function
        site = None if function is None else rewrite(function).site(self._name)
        if site is None:
            return f"<call site {display_path(self._path)}>"
        return f"<call site {display_path(self._path)}: {site.text} (line {site.line})>"


def _label(function: Any) -> str:
    name = getattr(function, "__qualname__", None) or repr(function)
    return f"{getattr(function, '__module__', '')}.{name}".lstrip(".")
