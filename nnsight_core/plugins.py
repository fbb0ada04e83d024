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
from .errors import AdapterNotFoundError, PluginLoadError

__all__ = ["get_plugin_manager", "call_hook", "blocked_plugins", "enable_hook_tracing",
           "BLOCK_ENV", "TRACE_ENV"]

#: Environment variable naming entry points not to load (comma-separated).
BLOCK_ENV = "NNSIGHT_BLOCK_PLUGINS"
#: Environment variable that, set to anything but ``""`` or ``"0"``, traces hook calls to stderr.
TRACE_ENV = "NNSIGHT_TRACE_HOOKS"

_manager: Optional[pluggy.PluginManager] = None
_lock = threading.Lock()


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading entry points on first use."""
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                manager = pluggy.PluginManager(hookspecs.PROJECT)
                manager.add_hookspecs(hookspecs)
                for name in blocked_plugins():
                    manager.set_blocked(name)
                try:
                    manager.load_setuptools_entrypoints(hookspecs.PROJECT)
                except Exception as error:
                    raise PluginLoadError(_load_failure(manager, error)) from error
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
        >>> model.trace(x, trace=False)   # doctest: +SKIP
        [nnsight_core] nnsight_prepare_inputs(model=NNsight, inputs=(tensor(3, 5),), kwargs={}) asks: torch
        [nnsight_core] nnsight_prepare_inputs returned (((tensor(3, 5),), {}), 3)
        ...
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

    Raises:
        AdapterNotFoundError: Naming the hook, the wrapper class and the loaded adapters.
    """
    manager = _manager or get_plugin_manager()
    result = getattr(manager.hook, name)(**kwargs)
    if result is None:
        model = kwargs.get("model")
        loaded = ", ".join(n for n, _ in manager.list_name_plugin() if not n.isdigit()) or "none"
        raise AdapterNotFoundError(
            f"no adapter answered {name} for {type(model).__name__}: install the adapter "
            f"distribution that provides this model class (loaded adapters: {loaded}), or "
            f"check {BLOCK_ENV} does not block it."
        )
    return result
