"""The plugin manager: adapters found through the ``nnsight_core`` entry-point group.

First-party adapters are loaded exactly as third-party ones: by entry point.
Two environment variables, read when the manager is created:

``NNSIGHT_BLOCK_PLUGINS``
    A comma-separated list of entry-point names to keep from loading.
``NNSIGHT_TRACE_HOOKS``
    Any value but ``""`` or ``"0"`` prints every hook call (arguments, the
    plugins asked, the result) to standard error; see :func:`enable_hook_tracing`.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from importlib import metadata
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, TextIO

import pluggy

from . import hookspecs
from ._state import register_internal_package
from .errors import AdapterNotFoundError, PluginLoadError

__all__ = ["get_plugin_manager", "call_hook", "blocked_plugins", "enable_hook_tracing",
           "BLOCK_ENV", "TRACE_ENV"]

#: Environment variable naming entry points not to load (comma-separated).
BLOCK_ENV = "NNSIGHT_BLOCK_PLUGINS"
#: Environment variable that, set to anything but ``""`` or ``"0"``, traces hook calls to stderr.
TRACE_ENV = "NNSIGHT_TRACE_HOOKS"

_manager: Optional[pluggy.PluginManager] = None
_lock = threading.Lock()


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting changes to its plugins so :func:`call_hook` can reuse answers.

    ``changes`` grows with every registration, unregistration, block, new
    hookspec and hook-call monitor (tracing); ``monitors`` counts the active
    monitors. Everything else is pluggy's.
    """

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.changes = 0
        self.monitors = 0

    def register(self, plugin: Any, name: Optional[str] = None) -> Optional[str]:
        self.changes += 1
        return super().register(plugin, name)

    def unregister(self, plugin: Any = None, name: Optional[str] = None) -> Any:
        self.changes += 1
        return super().unregister(plugin, name)

    def set_blocked(self, name: str) -> None:
        self.changes += 1
        super().set_blocked(name)

    def add_hookspecs(self, module_or_class: Any) -> None:
        self.changes += 1
        super().add_hookspecs(module_or_class)

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        self.changes += 1
        self.monitors += 1
        undo = super().add_hookcall_monitoring(before, after)

        def stop() -> None:
            self.changes += 1
            self.monitors -= 1
            undo()

        return stop


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading entry points on first use."""
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                manager = _PluginManager(hookspecs.PROJECT)
                manager.add_hookspecs(hookspecs)
                for name in blocked_plugins():
                    manager.set_blocked(name)
                try:
                    manager.load_setuptools_entrypoints(hookspecs.PROJECT)
                except Exception as error:
                    raise PluginLoadError(_load_failure(manager, error)) from error
                for plugin, _ in manager.list_plugin_distinfo():
                    # An adapter's frames are library code: errors blame its users' lines.
                    register_internal_package(getattr(plugin, "__name__", type(plugin).__module__))
                if os.environ.get(TRACE_ENV, "") not in ("", "0"):
                    enable_hook_tracing(manager)
                _manager = manager
    return _manager


def _load_failure(manager: pluggy.PluginManager, error: Exception) -> str:
    """Name the entry point whose import failed (the first one that fails again) and the fix."""
    for entry_point in metadata.entry_points(group=hookspecs.PROJECT):
        if manager.get_plugin(entry_point.name) is not None or manager.is_blocked(entry_point.name):
            continue
        try:
            entry_point.load()
        except Exception as failure:  # noqa: BLE001 - any import failure is the one to report
            dist = entry_point.dist
            origin = f", distribution {dist.name} {dist.version}" if dist is not None else ""
            return (f"the {hookspecs.PROJECT} entry point {entry_point.name!r} ({entry_point.value}"
                    f"{origin}) failed to load: {type(failure).__name__}: {failure}. Fix or "
                    f"uninstall that distribution, or skip the plugin with "
                    f"{BLOCK_ENV}={entry_point.name}.")
    return (f"loading the {hookspecs.PROJECT} entry points failed: {type(error).__name__}: {error}. "
            f"Run `python -m nnsight_core plugins` with {BLOCK_ENV} naming suspect plugins to find it.")


def blocked_plugins() -> List[str]:
    """The entry-point names that ``NNSIGHT_BLOCK_PLUGINS`` blocks, in the order given."""
    return [name for name in (n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",")) if name]


def enable_hook_tracing(manager: Optional[pluggy.PluginManager] = None,
                        stream: Optional[TextIO] = None) -> Callable[[], None]:
    """Print every hook call of ``manager`` and its outcome, one line each.

    Uses pluggy's hook-call monitoring. Each call prints the hook, its
    arguments in brief (tensors as their shape, other objects as their type)
    and the plugins in the order pluggy asks them (wrappers first); then what
    it returned or raised. Setting ``NNSIGHT_TRACE_HOOKS=1`` does this for the
    process-wide manager, writing to standard error.

    Args:
        manager: The plugin manager to trace; default the process-wide one.
        stream: Where to write; default ``sys.stderr`` at the time of each call.

    Returns:
        A function that stops the tracing.

    Example:
        >>> stop = enable_hook_tracing(stream=sys.stdout)
        >>> out = model.trace(x, trace=False)
        [nnsight_core] nnsight_prepare_inputs(model=NNsight, inputs=(tensor(1, 5),), kwargs={})
            asks: ...torch
        [nnsight_core] nnsight_prepare_inputs returned (((tensor(1, 5),), {}), 1)
        [nnsight_core] nnsight_execute(model=NNsight, ...) asks: ...torch
        [nnsight_core] nnsight_execute returned tensor(1, 2)
        >>> stop()
    """
    manager = manager or get_plugin_manager()

    def write(line: str) -> None:
        print(f"[{hookspecs.PROJECT}] {line}", file=stream or sys.stderr)

    def before(hook_name: str, hook_impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        arguments = ", ".join(f"{key}={_brief(value)}" for key, value in kwargs.items())
        # pluggy calls the implementations last-registered first.
        asked = ", ".join(impl.plugin_name for impl in reversed(hook_impls)) or "no plugin"
        write(f"{hook_name}({arguments}) asks: {asked}")

    def after(outcome: pluggy.Result, hook_name: str, hook_impls: Sequence[Any],
              kwargs: Mapping[str, Any]) -> None:
        if outcome.exception is not None:
            write(f"{hook_name} raised {type(outcome.exception).__name__}: {outcome.exception}")
        else:
            write(f"{hook_name} returned {_brief(outcome.get_result())}")

    return manager.add_hookcall_monitoring(before, after)


def _brief(value: Any, depth: int = 0) -> str:
    """A one-line summary of a hook argument or result: tensors by shape, objects by type."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"tensor({', '.join(str(n) for n in value.shape)})"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if depth < 3 and isinstance(value, dict):
        return "{" + _first_items(f"{k!r}: {_brief(v, depth + 1)}" for k, v in value.items()) + "}"
    if depth < 3 and isinstance(value, (tuple, list)):
        body = _first_items(_brief(v, depth + 1) for v in value)
        if isinstance(value, list):
            return f"[{body}]"
        return f"({body},)" if len(value) == 1 else f"({body})"
    return type(value).__name__


def _first_items(parts: Iterable[str], limit: int = 4) -> str:
    """Join at most ``limit`` parts, with ``...`` standing for the rest."""
    shown = list(itertools.islice(parts, limit + 1))
    return ", ".join(shown[:limit] + (["..."] if len(shown) > limit else []))


def call_hook(name: str, **kwargs: Any) -> Any:
    """Call the firstresult hook ``name`` and raise if no adapter answered.

    Every adapter answers for the wrappers that are its own, so once an
    implementation has answered for a wrapper it is asked directly the next
    time, while the plugins are unchanged, no hook wrapper or monitor
    (``NNSIGHT_TRACE_HOOKS``) is active and it keeps answering; otherwise the
    call goes through pluggy as usual. This keeps the cost of a hook call
    independent of how many adapters are installed.

    Raises:
        AdapterNotFoundError: Naming the hook, the wrapper class and the loaded adapters.
    """
    manager = _manager or get_plugin_manager()
    model = kwargs.get("model")
    answers = getattr(model, "__dict__", None)
    answers = answers.get(_ANSWERS) if answers is not None else None
    changes = getattr(manager, "changes", None)
    if answers is not None and name in answers:
        seen, impl = answers[name]
        if seen == changes and not manager.monitors:
            result = impl.function(*map(kwargs.__getitem__, impl.argnames))  # map: no extra frame
            if result is not None:
                return result
    result = _call_and_remember(manager, name, kwargs, model, changes)
    if result is None:
        model = kwargs.get("model")
        loaded = ", ".join(n for n, _ in manager.list_name_plugin() if not n.isdigit()) or "none"
        raise AdapterNotFoundError(
            f"no adapter answered {name} for {type(model).__name__}: install the adapter "
            f"distribution that provides this model class (loaded adapters: {loaded}), or "
            f"check {BLOCK_ENV} does not block it."
        )
    return result


#: Key in a wrapper's ``__dict__`` of the hook implementations that answered for it.
_ANSWERS = "_nnsight_hook_answers"


def _call_and_remember(manager: pluggy.PluginManager, name: str, kwargs: Any, model: Any,
                       changes: Optional[int]) -> Any:
    """Ask the implementations as pluggy would (last registered first) and remember who answered.

    Falls back to pluggy's own call when answers cannot be reused: a manager
    that does not count its changes, an active monitor, or any hook wrapper.
    """
    caller = getattr(manager.hook, name)
    impls = caller.get_hookimpls()
    if (changes is None or manager.monitors or not hasattr(model, "__dict__")
            or any(impl.wrapper or impl.hookwrapper for impl in impls)):
        return caller(**kwargs)
    for impl in reversed(impls):
        result = impl.function(*[kwargs[arg] for arg in impl.argnames])
        if result is not None:
            model.__dict__.setdefault(_ANSWERS, {})[name] = (changes, impl)
            return result
    return None
