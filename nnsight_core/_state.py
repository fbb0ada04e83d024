"""Per-thread tracing state: which Runner is recording in this thread."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from .tracer import Runner


class _Local(threading.local):
    def __init__(self) -> None:
        self.runners: List[Runner] = []


local = _Local()


def current_runner() -> Optional[Runner]:
    runners = local.runners
    return runners[-1] if runners else None


_internal_code: Dict[Any, bool] = {}


def user_location(depth: int = 1) -> Optional[Tuple[str, int]]:
    """``(filename, line)`` of the first caller outside nnsight packages and torch."""
    frame = sys._getframe(depth)
    internal = _internal_code
    while frame is not None:
        code = frame.f_code
        is_internal = internal.get(code)
        if is_internal is None:
            top = frame.f_globals.get("__name__", "").partition(".")[0]
            is_internal = internal[code] = top == "torch" or top.startswith("nnsight")
        if not is_internal:
            return code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None
