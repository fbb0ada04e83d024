"""Per-thread tracing state: which Runner is recording in this thread."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, List, Optional, Tuple

if TYPE_CHECKING:
    from .tracer import Runner


class _Local(threading.local):
    def __init__(self) -> None:
        self.runners: List[Runner] = []


local = _Local()


def current_runner() -> Optional[Runner]:
    runners = local.runners
    return runners[-1] if runners else None


def user_location(depth: int = 1) -> Optional[Tuple[str, int]]:
    """``(filename, line)`` of the first caller outside nnsight packages and torch."""
    frame = sys._getframe(depth)
    while frame is not None:
        top = frame.f_globals.get("__name__", "").partition(".")[0]
        if top != "torch" and not top.startswith("nnsight"):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None
