"""Per-thread tracing state (which Runner records, which session is open) and the user's line.

The lowest layer of the core besides the errors: every other module may read
it, and it imports none of them (the Runner and Session types are named for
type checkers only).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

if TYPE_CHECKING:
    from .session import Session
    from .tracer import Runner

__all__ = ["current_runner", "register_internal_package", "user_location"]


class _Local(threading.local):
    def __init__(self) -> None:
        self.runners: List[Runner] = []
        self.session: Optional[Session] = None


local = _Local()


def current_runner() -> Optional[Runner]:
    """The Runner recording in this thread, or None outside a trace."""
    runners = local.runners
    return runners[-1] if runners else None


# Top-level packages whose frames are library code, never the user's line; adapters loaded
# through the plugin manager are added as they load (see register_internal_package).
_internal_packages: Set[str] = {"torch", "nnsight", "nnsight_core"}
_internal_code: Dict[Any, bool] = {}
_lock = threading.Lock()


def register_internal_package(name: str) -> None:
    """Treat the frames of package ``name`` (a top-level import name) as library code.

    Errors and printed graphs blame the user's line that recorded a node: the first
    frame outside library code. The core, torch and every adapter the plugin manager
    loads are library code already; call this for other packages that record nodes
    on their users' behalf (a toolkit built on top of an adapter).

    Example:
        >>> register_internal_package("acme_lens")
    """
    top = name.partition(".")[0]
    with _lock:
        if top not in _internal_packages:
            _internal_packages.add(top)
            _internal_code.clear()


def user_location(depth: int = 1) -> Optional[Tuple[str, int]]:
    """``(filename, line)`` of the first caller outside library code (see :func:`register_internal_package`)."""
    frame = sys._getframe(depth)
    internal = _internal_code
    while frame is not None:
        code = frame.f_code
        is_internal = internal.get(code)
        if is_internal is None:
            top = frame.f_globals.get("__name__", "").partition(".")[0]
            is_internal = internal[code] = top in _internal_packages
        if not is_internal:
            return code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None
