"""Cache: save the output (and optionally the inputs) of many modules with one call.

``tracer.cache()`` inside a trace records, for every chosen module, its output
(and with ``include_inputs=True`` what it received) as saved graph nodes of the
current invoke, optionally moved to a device and cast to a dtype while the
model runs. After the trace the returned :class:`Cache` maps each module to
a :class:`CacheEntry` holding those tensors.

:meth:`Cache.estimate` tells how many bytes the cache will hold before
anything runs: it scans the trace on fake tensors (:mod:`nnsight_core.scan`:
shapes and dtypes only, no compute, no activation memory) and sums the sizes
of the values the cache would keep.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils import _pytree as pytree

from . import _state
from ._tree import tree_map
from .envoy import Envoy
from .errors import CacheError, CacheKeyError, EnvoyAttributeError, TraceStateError
from .graph import EMPTY, Node, display_path
from .scan import Scan, _Unknown, run_scan

if TYPE_CHECKING:
    from .model import NNsightModel
    from .proxy import Proxy
    from .tracer import Invoker, Runner

__all__ = ["Cache", "CacheEntry", "record_cache"]

Modules = Union[None, str, Envoy, "NNsightModel", Sequence[Union[str, Envoy, "NNsightModel"]]]


class CacheEntry:
    """The cached values of one module: ``.output``, and ``.inputs``/``.input`` with ``include_inputs``.

    Example:
        >>> with model.trace(x) as tracer:
        ...     cache = tracer.cache(include_inputs=True)
        >>> cache["model.layer1"].output.shape    # a tensor after the trace
        torch.Size([1, 10])
        >>> cache["model.layer1"].input.shape     # the first positional argument
        torch.Size([1, 5])

    Inside the trace the attributes are proxies (usable like any other); after
    it they are the values themselves.
    """

    __slots__ = ("key", "_output", "_inputs")

    def __init__(self, key: str, output: Proxy, inputs: Optional[Proxy]) -> None:
        self.key = key
        self._output = output
        self._inputs = inputs

    @property
    def output(self) -> Any:
        """What the module returned (moved and cast as the cache was asked)."""
        return _unwrap(self._output)

    @property
    def inputs(self) -> Any:
        """What the module received, as ``(args, kwargs)``.

        Raises:
            CacheError: The cache was made without ``include_inputs=True``.
        """
        if self._inputs is None:
            raise CacheError(f"{self.key} has no cached inputs: the cache was made without "
                             "include_inputs=True; call tracer.cache(..., include_inputs=True).")
        return _unwrap(self._inputs)

    @property
    def input(self) -> Any:
        """The module's first positional argument (see :attr:`inputs`)."""
        args, _ = self.inputs
        return args[0]

    def __repr__(self) -> str:
        return f"CacheEntry({self.key!r}, output={self.output!r})"


class Cache(Mapping):
    """The modules' values one ``tracer.cache()`` call saved, by module.

    Example:
        >>> with model.trace(x) as tracer:
        ...     cache = tracer.cache()
        >>> cache
        Cache(invoke 0, 5 modules: 'model', 'model.layer1', 'model.sigma1', 'model.layer2',
              'model.sigma2')
        >>> cache["model.layer1"].output.shape    # nnsight's key: "model." + module path
        torch.Size([1, 10])
        >>> cache.model.layer1.output is cache["model.layer1"].output   # the same, by attribute
        True

    Keys are ``"model"`` for the root module and ``"model.<module path>"``
    (``"model.transformer.h.0"``) for the others; lookups also accept the
    plain module path (``"transformer.h.0"``), the printed form
    (``"model.transformer.h[0]"``) and the envoy (``model.transformer.h[0]``).
    After the trace the cache holds the modules that ran: with the default
    ``modules=None``, a module the execution never called is left out.

    Attributes:
        invoke: The invoke whose rows the cache holds.
    """

    def __init__(self, runner: Runner, invoke: int, entries: Dict[str, CacheEntry]) -> None:
        self.invoke = invoke
        self._runner = runner
        self._entries = entries

    # -- the mapping --------------------------------------------------------------

    def __getitem__(self, key: Any) -> CacheEntry:
        found = self._entries.get(self._key(key))
        if found is None or not self._holds(found):
            shown = key if isinstance(key, str) else _key_of_envoy(key)
            why = ("it did not run during the trace" if found is not None
                   else "it was not among the modules cached")
            raise CacheKeyError(f"the cache has no entry {shown!r}: {why}. Its keys are "
                                f"{_short_list(list(self))}.")
        return found

    def __iter__(self) -> Iterator[str]:
        return (key for key, entry in self._entries.items() if self._holds(entry))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getattr__(self, name: str) -> Any:
        if name == "model":
            return _CachePath(self, "model")
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}; look modules up "
                             "as cache['model.<path>'] or cache.model.<path>.")

    def __repr__(self) -> str:
        return f"Cache(invoke {self.invoke}, {len(self)} modules: {_short_list(list(self))})"

    # -- memory -------------------------------------------------------------------

    def estimate(self) -> int:
        """The bytes the cached tensors will take, computed without running the model.

        The trace is scanned on fake tensors (:mod:`nnsight_core.scan`: the
        model runs with the recorded graph interleaved, but every operation
        computes only its result's shape and dtype) with the invokes opened
        so far, batched as the trace will batch them. The estimate sums
        ``numel() * element_size()`` of every tensor the cache would keep
        (this invoke's rows, after ``device``/``dtype``); a module that does
        not run counts 0. It equals the bytes of the values the trace then
        caches unless a later invoke with longer inputs widens the padded
        batch. A lazily loaded model is loaded first: its real weights' dtypes
        decide the sizes. It scans also in a trace opened with ``scan=False``:
        asking for the estimate asks for the scan.

        Returns:
            The estimated bytes.

        Raises:
            CacheError: After the trace, or when the scan cannot know a cached
                value (it depends on tensor values, e.g. generation steps after
                the first, or model code that reads values).
        """
        runner = self._runner
        if not runner.recording:
            raise CacheError("cache.estimate() is computed before the model runs, inside the trace; "
                             "after the trace, measure the cached tensors themselves.")
        model = runner._model
        if not model.dispatched:
            model.dispatch_model()
        scan = runner._scan_state
        if scan is None or not scan.current(runner):
            scan = run_scan(runner)
        total = 0
        for entry in self._entries.values():
            for proxy in (entry._output, entry._inputs):
                if proxy is not None:
                    total += _nbytes(_fake_value(scan, proxy.node, entry.key))
        return total

    # -- helpers ------------------------------------------------------------------

    def _holds(self, entry: CacheEntry) -> bool:
        runner = self._runner
        return runner.recording or entry._output.node.index in runner.values

    def _key(self, key: Any) -> str:
        if isinstance(key, Envoy) or _is_model(key):
            return _key_of_envoy(key)
        if not isinstance(key, str):
            raise CacheKeyError(f"cache keys are module paths ('model.layer1') or envoys, not "
                                f"{type(key).__name__}.")
        key = re.sub(r"\[(\d+)\]", r".\1", key)
        if key in self._entries or key == "model":
            return key
        return "model." + key if key else "model"


class _CachePath:
    """``cache.model.transformer.h[0]``: attribute access to cache entries (nnsight's spelling)."""

    def __init__(self, cache: Cache, prefix: str) -> None:
        self._cache = cache
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ("output", "inputs", "input"):
            return getattr(self._cache[self._prefix], name)
        return _CachePath(self._cache, f"{self._prefix}.{name}")

    def __getitem__(self, index: int) -> _CachePath:
        return _CachePath(self._cache, f"{self._prefix}.{index}")

    def __repr__(self) -> str:
        return repr(self._cache[self._prefix])


# -- recording -------------------------------------------------------------------------


def record_cache(runner: Runner, modules: Modules, device: Any, dtype: Optional[torch.dtype],
                 include_inputs: bool) -> Union[Cache, Dict[int, Cache]]:
    """``tracer.cache(...)`` (see :meth:`nnsight_core.tracer.Runner.cache`)."""
    if _state.current_runner() is not runner:
        raise TraceStateError("tracer.cache() records into its trace: call it inside the "
                          "`with model.trace(...)` block of that tracer.")
    model = runner._model
    paths, optional = _resolve(model, modules)
    device = _device(device)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise CacheError(f"tracer.cache(dtype=...) takes a torch.dtype such as torch.float16, "
                         f"not {dtype!r}.")
    if runner._invoker is not None:
        return _record(runner._invoker, paths, optional, device, dtype, include_inputs)
    caches: Dict[int, Cache] = {}

    def record(invoker: Invoker) -> None:
        caches[invoker.index] = _record(invoker, paths, optional, device, dtype, include_inputs)

    runner._caches.append(record)
    return caches


def _record(invoker: Invoker, paths: List[str], optional: bool, device: Optional[torch.device],
            dtype: Optional[torch.dtype], include_inputs: bool) -> Cache:
    """Record this invoke's saved (moved, cast) output and inputs of each module in ``paths``."""
    runner = invoker._runner
    graph = runner._graph
    proxy_class = runner._model.proxy_class
    where = _state.user_location()
    first = len(graph.nodes)
    entries: Dict[str, CacheEntry] = {}

    def keep(value: Proxy) -> Proxy:
        node = value.node
        if device is not None or dtype is not None:
            node = graph.create_node("call_function", _moved, (node,), {"device": device, "dtype": dtype},
                                     invoke=invoker.index, where=where, cond=runner.condition())
        saving = graph.save(node, invoker.index, runner.condition())
        return value if saving is value.node else proxy_class(saving, runner.trace_state)

    for path in paths:
        envoy = _envoy(runner._model, path)
        output = envoy._value("output", invoker)
        inputs = keep(envoy._value("inputs", invoker)) if include_inputs else None
        key = "model." + path if path else "model"
        entries[key] = CacheEntry(key, keep(output), inputs)
    if optional:
        # Only the nodes made here: a module value the user's own code also uses stays required.
        graph.optional.update(range(first, len(graph.nodes)))
    return Cache(runner, invoker.index, entries)


def _moved(value: Any, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Any:
    """``value`` with every tensor moved to ``device`` and every floating-point tensor cast to ``dtype``."""
    def leaf(item: Any) -> Any:
        if not isinstance(item, torch.Tensor):
            return item
        cast = dtype if dtype is not None and item.is_floating_point() else None
        return item.to(device=device, dtype=cast)

    return tree_map(leaf, value)


# -- which modules ---------------------------------------------------------------------


def _resolve(model: NNsightModel, modules: Modules) -> Tuple[List[str], bool]:
    """The module paths to cache, and whether a module that does not run may be left out.

    Raises:
        CacheError: Something that is not a module path, an envoy or a list of them.
        EnvoyAttributeError: A path that names no module.
    """
    if modules is None:
        return [name for name, _ in model._model.named_modules()], True
    if isinstance(modules, (str, Envoy)) or _is_model(modules):
        modules = [modules]
    if not isinstance(modules, (list, tuple)):
        raise CacheError(f"tracer.cache(modules=...) takes envoys (model.layer1), module paths "
                         f"('layer1') or a list of them, not {type(modules).__name__}.")
    paths = []
    for item in modules:
        if isinstance(item, Envoy) or _is_model(item):
            envoy = item._envoy if _is_model(item) else item
            if envoy._wrapper._model is not model._model:
                raise CacheError(f"{display_path(envoy._path)} belongs to another model; cache the "
                                 "modules of the model being traced.")
            path = envoy._path
        elif isinstance(item, str):
            path = _path_of_name(model, item)
        else:
            raise CacheError(f"tracer.cache(modules=...) got a {type(item).__name__}; give envoys "
                             "(model.layer1) or module paths ('layer1').")
        if path not in paths:
            paths.append(path)
    return paths, False


def _path_of_name(model: NNsightModel, name: str) -> str:
    """The module path a name means: a module path first, else nnsight's key (``"model"``,
    ``"model.<path>"``, also written ``"model.h[0]"``).

    Raises:
        EnvoyAttributeError: The name means no module.
    """
    name = re.sub(r"\[(\d+)\]", r".\1", name)
    try:
        return _envoy(model, name)._path
    except EnvoyAttributeError:
        if name == "model":
            return ""
        if not name.startswith("model."):
            raise
    return _envoy(model, name[len("model."):])._path


def _envoy(model: NNsightModel, path: str) -> Envoy:
    """The envoy of ``path``.

    Raises:
        EnvoyAttributeError: A part of the path names no child module.
    """
    envoy = model._envoy
    for part in path.split(".") if path else ():
        module = envoy._module
        if part not in module._modules and not (not envoy._path and part in model._attached):
            children = ", ".join(module._modules) or "none"
            raise EnvoyAttributeError(
                f"tracer.cache(modules=...): {display_path(envoy._path)} ({type(module).__name__}) has "
                f"no child module {part!r}, so {path!r} names no module; its children are: {children}."
            )
        envoy = envoy._child(part)
    return envoy


def _is_model(value: Any) -> bool:
    """Whether ``value`` is a model wrapper: what holds the root envoy of its module tree."""
    return isinstance(getattr(value, "__dict__", {}).get("_envoy"), Envoy)


def _key_of_envoy(value: Any) -> str:
    envoy = value._envoy if _is_model(value) else value
    return "model." + envoy._path if envoy._path else "model"


# -- memory estimate -------------------------------------------------------------------


def _fake_value(scan: Scan, node: Node, key: str) -> Any:
    """The fake value the scan computed for a cache node (None for a module that did not run).

    Raises:
        CacheError: The scan could not compute it: it needs tensor values, or the scan
            stopped before all calls it covers (a template's later calls included).
    """
    value = scan.values.get(node.index, EMPTY)
    stopped = scan.stopped
    if isinstance(value, _Unknown) or (stopped is not None and (value is EMPTY or node.iteration is not None)):
        why = value.reason if isinstance(value, _Unknown) else (
            f"the scan on fake tensors stopped early ({type(stopped).__name__}: "
            f"{str(stopped).strip().splitlines()[0] if str(stopped).strip() else ''})")
        raise CacheError(f"cache.estimate() cannot know the size of {key}: {why}. Estimate a trace "
                         "whose shapes do not depend on tensor values (e.g. one forward pass instead "
                         "of a generation), or measure a small real run.")
    return None if value is EMPTY else value


def _nbytes(value: Any) -> int:
    return sum(leaf.numel() * leaf.element_size() for leaf in pytree.tree_leaves(value)
               if isinstance(leaf, torch.Tensor))


# -- small helpers -------------------------------------------------------------------------


def _device(device: Any) -> Optional[torch.device]:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise CacheError(f"tracer.cache(device={device!r}): not a device ({error}); give e.g. "
                         "'cpu', 'cuda:0' or a torch.device.") from None


def _unwrap(proxy: Proxy) -> Any:
    value = proxy._trace.values.get(proxy.node.index, EMPTY)
    return proxy if value is EMPTY else value


def _short_list(keys: List[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
