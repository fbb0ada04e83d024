"""The plugin manager: adapters found through the ``nnsight_core`` entry-point group.

First-party adapters are loaded exactly as third-party ones: by entry point.
Set ``NNSIGHT_BLOCK_PLUGINS`` to a comma-separated list of entry-point names
to keep those plugins from loading.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

import pluggy

from . import hookspecs
from .errors import AdapterNotFoundError

__all__ = ["get_plugin_manager", "call_hook", "BLOCK_ENV"]

#: Environment variable naming entry points not to load (comma-separated).
BLOCK_ENV = "NNSIGHT_BLOCK_PLUGINS"

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
                for name in filter(None, (n.strip() for n in os.environ.get(BLOCK_ENV, "").split(","))):
                    manager.set_blocked(name)
                manager.load_setuptools_entrypoints(hookspecs.PROJECT)
                _manager = manager
    return _manager


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
