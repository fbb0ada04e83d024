"""NNsightModel: the base of every model wrapper (``NNsight``, ``LanguageModel``, ...).

It owns the wrapped module, its envoy tree and the tracing entry points, and
calls adapter behaviour only through the pluggy hooks of
:mod:`nnsight_core.hookspecs`.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import _state
from ._aliases import NO_ALIASES, Aliases
from .edits import EditRunner
from .envoy import Envoy
from .errors import AdapterNotFoundError, EnvoyAttributeError, InputError, InvokeError, TraceStateError
from .graph import MODULE_VALUE_OPS, Graph, display_path
from .interleaver import Batch, Interleaver, StopExecution, module_at
from .plugins import call_hook, get_plugin_manager
from .source import check_path, split_path
from .proxy import InterventionProxy, Proxy
from .session import Session, session_backend
from .tracer import Invoker, Runner

__all__ = ["NNsightModel"]

# One lock per wrapped module, shared by every wrapper of it (``NNsight(net)`` made twice):
# two executions hooking the same module at once would remove or restore each other's hooks.
_MODULE_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODULE_LOCKS_GUARD = threading.Lock()


# Loading (``nnsight_load``, meta skeleton or real weights) runs in one thread at a time, process-wide:
# frameworks' loaders are not thread-safe (transformers' from_pretrained and accelerate's
# init_empty_weights patch torch globally while they run), so concurrent loads give wrong weights.
_LOAD_LOCK = threading.RLock()


def _module_lock(module: torch.nn.Module) -> threading.RLock:
    """The execution lock of ``module``, the same object for every wrapper of it."""
    with _MODULE_LOCKS_GUARD:
        lock = _MODULE_LOCKS.get(module)
        if lock is None:
            lock = _MODULE_LOCKS[module] = threading.RLock()
        return lock


class NNsightModel:
    """Base class of model wrappers: tracing, envoys and interleaving for one module.

    Example:
        >>> class MyWrapper(NNsight):           # NNsight is an NNsightModel; a new framework's
        ...     pass                              # wrapper adds hookimpls by entry point
        >>> isinstance(MyWrapper(net), NNsightModel)
        True
        >>> model = MyWrapper(net)
        >>> with model.trace(x):
        ...     h = model.layer1.output.save()
        >>> h.value.shape
        torch.Size([1, 10])

    Attributes:
        model_key: The key the model was loaded from (for ``nnsight_load``), or, for a module
            given directly, its class name (a ``str`` either way, as in nnsight; the module
            itself is ``_model``).
        args: Extra positional arguments given to the wrapper.
        kwargs: Extra keyword arguments given to the wrapper.
        dispatched: Whether real weights are loaded.
        custom_model: Whether the wrapper was given a module rather than a key.
        proxy_class: Class of the proxies that traces create.

    ``rename={"real.path" or "child_name": "alias", ...}`` (every wrapper takes it) gives
    modules other names: a dotted path is aliased on the wrapper (``{"layer1": "first"}``
    or ``{"model.layers": "layers"}``: ``model.layers`` is ``model.model.layers``), a
    child name at every depth (``{"self_attn": "attn"}``). The real names keep working,
    ``print(model)`` shows them, and graphs record the real paths. See
    :doc:`/names`.

    Override points (a framework's wrapper class sets or overrides them; everything
    else comes from the adapter's hookimpls):

    * ``proxy_class``: the :class:`~nnsight_core.proxy.Proxy` subclass of the values a
      trace records, for framework helpers (``LanguageModel``'s ``.token[i]``).
    * :meth:`default_rename`: aliases every model of the wrapper gets (``rename=`` extends them).
    * :meth:`batch_layout`: how an execution enlarges the invokes' batch inside the
      model (classifier-free guidance), so each invoke keeps its own rows.

    Public helpers for adapters: :meth:`runner` (a trace that runs another method,
    e.g. ``generate``), :meth:`attach` (an extra hooked module beside the model),
    ``_model`` (the wrapped module; public despite its underscore, as in nnsight).
    """

    proxy_class: type = InterventionProxy
    #: Graphs of the persistent edits every trace applies (see :meth:`edit`); set per instance.
    _edits: Tuple[Graph, ...] = ()
    #: ``.to()`` calls made before dispatch, applied in order once the weights are loaded.
    _pending_to: Tuple[Tuple[tuple, dict], ...] = ()
    #: The ``rename=`` table, checked and normalised (see :meth:`default_rename`).
    _aliases: Aliases = NO_ALIASES

    def __init__(self, model_key: Any, *args: Any, dispatch: bool = False,
                 rename: Optional[Dict[str, str]] = None, **kwargs: Any) -> None:
        d = self.__dict__
        d["custom_model"] = isinstance(model_key, torch.nn.Module)
        # The seed's contract: a str, the class name for a module given directly (``_model`` holds it).
        d["model_key"] = type(model_key).__name__ if d["custom_model"] else model_key
        d["args"] = args
        d["kwargs"] = kwargs
        d["_lock"] = _module_lock(model_key) if d["custom_model"] else threading.RLock()
        d["_attached"] = {}
        if self.custom_model:
            d["_model"] = model_key
            d["dispatched"] = True
        else:
            with _LOAD_LOCK:
                d["_model"] = call_hook("nnsight_load", model=self, model_key=model_key, args=args,
                                        kwargs=kwargs, meta=True)
            d["dispatched"] = False
        reserved = set(dir(Envoy)) | set(dir(type(self))) | set(d)
        d["_aliases"] = Aliases.build(self.default_rename(), rename, root=self._model,
                                      attached=self._attached, reserved=reserved)
        d["_envoy"] = Envoy(self._model, "", self)
        if dispatch and not self.dispatched:
            self.dispatch_model()

    # -- tracing -----------------------------------------------------------------

    def trace(self, *inputs: Any, trace: bool = True, invoker_args: Optional[Dict[str, Any]] = None,
              scan: bool = True, **kwargs: Any) -> Any:
        """Open a tracing context (a :class:`~nnsight_core.tracer.Runner`).

        Args:
            *inputs: Inputs for one invoke opened at once; omit them to use
                ``tracer.invoke(...)`` blocks.
            trace: If False, run the model on ``inputs`` at once and return its output.
            invoker_args: Keyword arguments for the invoke's input preparation.
            scan: Let the trace run the model on fake tensors (no real compute, see
                :mod:`nnsight_core.scan`) when it needs to: for ``proxy.shape`` /
                ``.dtype`` / ``.device`` / ``.ndim`` inside the block, and at exit to check
                assignments of tensor constants before the real run. Lazy: a trace that
                needs neither scans nothing. ``False`` disables both; ``.shape`` is
                then a recorded attribute like any other.
            **kwargs: Passed to execution (the model call).

        Returns:
            The Runner, or the model's output when ``trace=False``.

        Raises:
            InputError: ``trace=False`` without inputs (also a ``ValueError``).
        """
        invoker_args = dict(invoker_args or {})
        if not trace:
            if not inputs and not invoker_args:
                raise InputError("trace(trace=False) runs the model at once and needs inputs: "
                                 "pass them, e.g. model.trace(x, trace=False).")
            if self._edits:  # persistent edits apply to every execution, so run them in a trace
                with self.trace(*inputs, invoker_args=invoker_args, **kwargs) as runner:
                    pass
                return runner.output
            prepared, size = self._prepare_inputs(inputs, invoker_args)
            batched = self._batch_inputs([prepared], [size])
            with self._lock:  # not while another thread's scan has swapped in fake weights
                if not self.dispatched:
                    self.dispatch_model()
                return self._execute(batched, **kwargs)
        if kwargs or _state.local.session is not None:  # backend=/remote=, a session's backend
            return self.runner(*inputs, invoker_args=invoker_args, scan=scan, **kwargs)
        # What runner() does (trace() is the hot path: one call less per trace).
        return Runner(self, inputs, invoker_args, kwargs, scan=scan, method=None, preludes=self._edits)

    def runner(self, *inputs: Any, method: Optional[str] = None,
               invoker_args: Optional[Dict[str, Any]] = None, scan: bool = True,
               backend: Optional[Callable[..., Any]] = None, remote: bool = False, **kwargs: Any) -> Runner:
        """A tracing context that runs ``method`` of the wrapped module (its forward pass when None).

        This is what :meth:`trace` returns; an adapter's wrapper uses it for the other
        ways its model runs (``LanguageModel.generate`` is
        ``self.runner(*inputs, method="generate", ...)``). The adapter's
        ``nnsight_execute`` gets ``method``. Persistent edits (:meth:`edit`) apply.

        Example:
            >>> with model.runner(x, method=None) as tracer:     # the same as model.trace(x)
            ...     out = model.output.save()
            >>> out.value.shape
            torch.Size([1, 2])

        Args:
            *inputs: Inputs for one invoke opened at once (else ``tracer.invoke`` blocks).
            method: The name the adapter's ``nnsight_execute`` runs (None: the forward pass).
            invoker_args: Keyword arguments for the invoke's input preparation.
            scan: See :meth:`trace`.
            backend: Run the graph there instead of in this process (see the ``nnsight_backend``
                hookspec); the wrapper is then never dispatched.
            remote: Ask the installed plugins for the ``"remote"`` backend (``nnsight_backend``);
                also :meth:`trace` and ``generate`` take ``backend=`` and ``remote=``. Inside
                ``model.session(remote=True)`` traces use the session's backend.
            **kwargs: Passed to execution.

        Raises:
            AdapterNotFoundError: ``remote=True`` but no installed plugin serves remote backends.
        """
        if backend is None:
            backend = self.find_backend("remote") if remote else session_backend()
        return Runner(self, inputs, dict(invoker_args or {}), kwargs, scan=scan, method=method,
                      preludes=self._edits, backend=backend)

    def find_backend(self, name: str) -> Callable[..., Any]:
        """The backend plugins give for ``name`` (``"remote"``), through the ``nnsight_backend`` hook.

        Raises:
            AdapterNotFoundError: No installed plugin serves a backend of that name.
        """
        backend = get_plugin_manager().hook.nnsight_backend(model=self, name=name)
        if backend is None:
            raise AdapterNotFoundError(
                f"no installed plugin provides a {name!r} backend for {type(self).__name__} (the "
                "nnsight_backend hook): install the distribution of a remote backend plugin, or "
                "pass backend=... to trace().")
        return backend

    def invoke(self, *inputs: Any, **kwargs: Any) -> Invoker:
        """Open an invoke in this model's open trace (same as ``tracer.invoke``).

        Raises:
            TraceStateError: No trace of this model is open in this thread.
        """
        runner = _state.current_runner()
        if runner is None or runner._model is not self:
            raise TraceStateError("invoke() opens an invoke inside a trace: use it within "
                                  "`with model.trace() as tracer:`.")
        return runner.invoke(*inputs, **kwargs)

    # -- sessions and persistent edits --------------------------------------------------

    def session(self, remote: bool = False, backend: Optional[Callable[..., Any]] = None) -> Session:
        """A block of traces in which a later trace can use any value of an earlier one.

        Every trace run inside the block keeps all its values, saved or not,
        until the block ends; then the unsaved ones are freed.

        Example:
            >>> clean, corrupted = torch.rand(1, 5), torch.rand(1, 5)
            >>> with model.session():
            ...     with model.trace(clean):
            ...         hidden = model.layer1.output             # no .save() needed
            ...     with model.trace(corrupted):
            ...         model.layer1.output = hidden
            ...         out = model.output.save()
            >>> torch.equal(out.value, net(clean))                # clean's layer1 patched in
            True

        Args:
            remote: Run every trace of the block on the ``"remote"`` backend (see :meth:`runner`).
            backend: Run every trace of the block on this backend.

        Returns:
            The :class:`~nnsight_core.session.Session` context.

        Raises:
            TraceStateError: On entering it inside a trace or inside another session.
        """
        if backend is None and remote:
            backend = self.find_backend("remote")
        return Session(self, backend=backend)

    def edit(self, *, inplace: bool = False) -> EditRunner:
        """Record interventions that every later trace applies (nnsight's persistent edits).

        Inside ``with model.edit() as edited:`` interventions are written on
        ``model`` as in a trace with one invoke and no inputs; nothing runs.
        Each invoke of a later trace of ``edited`` starts with them, before its
        own interventions. ``edited`` is a new wrapper of the same module (a
        lazily loaded model is loaded first, so both share the weights) and
        ``model`` is unaffected; with ``inplace=True`` the edit goes to ``model``
        itself and the block returns ``model``. Edits add up; :meth:`clear_edits`
        removes them.

        Example:
            >>> with model.edit() as edited:
            ...     model.layer1.output[:, 0] = 0
            >>> with edited.trace(x):
            ...     hidden = edited.layer1.output.save()  # computed with the edit
            >>> hidden.value[:, 0].tolist()
            [0.0]

        Args:
            inplace: Apply the edit to this wrapper instead of a new one.

        Returns:
            The :class:`~nnsight_core.edits.EditRunner` context; entering it gives the edited wrapper.

        Raises:
            TraceStateError: ``.save()`` inside the block (values of an edit belong to no one trace).
            InvokeError: ``invoke()`` inside the block (an edit applies to every invoke).
        """
        return EditRunner(self, inplace)

    def clear_edits(self) -> None:
        """Remove every persistent edit of this wrapper (see :meth:`edit`).

        Example:
            >>> model.clear_edits()
        """
        self.__dict__.pop("_edits", None)

    def interleave(self, fn: Callable[..., Any], intervention_graph: Graph, *inputs: Any,
                   **kwargs: Any) -> Any:
        """Run ``fn(*inputs, **kwargs)`` with ``intervention_graph`` interleaved; return what it returns.

        The graph's invoke (a single one) owns the whole batch. Hooks are added
        only to modules the graph touches and are always removed, also on error.
        One module runs one interleaved execution at a time, also across wrappers
        of the same module: concurrent traces from other threads wait for it. A
        lazily loaded model loads its weights once, in the first execution. To get
        the saved values back, run a graph with :meth:`run_graph`.

        Raises:
            MissedCallError: A module value the graph needed was never produced.
        """
        return self._interleave(fn, inputs, kwargs, intervention_graph, None)

    def run_graph(self, graph: Graph, *inputs: Any, invokes: Optional[Sequence[Any]] = None,
                  method: Optional[str] = None, executor: Callable[..., Interleaver] = Interleaver,
                  invoker_args: Optional[Sequence[Dict[str, Any]]] = None, **kwargs: Any) -> Dict[int, Any]:
        """Run a recorded (or loaded) graph on new inputs, as its trace would have; return its saved values.

        The graph is structure only, so it can run any number of times, also from
        several threads at once. Each invoke's inputs are prepared and batched by
        the adapter, as in a trace.

        Example:
            >>> with model.trace(x) as tracer:
            ...     hidden = model.layer1.output.save()
            >>> y = torch.rand(3, 5)
            >>> saved = model.run_graph(tracer.graph, y)      # {saved node index: value}
            >>> torch.equal(saved[hidden.node.index], net.layer1(y))
            True

        Args:
            graph: The graph (``tracer.graph``, or one ``Graph.from_json`` rebuilt).
            *inputs: The inputs of a graph with one invoke (as for ``model.trace(*inputs)``).
            invokes: For a graph of several invokes: one entry per invoke, in order, each
                a tuple of its inputs (as for ``tracer.invoke(*inputs)``) or a single input.
            method: What to run instead of the forward pass (``"generate"``), as the
                adapter's ``nnsight_execute`` knows it.
            executor: The :class:`~nnsight_core.interleaver.Interleaver` class (or a factory
                taking its arguments) that runs the graph: a subclass can check or restrict
                operations, as :func:`nnsight_core.serialize.run`'s guarded one does.
            invoker_args: Keyword arguments for each invoke's input preparation, one dict per
                invoke (as ``tracer.invoke(inputs, **invoker_args)``); default none.
            **kwargs: Passed to execution, as ``model.trace``'s keyword arguments.

        Returns:
            Each ``save`` node's index mapped to its saved value.

        Raises:
            InvokeError: ``inputs`` and ``invokes`` both or neither given, or their number
                differs from the graph's invokes.
            EnvoyAttributeError: The graph names a module this model does not have.
            SourceError: The graph names a call site (``.source``) the module's forward does not have.
        """
        expected = len(graph.rows)
        if (not inputs) == (invokes is None):
            raise InvokeError(f"run_graph() takes the inputs of a one-invoke graph as arguments, or "
                              f"invokes=[inputs of invoke 0, ...]; give exactly one of them "
                              f"(this graph has {expected} invoke(s)).")
        groups = [inputs] if invokes is None else [tuple(g) if isinstance(g, (tuple, list)) else (g,)
                                                   for g in invokes]
        if len(groups) != expected:
            raise InvokeError(f"the graph was recorded with {expected} invoke(s) but run_graph() got "
                              f"inputs for {len(groups)}; pass invokes=[...] with one entry per invoke.")
        for node in graph.nodes:
            path = node.target[0] if node.op in MODULE_VALUE_OPS else node.target if node.op == "call_module" else None
            if path is None:
                continue
            head, sites = split_path(path)
            module = module_at(self._model, self._attached, head)
            if module is None:
                raise EnvoyAttributeError(
                    f"{node.describe()} (node %{node.index}) needs {display_path(path)}, which this "
                    f"{type(self).__name__} does not have: run the graph on a model with the module "
                    "tree it was recorded on.")
            if sites:  # call sites inside a forward: checked in the source, before anything runs
                check_path(module, path)
        if invoker_args is not None and len(invoker_args) != expected:
            raise InvokeError(f"run_graph() got invoker_args for {len(invoker_args)} invoke(s) but the "
                              f"graph has {expected}; pass one dict per invoke.")
        prepared, sizes = [], []
        for k, group in enumerate(groups):
            value, size = self._prepare_inputs(tuple(group), dict(invoker_args[k]) if invoker_args else {}, k)
            required = graph.requirements.get(k)
            if required:
                self.check_requirements(k, value, required)
            prepared.append(value)
            sizes.append(size)
        batched, batch = self.batch_invokes(prepared, sizes, kwargs, method)
        results: Dict[int, Any] = {}
        self._interleave_graph(graph, batched, batch, method=method, kwargs=kwargs,
                               finish=lambda interleaver: results.update(interleaver.results()),
                               executor=executor)
        return results

    def check_requirements(self, invoke: int, prepared: Any, requirements: Dict[str, Any]) -> None:
        """Check that invoke ``invoke``'s prepared inputs meet what its recorded graph assumes.

        Override point, called by :meth:`run_graph` for each invoke that has
        requirements (:meth:`Graph.require <nnsight_core.graph.Graph.require>`), which
        the wrapper class's own helpers recorded. An override checks the names it
        knows and passes the others on to ``super()``; this base knows none.

        Raises:
            InputError: A requirement this wrapper cannot check (a graph recorded by
                another wrapper class), or one the inputs do not meet.
        """
        if requirements:
            raise InputError(f"invoke {invoke} of the graph was recorded assuming {requirements}, which "
                             f"{type(self).__name__} cannot check: run the graph on the kind of model "
                             "wrapper that recorded it.")

    def batch_invokes(self, prepared: List[Any], sizes: List[int], kwargs: Dict[str, Any],
                      method: Optional[str]) -> Tuple[Any, Batch]:
        """Batch several invokes' prepared inputs into one (the adapter's ``nnsight_batch_inputs``),
        and say how the execution shares the batch among them (:meth:`batch_layout`).

        The one place invokes are batched: traces, their scans and :meth:`run_graph` use it.

        Returns:
            The batched inputs, and the :class:`~nnsight_core.interleaver.Batch`.
        """
        if len(sizes) == 1:
            return prepared[0], Batch.of(sizes)  # nothing to combine (see the hookspec)
        batched = self._batch_inputs(prepared, sizes)
        return batched, Batch.of(sizes, self.batch_layout(sum(sizes), kwargs, method))

    def _interleave_graph(self, graph: Graph, batched: Any, batch: Optional[Batch], method: Optional[str],
                          kwargs: Dict[str, Any], keep: bool = False,
                          finish: Optional[Callable[[Interleaver], None]] = None,
                          executor: Callable[..., Interleaver] = Interleaver) -> Any:
        """Execute the model on ``batched`` with ``graph`` interleaved; ``finish`` gets the
        Interleaver once the run ends (also after an error), to take its results."""
        return self._interleave(self._execute, (batched,), dict(kwargs, method=method), graph, batch,
                                keep, finish, executor)

    def _interleave(self, fn: Callable[..., Any], inputs: Tuple[Any, ...], kwargs: Dict[str, Any],
                    graph: Graph, batch: Optional[Batch], keep: bool = False,
                    finish: Optional[Callable[[Interleaver], None]] = None,
                    executor: Callable[..., Interleaver] = Interleaver) -> Any:
        with self._lock:
            if not self.dispatched:
                self.dispatch_model()
            interleaver = executor(graph, self._model, self._attached, batch, keep)
            try:
                with interleaver:
                    try:
                        output = fn(*inputs, **kwargs)
                    except StopExecution:
                        return None  # tracer.stop(): what ran is kept, nothing after it is checked
                if graph.nodes:  # an empty graph has nothing to miss
                    interleaver.check_complete()
            finally:
                if finish is not None:
                    finish(interleaver)
        return output

    def batch_layout(self, batch_size: int, kwargs: Dict[str, Any],
                     method: Optional[str]) -> Dict[int, Tuple[int, int]]:
        """Other batch sizes the execution makes of the invokes' batch, and how.

        The invokes own consecutive rows of the ``batch_size`` rows they were
        batched into. An execution that enlarges the batch inside the model
        (classifier-free guidance runs an unconditional and a conditional copy;
        several samples per prompt repeat each row) overrides this so every
        invoke still gets exactly its own rows of the larger tensors. Called
        once per trace with two or more invokes, with the execution's keyword
        arguments and method.

        Returns:
            ``{size: (blocks, repeats)}``: a tensor whose dimension 0 is ``size``
            holds ``blocks`` consecutive copies of the batch, each batch row
            repeated ``repeats`` times in a row. The default, ``{}``, means only
            tensors of ``batch_size`` rows are split among invokes.

        Example:
            >>> class Guided(NNsight):
            ...     def batch_layout(self, batch_size, kwargs, method):
            ...         return {2 * batch_size: (2, 1)}   # [uncond; cond] halves
            >>> Guided(net).batch_layout(3, {}, "trace")
            {6: (2, 1)}
        """
        return {}

    def default_rename(self) -> Dict[str, str]:
        """Aliases this wrapper gives its modules before the user's ``rename=`` (which extends
        and overrides them); called once, when the wrapper is built (on the meta skeleton
        of a lazily loaded model). The default has none.

        A framework's wrapper overrides it for names that fit every model it loads, as
        ``LanguageModel`` does for its standard names (``layers``, ``attn``, ...).

        Example:
            >>> class Named(NNsight):
            ...     def default_rename(self):
            ...         return {"layer1": "first"}
            >>> named = Named(net)
            >>> named.first is named.layer1
            True

        Returns:
            ``{real module path or child name: alias}``, as ``rename=`` takes it.
        """
        return {}

    def dispatch_model(self, *args: Any, **kwargs: Any) -> None:
        """Load real weights into a wrapper built from a key (no-op once dispatched).

        Loads run one at a time in the process (frameworks' loaders are not
        thread-safe); a thread that finds the weights loaded meanwhile does nothing.
        """
        if self.dispatched:
            return
        with _LOAD_LOCK:
            if self.dispatched:
                return
            module = call_hook("nnsight_load", model=self, model_key=self.model_key,
                               args=self.args + args, kwargs={**self.kwargs, **kwargs}, meta=False)
            for to_args, to_kwargs in self.__dict__.pop("_pending_to", ()):
                module = module.to(*to_args, **to_kwargs)
            self.__dict__["_model"] = module
            self.__dict__["dispatched"] = True
            self._rebind(module)

    def to(self, *args: Any, **kwargs: Any) -> NNsightModel:
        """Move or cast the wrapped module like ``torch.nn.Module.to``; returns the wrapper.

        On a wrapper that has not loaded its weights yet, the call is remembered
        and applied, in order with other such calls, right after
        :meth:`dispatch_model` loads them; meanwhile the meta skeleton takes the
        dtype (so a scan reports it) and stays on the meta device.

        Example:
            >>> model.to(torch.float64) is model
            True
            >>> with model.trace(x.double()):
            ...     out = model.output.save()
            >>> out.value.dtype
            torch.float64
        """
        if not self.dispatched:
            with _LOAD_LOCK:  # not half-way through another thread's dispatch
                if not self.dispatched:
                    dtype = torch._C._nn._parse_to(*args, **kwargs)[1]  # validates the arguments too
                    if dtype is not None:
                        self._model.to(dtype)  # a meta skeleton cannot move, but can change dtype
                    self.__dict__["_pending_to"] = self._pending_to + ((args, kwargs),)
                    self._rebind(self._model)
                    return self
        self.__dict__["_model"] = self._model.to(*args, **kwargs)
        self._rebind(self._model)
        return self

    def _rebind(self, module: torch.nn.Module) -> None:
        self._envoy._rebind(module)
        children = self._envoy._children
        for name, value in list(self.__dict__.items()):
            if isinstance(value, Envoy) and value is not self._envoy and children.get(name) is not value:
                del self.__dict__[name]

    # -- adapter hooks ---------------------------------------------------------------

    def _prepare_inputs(self, inputs: Tuple[Any, ...], kwargs: Dict[str, Any],
                        index: int = 0) -> Tuple[Any, int]:
        """One invoke's prepared inputs and row count (``index``: its position, for the error).

        Raises:
            InvokeError: The adapter counted fewer than one row.
        """
        prepared, size = call_hook("nnsight_prepare_inputs", model=self, inputs=inputs, kwargs=kwargs)
        if size < 1:
            raise InvokeError(f"invoke {index} has {size} rows: its inputs must have at least one "
                              "row in the batch dimension (dimension 0).")
        return prepared, size

    def _batch_inputs(self, prepared: List[Any], batch_sizes: List[int]) -> Any:
        if len(prepared) == 1:
            return prepared[0]  # nothing to combine (see the hookspec)
        return call_hook("nnsight_batch_inputs", model=self, prepared=prepared, batch_sizes=batch_sizes)

    def _execute(self, batched: Any, method: Optional[str] = None, **kwargs: Any) -> Any:
        return call_hook("nnsight_execute", model=self, batched=batched, kwargs=kwargs, method=method)

    def attach(self, name: str, module: torch.nn.Module) -> Envoy:
        """Give the wrapper an extra top-level module, outside the wrapped module's tree.

        Adapters use it for values the model itself has no module for (e.g.
        ``LanguageModel.generator``, called with the generated ids): the module
        gets an envoy ``model.<name>`` and is hooked like any other; the wrapped
        module and its ``repr`` stay untouched. The adapter calls it (usually
        from its ``nnsight_execute``) like any module.

        Example:
            >>> class Ids(torch.nn.Module):
            ...     def forward(self, ids):
            ...         return ids
            >>> wrapper = NNsight(net)
            >>> envoy = wrapper.attach("ids", Ids())
            >>> wrapper.ids is envoy
            True

        Returns:
            The module's envoy.
        """
        self._attached[name] = module
        self.__dict__.pop(name, None)
        return self._envoy._child(name)

    # -- the module tree ---------------------------------------------------------------

    @property
    def output(self) -> Proxy:
        """The root module's output (inside a trace)."""
        return self._envoy.output

    @output.setter
    def output(self, value: Any) -> None:
        self._envoy.output = value

    @property
    def inputs(self) -> Proxy:
        """The root module's ``(args, kwargs)`` (inside a trace)."""
        return self._envoy.inputs

    @inputs.setter
    def inputs(self, value: Any) -> None:
        self._envoy.inputs = value

    @property
    def input(self) -> Proxy:
        """The root module's first positional argument (inside a trace)."""
        return self._envoy.input

    @input.setter
    def input(self, value: Any) -> None:
        self._envoy.input = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") or "_envoy" not in self.__dict__:
            raise AttributeError(name)
        value = getattr(self._envoy, name)
        if isinstance(value, Envoy):
            # Child envoys are rebound in place on dispatch, so caching them is safe.
            self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if "_envoy" not in self.__dict__:
            # A subclass setting attributes before super().__init__(): no module to route them to yet.
            object.__setattr__(self, name, value)
        elif isinstance(value, torch.nn.Module) and not name.startswith("_"):
            # Adding or replacing a submodule goes to the wrapped module.
            setattr(self._envoy, name, value)
            self.__dict__.pop(name, None)
        else:
            if not name.startswith("_") and name not in self.__dict__ and not hasattr(type(self), name):
                self._envoy._refuse_new_attribute_in_trace(name)  # `model.outptu = x` in a trace
            object.__setattr__(self, name, value)

    def __getitem__(self, key: Any) -> Any:
        return self._envoy[key]

    def __iter__(self):
        return iter(self._envoy)

    def __len__(self) -> int:
        return len(self._envoy)

    def __bool__(self) -> bool:
        return True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._envoy(*args, **kwargs)

    def __dir__(self) -> List[str]:
        aliases = self._aliases.at("", self._model)
        return sorted(set(super().__dir__()) | set(self._model._modules) | set(aliases))

    def __repr__(self) -> str:
        return repr(self._model)
