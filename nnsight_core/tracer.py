"""Runner and Invoker: the contexts that record an intervention graph and run it.

``model.trace(...)`` returns a :class:`Runner`. While its ``with`` block runs,
envoy and proxy operations record nodes into the Runner's graph; each
:class:`Invoker` (``runner.invoke(inputs)``) contributes its inputs as rows of
one batch. Leaving the block batches the inputs, runs the model once with the
graph interleaved, and frees everything but saved values.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _state
from ._state import current_runner
from .cache import record_cache
from .envoy import call_range
from .errors import InputError, InvokeError, OutputNotReturnedError, ProxyCallError, TraceStateError
from .graph import EVENT_KIND, FED_OPS, MODULE_VALUE_OPS, Graph, Iteration, Node, map_arg
from .interleaver import Batch, Interleaver
from .proxy import Proxy, TraceState, _record
from .scan import Scan, metadata, validate

if TYPE_CHECKING:
    from .model import NNsightModel

__all__ = ["Runner", "Invoker", "current_runner"]

_PREPARED = attrgetter("prepared")
_BATCH_SIZE = attrgetter("batch_size")


class Invoker:
    """One set of inputs inside a trace, owning its own rows of the batch.

    Example:
        >>> x1, x2 = torch.rand(1, 5), torch.rand(1, 5)
        >>> with model.trace() as tracer:
        ...     with tracer.invoke(x1):
        ...         a = model.layer1.output.save()
        ...     with tracer.invoke(x2):
        ...         model.layer1.output = a     # patch invoke 0's value into invoke 1
        ...         b = model.sigma1.input.save()   # what the next module received
        >>> torch.equal(a.value, b.value)
        True

    Attributes:
        index: Position among the trace's invokes, set on entering.
        inputs: The raw inputs given to ``invoke``.
        kwargs: Keyword arguments for input preparation (``invoker_args``).
        prepared: What the adapter's ``nnsight_prepare_inputs`` made of them, set on entering.
        batch_size: How many batch rows the invoke owns, set on entering.
    """

    def __init__(self, runner: Runner, inputs: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        self._runner = runner
        self.inputs = inputs
        self.kwargs = kwargs
        self.index: Optional[int] = None
        self.prepared: Any = None
        self.batch_size = 0
        # Per-invoke call cursor of each module (moved by Envoy.next()) and the
        # proxy currently standing for each module value (updated by assignments).
        self._cursors: Dict[str, int] = {}
        self._current: Dict[Tuple[str, str, Any], Proxy] = {}
        # The open `tracer.iter[...]` block's Iteration, and every Iteration of this invoke by range.
        self._block: Optional[Iteration] = None
        self._iterations: Dict[Tuple[int, Optional[int], int], Iteration] = {}

    def __enter__(self) -> Invoker:
        runner = self._runner
        runners = _state.local.runners
        if not runners or runners[-1] is not runner:
            raise TraceStateError("invoke() must be used inside the `with model.trace():` block "
                                  "of the Runner that created it.")
        if runner._invoker is not None:
            raise InvokeError(f"invokes cannot be nested: invoke {runner._invoker.index} is still "
                              "open; close it before opening the next one.")
        if not self.inputs and not self.kwargs:
            raise InputError("invoke() was given no inputs: pass the inputs for this invoke, "
                              "e.g. `tracer.invoke(x)`.")
        index = len(runner.invokers)
        prepared, size = runner._model._prepare_inputs(self.inputs, self.kwargs, index)
        self.index, self.prepared, self.batch_size = index, prepared, size
        rows = runner._graph.rows  # what _add_invoke() does, without its call
        start = rows[-1][1] if rows else 0
        rows.append((start, start + size))
        runner.invokers.append(self)
        # Through __dict__: Runner.__setattr__ (which guards user assignments) costs a call.
        runner.__dict__["_invoker"] = self
        runner.trace_state.invoke = index
        for prelude in runner._preludes:  # persistent edits (model.edit()) open every invoke
            self.replay(prelude)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        runner = self._runner
        try:
            if exc_type is None:
                for record in runner._caches:  # trace-wide tracer.cache(): this invoke's entries
                    record(self)
        finally:
            runner.__dict__["_invoker"] = None
            runner.trace_state.invoke = None

    def _iteration(self, start: int, stop: Optional[int], step: int) -> Iteration:
        """This invoke's Iteration over calls ``start:stop:step`` (one per range, shared)."""
        key = (start, stop, step)
        iteration = self._iterations.get(key)
        if iteration is None:
            iteration = self._iterations[key] = self._runner._graph.iteration(start, stop, step)
        return iteration

    def _set_node(self, op: str, path: str, call: Any, current: Proxy, value: Any) -> Proxy:
        return _record(self._runner._model.proxy_class, op, (path, call), (current, value), {})

    def replay(self, graph: Graph) -> None:
        """Record a copy of ``graph``'s nodes into this invoke, as if its code were written here.

        Module values go through the invoke's current values exactly as envoy
        accesses do: a value already produced is reused, and an assignment
        becomes the module's current value, so later code builds on it. Persistent
        edits (``model.edit()``) are replayed this way as each invoke opens.
        """
        runner = self._runner
        target_graph = runner._graph
        proxy_class = runner._model.proxy_class
        current = self._current
        copies: Dict[int, Node] = {}

        def bind(node: Node) -> Node:
            return copies[node.index]

        for node in graph.nodes:
            target = node.target
            if node.op in MODULE_VALUE_OPS:
                path, call = target
                if type(call) is Iteration:
                    call = self._iteration(call.start, call.stop, call.step)
                target = (path, call)
                key = (EVENT_KIND[node.op], path, call)
                existing = current.get(key) if node.op in FED_OPS else None
                if existing is not None:
                    copies[node.index] = existing.node
                    continue
            copy = target_graph.create_node(node.op, target, map_arg(node.args, bind),
                                            map_arg(node.kwargs, bind), invoke=self.index, where=node.where)
            copies[node.index] = copy
            runner._replayed.add(copy.index)
            if node.op in MODULE_VALUE_OPS and node.op != "skip":  # a skip is no new value
                current[key] = proxy_class(copy, runner.trace_state)


class Runner:
    """The tracing context returned by ``model.trace(...)``.

    Example:
        >>> with NNsight(net).trace(x) as model:     # the Runner forwards to the model
        ...     out = model.layer2.output.save()
        >>> out.value.shape
        torch.Size([1, 2])

    Model wrappers make Runners with :meth:`NNsightModel.runner
    <nnsight_core.model.NNsightModel.runner>` (``trace`` does; ``generate``
    asks for ``method="generate"``).

    The Runner is what its proxies consult (see :class:`~nnsight_core.proxy.Proxy`):
    while recording, for the open condition block and for shapes from the scan;
    after the execution, for the values it left.

    Attributes:
        graph: The recorded :class:`~nnsight_core.graph.Graph` (structure only; it
            can run again, e.g. with ``model.run_graph``).
        output: The model's raw output, after the block exits.
        invokers: The invokes entered so far, in batch order.
        method: The wrapper method the execution runs (None for a forward pass).
        trace_state: The :class:`~nnsight_core.proxy.TraceState` its proxies share.
        backend: What runs the graph instead of this process (see the ``nnsight_backend``
            hookspec), or None to run it here.
    """

    def __init__(self, model: NNsightModel, inputs: Tuple[Any, ...], invoker_args: Dict[str, Any],
                 kwargs: Dict[str, Any], scan: bool = True, method: Optional[str] = None,
                 preludes: Sequence[Graph] = (), backend: Optional[Callable[..., Any]] = None) -> None:
        # Set through __dict__: __setattr__ below guards user assignments, not these.
        self.__dict__.update(
            _model=model,
            method=method,
            _graph=Graph(),
            _inputs=inputs,
            _invoker_args=invoker_args,
            _kwargs=kwargs,
            _scan=scan,
            _scan_state=None,      # the last scan's fake values (nnsight_core.scan)
            _preludes=tuple(preludes),  # graphs replayed at the top of every invoke (persistent edits)
            _replayed=set(),       # indices of nodes replayed from preludes
            _invoker=None,         # the open invoke
            _auto=None,            # the invoke trace() opened for its own inputs
            _conds=[],             # condition nodes of the open tracer.cond blocks (innermost last)
            invokers=[],
            backend=backend,
            _caches=[],            # callbacks recording trace-wide caches as invokes close
            _output=None,
        )
        self.__dict__["trace_state"] = TraceState(self, self._graph, self._conds)

    @property
    def graph(self) -> Graph:
        """The recorded graph (structure only), printable and reusable after execution."""
        return self._graph

    @property
    def model_wrapper(self) -> NNsightModel:
        """The model wrapper this trace records on (for backends; ``runner.model`` is its envoy)."""
        return self._model

    @property
    def execution_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments the execution passes to the model (``max_new_tokens``, ...)."""
        return self._kwargs

    @property
    def recording(self) -> bool:
        """True while the user's code inside the block is recording."""
        return self.trace_state.runner is not None

    @property
    def values(self) -> Dict[int, Any]:
        """After the execution, node index to each saved value (inside a ``model.session()``,
        to every value until the session ends)."""
        return self.trace_state.values

    def condition(self) -> Optional[Node]:
        """The condition node of the innermost open ``tracer.cond`` block, or None."""
        conds = self._conds
        return conds[-1] if conds else None

    def metadata(self, proxy: Proxy, name: str) -> Any:
        """``proxy.shape`` (``dtype``, ``device``, ``ndim``) while recording: from the scan on
        fake tensors (see :func:`nnsight_core.scan.metadata`), or a recorded attribute with
        ``scan=False``."""
        return metadata(self, proxy, name)

    def invoke(self, *inputs: Any, **kwargs: Any) -> Invoker:
        """Open an invoke for ``inputs``; keyword arguments go to input preparation."""
        if self._auto is not None:
            raise InvokeError("trace() was given inputs, so it already opened invoke 0 for them; "
                              "call trace() without inputs to use invoke blocks.")
        return Invoker(self, inputs, kwargs)

    def __enter__(self) -> Runner:
        model = self._model
        for runner in _state.local.runners:
            if runner._model is model:
                raise TraceStateError(f"a trace of this {type(model).__name__} is already open in "
                                      "this thread: traces of one model cannot be nested.")
        _state.local.runners.append(self)
        if self._inputs or self._invoker_args:
            try:
                self.__dict__["_auto"] = auto = Invoker(self, self._inputs, self._invoker_args)
                auto.__enter__()
            except BaseException:
                self._close()
                raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        state = self.trace_state  # what _close() does, written out (a call less per trace)
        self.__dict__["_invoker"] = state.runner = state.invoke = None
        runners = _state.local.runners
        if runners and runners[-1] is self:
            runners.pop()
        elif self in runners:
            runners.remove(self)
        if exc_type is not None:
            self.__dict__["_scan_state"] = None
            for invoker in self.invokers:  # see below
                invoker._runner = None
            return
        try:
            if not self.invokers:
                raise InputError("the trace has no inputs: give them to trace(...) or open "
                                  "`with tracer.invoke(inputs):` blocks inside it.")
            batched, batch = self._batch()
            if self._scan and self._graph.nodes:
                validate(self, batched, batch)  # on fake tensors, only if the graph needs checking
            session = _state.local.session  # what open_session() returns: a call less per trace
            if session is not None:
                session.traces.append(self)
            if self.backend is not None:  # runs elsewhere; it fills trace_state (the wrapper stays lazy)
                self.__dict__["_output"] = self.backend(self, keep=session is not None)
            else:
                model = self._model  # what _interleave_graph() does, one call less per trace
                self.__dict__["_output"] = model._interleave(
                    model._execute, (batched,), dict(self._kwargs, method=self.method), self._graph, batch,
                    session is not None, self._finish)
        finally:
            self.__dict__["_scan_state"] = None
            # The invokes' references back to this Runner are dropped once it stopped recording:
            # without that cycle a trace nobody keeps is freed at once, with its saved values,
            # rather than when Python's cycle collector next runs.
            for invoker in self.invokers:
                invoker._runner = None

    def _finish(self, interleaver: Interleaver) -> None:
        """Take what the execution left (also after an error): its results, and what ran."""
        state = self.trace_state
        state.values, state.skipped, state.ran = interleaver.results(), frozenset(interleaver.skipped), \
            interleaver.done

    def _batch(self) -> Tuple[Any, Batch]:
        """The invokes' inputs as one batch, and how the batch is shared among them."""
        invokers = self.invokers
        return self._model.batch_invokes(list(map(_PREPARED, invokers)), list(map(_BATCH_SIZE, invokers)),
                                         self._kwargs, self.method)

    def _close(self) -> None:
        self.__dict__["_invoker"] = None
        state = self.trace_state
        state.runner = state.invoke = None
        runners = _state.local.runners
        if runners and runners[-1] is self:
            runners.pop()
        elif self in runners:
            runners.remove(self)

    @property
    def iter(self) -> _IterIndexer:
        """``with tracer.iter[1:3]:`` applies the block to calls 1 and 2 of every module it uses.

        Generation and denoising steps are calls: call ``k`` of each module
        is step ``k``. The block is recorded once and copied for each call
        while the model runs; a value saved inside it becomes a list with one
        entry per call. ``tracer.iter[:]`` (or :meth:`all`) covers every call
        the model makes, ``tracer.iter[2]`` call 2 only. Use it inside an
        invoke (or a trace given inputs).

        Example:
            >>> # model: a LanguageModel (nnsight_transformers), prompt: a str
            >>> with model.generate(prompt, max_new_tokens=4) as tracer:
            ...     with tracer.iter[1:3]:
            ...         model.model.layers[0].output[:] = 0         # steps 1 and 2 only
            ...         logits = model.lm_head.output.save()        # a list of 2 tensors
            >>> len(logits)
            2

        Raises:
            MissedCallError: After the run, when a call of the range never happened.
        """
        return _IterIndexer(self)

    def all(self) -> _IterBlock:
        """``with tracer.all():`` is ``with tracer.iter[:]:`` (every call of every module used)."""
        return self.iter[:]

    # -- cache ------------------------------------------------------------------------

    def cache(self, modules: Any = None, device: Any = None, dtype: Any = None,
              include_inputs: bool = False) -> Any:
        """Save the output (and optionally the inputs) of many modules with one call.

        Inside an invoke (or a trace given inputs) it caches that invoke's
        rows and returns a :class:`~nnsight_core.cache.Cache`. Outside any
        invoke it returns a dict ``{invoke index: Cache}`` that gets one
        entry as each invoke of the trace closes. Each module's value is the
        one at its current call, as the code before the call left it (like
        ``.output.save()`` written at that line). ``cache.estimate()`` gives
        the bytes it will hold, without running the model.

        Example:
            >>> with model.trace(x) as tracer:
            ...     cache = tracer.cache(dtype=torch.float16)
            >>> cache["model.layer1"].output.dtype
            torch.float16

        Args:
            modules: Envoys, module paths (``"transformer.h.0"``, ``"model.transformer.h.0"``)
                or a list of them; None caches every module of the model, leaving out
                those the execution never calls.
            device: Move every cached tensor there while the model runs (e.g. ``"cpu"``).
            dtype: Cast every floating-point cached tensor to it.
            include_inputs: Also cache what each module received (``entry.inputs``).

        Returns:
            A :class:`~nnsight_core.cache.Cache`, or ``{invoke index: Cache}`` outside an invoke.

        Raises:
            EnvoyAttributeError: A module path names no module.
            CacheError: Something else that is not a module, a bad device or dtype.
            MissedCallError: After the run, when a module named in ``modules`` never ran.
        """
        return record_cache(self, modules, device, dtype, include_inputs)

    # -- control flow and helpers ---------------------------------------------------

    def cond(self, condition: Any) -> _CondBlock:
        """``with tracer.cond(condition):`` runs the block's interventions only if ``condition`` is true.

        The condition is a proxy (or a plain value) evaluated while the model
        runs, e.g. ``model.layer1.output.sum() > 0``; it must reduce to one
        true/false value. Nodes recorded in the block are skipped when it is
        false, and so is everything computed from them (a saved value then
        has no value: reading it raises :class:`~nnsight_core.errors.ValueNotSetError`
        saying so). Module values read inside the block are still produced.
        Blocks nest (inner conditions only count when the outer ones hold).
        For an "else", open a second block on the negated condition
        (``tracer.cond(condition.logical_not())``).

        Example:
            >>> with model.trace(x) as tracer:
            ...     h = model.layer1.output
            ...     with tracer.cond(h.mean() > 0):
            ...         model.layer1.output[:] = 0

        Raises:
            InterventionError: While running, when the condition is not a single value.
        """
        self._check_open("cond()")
        if not isinstance(condition, Proxy) or condition.node.graph is not self._graph:
            # A constant (or a finished trace's value): record it so the block has a node to test.
            condition = _record(self._model.proxy_class, "apply", bool, (condition,), {})
        return _CondBlock(self, condition.node)

    def apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Record ``fn(*args, **kwargs)`` as one node; proxies among the arguments become their values.

        Use it for any Python function (NumPy, a metric, a custom edit) that
        proxies cannot record operation by operation. Returns a proxy of the
        result. A graph with ``apply`` nodes cannot be serialised to JSON (the
        function is code, not data).

        Example:
            >>> with model.trace(x) as tracer:
            ...     top = tracer.apply(torch.topk, model.layer2.output, k=2).save()
        """
        self._check_open("apply()")
        if not callable(fn):
            raise ProxyCallError(f"tracer.apply() takes a callable first, not {type(fn).__name__}.")
        return _record(self._model.proxy_class, "apply", fn, args, kwargs)

    def log(self, *values: Any, **print_kwargs: Any) -> None:
        """Print ``values`` while the model runs (proxies print as their values), like ``print``.

        Example:
            >>> with model.trace(x) as tracer:
            ...     tracer.log("sigma1 below 1:", model.sigma1.output.max() < 1)
            sigma1 below 1: tensor(True)
        """
        self.apply(_print, *values, **print_kwargs)

    def stop(self) -> None:
        """End the execution once every intervention recorded so far has run; compute nothing after.

        The model's remaining modules do not run, ``tracer.output`` is None, and
        values recorded after ``stop()`` are never computed. Saved values recorded
        before it are kept.

        Example:
            >>> with model.trace(x) as tracer:
            ...     hidden = model.layer1.output.save()
            ...     tracer.stop()                    # layer2 and the rest never run
        """
        self._check_open("stop()")
        graph = self._graph
        before = tuple(n for n in graph.nodes if not n.users and n.iteration is None)
        graph.create_node("stop", None, before, invoke=self._invoke_index(), where=_state.user_location(),
                          cond=self.condition())

    def _check_open(self, what: str) -> None:
        if _state.current_runner() is not self or not self.recording:
            raise TraceStateError(f"tracer.{what} records into its trace: use it inside the "
                                  "`with model.trace(...) as tracer:` block.")

    def _add_invoke(self, invoker: Invoker) -> None:
        rows = self._graph.rows
        start = rows[-1][1] if rows else 0
        rows.append((start, start + invoker.batch_size))
        self.invokers.append(invoker)

    def _invoke_index(self) -> Optional[int]:
        invoker = self._invoker
        return None if invoker is None else invoker.index

    # The Runner stands for the model inside its block (`with NNsight(net).trace(x) as model:`),
    # so the root module's values are reachable and assignable through it too.
    @property
    def output(self) -> Any:
        """Inside the block, the root module's output proxy; after it, the model's raw output.

        Raises:
            OutputNotReturnedError: The trace ran elsewhere (a backend) and the output did not
                come back; save ``model.output`` inside the trace instead.
        """
        if self.recording:
            return self._model.output
        output = self._output
        if isinstance(output, OutputNotReturnedError):  # what a backend returns instead of an output
            raise output.with_traceback(None)
        return output

    @output.setter
    def output(self, value: Any) -> None:
        self._model.output = value

    @property
    def inputs(self) -> Any:
        """The root module's ``(args, kwargs)`` proxy (inside the block)."""
        return self._model.inputs

    @inputs.setter
    def inputs(self, value: Any) -> None:
        self._model.inputs = value

    @property
    def input(self) -> Any:
        """The root module's first positional argument proxy (inside the block)."""
        return self._model.input

    @input.setter
    def input(self, value: Any) -> None:
        self._model.input = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(self._model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if (not name.startswith("_") and name not in self.__dict__ and not hasattr(type(self), name)
                and _state.current_runner() is self):
            setattr(self._model, name, value)  # inside its block: `runner.outptu = x` is caught there
        else:
            object.__setattr__(self, name, value)


class _IterIndexer:
    """``tracer.iter[calls]``: an iteration block over those calls."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def __getitem__(self, calls: Any) -> _IterBlock:
        return _IterBlock(self._runner, call_range(calls, "tracer.iter"))


class _IterBlock:
    """The ``with tracer.iter[...]:`` context: module values inside it name the block's calls."""

    def __init__(self, runner: Runner, calls: Tuple[int, Optional[int], int]) -> None:
        self._runner = runner
        self._calls = calls
        self._invoker: Optional[Invoker] = None

    def __enter__(self) -> Iteration:
        invoker = self._runner._invoker
        if invoker is None or _state.current_runner() is not self._runner:
            raise InvokeError("tracer.iter[...] / tracer.all() is used inside an invoke of an open "
                              "trace: put it inside `with tracer.invoke(inputs):` (or a trace given inputs).")
        if invoker._block is not None:
            raise InvokeError(f"iteration blocks cannot be nested: the block over {invoker._block} "
                              "is still open.")
        self._invoker = invoker
        invoker._block = invoker._iteration(*self._calls)
        return invoker._block

    def __exit__(self, *exc: Any) -> None:
        if self._invoker is not None:
            self._invoker._block = None


def _print(*values: Any, **kwargs: Any) -> None:
    print(*values, **kwargs)


class _CondBlock:
    """The ``with tracer.cond(...):`` context: nodes recorded inside run only if the condition holds."""

    def __init__(self, runner: Runner, condition: Node) -> None:
        self._runner = runner
        self._condition = condition

    def __enter__(self) -> _CondBlock:
        self._runner._conds.append(self._condition)
        return self

    def __exit__(self, *exc: Any) -> None:
        conds = self._runner._conds
        if conds and conds[-1] is self._condition:
            conds.pop()
